//! Trust boundaries: what a member, a region's proxy token, a leaked mesh
//! secret and a page on another origin can and cannot reach. Each test is one
//! finding of the security review (README, "Security"), made to fail.

use crate::support::*;
use meridian_regions::app_token::{subdomain_binding, Verifier};
use meridian_regions::tunnel::{dial_upgrade, StreamError, TlsClient, Tunnel, LINK_PATH, LINK_PROTOCOL};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The page of a member's path app that tries to act as whoever opens it:
/// create an admin, regenerate a region's token, read the viewer's profile.
const EVIL_PAGE: &str = r#"<!doctype html><title>loading</title><script>
(async () => {
  const seen = [];
  const attempt = async (name, url, init) => {
    try { const r = await fetch(url, Object.assign({credentials: "include"}, init)); seen.push(name + ":" + r.status); }
    catch (e) { seen.push(name + ":blocked"); }
  };
  await attempt("json", "/api/v2/users", {method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify({username: "pwned", password: "pwned-password", admin: true})});
  await attempt("regen", "/api/v2/regions/sydney/regenerate-token", {method: "POST", mode: "no-cors"});
  await attempt("me", "/api/v2/users/me", {});
  document.title = "done " + seen.join(",");
})();
</script>"#;

/// An app that serves [`EVIL_PAGE`] at every path, on a loopback port.
async fn evil_app() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(|| async { axum::response::Html(EVIL_PAGE) });
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

struct World {
    coord: Coordinator,
    admin: Api,
    /// sydney's proxy and token.
    proxy: Proxy,
    token: String,
    /// The admin's workspace `dev`'s agent token.
    dev_agent: String,
    _agents: Vec<Agent>,
    _apps: Vec<SampleApp>,
    _pg: Postgres,
    dir: tempfile::TempDir,
}

/// A coordinator (with `coordinator_args`), region `sydney`, member `bob`
/// with path app `evil` (public), and the admin's workspace `dev` with
/// `code` (owner only) and `open` (public) on two different app ports, its
/// agent on the primary.
async fn world(coordinator_args: &[&str]) -> World {
    let mut m = Mesh::builder().coordinator_args(coordinator_args).user("bob").region("sydney").start().await;
    let (proxy, token) = (m.take_proxy("sydney"), m.token("sydney").to_owned());
    let Mesh { coord, admin, pg, dir, .. } = m;

    let (code, open) = (SampleApp::start(dir.path()).await, SampleApp::start(dir.path()).await);
    let apps = json!([
        {"slug": "code", "port": code.port},
        {"slug": "open", "port": open.port, "share": "public"},
    ]);
    let dev = admin
        .post("/api/v2/workspaces", json!({"name": "dev", "agents": [{"name": "main", "apps": apps}]}))
        .await
        .expect_status(201);
    let bob = Api::login(&coord.url, "bob", "bob-password").await;
    let evil = json!([{"slug": "evil", "port": evil_app().await, "share": "public", "subdomain": false}]);
    let lab = bob.post("/api/v2/workspaces", json!({"name": "lab", "agents": [{"name": "main", "apps": evil}]})).await;
    let lab = lab.expect_status(201);
    let agents = vec![
        Agent::spawn(dir.path(), &coord.url, dev["agent_tokens"]["main"].as_str().unwrap(), None),
        Agent::spawn(dir.path(), &coord.url, lab["agent_tokens"]["main"].as_str().unwrap(), None),
    ];
    admin.wait_agent_on("dev", "primary").await;
    admin.wait_agent_on("lab", "primary").await;
    let dev_agent = dev["agent_tokens"]["main"].as_str().unwrap().to_owned();
    World { coord, admin, proxy, token, dev_agent, _agents: agents, _apps: vec![code, open], _pg: pg, dir }
}

impl World {
    fn evil_url(&self) -> String {
        format!("{}/@bob/lab/apps/evil/", self.coord.url)
    }

    /// Whether sydney's proxy token still works.
    async fn token_works(&self) -> bool {
        let resp = reqwest::Client::new()
            .get(format!("{}/api/v2/proxies/me/keys", self.coord.url))
            .header("Meridian-Proxy-Token", &self.token)
            .send()
            .await
            .unwrap();
        resp.status() == 200
    }

    /// `POST` a proxy call with `token`.
    async fn as_proxy(&self, token: &str, path: &str, body: Value) -> Reply {
        proxy_call(&self.coord.url, token, path, body).await
    }

    /// sydney's registration, as its proxy sends it, with `wildcard` instead.
    fn registration(&self, wildcard: &str) -> Value {
        json!({
            "replica_id": uuid::Uuid::new_v4(),
            "access_url": self.proxy.url,
            "wildcard_hostname": wildcard,
            "version": "test",
        })
    }

    fn sydney_host(&self, app: &str) -> String {
        format!("{app}--main--dev--admin.sydney.localhost")
    }
}

/// Runs a script of `tests/browser/` in Chromium; its one line of JSON.
pub async fn in_chromium(script: &'static str, args: Vec<String>) -> Value {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let run = tokio::task::spawn_blocking(move || {
        let mut node = Command::new("node");
        output_within(node.current_dir(&browser_dir).arg(script).args(&args), Duration::from_secs(120), script)
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(run.status.success(), "{script} failed: {out}{}", String::from_utf8_lossy(&run.stderr));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{script} printed {out:?}: {e}"))
}

/// Finding 1: a member's path app, shared and opened by an admin in a real
/// browser, runs (its script does report back) but in a sandbox: it cannot
/// create an admin, regenerate a region's token or read the admin's profile.
#[tokio::test(flavor = "multi_thread")]
async fn a_shared_path_app_cannot_act_as_the_admin_who_opens_it() {
    let w = world(&["--dangerous-allow-path-app-sharing"]).await;
    let args = vec![w.coord.url.clone(), "admin".into(), ADMIN_PASSWORD.into(), w.evil_url()];
    let seen = in_chromium("path-app-attack.js", args).await;
    assert_eq!(seen["status"], 200, "the admin is served the app: {seen}");
    assert!(seen["policy"].as_str().unwrap().starts_with("sandbox allow-scripts"), "{seen}");
    // The JSON call and the read are blocked in the browser (the sandboxed
    // page's origin is opaque: cross-origin, no CORS); the no-cors POST goes
    // out (status 0: opaque) without cookies and with `Origin: null`.
    assert_eq!(seen["attempts"], "json:blocked,regen:0,me:blocked", "{seen}");
    // What matters is the state: no new user, the region's token unchanged.
    let pwned = Api::anonymous(&w.coord.url)
        .post("/api/v2/users/login", json!({"username": "pwned", "password": "pwned-password"}))
        .await;
    assert_eq!(pwned.status, 401, "the page created a user: {}", pwned.body);
    assert!(w.token_works().await, "the page regenerated sydney's token");
}

/// Finding 1, the default: path apps are their owner's only. The admin gets
/// 404 for bob's "public" path app; bob gets it, unsandboxed.
#[tokio::test(flavor = "multi_thread")]
async fn path_apps_are_served_to_their_owner_only_by_default() {
    let w = world(&[]).await;
    for (user, password, status) in [("admin", ADMIN_PASSWORD, 404), ("bob", "bob-password", 200)] {
        let client = browser();
        browser_login(&client, &w.coord.url, user, password).await;
        let (hops, resp) = follow(&client, &w.evil_url()).await;
        assert_eq!(resp.status(), status, "{user}: {hops:?}");
        if status == 200 {
            assert!(resp.headers().get("content-security-policy").is_none(), "the owner's own app is not sandboxed");
        }
    }
    let (hops, resp) = follow(&browser(), &w.evil_url()).await;
    assert!(resp.url().path() == "/login", "anonymous → sign in: {hops:?}");
}

/// Finding 2: the mesh secret admits a link, never a stream. A holder of a
/// region's proxy token links to the primary's relay and asks for the
/// admin's owner-only app: refused without a grant, and with a grant for
/// another app of the same agent.
#[tokio::test(flavor = "multi_thread")]
async fn a_mesh_secret_alone_opens_no_agent() {
    let w = world(&[]).await;
    let reg = w.as_proxy(&w.token, "/api/v2/proxies/me/register", w.registration("*.sydney.localhost:1")).await;
    let reg = reg.expect_status(200);
    let secret = reg["mesh_secret"].as_str().unwrap().to_owned();
    let primary = reg["regions"].as_array().unwrap().iter().find(|r| r["name"] == "primary").unwrap().clone();
    let mesh = primary["replicas"][0]["mesh_address"].as_str().unwrap().to_owned();

    // A genuine grant: the token sydney is issued for the public app.
    let ask = json!({
        "app": {"user": "admin", "workspace": "dev", "agent": "main", "target": {"slug": "open"}},
        "subdomain": true,
        "binding": subdomain_binding(&w.sydney_host("open")),
    });
    let grant = w.as_proxy(&w.token, "/api/v2/proxies/me/issue-app-token", ask).await.expect_status(200);
    let grant = grant["token"].as_str().unwrap().to_owned();
    let keys: Vec<_> = serde_json::from_value(reg["keys"].clone()).unwrap();
    let claims = Verifier::new(&keys).verify(&grant, &subdomain_binding(&w.sydney_host("open"))).unwrap();
    let open_target = meridian_regions::app_token::stream_target(&claims.upstream).unwrap();
    let code_port = w._apps[0].port;
    let code_target = format!("127.0.0.1:{code_port}");

    let tls = TlsClient::new(None).unwrap();
    let io = dial_upgrade(&mesh, LINK_PATH, LINK_PROTOCOL, &[("Meridian-Mesh-Secret", &secret)], &tls).await.unwrap();
    let (link, driver) = Tunnel::client(io).await.unwrap();
    tokio::spawn(driver);
    let refused = |r: Result<_, StreamError>| match r {
        Err(StreamError::Refused { status, .. }) => status,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => 200,
    };
    let agent = claims.agent_id;
    assert_eq!(refused(link.open(&code_target, Some((agent, ""))).await), 403, "no grant");
    assert_eq!(refused(link.open(&code_target, Some((agent, "forged.token.x"))).await), 403, "forged grant");
    assert_eq!(refused(link.open(&code_target, Some((agent, &grant))).await), 403, "another app's grant");
    // Nor does asking for a data connection (the agent would dial the asker).
    let agent_id = agent.to_string();
    let nonce = meridian_regions::data::Nonce::random().to_header();
    for (what, g) in [("no grant", ""), ("forged grant", "forged.token.x"), ("another app's grant", grant.as_str())] {
        let via = [
            (meridian_regions::tunnel::AGENT_HEADER, agent_id.as_str()),
            (meridian_regions::tunnel::GRANT_HEADER, g),
            (meridian_regions::data::DIAL_HEADER, "http://127.0.0.1:9"),
        ];
        let answer = link.request_data(&code_target, &nonce, &via).await;
        assert!(matches!(answer, Err(StreamError::Refused { status: 403, .. })), "data, {what}: {answer:?}");
    }
    // The grant opens exactly its own app (the control: the link itself works).
    let mut stream = link.open(&open_target, Some((agent, &grant))).await.expect("the granted app opens");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));

    // Through a real region (one mesh hop to the primary's relay), users are served.
    let anon = browser();
    let url = format!("http://{}:{}/", w.sydney_host("open"), w.proxy.port);
    let (hops, resp) = follow(&anon, &url).await;
    assert_eq!(resp.status(), 200, "{hops:?}");
}

/// Finding 3: hostnames belong to the region. A registration naming other
/// hosts is refused (and the proxy exits 78), another region's wildcard is
/// never pinned, tickets are redeemed only at their host by its region, and
/// an admin can move a region.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_token_cannot_claim_hosts_it_was_not_given() {
    let w = world(&[]).await;
    let register = |token: String, body: Value| {
        let w = &w;
        async move { w.as_proxy(&token, "/api/v2/proxies/me/register", body).await }
    };
    // sydney's first registration pinned *.sydney.localhost; any port is fine.
    register(w.token.clone(), w.registration("*.sydney.localhost:9")).await.expect_status(200);
    for wildcard in ["*.frankfurt.localhost:1", "*.evil.localhost:1", "*.localhost:1", ""] {
        let r = register(w.token.clone(), w.registration(wildcard)).await;
        assert_eq!(r.status, 409, "{wildcard:?}: {}", r.body);
        assert!(r.body["message"].as_str().unwrap().contains("*.sydney.localhost"), "{}", r.body);
    }
    // The same host in another case is the same host; a trailing dot, markup,
    // or a relay address that is no http(s) URL is refused by the grammar.
    register(w.token.clone(), w.registration("*.SYDNEY.localhost:9")).await.expect_status(200);
    for wildcard in ["*.sydney.localhost.:9", "*.<b>x</b>.localhost:9"] {
        let r = register(w.token.clone(), w.registration(wildcard)).await;
        assert_eq!(r.status, 400, "{wildcard:?}: {}", r.body);
    }
    let mut bad_relay = w.registration("*.sydney.localhost:9");
    bad_relay["relay_address"] = json!("javascript:alert(1)");
    let r = register(w.token.clone(), bad_relay).await;
    assert!(r.status == 400 && r.body["message"].as_str().unwrap().contains("relay_address"), "{}", r.body);
    let mut elsewhere = w.registration("*.sydney.localhost:1");
    elsewhere["access_url"] = json!("http://evil.localhost:1");
    register(w.token.clone(), elsewhere).await.expect_status(409);
    // A proxy started that way says why and exits 78.
    let mut rogue = Proxy::spawn_named(w.dir.path(), &w.coord.url, &w.token, "evil", &[]).await;
    let status = rogue.proc.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(78), "{}", rogue.proc.output());
    assert!(rogue.proc.output().contains("*.sydney.localhost"), "{}", rogue.proc.output());

    // A new region cannot take sydney's wildcard, nor the primary's, in any case.
    let fresh = w.admin.create_region("frankfurt").await;
    for taken in ["*.sydney.localhost:5", "*.primary.localhost:5", "*.Sydney.LOCALHOST:5"] {
        register(fresh.clone(), w.registration(taken)).await.expect_status(409);
    }
    let frankfurt = json!({"replica_id": uuid::Uuid::new_v4(), "access_url": "http://frankfurt.localhost:2",
        "wildcard_hostname": "*.frankfurt.localhost:2", "version": "test"});
    register(fresh.clone(), frankfurt).await.expect_status(200);

    // So auth-redirect never sends a ticket to an unclaimed host.
    let admin_browser = browser();
    browser_login(&admin_browser, &w.coord.url, "admin", ADMIN_PASSWORD).await;
    let ticket_for = |host: String| {
        let client = admin_browser.clone();
        let base = w.coord.url.clone();
        async move {
            let target = format!("http://{host}/");
            let resp = client
                .get(format!("{base}/api/v2/applications/auth-redirect"))
                .query(&[("redirect_uri", target)])
                .send()
                .await
                .unwrap();
            let location = resp.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
            let ticket = location.and_then(|l| {
                let u = url::Url::parse(&l).ok()?;
                u.query_pairs().find(|(k, _)| k == "meridian_app_ticket").map(|(_, v)| v.into_owned())
            });
            (resp.status().as_u16(), ticket)
        }
    };
    assert_eq!(ticket_for("code--main--dev--admin.evil.localhost:1".into()).await.0, 400);

    // A ticket is redeemed only by the region serving its host, at that host.
    let frankfurt_host = "code--main--dev--admin.frankfurt.localhost".to_owned();
    let (status, ticket) = ticket_for(format!("{frankfurt_host}:2")).await;
    let ticket = ticket.unwrap_or_else(|| panic!("no ticket for frankfurt's host: {status}"));
    let redeem = |token: String, ticket: String, host: String| {
        let w = &w;
        async move { w.as_proxy(&token, "/api/v2/proxies/me/redeem-ticket", json!({"ticket": ticket, "host": host})).await }
    };
    redeem(w.token.clone(), ticket.clone(), frankfurt_host.clone()).await.expect_status(403);
    redeem(fresh.clone(), ticket.clone(), frankfurt_host.clone()).await.expect_status(200);
    let (_, ticket) = ticket_for(format!("{frankfurt_host}:2")).await;
    let sydney_host = w.sydney_host("code");
    let at_wrong_host = redeem(w.token.clone(), ticket.unwrap(), sydney_host).await;
    assert_eq!(at_wrong_host.status, 401, "a ticket for frankfurt's host, at sydney's: {}", at_wrong_host.body);

    // An admin may move sydney; then its proxies register the new hosts.
    let patch = json!({"wildcard_hostname": "*.sydney-2.localhost"});
    let r = w.admin.send(reqwest::Method::PATCH, "/api/v2/regions/sydney", Some(patch.clone())).await;
    r.expect_status(200);
    register(w.token.clone(), w.registration("*.sydney-2.localhost:1")).await.expect_status(200);
    let bob = Api::login(&w.coord.url, "bob", "bob-password").await;
    bob.send(reqwest::Method::PATCH, "/api/v2/regions/sydney", Some(patch)).await.expect_status(403);
}

/// Finding 4: a state change signed in by cookie must come from the
/// dashboard's own origin.
#[tokio::test(flavor = "multi_thread")]
async fn cookie_signed_state_changes_from_another_origin_are_refused() {
    let w = world(&[]).await;
    let client = browser();
    browser_login(&client, &w.coord.url, "admin", ADMIN_PASSWORD).await;
    let regen = format!("{}/api/v2/regions/sydney/regenerate-token", w.coord.url);
    let form = |origin: Option<&str>| {
        let mut req = client.post(&regen).header("content-type", "application/x-www-form-urlencoded").body("x=1");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req
    };
    let proxy_origin = format!("http://127.0.0.1:{}", w.proxy.port);
    for origin in [Some("http://evil.localhost:1"), Some("null"), Some(proxy_origin.as_str()), None] {
        let resp = form(origin).send().await.unwrap();
        assert_eq!(resp.status(), 403, "Origin {origin:?}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("origin")
                || body["message"].as_str().unwrap().contains("Origin")
        );
    }
    assert!(w.token_works().await, "sydney's token survived");
    // From the dashboard's own origin it works, and so does a CLI with the header.
    let own = url::Url::parse(&w.coord.url).unwrap().origin().ascii_serialization();
    assert_eq!(form(Some(&own)).send().await.unwrap().status(), 200);
    assert!(!w.token_works().await);
    w.admin.post("/api/v2/regions/sydney/regenerate-token", json!({})).await.expect_status(200);
}

/// Finding 5: the binding follows from the app asked for, never from the caller.
#[tokio::test(flavor = "multi_thread")]
async fn a_region_cannot_mint_a_token_for_an_app_it_did_not_ask_about() {
    let w = world(&[]).await;
    let ask = |slug: &str, binding_host: String| {
        json!({
            "app": {"user": "admin", "workspace": "dev", "agent": "main", "target": {"slug": slug}},
            "subdomain": true,
            "binding": subdomain_binding(&binding_host),
        })
    };
    let path = "/api/v2/proxies/me/issue-app-token";
    w.as_proxy(&w.token, path, ask("open", w.sydney_host("open"))).await.expect_status(200);
    let swapped = w.as_proxy(&w.token, path, ask("open", w.sydney_host("code"))).await;
    assert_eq!(swapped.status, 400, "{}", swapped.body);
    let elsewhere = w.as_proxy(&w.token, path, ask("open", "open--main--dev--admin.primary.localhost".into())).await;
    assert_eq!(elsewhere.status, 400, "another region's host: {}", elsewhere.body);
}

/// Finding 6: sessions end at sign-out (app sessions with them, and never
/// later), every sign-in starts a new session, a planted second Meridian
/// cookie locks nobody out, WebSockets to an app come from its own pages,
/// the API answers only its own hosts, and an oversized body is a 413.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_cookies_origins_hosts_and_body_limits() {
    let w = world(&[]).await;
    // Sign in twice in one browser: the first session ends.
    let (client, jar) = client_with_jar();
    let session = || jar_cookie(&jar, &w.coord.url, "meridian_session").expect("a session cookie");
    browser_login(&client, &w.coord.url, "admin", ADMIN_PASSWORD).await;
    let me = format!("{}/api/v2/users/me", w.coord.url);
    assert_eq!(client.get(&me).send().await.unwrap().status(), 200);
    let first = session();
    browser_login(&client, &w.coord.url, "admin", ADMIN_PASSWORD).await;
    let second = session();
    assert_ne!(first, second);
    Api::with_token(&w.coord.url, &first).get("/api/v2/users/me").await.expect_status(401);

    // Open the owner-only app through sydney: an app session and a token.
    let app = format!("http://{}:{}/", w.sydney_host("code"), w.proxy.port);
    let (hops, resp) = follow(&client, &app).await;
    assert_eq!(resp.status(), 200, "{hops:?}");
    let app_session = jar_cookie(&jar, &app, "meridian_app_session").expect("an app session cookie");
    let issue = |session: String| {
        let ask = json!({
            "app_session_token": session,
            "app": {"user": "admin", "workspace": "dev", "agent": "main", "target": {"slug": "code"}},
            "subdomain": true,
            "binding": subdomain_binding(&w.sydney_host("code")),
        });
        let w = &w;
        async move { w.as_proxy(&w.token, "/api/v2/proxies/me/issue-app-token", ask).await.status }
    };
    assert_eq!(issue(app_session.clone()).await, 200);

    // Copies planted by a sibling host (on a parent domain, or a longer path,
    // so the browser sends them first or last) lock nobody out: the copy that
    // verifies is the user's, at the proxy (app token and app session) and at the API.
    let token = jar_cookie(&jar, &app, "meridian_app_token").expect("an app token cookie");
    let fake_token = "eyJhbGciOiJFZERTQSJ9.e30.c2ln";
    for planted in [
        format!("meridian_app_token={fake_token}; meridian_app_token={token}"),
        format!("meridian_app_token={token}; meridian_app_token={fake_token}"),
        format!("meridian_app_session=planted; meridian_app_session={app_session}"),
        format!("meridian_app_token={fake_token}; meridian_app_session=x; meridian_app_session={app_session}"),
    ] {
        let resp = browser().get(&app).header("cookie", &planted).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{planted}");
    }
    for twice in [
        format!("meridian_session=planted; meridian_session={second}"),
        format!("meridian_session={second}; meridian_session=x"),
    ] {
        let resp = browser().get(&me).header("cookie", &twice).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{twice}");
    }
    let only_planted =
        browser().get(&me).header("cookie", "meridian_session=a; meridian_session=b").send().await.unwrap();
    assert_eq!(only_planted.status(), 401);

    // Sign out: the user session and its app session end; the cookie is cleared.
    let own = url::Url::parse(&w.coord.url).unwrap().origin().ascii_serialization();
    let out = client.post(format!("{}/api/v2/users/logout", w.coord.url)).header("origin", own).send().await.unwrap();
    assert_eq!(out.status(), 204);
    assert!(out.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    Api::with_token(&w.coord.url, &second).get("/api/v2/users/me").await.expect_status(401);
    assert_eq!(issue(app_session).await, 401, "the app session ended with the user session");

    // WebSockets to an app: its own origin, or no Origin (not a browser).
    let ws_host = format!("{}:{}", w.sydney_host("open"), w.proxy.port);
    for (origin, want) in
        [(Some("http://evil.localhost:1".to_owned()), 403), (Some(format!("http://{ws_host}")), 101), (None, 101)]
    {
        let mut req = format!(
            "GET /ws HTTP/1.1\r\nhost: {ws_host}\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
            sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        );
        if let Some(o) = &origin {
            req.push_str(&format!("origin: {o}\r\n"));
        }
        req.push_str("\r\n");
        assert_eq!(raw_status(w.proxy.port, &req).await, want, "Origin {origin:?}");
    }

    // The API answers only its own hosts (DNS rebinding).
    let port = url::Url::parse(&w.coord.url).unwrap().port().unwrap();
    let rebound =
        format!("GET /api/v2/buildinfo HTTP/1.1\r\nhost: attacker.example:{port}\r\nconnection: close\r\n\r\n");
    assert_eq!(raw_status(port, &rebound).await, 421);
    let local = format!("GET /api/v2/buildinfo HTTP/1.1\r\nhost: localhost:{port}\r\nconnection: close\r\n\r\n");
    assert_eq!(raw_status(port, &local).await, 200);

    // Over the body limit → 413, naming the limit.
    let big = json!({"name": "x".repeat(300 * 1024), "agents": []});
    let r = w.admin.post("/api/v2/workspaces", big).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body["message"].as_str().unwrap().contains("limit"), "{}", r.body);
}

/// A data connection is only taken with the nonce the relay asked its agent
/// for: anyone else who reaches the relay's port and speaks the preamble is
/// closed without the acknowledgement, and the relay keeps serving HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_connection_needs_the_nonce_the_relay_asked_for() {
    use meridian_regions::data::{Nonce, ACK, PREAMBLE};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world(&[]).await;
    let reg = w.as_proxy(&w.token, "/api/v2/proxies/me/register", w.registration("*.sydney.localhost:1")).await;
    let reg = reg.expect_status(200);
    let primary = reg["regions"].as_array().unwrap().iter().find(|r| r["name"] == "primary").unwrap().clone();
    let relay = url::Url::parse(primary["replicas"][0]["mesh_address"].as_str().unwrap()).unwrap();
    let addr = format!("{}:{}", relay.host_str().unwrap(), relay.port().unwrap());

    let mut guess = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let line = [&PREAMBLE[..], Nonce::random().to_header().as_bytes(), b"\r\n"].concat();
    guess.write_all(&line).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), guess.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the relay neither acknowledged nor closed a guessed nonce");
    assert!(!answer.contains(&ACK), "a guessed nonce was acknowledged: {answer:?}");
    assert!(answer.is_empty(), "a guessed nonce got an answer: {:?}", String::from_utf8_lossy(&answer));

    // The same listener still speaks HTTP to everyone else.
    let mut http = tokio::net::TcpStream::connect(&addr).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), http.read_to_string(&mut reply)).await.unwrap().unwrap();
    assert!(reply.starts_with("HTTP/1.1 404") && reply.contains("This is a Meridian relay"), "{reply}");
}

/// Finding 4 (second pass): what an agent presents to a relay is an attach
/// token for that relay's region, short-lived; a region that received one
/// (sydney) can neither open another region's relay with it nor move the
/// agent's route with it anywhere but to itself.
#[tokio::test(flavor = "multi_thread")]
async fn an_attach_token_opens_its_own_regions_relays_only() {
    let w = world(&[]).await;
    let info = reqwest::Client::new()
        .get(format!("{}/api/v2/agents/me/connection-info", w.coord.url))
        .header("Meridian-Agent-Token", &w.dev_agent)
        .send()
        .await
        .unwrap();
    let info: Value = info.json().await.unwrap();
    assert!(info.get("attach_token").is_none(), "no token for any region: {info}");
    let token_of = |region: &str| -> String {
        let relay = info["relays"].as_array().unwrap().iter().find(|r| r["region"] == region);
        let relay = relay.unwrap_or_else(|| panic!("no relay of {region}: {info}"));
        relay["attach_token"].as_str().unwrap_or_else(|| panic!("no attach token for {region}: {info}")).to_owned()
    };
    let (primary, sydney) = (token_of("primary"), token_of("sydney"));
    assert_ne!(primary, sydney);
    let keys = w.as_proxy(&w.token, "/api/v2/proxies/me/register", w.registration("*.sydney.localhost:1")).await;
    let keys: Vec<_> = serde_json::from_value(keys.expect_status(200)["keys"].clone()).unwrap();
    let claims = Verifier::new(&keys).attach_claims(&sydney).unwrap();
    assert!(claims.exp - claims.iat <= 2 * 3600, "short-lived: {claims:?}");

    // Sydney replays the primary's token: at the coordinator, and at the
    // primary's relay (as if it were the agent).
    let attach = |token: &str| json!({"agent_token": "", "attach_token": token});
    let replayed = w.as_proxy(&w.token, "/api/v2/proxies/me/agent-attach", attach(&primary)).await;
    assert_eq!(replayed.status, 401, "{}", replayed.body);
    w.admin.wait_agent_on("dev", "primary").await;
    let primary_relay = w.admin.region("primary").await["replicas"][0]["relay_address"].as_str().unwrap().to_owned();
    let tls = TlsClient::new(None).unwrap();
    let headers = [("Meridian-Agent-Attach-Token", sydney.as_str())];
    let dialed = dial_upgrade(&primary_relay, "/api/v2/agents/me/tunnel", "meridian-tunnel", &headers, &tls).await;
    let refusal = dialed.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(refusal.contains("401"), "sydney's token opened the primary's relay: {refusal:?}");
    // The control: the primary's own token opens the primary's relay, and
    // sydney's own records the agent at sydney.
    let headers = [("Meridian-Agent-Attach-Token", primary.as_str())];
    let dialed = dial_upgrade(&primary_relay, "/api/v2/agents/me/tunnel", "meridian-tunnel", &headers, &tls).await;
    assert!(dialed.is_ok(), "{:?}", dialed.err());
    w.as_proxy(&w.token, "/api/v2/proxies/me/agent-attach", attach(&sydney)).await.expect_status(200);
}
