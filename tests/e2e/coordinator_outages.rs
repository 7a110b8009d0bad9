//! The coordinator and Postgres go away and come back; nothing is restarted by hand.

use crate::support::*;
use nix::sys::signal::Signal;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn proxies_reregister_after_the_coordinator_restarts() {
    let mut m = Mesh::builder().region("sydney").start().await;
    let mut proxy = m.take_proxy("sydney");
    let Mesh { mut coord, admin, .. } = m;

    coord.proc.signal(Signal::SIGKILL);
    // The proxy keeps running and says it is degraded.
    let report = wait_for(Duration::from_secs(10), "proxy to notice", || async {
        proxy.report().await.filter(|r| r["coordinator_reachable"] == false)
    })
    .await;
    assert_eq!(report["status"], "degraded");
    assert!(report["warnings"][0].as_str().unwrap().contains("coordinator"), "{report}");
    let before = report["last_registration_at"].as_str().map(str::to_owned);
    assert!(proxy.proc.child.try_wait().unwrap().is_none(), "the proxy never exits for this");

    coord.restart().await;
    proxy.wait_registered_after(before).await;
    assert_eq!(proxy.report().await.unwrap()["status"], "ok");
    admin.wait_status("sydney", "ok", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_answers_503_while_postgres_is_down_and_recovers() {
    let Mesh { mut coord, admin, mut pg, dir: _dir, .. } = Mesh::builder().start().await;
    admin.get("/api/v2/regions").await.expect_status(200);

    pg.pg.stop().unwrap();
    let down = admin.get("/api/v2/regions").await;
    assert_eq!(down.status, 503, "{}", down.body);
    assert!(down.body["message"].as_str().unwrap().contains("database"), "{}", down.body);
    // Liveness does not depend on the database; the primary's report names it.
    assert_eq!(reqwest::get(format!("{}/healthz", coord.url)).await.unwrap().status(), 200);
    let report: serde_json::Value =
        reqwest::get(format!("{}/healthz-report", coord.url)).await.unwrap().json().await.unwrap();
    assert!(report["errors"][0].as_str().unwrap().contains("database"), "{report}");

    pg.pg.start().unwrap();
    wait_for(Duration::from_secs(15), "API recovery", || async {
        (admin.get("/api/v2/regions").await.status == 200).then_some(())
    })
    .await;
    admin.create_region("after-outage").await;
    assert!(coord.proc.child.try_wait().unwrap().is_none(), "the coordinator recovered without a restart");
}

/// With heartbeats 30 s apart, a proxy still reports the coordinator gone
/// within a second: its route stream breaks at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_reports_a_lost_coordinator_within_a_second() {
    let mut m = Mesh::builder().interval("30s").region("sydney").start().await;
    let proxy = m.take_proxy("sydney");
    let coord = &m.coord;
    wait_for(Duration::from_secs(5), "the proxy to follow routes", || async {
        (metric(&proxy.url, "meridian_proxy_coordinator_reachable").await? == 1.0).then_some(())
    })
    .await;

    coord.proc.signal(Signal::SIGKILL);
    let killed = std::time::Instant::now();
    let report = wait_for(Duration::from_secs(5), "the proxy to notice", || async {
        proxy.report().await.filter(|r| r["coordinator_reachable"] == false)
    })
    .await;
    let noticed = killed.elapsed();
    eprintln!("the proxy reported the coordinator gone after {noticed:?}");
    assert!(noticed < Duration::from_secs(1), "{noticed:?}");
    assert_eq!(report["status"], "degraded");
    assert!(report["warnings"][0].as_str().unwrap().contains("route stream"), "{report}");
}

/// The offline grace, end to end: an app token that expires while the
/// coordinator is down (so nobody can renew it) is still served for
/// `--offline-grace`, and no longer. Tokens last 2 s here
/// (`--app-token-lifetime`) and verifiers allow 30 s of clock skew past
/// expiry, so the outage lasts 40 s: sydney (grace 1 h, the default) serves
/// its user throughout; frankfurt (grace 5 s) sends its user to the
/// coordinator, which is down: a 503 page.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_expiring_during_an_outage_are_served_for_the_offline_grace_only() {
    let mut m = Mesh::builder()
        .coordinator_args(&["--app-token-lifetime", "2s"])
        .region("sydney")
        .region_with("frankfurt", &["--offline-grace", "5s"])
        .workspace(|app| serde_json::json!([{"slug": "open", "port": app, "share": "public"}]))
        .agent_on("sydney")
        .start()
        .await;
    let (sydney, frankfurt) = (m.take_proxy("sydney"), m.take_proxy("frankfurt"));
    let coord = &m.coord;
    let url = |name: &str, port: u16| format!("http://open--main--dev--admin.{name}.localhost:{port}/");
    let (in_sydney, in_frankfurt) = (browser(), browser());
    let issued = tokio::time::Instant::now();
    for (client, url) in [(&in_sydney, url("sydney", sydney.port)), (&in_frankfurt, url("frankfurt", frankfurt.port))] {
        let (hops, resp) = follow(client, &url).await;
        assert_eq!(resp.status(), 200, "{url}: {hops:?}");
    }

    coord.proc.signal(Signal::SIGKILL);
    let users = vec![("sydney".into(), in_sydney, url("sydney", sydney.port))];
    let traffic = Traffic::start(users, Duration::from_millis(500));
    // The outage being rehearsed: past the tokens' expiry, the skew and frankfurt's grace.
    tokio::time::sleep_until(issued + Duration::from_secs(2 + 30 + 5 + 3)).await;
    let stats = traffic.stop().await;
    let (_, s) = &stats[0];
    assert!(
        s.ok >= 60 && s.failed.is_empty(),
        "sydney, within its grace: {} served, failed {:?}\n{}",
        s.ok,
        s.failed.first(),
        sydney.proc.output()
    );
    let r = in_frankfurt.get(url("frankfurt", frankfurt.port)).send().await.unwrap();
    assert_eq!(r.status(), 503, "frankfurt, past its grace");
    let page = r.text().await.unwrap();
    assert!(page.contains("coordinator"), "the page names the coordinator: {page}");
}
