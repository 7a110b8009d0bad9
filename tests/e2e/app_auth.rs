//! The coordinator's side of app login: auth-redirect with exact-host
//! validation, one-time tickets, app sessions, and app tokens under the
//! sharing rules. A real proxy is registered so its hosts are app hosts.

use crate::support::*;
use meridian_regions::app_token::{path_binding, subdomain_binding, Verifier};
use serde_json::{json, Value};

struct World {
    coord: Coordinator,
    proxy: Proxy,
    token: String,
    admin: Api,
    bob: Api,
    _pg: Postgres,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    // Apps on ports nothing serves: only the coordinator's answers matter here.
    let mut m = Mesh::builder()
        .user("bob")
        .region("sydney")
        .workspace(|_| {
            json!([
                {"slug": "code", "port": 8080},
                {"slug": "shared", "port": 8081, "share": "authenticated"},
                {"slug": "open", "port": 8082, "share": "public"},
                {"slug": "pathy", "url": "http://127.0.0.1:8083", "subdomain": false},
            ])
        })
        .start()
        .await;
    let bob = m.login("bob").await;
    let (proxy, token) = (m.take_proxy("sydney"), m.token("sydney").to_owned());
    let Mesh { coord, admin, pg, dir, .. } = m;
    World { coord, proxy, token, admin, bob, _pg: pg, _dir: dir }
}

impl World {
    fn host(&self, app: &str) -> String {
        format!("{app}--main--dev--admin.sydney.localhost")
    }

    fn app_url(&self, app: &str) -> String {
        format!("http://{}:{}/", self.host(app), self.proxy.port)
    }

    /// `POST issue-app-token` as the region's proxy.
    async fn issue(&self, app: &str, session: Option<&str>) -> Reply {
        let target = match app.parse::<u16>() {
            Ok(port) => json!({"port": {"port": port, "https": false}}),
            Err(_) => json!({"slug": app}),
        };
        let body = json!({
            "app_session_token": session,
            "app": {"user": "admin", "workspace": "dev", "agent": "main", "target": target},
            "subdomain": true,
            "binding": subdomain_binding(&self.host(app)),
        });
        proxy_call(&self.coord.url, &self.token, "/api/v2/proxies/me/issue-app-token", body).await
    }

    /// The full browser half of the flow for `api`'s user opening `app`:
    /// auth-redirect → ticket → app session (good for `app` only).
    async fn app_session(&self, api_token: &str, app: &str) -> String {
        let location = auth_redirect(&self.coord.url, Some(api_token), &self.app_url(app)).await.1;
        let ticket = url::Url::parse(&location)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "meridian_app_ticket")
            .map(|(_, v)| v.into_owned())
            .expect("ticket in the redirect");
        let body = json!({ "ticket": ticket, "host": self.host(app) });
        let reply = proxy_call(&self.coord.url, &self.token, "/api/v2/proxies/me/redeem-ticket", body).await;
        reply.expect_status(200)["app_session_token"].as_str().unwrap().to_owned()
    }
}

/// GETs auth-redirect with an optional session cookie; returns (status, Location).
async fn auth_redirect(base: &str, session: Option<&str>, redirect_uri: &str) -> (u16, String) {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut req =
        http.get(format!("{base}/api/v2/applications/auth-redirect")).query(&[("redirect_uri", redirect_uri)]);
    if let Some(s) = session {
        req = req.header("cookie", format!("meridian_session={s}"));
    }
    let resp = req.send().await.unwrap();
    let location = resp.headers().get("location").map(|l| l.to_str().unwrap().to_owned()).unwrap_or_default();
    (resp.status().as_u16(), location)
}

fn session_of(api: &Api) -> String {
    api.token().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_redirect_issues_one_time_tickets_only_for_app_hosts() {
    let w = world().await;
    let admin_session = session_of(&w.admin);
    let target = format!("{}x?keep=1&meridian_app_ticket=stale", w.app_url("code"));

    // Signed out → the login page, which comes back here.
    let (status, location) = auth_redirect(&w.coord.url, None, &target).await;
    assert_eq!(status, 303);
    assert!(location.starts_with("/login?redirect=%2Fapi%2Fv2%2Fapplications%2Fauth-redirect"), "{location}");
    let page = reqwest::get(format!("{}{location}", w.coord.url)).await.unwrap().text().await.unwrap();
    // The sign-in page (its script posts to /api/v2/users/login) returns to auth-redirect.
    assert!(
        page.contains("/assets/login.js") && page.contains("data-redirect=\"/api/v2/applications/auth-redirect"),
        "{page}"
    );

    // Signed in → back to the same URL with one fresh ticket.
    let (status, location) = auth_redirect(&w.coord.url, Some(&admin_session), &target).await;
    assert_eq!(status, 303);
    let back = url::Url::parse(&location).unwrap();
    assert_eq!(back.host_str(), Some(w.host("code").as_str()));
    assert_eq!(back.path(), "/x");
    let pairs: Vec<(String, String)> = back.query_pairs().map(|(k, v)| (k.into(), v.into())).collect();
    assert_eq!(pairs.iter().filter(|(k, _)| k == "meridian_app_ticket").count(), 1, "{location}");
    assert!(pairs.contains(&("keep".into(), "1".into())));
    let ticket = &pairs.iter().find(|(k, _)| k == "meridian_app_ticket").unwrap().1;
    assert_ne!(ticket, "stale");

    let redeem = |t: String, proxy_token: String| {
        let (base, host) = (w.coord.url.clone(), w.host("code"));
        let body = json!({ "ticket": t, "host": host });
        async move { proxy_call(&base, &proxy_token, "/api/v2/proxies/me/redeem-ticket", body).await }
    };
    redeem(ticket.clone(), "nobody:nothing".into()).await.expect_status(401);
    redeem(ticket.clone(), w.token.clone()).await.expect_status(200);
    let again = redeem(ticket.clone(), w.token.clone()).await;
    assert_eq!(again.status, 401, "a used ticket is refused: {}", again.body);
    redeem("garbage".into(), w.token.clone()).await.expect_status(401);

    // Open redirects: never anything but an exact app address.
    let p = w.proxy.port;
    let evil = [
        "//evil.example/".to_owned(),
        "https://evil.example/".to_owned(),
        format!("http://code--main--dev--admin.sydney.localhos:{p}/"),
        format!("http://code--main--dev--admin.sydney.localhost.evil.example:{p}/"),
        format!("http://sydney.localhost:{p}/"),
        format!("http://evil@code--main--dev--admin.sydney.localhost:{p}/"),
        format!("http://code--main--dev--admin.sydney.localhost:{p}@evil.example/"),
        format!("http://code--main--dev--admin.sydney.localhost:{p}\\@evil.example/"),
        "javascript:alert(1)".to_owned(),
        format!("http://code--main--dev--admin.sydney.localhost:{p}/%0d%0aSet-Cookie:x\r\n"),
    ];
    for uri in evil {
        let (status, location) = auth_redirect(&w.coord.url, Some(&admin_session), &uri).await;
        assert_eq!(status, 400, "{uri:?} → {location}");
    }
    let (status, _) = auth_redirect(&w.coord.url, None, "https://evil.example/").await;
    assert_eq!(status, 400, "checked before sending anyone to log in");
    let missing = reqwest::get(format!("{}/api/v2/applications/auth-redirect", w.coord.url)).await.unwrap();
    assert_eq!(missing.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn app_tokens_follow_the_sharing_rules() {
    let w = world().await;

    // (app, owner, another user, anonymous), each signed in for that app.
    let matrix = [
        ("code", 200, 404, 401),
        ("shared", 200, 200, 401),
        ("open", 200, 200, 200),
        ("nosuchapp", 404, 404, 401),
        ("8080", 200, 404, 401),
        ("pathy", 404, 404, 401), // a path app asked for by subdomain
    ];
    for (app, o, b, anon) in matrix {
        let owner = w.app_session(&session_of(&w.admin), app).await;
        let other = w.app_session(&session_of(&w.bob), app).await;
        assert_eq!(w.issue(app, Some(&owner)).await.status, o, "{app} as owner");
        assert_eq!(w.issue(app, Some(&other)).await.status, b, "{app} as another user");
        assert_eq!(w.issue(app, None).await.status, anon, "{app} anonymously");
    }

    // The token verifies with the keys the proxy got at registration, for this app only.
    let reg = reqwest::Client::new()
        .get(format!("{}/api/v2/proxies/me/keys", w.coord.url))
        .header("Meridian-Proxy-Token", &w.token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let keys: Vec<meridian_regions::app_token::PublicKey> = serde_json::from_value(reg["keys"].clone()).unwrap();
    let verifier = Verifier::new(&keys);
    let owner = w.app_session(&session_of(&w.admin), "code").await;
    let token = w.issue("code", Some(&owner)).await.expect_status(200)["token"].as_str().unwrap().to_owned();
    let claims = verifier.verify(&token, &subdomain_binding(&w.host("code"))).unwrap();
    assert_eq!(claims.upstream, "http://127.0.0.1:8080");
    assert!(claims.exp - claims.iat <= 600, "short-lived");
    assert!(verifier.verify(&token, &subdomain_binding(&w.host("shared"))).is_err(), "bound to one app");
    assert!(verifier.verify(&token, &path_binding("127.0.0.1", "/@admin/dev/apps/code/")).is_err());
    let anon = w.issue("open", None).await.expect_status(200)["token"].as_str().unwrap().to_owned();
    assert_eq!(verifier.verify(&anon, &subdomain_binding(&w.host("open"))).unwrap().sub, "anonymous");

    // Scopes do not mix: a user session is not an app session, and vice versa.
    assert_eq!(w.issue("code", Some(&session_of(&w.admin))).await.status, 401);
    Api::with_token(&w.coord.url, &owner).get("/api/v2/users/me").await.expect_status(401);
    // Only proxies may ask.
    let as_user = w.admin.post("/api/v2/proxies/me/issue-app-token", json!({})).await;
    assert_eq!(as_user.status, 401);
}

/// A region that redeemed one login ticket (the user opened `code` through
/// it) holds an app session for `code` alone: asking with it for the same
/// user's other owner-only apps, any port or a path app is asking with no
/// session (401: the browser would fetch a ticket for that app itself).
#[tokio::test(flavor = "multi_thread")]
async fn an_app_session_gets_tokens_for_its_own_app_only() {
    let w = world().await;
    let code = w.app_session(&session_of(&w.admin), "code").await;
    w.issue("code", Some(&code)).await.expect_status(200);
    for other in ["shared", "8080", "3000", "nosuchapp"] {
        let r = w.issue(other, Some(&code)).await;
        assert_eq!(r.status, 401, "{other} with code's app session: {}", r.body);
    }
    // A path app on the region's access URL: its own session, never code's.
    let path_ask = |session: &str| {
        let body = json!({
            "app_session_token": session,
            "app": {"user": "admin", "workspace": "dev", "agent": "main", "target": {"slug": "pathy"}},
            "subdomain": false,
            "binding": path_binding("127.0.0.1", "/@admin/dev.main/apps/pathy/"),
        });
        proxy_call(&w.coord.url, &w.token, "/api/v2/proxies/me/issue-app-token", body)
    };
    assert_eq!(path_ask(&code).await.status, 401, "a path app with code's session");
    let pathy_url = format!("http://127.0.0.1:{}/@admin/dev.main/apps/pathy/x", w.proxy.port);
    let location = auth_redirect(&w.coord.url, Some(&session_of(&w.admin)), &pathy_url).await.1;
    let back = url::Url::parse(&location).unwrap();
    let ticket = back.query_pairs().find(|(k, _)| k == "meridian_app_ticket").map(|(_, v)| v.into_owned());
    let ticket = ticket.expect("a ticket for the path app");
    let body = json!({ "ticket": ticket, "host": "127.0.0.1" });
    let redeemed = proxy_call(&w.coord.url, &w.token, "/api/v2/proxies/me/redeem-ticket", body).await;
    let pathy = redeemed.expect_status(200)["app_session_token"].as_str().unwrap().to_owned();
    path_ask(&pathy).await.expect_status(200);
    assert_eq!(w.issue("code", Some(&pathy)).await.status, 401, "code with the path app's session");
}
