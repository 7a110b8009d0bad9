//! Replays the fuzz targets' corpus (`regions/fuzz/corpus/<target>/`) through the same
//! checks the targets run, so `cargo test` keeps every input fuzzing kept.

use meridian_regions::fuzz_checks;
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            panic!("{}: {:?}", path.display(), panic.downcast_ref::<String>());
        }
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

#[test]
fn host_corpus() {
    replay("host", fuzz_checks::host);
}

#[test]
fn path_corpus() {
    replay("path", fuzz_checks::path);
}

#[test]
fn token_corpus() {
    replay("token", fuzz_checks::token);
}

#[test]
fn redirect_corpus() {
    replay("redirect", fuzz_checks::redirect);
}

#[test]
fn framing_corpus() {
    replay("framing", fuzz_checks::framing);
}

#[test]
fn cookie_corpus() {
    replay("cookie", fuzz_checks::cookie);
}
