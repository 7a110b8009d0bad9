//! Revocation that reaches every region: an admin suspends a user, and the
//! WebSockets that user holds open through two regions are cut within 2 s
//! (the coordinator pushes the suspension with the route feed; each region
//! cuts what the user's tokens opened and refuses those tokens from then
//! on), while another user's stay open. The user cannot sign in or use
//! their old session until reactivated; `meridian users` lists, suspends,
//! reactivates and ends sessions.

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The app's URL through `region` (at `port`).
fn app_url(region: &str, port: u16) -> String {
    format!("http://code--main--dev--admin.{region}.localhost:{port}/")
}

/// A WebSocket to the echo app through `region` with app token `token`,
/// checked by one echo.
async fn open_socket(region: &str, port: u16, token: &str) -> Socket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let url = format!("ws://code--main--dev--admin.{region}.localhost:{port}/ws");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("cookie", format!("meridian_app_token={token}").parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    echo(&mut ws, "before").await;
    ws
}

async fn echo(ws: &mut Socket, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), text);
}

/// How long after `since` the socket ended (read an end or an error), or
/// `None` if it is still open after `limit`.
async fn ended_after(ws: &mut Socket, since: Instant, limit: Duration) -> Option<Duration> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return Some(since.elapsed()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// A signed-in browser of `user` holding an app token for the app through each of `regions`.
async fn browser_with_tokens(m: &Mesh, user: &str, password: &str, regions: &[&str]) -> (reqwest::Client, Vec<String>) {
    let (client, jar) = client_with_jar();
    browser_login(&client, &m.coord.url, user, password).await;
    let mut tokens = Vec::new();
    for region in regions {
        let url = app_url(region, m.proxy(region).port);
        let (hops, resp) = follow(&client, &url).await;
        assert_eq!(resp.status(), 200, "{user} through {region}: {hops:?}");
        tokens.push(jar_cookie(&jar, &url, "meridian_app_token").expect("an app token"));
    }
    (client, tokens)
}

fn users_cli(m: &Mesh, token: &str, args: &[&str]) -> std::process::Output {
    let mut cli = Command::new(BIN);
    cli.arg("users").args(args).args(["--url", &m.coord.url]);
    cli.env("MERIDIAN_SESSION_TOKEN", token).env("MERIDIAN_CONFIG_DIR", m.dir.path());
    let out = output_within(&mut cli, Duration::from_secs(30), "meridian users");
    assert!(out.status.success(), "meridian users {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn listed(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_cuts_the_users_websockets_in_every_region_within_two_seconds() {
    let m = Mesh::builder()
        .user("bob")
        .region("sydney")
        .region("frankfurt")
        .workspace(|app| json!([{"slug": "code", "port": app, "share": "authenticated"}]))
        .agent_on("sydney")
        .start()
        .await;
    let regions = ["sydney", "frankfurt"];
    let bob_password = password_of("bob");
    let (bob, bob_tokens) = browser_with_tokens(&m, "bob", &bob_password, &regions).await;
    let (_, admin_tokens) = browser_with_tokens(&m, "admin", ADMIN_PASSWORD, &regions).await;
    let mut bobs = Vec::new();
    let mut admins = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        let port = m.proxy(region).port;
        bobs.push(open_socket(region, port, &bob_tokens[i]).await);
        admins.push(open_socket(region, port, &admin_tokens[i]).await);
    }
    let bob_api = m.login("bob").await;
    // Only admins list and suspend.
    assert_eq!(bob_api.get("/api/v2/users").await.status, 403);
    assert_eq!(bob_api.put("/api/v2/users/admin/status/suspend").await.status, 403);

    // The admin's CLI lists bob, active, with his sessions; then suspends him.
    let out = users_cli(&m, m.admin.token(), &["list", "--json"]);
    let before: Vec<Value> = listed(&out).into_iter().filter(|u| u["username"] == "bob").collect();
    assert_eq!((before[0]["status"].as_str(), before[0]["login_type"].as_str()), (Some("active"), Some("password")));
    assert_eq!(before[0]["sessions"], 2, "the browser's and the API client's: {before:?}");
    let suspended_at = Instant::now();
    let out = users_cli(&m, m.admin.token(), &["suspend", "bob"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Suspended bob"));

    // Both of bob's WebSockets end, each within 2 s of the command starting.
    for (ws, region) in bobs.iter_mut().zip(regions) {
        let took = ended_after(ws, suspended_at, Duration::from_secs(10)).await;
        let took = took.unwrap_or_else(|| panic!("bob's WebSocket through {region} is still open 10 s on"));
        eprintln!("bob's WebSocket through {region} was cut {} ms after the suspension", took.as_millis());
        assert!(took <= Duration::from_secs(2), "through {region}: cut only after {took:?}");
    }
    // The admin's go on.
    for ws in &mut admins {
        echo(ws, "after").await;
    }

    // Bob's tokens are refused in every region (a browser is sent to sign
    // in, and signing in is refused: suspended); his session is over.
    for (i, region) in regions.iter().enumerate() {
        let resp = bob.get(app_url(region, m.proxy(region).port)).send().await.unwrap();
        assert_ne!(resp.status(), 200, "bob's cached token still opens the app through {region}");
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", m.proxy(region).port)).await.unwrap();
        let url = format!("ws://code--main--dev--admin.{region}.localhost:{}/ws", m.proxy(region).port);
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("cookie", format!("meridian_app_token={}", bob_tokens[i]).parse().unwrap());
        assert!(tokio_tungstenite::client_async(req, tcp).await.is_err(), "a new WebSocket through {region}");
    }
    assert_eq!(bob_api.get("/api/v2/users/me").await.status, 401);
    let login = json!({"username": "bob", "password": bob_password});
    let refused = Api::anonymous(&m.coord.url).post("/api/v2/users/login", login.clone()).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body["message"].as_str().unwrap_or_default().contains("suspended"), "{}", refused.body);
    let listed_now = m.admin.get("/api/v2/users").await.expect_status(200);
    let now: Vec<&Value> = listed_now["users"].as_array().unwrap().iter().filter(|u| u["username"] == "bob").collect();
    assert_eq!((now[0]["status"].as_str(), now[0]["sessions"].as_i64()), (Some("suspended"), Some(0)), "{now:?}");
    // Not themselves; nobody who does not exist.
    assert_eq!(m.admin.put("/api/v2/users/admin/status/suspend").await.status, 409);
    assert_eq!(m.admin.put("/api/v2/users/nobody/status/suspend").await.status, 404);
    assert_eq!(m.admin.put("/api/v2/users/bob/status/promote").await.status, 404);

    // Reactivated, bob signs in and opens the app again.
    users_cli(&m, m.admin.token(), &["activate", "bob"]);
    let (_, tokens) = browser_with_tokens(&m, "bob", &bob_password, &["frankfurt"]).await;
    let mut again = open_socket("frankfurt", m.proxy("frankfurt").port, &tokens[0]).await;
    echo(&mut again, "back").await;
    let audit = m.admin.every_page("/api/v2/audit-log", "target=bob").await;
    let actions: Vec<&str> = audit.iter().filter_map(|r| r["action"].as_str()).collect();
    assert!(actions.contains(&"user.suspend") && actions.contains(&"user.activate"), "{actions:?}");
}

/// The session id of a session token (`<id>:<secret>`).
fn session_id(token: &str) -> &str {
    token.split(':').next().unwrap()
}

/// Waits (bounded) for `child` to exit; how long after `since` it had.
fn exited_after(child: &mut std::process::Child, since: Instant, limit: Duration) -> Option<Duration> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Revoking one session cuts, in every region, exactly what its tokens
/// opened (a WebSocket), not what another session of the same user opened;
/// signing a user out everywhere cuts their `meridian ssh` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_session_cuts_what_its_tokens_opened_and_nothing_else() {
    let m = crate::shell::mesh().await;
    // Two browsers of the admin, each with a WebSocket through sydney.
    let (first, first_jar) = client_with_jar();
    browser_login(&first, &m.coord.url, "admin", ADMIN_PASSWORD).await;
    let (second, second_jar) = client_with_jar();
    browser_login(&second, &m.coord.url, "admin", ADMIN_PASSWORD).await;
    let sydney = m.proxy("sydney").port;
    let mut sockets = Vec::new();
    for (client, jar) in [(&first, &first_jar), (&second, &second_jar)] {
        let url = app_url("sydney", sydney);
        assert_eq!(follow(client, &url).await.1.status(), 200);
        sockets.push(open_socket("sydney", sydney, &jar_cookie(jar, &url, "meridian_app_token").unwrap()).await);
    }
    let first_session = jar_cookie(&first_jar, &m.coord.url, "meridian_session").expect("a session cookie");

    // The first browser's session ends; its WebSocket is cut, the second's is not.
    let revoked_at = Instant::now();
    let path = format!("/api/v2/users/admin/sessions/{}", session_id(&first_session));
    m.admin.delete(&path).await.expect_status(204);
    let took = ended_after(&mut sockets[0], revoked_at, Duration::from_secs(10)).await.expect("still open 10 s on");
    eprintln!("the revoked session's WebSocket was cut {} ms after", took.as_millis());
    assert!(took <= Duration::from_secs(2), "cut only after {took:?}");
    echo(&mut sockets[1], "still here").await;
    assert_eq!(m.admin.delete(&path).await.status, 404, "a session ends once");
    let mine = m.admin.get("/api/v2/users/admin/sessions").await.expect_status(200);
    let ids: Vec<&str> = mine["sessions"].as_array().unwrap().iter().filter_map(|s| s["id"].as_str()).collect();
    assert!(!ids.contains(&session_id(&first_session)), "{mine}");
    // Members see their own sessions only (anyone else's is a 404).
    let bob = m.login("bob").await;
    assert_eq!(bob.get("/api/v2/users/bob/sessions").await.status, 200);
    assert_eq!(bob.get("/api/v2/users/admin/sessions").await.status, 404);
    assert_eq!(bob.delete("/api/v2/users/admin/sessions").await.status, 404);

    // A shell of the admin's, opened with another session; signing the admin
    // out everywhere ends it (and the second browser's WebSocket).
    let cli_session = Api::login(&m.coord.url, "admin", ADMIN_PASSWORD).await;
    let mut ssh = Command::new(BIN);
    ssh.args(["ssh", "dev", "--url", &m.coord.url, "--", "echo started; sleep 60"])
        .env("MERIDIAN_SESSION_TOKEN", cli_session.token())
        .env("MERIDIAN_CONFIG_DIR", m.dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = ssh.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let started = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(30), started).await.expect("the shell started").unwrap();
    assert_eq!(line.unwrap().trim(), "started");
    let revoked_at = Instant::now();
    let out = users_cli(&m, cli_session.token(), &["sessions", "admin", "--revoke-all"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Ended 3 session(s)"), "{out:?}");
    let took = exited_after(&mut child, revoked_at, Duration::from_secs(30));
    let took = took.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("meridian ssh still runs 30 s after its session was revoked")
    });
    eprintln!("meridian ssh ended {} ms after its session was revoked", took.as_millis());
    let status = child.wait().unwrap();
    assert!(!status.success(), "a cut shell is no success");
    let took = ended_after(&mut sockets[1], revoked_at, Duration::from_secs(10)).await.expect("still open 10 s on");
    assert!(took <= Duration::from_secs(2), "cut only after {took:?}");
    assert_eq!(m.admin.get("/api/v2/users/me").await.status, 401, "signed out everywhere");
}
