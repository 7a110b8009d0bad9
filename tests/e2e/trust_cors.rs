//! An app's CORS grants, in a real browser: every app host of a region is one
//! site, so Chromium sends a viewer's app cookies with a credentialed `fetch`
//! from any other app's page. An app that reflects `Origin` with credentials
//! (as many dev servers do) must still not be readable from another user's
//! app; its owner may opt it in (`cors: passthru`) for their own origins.

use crate::support::*;
use crate::trust::in_chromium;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// A dev server as many are: every answer reflects the request's `Origin`
/// with `Access-Control-Allow-Credentials: true` (preflights too), and says
/// which app it is. It records the `Origin` of every request it serves.
struct ReflectingApp {
    port: u16,
    origins: Arc<Mutex<Vec<String>>>,
}

impl ReflectingApp {
    async fn start(name: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let origins = Arc::new(Mutex::new(Vec::new()));
        let seen = origins.clone();
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let seen = seen.clone();
            async move {
                let origin = headers.get("origin").and_then(|o| o.to_str().ok()).unwrap_or_default().to_owned();
                seen.lock().unwrap().push(origin.clone());
                let cors = [
                    ("access-control-allow-origin", origin),
                    ("access-control-allow-credentials", "true".to_owned()),
                    ("vary", "Origin".to_owned()),
                ];
                (cors, format!("secret of {name}"))
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { port, origins }
    }

    fn saw_origin(&self, origin: &str) -> bool {
        self.origins.lock().unwrap().iter().any(|o| o == origin)
    }
}

/// The admin's owner-only apps `code` (default CORS) and `api` (passthru)
/// and bob's public `evil`, all subdomain apps served through region
/// sydney; every agent on the primary (one mesh hop).
#[tokio::test(flavor = "multi_thread")]
async fn an_app_cannot_read_another_users_app_through_cors() {
    let mut m = Mesh::builder().user("bob").region("sydney").start().await;
    let proxy = m.take_proxy("sydney");
    let Mesh { coord, admin, dir, .. } = m;
    let (code, api, evil) =
        (ReflectingApp::start("code").await, ReflectingApp::start("api").await, ReflectingApp::start("evil").await);
    let apps = json!([
        {"slug": "code", "port": code.port},
        {"slug": "api", "port": api.port, "cors": "passthru"},
    ]);
    let dev = admin.post("/api/v2/workspaces", json!({"name": "dev", "agents": [{"name": "main", "apps": apps}]}));
    let dev = dev.await.expect_status(201);
    let listed = admin.get("/api/v2/workspaces").await.expect_status(200);
    assert!(listed.to_string().contains(r#""cors":"passthru""#), "the opt-in is listed: {listed}");
    let bob = Api::login(&coord.url, "bob", "bob-password").await;
    let lab = json!([{"slug": "evil", "port": evil.port, "share": "public"}]);
    let lab = bob.post("/api/v2/workspaces", json!({"name": "lab", "agents": [{"name": "main", "apps": lab}]}));
    let lab = lab.await.expect_status(201);
    let _agents = [
        Agent::spawn(dir.path(), &coord.url, dev["agent_tokens"]["main"].as_str().unwrap(), None),
        Agent::spawn(dir.path(), &coord.url, lab["agent_tokens"]["main"].as_str().unwrap(), None),
    ];
    admin.wait_agent_on("dev", "primary").await;
    admin.wait_agent_on("lab", "primary").await;

    let origin = |label: &str| format!("http://{label}.sydney.localhost:{}", proxy.port);
    let (code_origin, api_origin) = (origin("code--main--dev--admin"), origin("api--main--dev--admin"));
    let evil_origin = origin("evil--main--lab--bob");
    let (code_url, api_url) = (format!("{code_origin}/data"), format!("{api_origin}/data"));
    let plan = json!({
        // The admin works in both apps: the browser holds their cookies.
        "open": [&code_url, &api_url],
        "pages": [
            {"page": format!("{evil_origin}/"), "targets": [&code_url, &api_url]},
            {"page": format!("{code_origin}/"), "targets": [&code_url, &api_url]},
        ],
    });
    let args = vec![coord.url.clone(), "admin".into(), ADMIN_PASSWORD.into(), plan.to_string()];
    let seen = in_chromium("cors-attack.js", args).await;
    for url in [&code_url, &api_url] {
        assert_eq!(seen["opened"][url], 200, "the admin opens their own app: {seen}");
    }
    let read = |page: usize, target: &str| -> String {
        let v: &Value = &seen["read"][page]["seen"][target];
        v.as_str().unwrap_or_else(|| panic!("no result for {target}: {seen}")).to_owned()
    };
    // bob's page: the requests reached the admin's apps with the admin's
    // cookies (the apps answered, reflecting bob's origin), and the browser
    // let bob's script read neither answer.
    assert_eq!(read(0, &code_url), "blocked", "bob's app read the admin's app: {seen}");
    assert_eq!(read(0, &api_url), "blocked", "bob's app read the admin's passthru app: {seen}");
    assert!(code.saw_origin(&evil_origin) && api.saw_origin(&evil_origin), "the fetches reached the apps");
    // The admin's own app: itself (same origin), and the passthru app.
    assert_eq!(read(1, &code_url), "read:secret of code", "{seen}");
    assert_eq!(read(1, &api_url), "read:secret of api", "an opted-in app answers its owner's origins: {seen}");

    // The same, header by header: code's grant reaches its own origin only.
    let (client, _jar) = client_with_jar();
    browser_login(&client, &coord.url, "admin", ADMIN_PASSWORD).await;
    let (hops, resp) = follow(&client, &code_url).await;
    assert_eq!(resp.status(), 200, "{hops:?}");
    for (from, granted) in [(&code_origin, true), (&evil_origin, false), (&api_origin, false)] {
        let resp = client.get(&code_url).header("origin", from.as_str()).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let acao = resp.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(acao.is_some(), granted, "Origin {from}: {acao:?}");
        assert!(resp.headers().get("access-control-allow-credentials").is_some() == granted);
    }
}
