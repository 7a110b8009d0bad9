//! `meridian demo` as a new user runs it: it comes up, prints working URLs and
//! credentials, a real browser signs in and opens the app, and SIGTERM (as
//! Ctrl-C) stops every process it started.

use crate::support::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_apps_to_a_browser_and_stops_cleanly() {
    let dir = tempdir();
    let state = dir.path().join("state");
    let args = ["--regions".to_owned(), "sydney".into(), "--data-dir".into(), state.display().to_string()];
    let mut demo = Demo::start(dir.path(), &args).await;
    let printed = demo.printed.clone();
    let ports = [demo.port, demo.port_of("sydney")];
    let password = printed
        .lines()
        .find_map(|l| l.split("password ").nth(1))
        .map(|p| p.trim().to_owned())
        .expect("credentials printed");
    let url_of = |needle: &str| {
        printed
            .lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("http")))
            .unwrap()
            .to_owned()
    };

    // The public app answers with no sign-in.
    let anon = browser();
    let public = url_of("public app");
    assert_eq!(anon.get(&public).send().await.unwrap().status(), 200, "{public}");

    // A real browser opens the sydney app URL, signs in, and is served.
    let app = url_of("via sydney");
    let shot = dir.path().join("signed-in.png");
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let run = tokio::task::spawn_blocking(move || {
        let mut node = Command::new("node");
        node.current_dir(&browser_dir).args(["sign-in.js", &format!("{app}hello"), "demo", &password]).arg(&shot);
        output_within(&mut node, Duration::from_secs(120), "node sign-in.js")
    })
    .await
    .unwrap();
    let says = String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "browser sign-in failed: {says}");

    // SIGTERM stops the demo and everything it started.
    demo.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let status = demo.proc.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}\n{}", demo.proc.output());
    for p in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", p)).is_err(),
            "port {p} still served after the demo stopped"
        );
    }
    assert!(!dir.path().join("state/data/postgres/postmaster.pid").exists(), "Postgres stopped");
}

/// A region's proxy that cannot start (here: a setting it refuses, from the
/// environment the demo passes on) fails the demo at once, naming the process
/// and quoting its log, rather than after a minute of waiting for the region.
#[tokio::test(flavor = "multi_thread")]
async fn a_process_that_dies_while_the_demo_starts_is_named_with_its_log() {
    let dir = tempdir();
    let state = dir.path().join("state");
    let args =
        ["demo", "--port", "0", "--regions", "sydney", "--data-dir", &state.display().to_string()].map(str::to_owned);
    let mut demo = Process::spawn_env(BIN, "demo", dir.path(), &args, &[("MERIDIAN_MAX_HEADERS", "lots")]);
    let status = demo.wait_exit(Duration::from_secs(100)).await;
    let out = demo.output();
    assert!(!status.success(), "{out}");
    assert!(out.contains("proxy-sydney exited (exit status: 2); the end of its log:"), "{out}");
    assert!(out.contains("invalid value 'lots' for '--max-headers"), "the proxy's own words are quoted: {out}");
    assert!(!out.contains("timed out"), "{out}");
    assert!(!state.join("data/postgres/postmaster.pid").exists(), "Postgres stopped:\n{out}");
}
