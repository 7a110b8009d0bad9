//! The app behaviour suite: one set of checks on serving workspace apps, run
//! against each deployment (a regional proxy; the primary). The sample app's
//! behaviour is chosen by request headers.

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::Digest;
use std::time::Duration;

/// Where the suite sends its requests, and where the agent attaches.
#[derive(Clone, Copy, Debug)]
pub enum Deployment {
    /// A regional proxy, with the agent attached to its relay.
    Region,
    /// The primary (the coordinator's own proxy), with the agent attached to its relay.
    Primary,
    /// A regional proxy, with the agent attached to the primary: one relay hop.
    ViaPrimary,
}

pub struct World {
    pub coord: Coordinator,
    /// `http://127.0.0.1:PORT` of the deployment under test.
    pub base: String,
    /// The wildcard base host (`sydney.localhost`) and port apps are served under.
    pub wildcard: (String, u16),
    pub agent: Agent,
    pub app: SampleApp,
    /// The sample app speaking HTTPS itself.
    pub tls_app: SampleApp,
    proxy: Proxy,
    _pg: Postgres,
    _dir: tempfile::TempDir,
}

pub async fn world(deployment: Deployment) -> World {
    let region = match deployment {
        Deployment::Region => "sydney",
        Deployment::Primary | Deployment::ViaPrimary => "primary",
    };
    let mut m = Mesh::builder()
        .user("bob")
        .region("sydney")
        .workspace(|app| {
            json!([
                {"slug": "code", "port": app},
                {"slug": "shared", "port": app, "share": "authenticated"},
                {"slug": "open", "port": app, "share": "public"},
                {"slug": "pathy", "port": app, "subdomain": false},
            ])
        })
        .agent_on(region)
        .start()
        .await;
    let tls_app = SampleApp::start_tls(m.dir.path()).await;
    let proxy = m.take_proxy("sydney");
    let (base, wildcard) = match deployment {
        Deployment::Region | Deployment::ViaPrimary => (proxy.url.clone(), ("sydney.localhost", proxy.port)),
        Deployment::Primary => (m.coord.url.clone(), ("primary.localhost", m.coord.port())),
    };
    let (agent, app) = (m.agent.take().unwrap(), m.app.take().unwrap());
    let Mesh { coord, pg, dir, .. } = m;
    World { coord, base, wildcard: (wildcard.0.into(), wildcard.1), agent, app, tls_app, proxy, _pg: pg, _dir: dir }
}

impl World {
    /// The URL of subdomain app `label` (`code--main--dev--admin`) at `path`.
    pub fn sub(&self, label: &str, path: &str) -> String {
        format!("http://{label}.{}:{}{path}", self.wildcard.0, self.wildcard.1)
    }

    pub fn app_url(&self, slug: &str, path: &str) -> String {
        self.sub(&format!("{slug}--main--dev--admin"), path)
    }

    /// A browser signed in as `user` (or anonymous with `None`).
    pub async fn browser(&self, user: Option<(&str, &str)>) -> reqwest::Client {
        let b = browser();
        if let Some((u, p)) = user {
            browser_login(&b, &self.coord.url, u, p).await;
        }
        b
    }

    pub async fn owner(&self) -> reqwest::Client {
        self.browser(Some(("admin", ADMIN_PASSWORD))).await
    }
}

/// GETs `url` through the whole login dance; the final status and body.
async fn open(client: &reqwest::Client, url: &str) -> (u16, Value, Vec<(u16, String)>) {
    let (hops, resp) = follow(client, url).await;
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, hops)
}

async fn url_forms(w: &World) {
    let anon = w.browser(None).await;
    let get = |url: String| {
        let c = anon.clone();
        async move { c.get(url).send().await.unwrap() }
    };
    // A public subdomain app, anonymously.
    let r = get(w.app_url("open", "/x?y=1")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["uri"], "/x?y=1");
    // Refusals by grammar.
    for (label, status) in [
        ("8080s--main--dev--admin", 303), // a valid port URL: owner only, so log in
        ("80--main--dev--admin", 400),
        ("open--dev--admin", 400),
        ("x--open--main--dev--admin", 400),
        ("open--main--dev--me", 404),
        ("Open--Main--Dev--Admin", 200),
    ] {
        assert_eq!(get(w.sub(label, "/")).await.status(), status, "host {label}");
    }
    // Path apps: trailing slash, @me, and the app seeing its own path.
    let r = get(format!("{}/@admin/dev/apps/pathy", w.base)).await;
    assert_eq!(r.status(), 307);
    assert_eq!(r.headers()["location"], "/@admin/dev/apps/pathy/");
    assert_eq!(get(format!("{}/@me/dev/apps/pathy/", w.base)).await.status(), 404);
    let owner = w.owner().await;
    let (status, body, _) = open(&owner, &format!("{}/@admin/dev.main/apps/pathy/a/b?c=d", w.base)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["uri"], "/a/b?c=d", "the app sees its path without the prefix");
    let (status, body, _) = open(&owner, &w.app_url(&format!("{}", w.app.port), "/p")).await;
    assert_eq!(status, 200, "port URL for the owner: {body}");
    // `{port}s--`: the app itself speaks HTTPS; the proxy speaks TLS to it through the tunnel.
    let (status, body, _) = open(&owner, &w.app_url(&format!("{}s", w.tls_app.port), "/secure?x=1")).await;
    assert_eq!(status, 200, "https port URL for the owner: {body}");
    assert_eq!(body["uri"], "/secure?x=1");
    // The same port over plain HTTP reaches a TLS server: a clean 502, not a hang.
    let (status, _, hops) = open(&owner, &w.app_url(&format!("{}", w.tls_app.port), "/")).await;
    assert_eq!(status, 502, "{hops:?}");
}

async fn login_flow(w: &World) {
    let owner = w.owner().await;
    let (status, body, hops) = open(&owner, &w.app_url("code", "/here?q=1")).await;
    assert_eq!(status, 200, "{hops:?}");
    let codes: Vec<u16> = hops.iter().map(|h| h.0).collect();
    assert_eq!(codes, [303, 303, 303, 200], "{hops:?}");
    assert!(hops[1].1.contains("/api/v2/applications/auth-redirect"), "{hops:?}");
    assert!(hops[2].1.contains("meridian_app_ticket="), "{hops:?}");
    assert!(!hops[3].1.contains("meridian_app_ticket"), "the final URL never carries the ticket: {hops:?}");
    assert_eq!(body["uri"], "/here?q=1");
    // Now the token cookie serves directly.
    let r = owner.get(w.app_url("code", "/again")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // A used ticket is refused: replayed in a fresh browser, it gives no session.
    let replay = w.browser(None).await;
    let r = replay.get(&hops[2].1).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers().get("set-cookie").is_none(), "no session from a used ticket");
    let r = replay.get(w.app_url("code", "/here?q=1")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"].to_str().unwrap().contains("auth-redirect"));
}

async fn sharing_matrix(w: &World) {
    let owner = w.owner().await;
    let bob = w.browser(Some(("bob", "bob-password"))).await;
    let anon = w.browser(None).await;
    // (app, owner, bob, anonymous): anonymous denial ends on the login page (200 HTML at the coordinator).
    for (app, o, b) in [("code", 200, 404), ("shared", 200, 200), ("open", 200, 200)] {
        assert_eq!(open(&owner, &w.app_url(app, "/")).await.0, o, "{app} as owner");
        assert_eq!(open(&bob, &w.app_url(app, "/")).await.0, b, "{app} as bob");
    }
    for (app, public) in [("code", false), ("shared", false), ("open", true)] {
        let (status, _, hops) = open(&anon, &w.app_url(app, "/")).await;
        if public {
            assert_eq!((status, hops.len()), (200, 1), "{app} anonymously: {hops:?}");
        } else {
            let last = &hops.last().unwrap().1;
            assert!(last.contains("/login?redirect="), "{app} anonymously goes to log in: {hops:?}");
        }
    }
}

async fn tokens_are_bound(w: &World) {
    // The final response of a fresh login carries the new token's cookie.
    let (_, resp) = follow(&w.owner().await, &w.app_url("code", "/")).await;
    assert_eq!(resp.status(), 200);
    let token = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.strip_prefix("meridian_app_token="))
        .map(|c| c.split(';').next().unwrap().to_owned())
        .next()
        .expect("a token cookie");
    // Presented by a client with no session: good only on its own app, and only untouched.
    let stranger = w.browser(None).await;
    let (header, payload_and_sig) = token.split_once('.').unwrap();
    for (url, tok) in [
        (w.app_url("shared", "/"), token.clone()),
        (w.app_url("code", "/"), format!("{token}x")),
        (w.app_url("code", "/"), format!("{header}.e30{payload_and_sig}")),
        (w.app_url("code", "/"), "not.a.token".to_owned()),
    ] {
        let r = stranger.get(&url).header("cookie", format!("meridian_app_token={tok}")).send().await.unwrap();
        assert_eq!(r.status(), 303, "{url} with a foreign or damaged token goes to log in");
    }
    let r = stranger
        .get(w.app_url("code", "/"))
        .header("cookie", format!("meridian_app_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the genuine token works on its own app");
    one_connection_many_hosts(w, &token).await;
}

/// Requests on one keep-alive connection are each routed and authorized by
/// their own Host and token, whatever the connection's previous request
/// resolved (the proxy remembers the last Host and token per connection).
async fn one_connection_many_hosts(w: &World, token: &str) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", w.wildcard.1)).await.unwrap();
    let (mut conn, driver) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
    let driver = tokio::spawn(driver);
    let code = format!("code--main--dev--admin.{}:{}", w.wildcard.0, w.wildcard.1);
    let shared = format!("shared--main--dev--admin.{}:{}", w.wildcard.0, w.wildcard.1);
    let open = format!("open--main--dev--admin.{}:{}", w.wildcard.0, w.wildcard.1);
    let cookie = format!("meridian_app_token={token}");
    let steps: [(&str, Option<&str>, u16, &str); 6] = [
        (&code, Some(&cookie), 200, "the token on its own app"),
        (&shared, Some(&cookie), 303, "the same token on another app, next on the connection"),
        (&code, None, 303, "its app again without a token"),
        (&open, None, 200, "a public app"),
        (&code, Some(&cookie), 200, "its own app again"),
        (&code.to_uppercase(), Some(&cookie), 200, "its own app in capitals (one host)"),
    ];
    for (host, cookie, want, what) in steps {
        let mut req = http::Request::get("/").header("host", host);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        // Ready: the previous exchange is over and the connection is still open.
        let send = async {
            conn.ready().await?;
            conn.send_request(req.body(String::new()).unwrap()).await
        };
        let resp = tokio::time::timeout(Duration::from_secs(10), send)
            .await
            .expect("an answer within 10 s")
            .unwrap_or_else(|e| panic!("{what}: the connection failed: {e:?}"));
        assert_eq!(resp.status(), want, "{what} ({host}, same connection)");
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        if want == 200 {
            let seen: Value = serde_json::from_slice(&body).unwrap();
            let headers: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).unwrap();
            let forwarded: Vec<&str> =
                headers.iter().filter(|(k, _)| k == "x-forwarded-host").map(|(_, v)| v.as_str()).collect();
            assert_eq!(forwarded, [host.to_lowercase()], "{what}: the app is told the host it was asked for");
        }
    }
    drop(conn);
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
}

async fn hygiene(w: &World) {
    let anon = w.browser(None).await;
    let r = anon
        .get(w.app_url("open", "/h"))
        .header("cookie", "meridian_session=s; keep=1; meridian_app_session=x")
        .header("Meridian-Session-Token", "secret")
        .header("X-Forwarded-For", "6.6.6.6")
        .header("X-Forwarded-Host", "evil.example")
        .header("Forwarded", "for=6.6.6.6")
        .header("x-sample-set-cookie", "meridian_app_token=evil; Path=/")
        // Hop-by-hop fields (RFC 9110 §7.6.1) and one the client nominates in `Connection`.
        .header("Connection", "keep-alive, X-Drop-Me")
        .header("X-Drop-Me", "1")
        .header("Keep-Alive", "timeout=5")
        .header("Proxy-Connection", "keep-alive")
        .header("Proxy-Authorization", "Basic eDp4")
        .header("TE", "trailers")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set: Vec<String> = r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert!(set.iter().all(|c| !c.to_ascii_lowercase().starts_with("meridian_app_token=evil")), "{set:?}");
    assert!(set.iter().any(|c| c.starts_with("sample=1")), "the app's own cookies pass: {set:?}");
    let seen: Value = r.json().await.unwrap();
    let headers: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).unwrap();
    let get = |name: &str| headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect::<Vec<_>>();
    assert_eq!(get("cookie"), ["keep=1"]);
    assert!(get("meridian-session-token").is_empty());
    assert!(get("forwarded").is_empty());
    assert_eq!(get("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(get("x-forwarded-proto"), ["http"]);
    let host = url::Url::parse(&w.app_url("open", "/h")).unwrap();
    let host = format!("{}:{}", host.host_str().unwrap(), host.port().unwrap());
    assert_eq!(get("x-forwarded-host"), [host]);
    for hop in ["connection", "x-drop-me", "keep-alive", "proxy-connection", "proxy-authorization", "te"] {
        assert!(get(hop).is_empty(), "the hop-by-hop {hop} reached the app: {headers:?}");
    }
}

/// Cookies are bytes: an app may set one that is not ASCII (a UTF-8
/// value), and the browser then sends it in the same `Cookie` field as
/// Meridian's. It must neither hide the user's token (a sign-in loop) nor
/// carry an app's `Set-Cookie` of a Meridian cookie past the proxy.
async fn cookies_that_are_not_ascii(w: &World) {
    let utf8 = |s: &str| reqwest::header::HeaderValue::from_bytes(s.as_bytes()).unwrap();
    let owner = w.owner().await;
    assert_eq!(open(&owner, &w.app_url("code", "/")).await.0, 200);
    let r = owner
        .get(w.app_url("code", "/set"))
        .header("x-sample-set-cookie", utf8("lang=français; Path=/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = owner.get(w.app_url("code", "/again")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the token is found beside a UTF-8 cookie");
    let seen: Value = r.json().await.unwrap();
    let headers: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).unwrap();
    let cookies: Vec<&str> = headers.iter().filter(|(k, _)| k == "cookie").map(|(_, v)| v.as_str()).collect();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let mut crumbs: Vec<&str> = cookies[0].split("; ").collect();
    crumbs.sort_unstable();
    assert_eq!(crumbs, ["lang=français", "sample=1"], "the app's own cookies, every byte, and no Meridian one");

    let anon = w.browser(None).await;
    // The last is nameless: a browser would send back `meridian_app_token=evil`.
    for evil in ["meridian_app_token=évil; Path=/", "meridian_session=evil; Path=/; Note=é", "=meridian_app_token=evil"]
    {
        let r = anon.get(w.app_url("open", "/")).header("x-sample-set-cookie", utf8(evil)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let set: Vec<&[u8]> = r.headers().get_all("set-cookie").iter().map(|v| v.as_bytes()).collect();
        let from_app = |c: &&[u8]| !c.starts_with(b"meridian_app_token=ey"); // the proxy's own, for a public app
        let set: Vec<String> =
            set.into_iter().filter(from_app).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        assert_eq!(set, ["sample=1; Path=/"], "an app's Set-Cookie of a Meridian cookie never passes");
    }
}

async fn websocket_and_large_bodies(w: &World) {
    // WebSocket echo through the region.
    let port = w.wildcard.1;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let url = format!("ws://open--main--dev--admin.{}:{port}/ws", w.wildcard.0);
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    for msg in ["hello", "world"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg)).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
    ws.close(None).await.unwrap();

    // 10 MiB each way, intact.
    let anon = w.browser(None).await;
    const N: usize = 10 * 1024 * 1024;
    let r = anon.get(w.app_url("open", "/big")).header("x-sample-body-bytes", N.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), N);
    assert!(body.iter().all(|b| *b == b'm'));
    let upload: Vec<u8> = (0..N).map(|i| (i % 251) as u8).collect();
    let want = format!("{:x}", sha2::Sha256::digest(&upload));
    let r = anon.post(w.app_url("open", "/upload")).body(upload).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["bytes"], N);
    assert_eq!(got["sha256"], want);
}

async fn app_hangs(w: &World) {
    // The harness runs every deployment with --app-timeout 3s.
    let anon = w.browser(None).await;
    let started = std::time::Instant::now();
    let r = anon.get(w.app_url("open", "/hang")).header("x-sample-delay-ms", "20000").send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(15), "answered at the timeout, not when the app gave up");
    assert!(r.text().await.unwrap().contains("did not answer in time"));
}

/// A client that leaves while the app is still working ends its request at
/// once (the proxy watches the client while it waits for the answer), not
/// when the app timeout (3 s here) would have ended it.
async fn a_client_leaving_a_slow_app_ends_its_request(w: &World, deployment: Deployment) {
    // The primary's /metrics is the coordinator's, without the proxy's gauge.
    if matches!(deployment, Deployment::Primary) {
        return;
    }
    let in_flight = || async { metric(&w.base, "meridian_proxy_requests_in_flight").await };
    let host = format!("open--main--dev--admin.{}:{}", w.wildcard.0, w.wildcard.1);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", w.wildcard.1)).await.unwrap();
    let head = format!("GET /hang HTTP/1.1\r\nHost: {host}\r\nx-sample-delay-ms: 20000\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut s, head.as_bytes()).await.unwrap();
    // In flight (besides the metrics request asking).
    wait_for(Duration::from_secs(5), "the slow request to be in flight", || async {
        (in_flight().await? >= 2.0).then_some(())
    })
    .await;
    drop(s);
    let left = std::time::Instant::now();
    wait_for(Duration::from_secs(5), "the request to end", || async { (in_flight().await? <= 1.0).then_some(()) })
        .await;
    assert!(left.elapsed() < Duration::from_secs(2), "ended {:?} after the client left", left.elapsed());
}

async fn ticket_redirect_stays_on_host(w: &World) {
    let anon = w.browser(None).await;
    let base = w.app_url("code", "");
    for path in ["//evil.example/x?meridian_app_ticket=bogus", "/.//evil.example?meridian_app_ticket=bogus"] {
        let r = anon.get(format!("{}{path}", base.trim_end_matches('/'))).send().await.unwrap();
        assert_eq!(r.status(), 303, "{path}");
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(
            location.starts_with('/') && !location.starts_with("//") && !location.starts_with("/\\"),
            "{path} → {location}"
        );
    }
    // An encoded separator is refused before any redirect is built.
    let r = anon.get(format!("{}/%2F%2Fevil.example?meridian_app_ticket=bogus", base.trim_end_matches('/')));
    assert_eq!(r.send().await.unwrap().status(), 400);
}

async fn agent_outage(w: &mut World) {
    let anon = w.browser(None).await;
    // Requests in flight when the agent dies fail cleanly and promptly, each
    // with its own page: a POST (never sent twice) says the app's connection
    // closed under it; a GET is sent once more, finds no agent, and says so.
    let slow = |method: reqwest::Method, tag: &'static str| {
        let c = anon.clone();
        let url = w.app_url("open", "/slow");
        tokio::spawn(async move {
            c.request(method, url).header("x-sample-delay-ms", "5000").header("x-sample-tag", tag).send().await
        })
    };
    let (post, get) = (slow(reqwest::Method::POST, "outage-post"), slow(reqwest::Method::GET, "outage-get"));
    let app = w.app_url("open", "");
    let app = app.trim_end_matches('/');
    for tag in ["outage-post", "outage-get"] {
        wait_in_flight_at_app(&anon, app, tag, 1).await;
    }
    w.agent.proc.signal(nix::sys::signal::Signal::SIGKILL);
    for (request, says) in [(post, "closed the connection before answering"), (get, "agent is not connected")] {
        let outcome = tokio::time::timeout(Duration::from_secs(15), request).await.expect("no hang").unwrap();
        let r = outcome.expect("a 502 page, not a transport error");
        assert_eq!(r.status(), 502, "in-flight request fails with 502");
        let page = r.text().await.unwrap();
        assert!(page.contains(says), "in flight, expected {says:?}: {page}");
    }
    let r = anon.get(w.app_url("open", "/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("agent"), "the page names the problem");

    // Back again without restarting any proxy.
    w.agent.restart();
    wait_for(Duration::from_secs(20), "app served again", || {
        let c = anon.clone();
        let url = w.app_url("open", "/");
        async move { (c.get(url).send().await.ok()?.status() == 200).then_some(()) }
    })
    .await;
}

/// `/metrics` on the deployment: Prometheus text whose counters moved with the suite's traffic.
async fn metrics(w: &World, deployment: Deployment) {
    let value = |name: &'static str| async move {
        metric(&w.base, name).await.unwrap_or_else(|| panic!("{name} missing from {}/metrics", w.base))
    };
    match deployment {
        // The primary's /metrics is the coordinator's: the control plane's view.
        Deployment::Primary => {
            assert_eq!(value("meridian_agents_connected").await, 1.0);
            assert_eq!(value("meridian_database_up").await, 1.0);
            assert!(value("meridian_regions{status=\"ok\"}").await >= 2.0);
        }
        Deployment::Region | Deployment::ViaPrimary => {
            // Tunnel streams are pooled like TCP connections: sequential requests on one
            // keep-alive client connection reuse one stream.
            let opened = value("meridian_relay_streams_opened_total").await;
            let client = w.browser(None).await;
            for i in 0..20 {
                let r = client.get(w.app_url("open", &format!("/reuse/{i}"))).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
            let now = value("meridian_relay_streams_opened_total").await;
            assert!(now - opened <= 2.0, "20 sequential requests opened {} tunnel streams", now - opened);
            // App connections travel on data connections the agent dials to this
            // region's relay (through a mesh hop too: the agent attached to the
            // primary dials this region directly), not on HTTP/2 streams.
            let data = metric(&w.base, "meridian_relay_data_connections_total").await.unwrap_or(0.0);
            assert!(data >= 1.0, "no data connection was used");
            assert!(value("meridian_proxy_requests_total{outcome=\"app\"}").await >= 10.0);
            assert!(value("meridian_proxy_requests_total{outcome=\"login\"}").await >= 1.0);
            assert!(value("meridian_proxy_token_checks_total{result=\"cached\"}").await >= 1.0);
            let attached = if matches!(deployment, Deployment::Region) { 1.0 } else { 0.0 };
            assert_eq!(value("meridian_relay_agents_attached").await, attached);
        }
    }
}

async fn suite(deployment: Deployment) {
    let mut w = world(deployment).await;
    url_forms(&w).await;
    login_flow(&w).await;
    sharing_matrix(&w).await;
    tokens_are_bound(&w).await;
    hygiene(&w).await;
    cookies_that_are_not_ascii(&w).await;
    websocket_and_large_bodies(&w).await;
    app_hangs(&w).await;
    a_client_leaving_a_slow_app_ends_its_request(&w, deployment).await;
    ticket_redirect_stays_on_host(&w).await;
    metrics(&w, deployment).await;
    agent_outage(&mut w).await;
}

/// Every Meridian process runs without transparent huge pages (each would
/// hold memory 2 MiB at a time: `small_footprint` in `src/main.rs`).
#[tokio::test(flavor = "multi_thread")]
async fn meridian_runs_without_transparent_huge_pages() {
    let w = world(Deployment::Region).await;
    let thp = |pid: nix::unistd::Pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status.lines().find_map(|l| l.strip_prefix("THP_enabled:").map(|v| v.trim().to_owned())).unwrap()
    };
    assert_eq!(thp(w.agent.proc.pid()), "0", "the agent");
    assert_eq!(thp(w.app.proc.pid()), "0", "the sample app");
    assert_eq!(thp(w.coord.proc.pid()), "0", "the coordinator");
    assert_eq!(thp(w.proxy.proc.pid()), "0", "the proxy");
    // A process that did not ask keeps them (the system's setting): the test sees a difference.
    assert_eq!(thp(nix::unistd::Pid::this()), "1", "this test");
}

#[tokio::test(flavor = "multi_thread")]
async fn apps_through_a_region() {
    suite(Deployment::Region).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn apps_through_the_primary() {
    suite(Deployment::Primary).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn apps_through_a_region_to_an_agent_on_the_primary() {
    suite(Deployment::ViaPrimary).await;
}

/// While a token is valid, serving it needs nothing from the coordinator:
/// with the coordinator killed, a signed-in browser is still served.
#[tokio::test(flavor = "multi_thread")]
async fn valid_tokens_are_served_without_the_coordinator() {
    let mut w = world(Deployment::Region).await;
    let owner = w.owner().await;
    assert_eq!(open(&owner, &w.app_url("code", "/")).await.0, 200);
    w.coord.proc.signal(nix::sys::signal::Signal::SIGKILL);
    w.coord.proc.wait_exit(Duration::from_secs(10)).await;
    for i in 0..20 {
        let r = owner.get(w.app_url("code", &format!("/{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i} with the coordinator down");
    }
    // Someone without a token gets a clear 503 instead of a login that cannot work.
    let r = w.browser(None).await.get(w.app_url("code", "/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("coordinator is unreachable"));
}
