//! `meridian regions ping`: latency from the user's machine to every healthy
//! region, measured through `/latency-check`, the best one marked.

use crate::support::*;
use serde_json::Value;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn ping_measures_each_region_and_marks_the_nearest() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let coord = Coordinator::start(dir.path(), &pg.url(), "1s", &[]).await;
    let admin = coord.admin().await;
    // Sydney is 40 ms away (each way); the primary is on this machine.
    let far = pending_link().await;
    far.set_latency(Duration::from_millis(40));
    let access = format!("http://{}", far.addr());
    let token = admin.create_region("sydney").await;
    let mut sydney = Proxy::spawn_named(dir.path(), &coord.url, &token, "sydney", &["--access-url", &access]).await;
    far.set_upstreams(vec![sydney.ready.as_ref().unwrap().listen]);
    sydney.wait_registered().await;
    admin.wait_status("sydney", "ok", Duration::from_secs(10)).await;
    // A region that registered once and died: listed, not pinged.
    let gone = admin.create_region("gone").await;
    let mut dead = Proxy::spawn_named(dir.path(), &coord.url, &gone, "gone", &[]).await;
    dead.wait_registered().await;
    dead.proc.kill();
    admin.wait_status("gone", "unreachable", Duration::from_secs(10)).await;

    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["regions", "ping", "--count", "3", "--json", "--url", &coord.url, "--session-token", admin.token()]);
    let out =
        output_within(cmd.env("MERIDIAN_CONFIG_DIR", dir.path()), Duration::from_secs(60), "meridian regions ping");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let region =
        |name: &str| report["regions"].as_array().unwrap().iter().find(|r| r["region"] == name).unwrap().clone();
    let (primary, sydney, gone) = (region("primary"), region("sydney"), region("gone"));
    assert!(sydney["latency_ms"].as_f64().unwrap() >= 80.0, "two 40 ms legs: {sydney}");
    assert!(primary["latency_ms"].as_f64().unwrap() < sydney["latency_ms"].as_f64().unwrap(), "{report}");
    assert_eq!((primary["best"].as_bool(), sydney["best"].as_bool()), (Some(true), Some(false)), "{report}");
    assert_eq!((gone["latency_ms"].clone(), gone["best"].as_bool()), (Value::Null, Some(false)), "{gone}");

    // The table marks the same region.
    let out = std::process::Command::new(BIN)
        .args(["regions", "ping", "--count", "1", "--url", &coord.url, "--session-token", admin.token()])
        .env("MERIDIAN_CONFIG_DIR", dir.path())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let best = table.lines().find(|l| l.contains("<- best")).unwrap_or_default();
    assert!(best.starts_with("primary"), "{table}");
    drop(sydney);
}
