//! The connection log: each session through a region (an app until idle, a
//! WebSocket, a stream) and each refusal becomes one record, shipped by the
//! region to the coordinator; admins read everyone's, members their own
//! (`GET /api/v2/connection-log`, `meridian connections list`). Records
//! survive the coordinator's death and a region restarted in the middle of
//! it; a batch sent twice is stored once; a killed region's open sessions
//! come back as `region_killed`.

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// App sessions end after this idle time in these tests (the default is 60 s):
/// long enough that a test's requests to one app stay one session.
const IDLE: &str = "3s";
/// Longest wait for a record to reach the coordinator (ship interval 1 s, idle 3 s).
const ARRIVAL: Duration = Duration::from_secs(20);

/// Every record of the log matching `query` as `api` sees it, following pages.
async fn records(api: &Api, query: &str) -> Vec<Value> {
    api.every_page("/api/v2/connection-log", query).await
}

/// Waits until `query` matches `n` records (never more), and returns them.
async fn wait_records(api: &Api, query: &str, n: usize) -> Vec<Value> {
    let found = wait_for(ARRIVAL, &format!("{n} records matching {query}"), || async move {
        let found = records(api, query).await;
        (found.len() >= n).then_some(found)
    })
    .await;
    assert_eq!(found.len(), n, "exactly {n} records for {query}: {found:#?}");
    found
}

fn field<'a>(records: &'a [Value], key: &str) -> Vec<&'a str> {
    records.iter().map(|r| r[key].as_str().unwrap_or("-")).collect()
}

/// A WebSocket to app `slug` through `port` of `region`, carrying `cookie`;
/// sends each message and reads its echo, then closes. The payload bytes sent.
async fn websocket_echo(region: &str, port: u16, slug: &str, cookie: Option<&str>, messages: &[&str]) -> usize {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let url = format!("ws://{slug}--main--dev--admin.{region}.localhost:{port}/ws");
    let mut req = url.into_client_request().unwrap();
    if let Some(cookie) = cookie {
        req.headers_mut().insert("cookie", format!("meridian_app_token={cookie}").parse().unwrap());
    }
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    for msg in messages {
        ws.send(Message::text(*msg)).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), *msg);
    }
    ws.close(None).await.unwrap();
    // The close handshake completes (the server's close frame), then the stream ends.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {}
    messages.iter().map(|m| m.len()).sum()
}

/// The admin's app token for `url` (held by `client`'s cookie jar after `Mesh::user_of`).
fn token_of(jar: &reqwest::cookie::Jar, url: &str) -> String {
    jar_cookie(jar, url, "meridian_app_token").expect("the browser holds an app token")
}

/// An app opened through sydney and through frankfurt makes two records with
/// their regions, each of all its requests; a WebSocket makes one with its
/// bytes; a non-owner's 404 makes a refusal; members see only their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_is_one_record_with_its_region_and_refusals_are_recorded() {
    let idle = ["--app-session-idle", IDLE];
    let m = Mesh::builder()
        .user("bob")
        .region_with("sydney", &idle)
        .region_with("frankfurt", &idle)
        .workspace(|app| json!([{"slug": "code", "port": app}]))
        .agent_on("sydney")
        .start()
        .await;
    // The admin's app through each region: the first request after sign-in, and more.
    let mut expected_requests = Vec::new();
    for (region, extra) in [("sydney", 2), ("frankfurt", 4)] {
        let (client, url) = m.user_of(region, m.proxy(region)).await;
        for i in 0..extra {
            let r = client.get(format!("{url}page/{i}")).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
        expected_requests.push((region, 1 + extra));
    }
    // A WebSocket through frankfurt, with the admin's app token.
    let (client, jar) = client_with_jar();
    browser_login(&client, &m.coord.url, "admin", ADMIN_PASSWORD).await;
    let frankfurt = m.proxy("frankfurt").port;
    let app_url = format!("http://code--main--dev--admin.frankfurt.localhost:{frankfurt}/");
    let (_, resp) = follow(&client, &app_url).await;
    assert_eq!(resp.status(), 200);
    expected_requests[1].1 += 1;
    let messages = ["hello", "connection", "log"];
    let sent = websocket_echo("frankfurt", frankfurt, "code", Some(&token_of(&jar, &app_url)), &messages).await;
    // Bob is no owner: 404, recorded as a refusal.
    let bob = browser();
    browser_login(&bob, &m.coord.url, "bob", &password_of("bob")).await;
    let sydney = m.proxy("sydney").port;
    let (_, resp) = follow(&bob, &format!("http://code--main--dev--admin.sydney.localhost:{sydney}/")).await;
    assert_eq!(resp.status(), 404);

    let admin = &m.admin;
    let apps = wait_records(admin, "kind=app&workspace=admin/dev", 2).await;
    let mut got: Vec<(&str, u64)> =
        apps.iter().map(|r| (r["region"].as_str().unwrap(), r["requests"].as_u64().unwrap())).collect();
    got.sort();
    let mut want = expected_requests.clone();
    want.sort();
    assert_eq!(got, want, "one record per region, of all its requests: {apps:#?}");
    for r in &apps {
        assert_eq!(
            (r["user"].as_str(), r["target"].as_str(), r["ending"].as_str()),
            (Some("admin"), Some("code"), Some("idle"))
        );
        assert_eq!(r["statuses"]["2xx"].as_u64(), r["requests"].as_u64(), "every request answered 200: {r}");
        assert_eq!(r["client_addr"], "127.0.0.1");
        assert!(r["bytes_down"].as_u64().unwrap() > 0, "{r}");
        assert!(r["ended_at"].as_str() >= r["started_at"].as_str(), "{r}");
    }
    let sockets = wait_records(admin, "kind=websocket", 1).await;
    let ws = &sockets[0];
    assert_eq!(
        (ws["region"].as_str(), ws["user"].as_str(), ws["ending"].as_str()),
        (Some("frankfurt"), Some("admin"), Some("closed"))
    );
    // Bytes as framed on the wire: a client frame carries 6 bytes of header
    // and mask, a server frame 2, and the close handshake a few more.
    let (up, down) = (ws["bytes_up"].as_u64().unwrap() as usize, ws["bytes_down"].as_u64().unwrap() as usize);
    let frames = messages.len() + 1;
    assert!((sent..=sent + 6 * frames + 8).contains(&up), "bytes up {up} for {sent} payload bytes: {ws}");
    assert!((sent..=sent + 2 * frames + 8).contains(&down), "bytes down {down} for {sent} payload bytes: {ws}");
    let refused = wait_records(admin, "kind=refused", 1).await;
    let r = &refused[0];
    assert_eq!(
        (r["region"].as_str(), r["owner"].as_str(), r["target"].as_str(), r["kind"].as_str()),
        (Some("sydney"), Some("admin"), Some("code"), Some("app")),
        "{r}"
    );
    assert!(r["reason"].as_str().unwrap().contains("404"), "{r}");
    assert_eq!(records(admin, "region=sydney").await.len(), 2, "filters select exactly");
    // Each replica reports its log's state (the primary's too, in the coordinator's report).
    for base in [m.proxy("sydney").url.as_str(), m.coord.url.as_str()] {
        let report: Value = reqwest::get(format!("{base}/healthz-report")).await.unwrap().json().await.unwrap();
        assert_eq!(report["connection_log"]["dropped"], 0, "{base}: {report}");
    }
    let report = m.proxy("sydney").report().await.unwrap();
    assert!(report["connection_log"]["shipped"].as_u64() >= Some(2), "sydney shipped its two: {report}");

    // Members read their own sessions only.
    let bob_api = m.login("bob").await;
    assert!(records(&bob_api, "limit=1000").await.is_empty(), "bob has no sessions of his own");
    assert_eq!(bob_api.get("/api/v2/connection-log?user=admin").await.status, 403);
    assert_eq!(Api::anonymous(&m.coord.url).get("/api/v2/connection-log").await.status, 401);
    for bad in ["limit=0", "kind=ftp", "since=yesterday", "colour=blue"] {
        assert_eq!(admin.get(&format!("/api/v2/connection-log?{bad}")).await.status, 400, "{bad}");
    }

    // The CLI: JSON lines of every page, the same records.
    let mut cli = Command::new(BIN);
    cli.args(["connections", "list", "--url", &m.coord.url, "--json", "--all", "--limit", "1", "--kind", "app"]);
    cli.env("MERIDIAN_SESSION_TOKEN", admin.token()).env("MERIDIAN_CONFIG_DIR", m.dir.path());
    let out = output_within(&mut cli, Duration::from_secs(30), "meridian connections list");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(field(&lines, "id"), field(&apps, "id"));
}

/// Sessions served while the coordinator is dead are kept by their region,
/// through a graceful restart of that region in the middle of the outage,
/// and arrive once the coordinator is back: every one, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_outlive_a_coordinator_kill_and_a_region_restarted_during_it() {
    let mut m = Mesh::builder()
        .region_with("sydney", &["--app-session-idle", IDLE])
        .workspace(|app| json!([{"slug": "code", "port": app}]))
        .agent_on("sydney")
        .start()
        .await;
    let (client, jar) = client_with_jar();
    browser_login(&client, &m.coord.url, "admin", ADMIN_PASSWORD).await;
    let port = m.proxy("sydney").port;
    let url = format!("http://code--main--dev--admin.sydney.localhost:{port}/");
    let (_, resp) = follow(&client, &url).await;
    assert_eq!(resp.status(), 200);
    let token = token_of(&jar, &url);

    m.coord.proc.kill();
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(websocket_echo("sydney", port, "code", Some(&token), &[&"x".repeat(100 + i)]).await);
    }
    let proxy = m.proxy("sydney");
    wait_for(ARRIVAL, "sydney to keep the 3 WebSocket records", || async {
        proxy.report().await.and_then(|r| r["connection_log"]["buffered"].as_u64()).filter(|n| *n >= 3)
    })
    .await;

    // A graceful restart mid-outage: what it kept stays on disk for the next start.
    let mut proxy = m.take_proxy("sydney");
    proxy.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let status = proxy.proc.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "sydney exited with {status:?}:\n{}", proxy.proc.output());
    assert!(proxy.proc.output().contains("connection log kept on disk"), "{}", proxy.proc.output());
    m.coord.restart().await;
    proxy.restart().await;

    let sockets = wait_records(&m.admin, "kind=websocket&region=sydney", 3).await;
    let mut sizes: Vec<u64> = sockets.iter().map(|r| r["bytes_up"].as_u64().unwrap()).collect();
    sizes.sort();
    let mut want: Vec<u64> = sent.iter().map(|n| *n as u64 + 8).collect(); // a text frame's header and mask
    want.sort();
    // Each socket's own bytes (its message and the close frame's few), so no record is another's twice.
    for (got, want) in sizes.iter().zip(&want) {
        assert!((*want..*want + 16).contains(got), "bytes up {sizes:?} for frames of {want:?}");
    }
    wait_records(&m.admin, "kind=app&region=sydney", 1).await;
    let mut ids = field(&sockets, "id");
    ids.dedup();
    assert_eq!(ids.len(), 3, "every record once");
    let report = proxy.report().await.unwrap();
    assert_eq!(report["connection_log"]["dropped"], 0, "{report}");
}

/// A batch the coordinator stored but whose answer was lost comes again: it
/// is stored once. A region SIGKILLed with a WebSocket open logs it at its
/// next start as `region_killed` and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_twice_is_stored_once_and_a_kill_leaves_its_open_sessions_logged() {
    let mut m = Mesh::builder()
        .region("sydney")
        .workspace(|app| json!([{"slug": "open", "port": app, "share": "public"}]))
        .agent_on("sydney")
        .start()
        .await;
    let now = chrono::Utc::now();
    let record = json!({
        "id": uuid::Uuid::new_v4(), "kind": "tcp", "started_at": now, "ended_at": now,
        "owner": "admin", "workspace": "dev", "agent": "main", "target": "5432",
        "replica_id": uuid::Uuid::nil(), "bytes_up": 10, "bytes_down": 20, "requests": 1, "ending": "closed",
    });
    let batch = json!({"records": [record]});
    let first = proxy_call(&m.coord.url, m.token("sydney"), "/api/v2/proxies/me/connection-log", batch.clone()).await;
    let again = proxy_call(&m.coord.url, m.token("sydney"), "/api/v2/proxies/me/connection-log", batch).await;
    assert_eq!((first.expect_status(200)["stored"].as_u64(), again.body["duplicates"].as_u64()), (Some(1), Some(1)));
    let stored = wait_records(&m.admin, "kind=tcp", 1).await;
    assert_eq!((stored[0]["region"].as_str(), stored[0]["bytes_down"].as_u64()), (Some("sydney"), Some(20)));
    let forged = proxy_call(&m.coord.url, "not:a-token", "/api/v2/proxies/me/connection-log", json!({"records": []}));
    assert_eq!(forged.await.status, 401);

    // A WebSocket open when its region is SIGKILLed.
    let port = m.proxy("sydney").port;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let url = format!("ws://open--main--dev--admin.sydney.localhost:{port}/ws");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    ws.send(Message::text("before the kill")).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().is_some());
    let mut proxy = m.take_proxy("sydney");
    proxy.restart().await; // SIGKILL, then the same proxy again
    let killed = wait_records(&m.admin, "kind=websocket", 1).await;
    assert_eq!(killed[0]["ending"], "region_killed", "{killed:#?}");
    let killed_metric = counter_of(&proxy.url, "meridian_connection_log_killed_sessions_total").await;
    assert_eq!(killed_metric, 1);
}
