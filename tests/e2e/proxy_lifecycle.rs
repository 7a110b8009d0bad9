//! A proxy registers, is health-checked, dies, returns and leaves.

use crate::support::*;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread")]
async fn registered_proxy_is_ok_then_unreachable_then_ok_then_unregistered() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let coord = Coordinator::start(dir.path(), &pg.url(), "1s", &[]).await;
    let admin = coord.admin().await;
    let token = admin.create_region("sydney").await;
    assert_eq!(admin.region("sydney").await["status"], "unregistered");

    let mut proxy = Proxy::start(dir.path(), &coord.url, &token).await;
    // Registration triggers a check at once; within one interval at worst.
    admin.wait_status("sydney", "ok", INTERVAL + Duration::from_millis(500)).await;
    let region = admin.region("sydney").await;
    assert_eq!(region["healthy"], true);
    assert_eq!(region["access_url"], proxy.url.as_str());
    assert_eq!(region["wildcard_hostname"], format!("*.region.localhost:{}", proxy.port));
    assert!(region["last_heartbeat_at"].is_string());

    proxy.proc.signal(Signal::SIGKILL);
    let killed = Instant::now();
    admin.wait_status("sydney", "unreachable", 2 * INTERVAL + Duration::from_millis(500)).await;
    eprintln!("SIGKILL → unreachable in {:?} at a {INTERVAL:?} interval", killed.elapsed());
    assert_eq!(admin.region("sydney").await["healthy"], false);

    proxy.restart().await;
    admin.wait_status("sydney", "ok", 2 * INTERVAL).await;
    assert_eq!(admin.region("sydney").await["replicas"].as_array().unwrap().len(), 1, "the same replica");

    proxy.proc.signal(Signal::SIGTERM);
    let status = proxy.proc.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    // Deregistration happened before exit, so the listing shows it at once.
    let region = admin.region("sydney").await;
    assert_eq!(region["status"], "unregistered", "{region}");
    assert_eq!(region["replicas"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn region_stays_ok_while_any_replica_lives() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let coord = Coordinator::start(dir.path(), &pg.url(), "1s", &[]).await;
    let admin = coord.admin().await;
    let token = admin.create_region("frankfurt").await;
    let a = Proxy::start(dir.path(), &coord.url, &token).await;
    let _b = Proxy::start(dir.path(), &coord.url, &token).await;
    wait_for(Duration::from_secs(5), "two ok replicas", || async {
        let r = admin.region("frankfurt").await;
        let replicas = r["replicas"].as_array().unwrap().clone();
        (replicas.len() == 2 && replicas.iter().all(|x| x["status"] == "ok")).then_some(())
    })
    .await;

    a.proc.signal(Signal::SIGKILL);
    // The dead replica goes unreachable while the region stays ok throughout.
    wait_for(Duration::from_secs(5), "dead replica unreachable", || async {
        let r = admin.region("frankfurt").await;
        assert_eq!(r["status"], "ok", "region must stay ok: {r}");
        let replicas = r["replicas"].as_array().unwrap().clone();
        replicas.iter().any(|x| x["status"] == "unreachable").then_some(())
    })
    .await;
    for _ in 0..3 {
        tokio::time::sleep(INTERVAL).await; // observe three more health rounds
        assert_eq!(admin.region("frankfurt").await["status"], "ok");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_serves_its_own_endpoints() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let coord = Coordinator::start(dir.path(), &pg.url(), "1s", &[]).await;
    let token = coord.admin().await.create_region("tokyo").await;
    let proxy = Proxy::start(dir.path(), &coord.url, &token).await;

    let healthz = reqwest::get(format!("{}/healthz", proxy.url)).await.unwrap();
    assert_eq!(healthz.status(), 200);
    let latency = reqwest::get(format!("{}/latency-check", proxy.url)).await.unwrap();
    assert_eq!(latency.status(), 200);
    assert_eq!(latency.headers()["access-control-allow-origin"], "*");
    assert_eq!(latency.headers()["timing-allow-origin"], "*");
    let info: serde_json::Value =
        reqwest::get(format!("{}/api/v2/buildinfo", proxy.url)).await.unwrap().json().await.unwrap();
    assert_eq!(info["role"], "proxy");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    let report = proxy.report().await.unwrap();
    assert_eq!(report["status"], "ok");
    assert_eq!(report["coordinator_reachable"], true);
    let missing = reqwest::get(format!("{}/nothing-here", proxy.url)).await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert!(body["message"].is_string());
}
