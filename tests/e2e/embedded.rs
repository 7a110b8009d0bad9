//! The coordinator's embedded PostgreSQL: created on first start, reused on
//! the next, stopped with the coordinator; a missing installation is one line.

use crate::support::*;
use nix::sys::signal::Signal;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn embedded_postgres_is_created_reused_and_stopped() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let args: Vec<String> = ["coordinator", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut coord = Coordinator::start_with(dir.path(), args).await;
    let admin = coord.admin().await;
    admin.create_region("sydney").await;
    assert!(data.join("postgres/PG_VERSION").exists());

    coord.proc.signal(Signal::SIGTERM);
    let status = coord.proc.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    assert!(!data.join("postgres/postmaster.pid").exists(), "Postgres stopped with the coordinator");

    // Same data directory: the user and the region are still there.
    let coord = Coordinator::start_with(dir.path(), coord.args.clone()).await;
    let login = Api::anonymous(&coord.url)
        .post("/api/v2/users/login", serde_json::json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .await
        .expect_status(200);
    let admin = Api::with_token(&coord.url, login["session_token"].as_str().unwrap());
    assert_eq!(admin.region("sydney").await["status"], "unregistered");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_postgres_is_one_clear_line() {
    let dir = tempdir();
    let empty = dir.path().join("no-postgres-here");
    std::fs::create_dir_all(&empty).unwrap();
    let args: Vec<String> = [
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--postgres-bin-dir",
        empty.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut proc = Process::spawn("coordinator", dir.path(), &args);
    let status = proc.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success());
    let out = proc.output();
    assert!(out.contains("apt-get install postgresql"), "says what to install: {out}");
}

/// Only root hands the server to another user (as anyone else the server runs
/// as the caller, who can reach their own directory): ignored by default and
/// run by `scripts/test` when it runs as root, which says so when it does not.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (scripts/test runs it when root)"]
async fn data_dir_the_server_user_cannot_reach_is_one_clear_line() {
    assert!(nix::unistd::geteuid().is_root(), "run as root: only root hands the embedded Postgres to another user");
    let dir = tempdir();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = dir.path().join("data");
    let args: Vec<String> = ["coordinator", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut proc = Process::spawn("coordinator", dir.path(), &args);
    let status = proc.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success());
    let out = proc.output();
    assert!(out.contains("cannot enter") && out.contains("--data-dir"), "{out}");
}
