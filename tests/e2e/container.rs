//! The container image (`deploy/container/Containerfile`): built with buildah
//! from this build's binary, then run — `meridian --version` as uid 10001 in
//! both variants, and a coordinator with its embedded Postgres that serves and
//! stops cleanly (`deploy/container/build --check`). The compile stage needs a
//! Rust image, which this machine's registries do not offer, so the binary
//! comes from the build outside (`--prebuilt`).

use crate::support::{output_within, BIN};
use std::path::Path;
use std::process::Command;

#[test]
fn the_images_build_and_run_as_an_unprivileged_user() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = Path::new(BIN).strip_prefix(repo).expect("the binary is inside the repository (the build context)");
    let mut build = Command::new(repo.join("deploy/container/build"));
    build.args(["--tag", "e2e", "--prebuilt"]).arg(binary).arg("--check").current_dir(repo);
    // Under nextest's 5-minute bound, so a stuck buildah is killed, not left behind.
    let out = output_within(&mut build, std::time::Duration::from_secs(280), "deploy/container/build (buildah)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("check: both images run as uid 10001"), "{text}");
}
