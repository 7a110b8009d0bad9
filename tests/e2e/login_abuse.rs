//! Abuse of the front door: password guessing is limited per account and per
//! client address (429 with `Retry-After`, before any hash is spent), an
//! unknown user costs what a wrong password costs, and a flood of sign-ins
//! leaves heartbeats, health checks, app-token issuing and app traffic alone.
//!
//! Clients come from many loopback addresses (all of 127.0.0.0/8 is local):
//! the coordinator learns each client's address from its embedded proxy.

use crate::support::*;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// One sign-in from `from`, over a connection of its own: status,
/// `Retry-After` and the body's message.
async fn sign_in(coord: &str, from: IpAddr, username: &str, password: &str) -> (u16, Option<u64>, String) {
    sign_in_with(coord, from, username, password, &[]).await
}

async fn sign_in_with(
    coord: &str,
    from: IpAddr,
    username: &str,
    password: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<u64>, String) {
    let client = reqwest::Client::builder().local_address(from).timeout(Duration::from_secs(60)).build().unwrap();
    let mut req = client.post(format!("{coord}/api/v2/users/login"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.json(&json!({"username": username, "password": password})).send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    (status, retry, body["message"].as_str().unwrap_or_default().to_owned())
}

fn addr(a: u8, b: u8, c: u8) -> IpAddr {
    [127, a, b, c].into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_limited_per_account_and_per_address() {
    let m = Mesh::builder().interval("10s").user("bob").start().await;
    let url = m.coord.url.as_str();

    // One address gets ten guesses at an account, then 429 before any check:
    // the right password from there is refused too, and a forged
    // X-Forwarded-For does not make the guesser someone else.
    let guesser = addr(0, 0, 2);
    for i in 0..10 {
        let (status, _, _) = sign_in(url, guesser, "bob", &format!("guess-{i}")).await;
        assert_eq!(status, 401, "guess {i}");
    }
    let (status, retry, message) = sign_in(url, guesser, "bob", "guess-10").await;
    assert_eq!(status, 429, "{message}");
    let retry = retry.expect("a Retry-After header");
    assert!((840..=900).contains(&retry), "Retry-After {retry}: the rest of a 15-minute window");
    assert!(message.contains("this account from this address"), "{message}");
    assert_eq!(sign_in(url, guesser, "bob", "bob-password").await.0, 429, "no check at all while limited");
    let spoofed = sign_in_with(url, guesser, "bob", "bob-password", &[("x-forwarded-for", "127.0.0.99")]).await;
    assert_eq!(spoofed.0, 429, "a client's own X-Forwarded-For is not believed");
    // Bob himself, elsewhere, is not locked out.
    assert_eq!(sign_in(url, addr(0, 0, 3), "bob", "bob-password").await.0, 200);

    // One address spraying names: fifty failures, then 429 for any name.
    let sprayer = addr(0, 0, 4);
    for i in 0..50 {
        assert_eq!(sign_in(url, sprayer, &format!("nobody{i}"), "password").await.0, 401, "name {i}");
    }
    let (status, retry, message) = sign_in(url, sprayer, "bob", "bob-password").await;
    assert_eq!((status, retry.is_some()), (429, true), "{message}");
    assert!(message.contains("from this address"), "{message}");

    // One account guessed from many addresses: a hundred failures, then 429 from anywhere.
    for i in 0..100u8 {
        let from = addr(0, 1 + i / 10, 1 + i % 10);
        assert_eq!(sign_in(url, from, "carol", "password").await.0, 401, "guess {i}");
    }
    let (status, _, message) = sign_in(url, addr(0, 50, 1), "carol", "password").await;
    assert_eq!(status, 429, "{message}");
    assert!(message.contains("for this account"), "{message}");
}

/// Median time of one sign-in per address in `from`.
async fn median_sign_in(url: &str, from: &[IpAddr], username: impl Fn(usize) -> String) -> Duration {
    let mut took = Vec::new();
    for (i, ip) in from.iter().enumerate() {
        let started = Instant::now();
        let (status, _, _) = sign_in(url, *ip, &username(i), "wrong-password").await;
        took.push(started.elapsed());
        assert_eq!(status, 401);
    }
    took.sort();
    took[took.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_costs_the_same_time_as_a_wrong_password() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let coord = Coordinator::start(dir.path(), &pg.url(), "10s", &[]).await;
    coord.admin().await;
    let url = coord.url.as_str();
    // Warm: the decoy hash is made on first use.
    sign_in(url, addr(0, 0, 2), "warm", "wrong-password").await;
    let mut known = Duration::ZERO;
    let mut unknown = Duration::ZERO;
    // Interleaved rounds, each from addresses of its own (under every limit).
    for round in 0..3u8 {
        let from: Vec<IpAddr> = (0..7).map(|i| addr(1, round, 1 + i)).collect();
        known += median_sign_in(url, &from, |_| "admin".into()).await;
        let from: Vec<IpAddr> = (0..7).map(|i| addr(2, round, 1 + i)).collect();
        unknown += median_sign_in(url, &from, |i| format!("ghost{round}x{i}")).await;
    }
    // A password hash dominates both (tens of milliseconds); without the
    // decoy hash an unknown name answers in about a millisecond.
    let ratio = unknown.as_secs_f64() / known.as_secs_f64();
    assert!((0.5..2.0).contains(&ratio), "unknown {unknown:?} vs wrong password {known:?} (ratio {ratio:.2})");
}

/// Sends `per_second` sign-ins for `length`, each from an address of its own
/// and for a name nobody has (so no limit stops them before the hashing bound), over raw connections; counts answers by status.
async fn flood(coord: SocketAddr, per_second: u32, length: Duration) -> std::collections::BTreeMap<u16, u32> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    let total = (per_second as f64 * length.as_secs_f64()) as u32;
    let mut sent = Vec::new();
    for i in 0..total {
        tick.tick().await;
        let from = addr(10 + (i / 62_500) as u8, ((i / 250) % 250) as u8, (1 + i % 250) as u8);
        let body = format!(r#"{{"username":"nobody{i}","password":"wrong-password"}}"#);
        let request = format!(
            "POST /api/v2/users/login HTTP/1.1\r\nHost: {coord}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        sent.push(tokio::spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind(SocketAddr::new(from, 0)).ok()?;
            let mut conn = tokio::time::timeout(Duration::from_secs(30), socket.connect(coord)).await.ok()?.ok()?;
            conn.write_all(request.as_bytes()).await.ok()?;
            let mut head = [0u8; 12];
            tokio::time::timeout(Duration::from_secs(30), conn.read_exact(&mut head)).await.ok()?.ok()?;
            std::str::from_utf8(&head[9..12]).ok()?.parse::<u16>().ok()
        }));
    }
    let mut by_status = std::collections::BTreeMap::new();
    for s in sent {
        *by_status.entry(s.await.unwrap().unwrap_or(0)).or_insert(0) += 1;
    }
    by_status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_flood_leaves_health_checks_tokens_and_apps_alone() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let coord = Coordinator::start(dir.path(), &pg.url(), "1s", &[]).await;
    let admin = coord.admin().await;
    let token = admin.create_region("sydney").await;
    let mut proxy = Proxy::spawn(dir.path(), &coord.url, &token, &[]).await;
    proxy.wait_registered().await;
    let app = SampleApp::start(dir.path()).await;
    let _agent = admin.public_app_workspace(dir.path(), &coord.url, app.port, "sydney").await;
    admin.wait_agent_on("dev", "sydney").await;
    let app_url = format!("http://open--main--dev--admin.region.localhost:{}/", proxy.port);
    let reader = browser();
    let (hops, first) = follow(&reader, &app_url).await;
    assert_eq!(first.status(), 200, "{hops:?}");

    // When each replica's health status last changed, as the coordinator records it.
    let status_since = || async {
        use sqlx::Connection;
        let mut db = sqlx::PgConnection::connect_with(&pg.pg.connect_options()).await.unwrap();
        let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> =
            sqlx::query_as("SELECT status, status_since FROM region_replicas ORDER BY id")
                .fetch_all(&mut db)
                .await
                .unwrap();
        rows
    };
    let before = status_since().await;
    assert!(before.iter().all(|(s, _)| s == "ok"), "{before:?}");

    let coord_addr: SocketAddr = coord.url.trim_start_matches("http://").parse().unwrap();
    let flooding = tokio::spawn(flood(coord_addr, 1000, Duration::from_secs(5)));

    // While it lasts: the region stays ok, a new visitor gets an app token
    // from the coordinator, and app requests are answered promptly.
    let mut checks = 0;
    let mut slowest = Duration::ZERO;
    while !flooding.is_finished() {
        let regions = admin.get("/api/v2/regions").await.expect_status(200);
        let sydney = regions["regions"].as_array().unwrap().iter().find(|r| r["name"] == "sydney").cloned();
        assert_eq!(sydney.as_ref().map(|r| r["status"].clone()), Some("ok".into()), "during the flood: {regions}");
        let started = Instant::now();
        let r = reader.get(&app_url).timeout(Duration::from_secs(10)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        slowest = slowest.max(started.elapsed());
        if checks % 5 == 0 {
            let (hops, fresh) = follow(&browser(), &app_url).await;
            assert_eq!(fresh.status(), 200, "a new visitor during the flood: {hops:?}");
        }
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answered = flooding.await.unwrap();
    eprintln!("flood answers by status: {answered:?}; {checks} checks, slowest app request {slowest:?}");
    assert!(checks >= 10, "only {checks} checks ran during the flood");
    assert!(slowest < Duration::from_secs(1), "an app request took {slowest:?} during the flood");
    // The flood met the bound: most sign-ins were turned away at once (503,
    // Retry-After) rather than queued for a hash; none went unanswered.
    assert_eq!(answered.get(&0), None, "sign-ins without an answer: {answered:?}");
    assert!(answered.get(&503).copied().unwrap_or(0) > 1000, "{answered:?}");
    assert!(answered.get(&401).copied().unwrap_or(0) > 0, "{answered:?}");
    // And the region never flapped: no health change was recorded, not even
    // one that came back to ok between two of the checks above.
    assert_eq!(status_since().await, before, "a replica's health changed during the flood");
}

/// The loopback TCP ports process `pid` listens on (its sockets in LISTEN
/// state, from `/proc`).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            (*state == "0A" && inodes.iter().any(|i| i == inode)).then_some(())?;
            u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
        })
        .collect()
}

/// Any local process can reach the coordinator's loopback API listener (the
/// one its own proxy forwards to): there, an `X-Forwarded-For` it sends
/// does not pick the address the sign-in limits count. Guesses at one
/// account, each naming another address, are all one address's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_process_cannot_pick_the_address_the_sign_in_limits_count() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let coord = Coordinator::start(dir.path(), &pg.url(), "10s", &[]).await;
    let admin = coord.admin().await;
    admin.post("/api/v2/users", json!({"username": "bob", "password": "bob-password"})).await.expect_status(201);
    let public = url::Url::parse(&coord.url).unwrap().port().unwrap();
    let guesser = addr(0, 0, 7);
    let mut apis = 0;
    for port in listening_ports(coord.proc.child.id()).into_iter().filter(|p| *p != public) {
        let url = format!("http://127.0.0.1:{port}");
        let account = format!("dave{port}");
        let first = sign_in_with(&url, guesser, &account, "guess", &[("x-forwarded-for", "127.0.9.0")]).await;
        if first.0 != 401 {
            continue; // a relay or mesh port: not the API
        }
        apis += 1;
        for i in 1..10 {
            let spoofed = format!("127.0.9.{i}");
            let (status, _, message) =
                sign_in_with(&url, guesser, &account, "guess", &[("x-forwarded-for", &spoofed)]).await;
            assert_eq!(status, 401, "guess {i}: {message}");
        }
        let (status, _, message) =
            sign_in_with(&url, guesser, &account, "guess", &[("x-forwarded-for", "127.0.9.200")]).await;
        assert_eq!(status, 429, "port {port}: the eleventh guess, from 'another address': {message}");
    }
    assert!(apis >= 1, "no loopback API listener found among the coordinator's ports");
}
