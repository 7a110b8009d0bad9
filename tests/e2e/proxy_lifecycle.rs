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
    let m = Mesh::builder().region("frankfurt").replicas(2).start().await;
    let (admin, a) = (&m.admin, &m.replicas("frankfurt")[0]);
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
    let m = Mesh::builder().region("tokyo").start().await;
    let proxy = m.proxy("tokyo");

    let healthz = reqwest::get(format!("{}/healthz", proxy.url)).await.unwrap();
    assert_eq!(healthz.status(), 200);
    let latency = reqwest::get(format!("{}/latency-check", proxy.url)).await.unwrap();
    assert_eq!(latency.status(), 200);
    // Only the dashboard (the coordinator's origin; --login-url defaults to
    // --coordinator-url) may read and time it.
    assert_eq!(latency.headers()["access-control-allow-origin"], m.coord.url.as_str());
    assert_eq!(latency.headers()["timing-allow-origin"], m.coord.url.as_str());
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

/// One user's requests through a region of several replicas behind a
/// client-side balancer: round robin, and a replica that refuses the
/// connection (it is not listening) is skipped, as a load balancer would.
/// Every other error, any status but 200, or an echo of another request is a
/// failure.
fn balanced_traffic(
    client: reqwest::Client,
    urls: Vec<String>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0u64, Vec::new());
        for n in 0u64.. {
            if *stop.borrow() {
                break;
            }
            let path = format!("/rolling/{n}");
            let mut answered = None;
            for attempt in 0..urls.len() {
                let url = &urls[(n as usize + attempt) % urls.len()];
                let req = client.get(format!("{url}{path}")).header("x-sample-delay-ms", "100");
                match req.timeout(Duration::from_secs(10)).send().await {
                    Err(e) if e.is_connect() => continue,
                    other => {
                        answered = Some(other);
                        break;
                    }
                }
            }
            match answered {
                Some(Ok(r)) if r.status() == 200 => {
                    let seen: serde_json::Value = r.json().await.unwrap_or_default();
                    if seen["uri"] == path.as_str() {
                        ok += 1;
                    } else {
                        failed.push(format!("{path}: echo of {}", seen["uri"]));
                    }
                }
                Some(Ok(r)) => {
                    let status = r.status();
                    let page = r.text().await.unwrap_or_default();
                    let why = meridian_proxy::pages::page_message(&page).unwrap_or_default();
                    failed.push(format!("{path}: {status} {why}"));
                }
                Some(Err(e)) => failed.push(format!("{path}: {e}")),
                None => failed.push(format!("{path}: no replica accepted the connection")),
            }
        }
        (ok, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_both_replicas_fails_no_request() {
    let mut m = Mesh::builder()
        .region("sydney")
        .replicas(2)
        .workspace(|app| serde_json::json!([{"slug": "open", "port": app, "share": "public"}]))
        .agent_on("sydney")
        .start()
        .await;
    let mut replicas = std::mem::take(&mut m.regions[0].replicas);
    let admin = &m.admin;
    let urls: Vec<String> =
        replicas.iter().map(|p| format!("http://open--main--dev--admin.sydney.localhost:{}", p.port)).collect();
    // One sign-in (the token cookie is for the host, whichever replica serves it).
    let login = browser();
    let (hops, resp) = follow(&login, &format!("{}/", urls[0])).await;
    assert_eq!(resp.status(), 200, "{hops:?}");

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let users: Vec<_> = (0..4).map(|_| balanced_traffic(login.clone(), urls.clone(), stop.clone())).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for replica in &mut replicas {
        replica.restart_gracefully(Duration::from_secs(15)).await;
        wait_for(Duration::from_secs(10), "both replicas ok", || async {
            let r = admin.region("sydney").await;
            let all = r["replicas"].as_array()?.clone();
            (all.len() == 2 && all.iter().all(|x| x["status"] == "ok")).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop_tx.send(true).unwrap();
    let (mut ok, mut failed) = (0, Vec::new());
    for u in users {
        let (o, f) = u.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), ok + failed.len() as u64);
    assert!(ok > 40, "only {ok} requests were served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_and_websockets_then_exits_0() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // A drain period long enough to tell "waited for the WebSocket" from "hit the deadline".
    let mut m = Mesh::builder()
        .region_with("sydney", &["--drain-timeout", "20s"])
        .workspace(|app| serde_json::json!([{"slug": "open", "port": app, "share": "public"}]))
        .agent_on("sydney")
        .start()
        .await;
    let mut proxy = m.take_proxy("sydney");
    let admin = &m.admin;
    let host = format!("open--main--dev--admin.sydney.localhost:{}", proxy.port);

    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{host}/ws"), tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    let slow = {
        let client = browser();
        let url = format!("http://{host}/slow");
        tokio::spawn(async move {
            client.get(url).header("x-sample-delay-ms", "1500").header("x-sample-tag", "drain").send().await
        })
    };
    wait_in_flight_at_app(&browser(), &format!("http://{host}"), "drain", 1).await;
    let stopped_at = std::time::Instant::now();
    proxy.proc.signal(Signal::SIGTERM);

    // The request in flight completes.
    let r = tokio::time::timeout(Duration::from_secs(10), slow).await.unwrap().unwrap().unwrap();
    assert_eq!(r.status(), 200, "the in-flight request was served");
    // New connections are refused, while the WebSocket keeps working.
    wait_for(Duration::from_secs(5), "the listener to close", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", proxy.port)).await.is_err().then_some(())
    })
    .await;
    ws.send(Message::text("still here")).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "still here");
    assert!(proxy.proc.child.try_wait().unwrap().is_none(), "the proxy waits for the WebSocket");
    // Once the WebSocket closes, the drain ends and the proxy exits 0, well before the deadline.
    ws.close(None).await.unwrap();
    let status = proxy.proc.wait_exit(Duration::from_secs(25)).await;
    assert!(status.success(), "{status:?}");
    let took = stopped_at.elapsed();
    assert!(took < Duration::from_secs(15), "exited {took:?} after SIGTERM: it waited out the deadline");
    // It deregistered: the region has no replica left.
    let region = admin.region("sydney").await;
    assert!(region["replicas"].as_array().is_none_or(|r| r.is_empty()), "{region}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_shutdown_delay_turns_readiness_false_and_keeps_accepting_for_the_delay() {
    let mut m = Mesh::builder().region_with("sydney", &["--shutdown-delay", "3s"]).start().await;
    let mut proxy = m.take_proxy("sydney");
    // A fresh connection per probe, as a kubelet's.
    let probe = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let readyz = format!("{}/readyz", proxy.url);
    assert_eq!(probe.get(&readyz).send().await.unwrap().status(), 200);

    let stopped_at = std::time::Instant::now();
    proxy.proc.signal(Signal::SIGTERM);
    wait_for(Duration::from_secs(2), "/readyz to answer 503", || async {
        let resp = probe.get(&readyz).send().await.ok()?;
        (resp.status() == 503).then_some(())
    })
    .await;
    // Not ready, but still serving new connections.
    let resp = probe.get(format!("{}/healthz", proxy.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    wait_for(Duration::from_secs(10), "the listener to close", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", proxy.port)).await.is_err().then_some(())
    })
    .await;
    let open_for = stopped_at.elapsed();
    assert!(
        open_for >= Duration::from_millis(2500),
        "the listener closed {open_for:?} after SIGTERM, before the delay"
    );
    assert!(proxy.proc.wait_exit(Duration::from_secs(15)).await.success());
}
