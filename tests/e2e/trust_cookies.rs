//! Cookie tossing over HTTPS: Meridian's cookies for a whole host (the
//! dashboard's session, a subdomain app's token and session) are
//! `__Host-`-prefixed, which browsers accept only from that very host
//! (`Secure`, `Path=/`, no `Domain`). A sibling app can still set a plain
//! `meridian_session` on a parent domain; over HTTPS it is not read at all,
//! so it can neither lock a user out nor sign them in as someone else.

use crate::support::*;
use serde_json::{json, Value};

fn tls_client(ca: &std::path::Path) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .dns_resolver(std::sync::Arc::new(LoopbackResolver))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn over_https_whole_host_cookies_are_host_only_and_planted_ones_are_not_read() {
    let dir = tempdir();
    let ca = test_ca("Meridian cookie test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let names = vec!["*.region.localhost".to_owned(), "127.0.0.1".into()];
    let leaf = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();
    let (ca_pem, cert, key_pem) = (dir.path().join("ca.pem"), dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();
    let (ca_arg, cert_arg, key_arg) = (ca_pem.to_str().unwrap(), cert.to_str().unwrap(), key_pem.to_str().unwrap());

    let pg = Postgres::start().await;
    let mut args = Coordinator::args(dir.path(), &pg.url(), "1s");
    args.extend(["--ca-cert", ca_arg, "--tls-cert", cert_arg, "--tls-key", key_arg].map(str::to_owned));
    let coord = Coordinator::start_with(dir.path(), args).await;
    let http = tls_client(&ca_pem);
    let first = Api::with_http(&coord.url, http.clone(), None)
        .post("/api/v2/users/first", json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .await
        .expect_status(201);
    let admin = Api::with_http(&coord.url, http.clone(), first["session_token"].as_str());
    admin.post("/api/v2/users", json!({"username": "bob", "password": "bob-password"})).await.expect_status(201);

    // Signing in sets the prefixed name, Secure, for the whole host only.
    let sign_in = |user: &'static str, password: &'static str| {
        let (http, url) = (http.clone(), coord.url.clone());
        async move {
            let resp = http
                .post(format!("{url}/api/v2/users/login"))
                .header("origin", &url)
                .json(&json!({"username": user, "password": password}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.headers()["set-cookie"].to_str().unwrap().to_owned()
        }
    };
    let set = sign_in("admin", ADMIN_PASSWORD).await;
    assert!(set.starts_with("__Host-meridian_session="), "{set}");
    assert!(set.contains("Secure") && set.contains("Path=/") && !set.contains("Domain"), "{set}");
    let admin_session = set.split(';').next().unwrap().split_once('=').unwrap().1.to_owned();
    let bob_session =
        sign_in("bob", "bob-password").await.split(';').next().unwrap().split_once('=').unwrap().1.to_owned();

    // Bob's app plants his own valid session as a plain `meridian_session`
    // (on a parent domain, on a longer path: sent first). The admin stays
    // the admin; the plain name alone signs nobody in.
    let me = |cookie: String| {
        let (http, url) = (http.clone(), coord.url.clone());
        async move {
            let resp = http.get(format!("{url}/api/v2/users/me")).header("cookie", cookie).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or_default()["username"].as_str().unwrap_or_default().to_owned())
        }
    };
    let planted = format!("meridian_session={bob_session}; __Host-meridian_session={admin_session}");
    assert_eq!(me(planted).await, (200, "admin".to_owned()));
    assert_eq!(me(format!("meridian_session={bob_session}")).await.0, 401, "the plain name is not read over HTTPS");

    // A subdomain app through an HTTPS proxy: its token cookie is host-only too,
    // and no Meridian cookie of either name reaches the app.
    let token = admin.create_region("sydney").await;
    let proxy = Proxy::spawn(
        dir.path(),
        &coord.url,
        &token,
        &["--ca-cert", ca_arg, "--tls-cert", cert_arg, "--tls-key", key_arg],
    )
    .await;
    admin.wait_status("sydney", "ok", std::time::Duration::from_secs(20)).await;
    let app = SampleApp::start(dir.path()).await;
    let ws = json!({"name": "dev", "agents": [{"name": "main", "apps": [{"slug": "open", "port": app.port, "share": "public"}]}]});
    let created = admin.post("/api/v2/workspaces", ws).await.expect_status(201);
    let agent_token = created["agent_tokens"]["main"].as_str().unwrap();
    let _agent = Agent::spawn_with(dir.path(), &coord.url, agent_token, &["--region", "sydney", "--ca-cert", ca_arg]);
    admin.wait_agent_on("dev", "sydney").await;
    let url = format!("https://open--main--dev--admin.region.localhost:{}/", proxy.port);
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.starts_with("__Host-meridian_app_token=") && set.contains("Secure") && set.contains("Path=/"), "{set}");
    let token_cookie = set.split(';').next().unwrap().to_owned();
    let cookies = format!("{token_cookie}; meridian_app_token=planted; __Host-meridian_session=x; keep=1");
    let resp = http.get(&url).header("cookie", cookies).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("set-cookie").is_none(), "the host-only token was read: no new one issued");
    let seen: Value = resp.json().await.unwrap();
    let sent: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).unwrap();
    let cookie = sent.iter().find(|(k, _)| k == "cookie").map(|(_, v)| v.as_str());
    assert_eq!(cookie, Some("keep=1"), "Meridian cookies reached the app: {sent:?}");
}
