//! The dashboard, in a real browser (`tests/browser/dashboard.js`, Chromium via
//! playwright-core) against `meridian demo` with its simulated distances; and
//! its pages and assets over plain HTTP.

use crate::support::*;
use std::path::Path;
use std::time::Duration;

/// The demo's health interval (also its heartbeat): the page must show a
/// killed region within two of them.
const HEALTH_INTERVAL_MS: u64 = 2000;

/// The default topology's geography, stretched: round trips of 50, 120 and
/// 300 ms added to virginia, frankfurt and sydney (the agent on frankfurt).
const TOPOLOGY: &str = r#"
[[region]]
name = "sydney"
latency = "150ms"

[[region]]
name = "frankfurt"
latency = "60ms"

[[region]]
name = "virginia"
latency = "25ms"

[agent]
region = "frankfurt"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_in_a_browser() {
    let dir = tempdir();
    let state = dir.path().join("state");
    // Distances wide enough that the page's figures keep their order on a
    // loaded machine (the default topology's primary and virginia differ by
    // a 10 ms round trip, which one slow sample can swap).
    let topology = dir.path().join("topology.toml");
    std::fs::write(&topology, TOPOLOGY).unwrap();
    let args = [
        "--data-dir".to_owned(),
        state.display().to_string(),
        "--proxy-health-interval".into(),
        format!("{HEALTH_INTERVAL_MS}ms"),
        "--topology".into(),
        topology.display().to_string(),
    ];
    // App sessions end (and reach the connection log) 2 s after their last request.
    let demo = Demo::start_env(dir.path(), &args, &[("MERIDIAN_APP_SESSION_IDLE", "2s")]).await;
    let password = demo
        .printed
        .lines()
        .find_map(|l| l.split("password ").nth(1))
        .map(|p| p.trim().to_owned())
        .expect("credentials printed");
    let first = demo
        .printed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .skip_while(|l| !l.starts_with("Meridian demo is running"))
        .nth(1)
        .unwrap_or_default();
    assert!(first.starts_with("dashboard"), "the dashboard URL comes first:\n{}", demo.printed);
    // Screenshots are this test's artifacts.
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let info = state.join("demo.json");
    let shots_arg = shots.clone();
    let run = tokio::task::spawn_blocking(move || {
        let mut node = std::process::Command::new("node");
        node.current_dir(&browser_dir).arg("dashboard.js").arg(&info).arg(&password);
        node.arg(HEALTH_INTERVAL_MS.to_string()).arg(&shots_arg);
        output_within(&mut node, Duration::from_secs(240), "node dashboard.js")
    });
    let run = run.await.unwrap();
    let says = String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "dashboard in Chromium: {says}");
    for page in [
        "sign-in",
        "workspaces",
        "regions",
        "regions-fallback",
        "admin",
        "connections",
        "workspace-created",
        "member-admin-403",
        "member-connections",
    ] {
        assert!(shots.join(format!("{page}.png")).is_file(), "no screenshot of {page}");
    }
    eprintln!("dashboard figures: {}\nscreenshots: {}", says.trim(), shots.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_pages_need_a_session_and_admin_pages_an_admin() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let coord = Coordinator::start(dir.path(), &pg.url(), "10s", &[]).await;
    let admin = coord.admin().await;
    admin
        .post("/api/v2/users", serde_json::json!({"username": "member", "password": "member-password", "admin": false}))
        .await
        .expect_status(201);
    let anon = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let get = |client: &reqwest::Client, path: &str, token: Option<&str>| {
        let mut req = client.get(format!("{}{path}", coord.url));
        if let Some(t) = token {
            req = req.header("Meridian-Session-Token", t);
        }
        req.send()
    };
    // Anonymous: sent to sign in, coming back to the same page.
    for path in ["/", "/regions", "/connections", "/admin"] {
        let resp = get(&anon, path, None).await.unwrap();
        assert_eq!(resp.status(), 303, "{path}");
        let back: String = url::form_urlencoded::byte_serialize(path.as_bytes()).collect();
        assert_eq!(resp.headers()["location"], format!("/login?redirect={back}").as_str());
    }
    // Signed in: the page, with a policy that runs no inline script and is never framed.
    for path in ["/", "/regions", "/connections", "/admin"] {
        let resp = get(&anon, path, Some(admin.token())).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe"),
            "{csp}"
        );
        let html = resp.text().await.unwrap();
        assert!(html.contains("/assets/dashboard.js") && !html.contains("<script>"), "{path}: {html}");
    }
    // A member: workspaces and regions, but 403 on the admin page, and no admin link.
    let member = Api::login(&coord.url, "member", "member-password").await;
    let home = get(&anon, "/", Some(member.token())).await.unwrap().text().await.unwrap();
    assert!(!home.contains("href=\"/admin\""), "{home}");
    assert_eq!(get(&anon, "/admin", Some(member.token())).await.unwrap().status(), 403);
    assert_eq!(get(&anon, "/connections", Some(member.token())).await.unwrap().status(), 200, "their own connections");
    // The sign-in page lands on the dashboard by default, and keeps a local redirect only.
    let login = get(&anon, "/login", None).await.unwrap().text().await.unwrap();
    assert!(login.contains("data-redirect=\"/\""), "{login}");
    let login = get(&anon, "/login?redirect=//evil.example", None).await.unwrap().text().await.unwrap();
    assert!(login.contains("data-redirect=\"/\""), "{login}");
    // Assets are compiled in; anything else under /assets is a JSON 404.
    for (asset, kind) in
        [("dashboard.js", "text/javascript"), ("login.js", "text/javascript"), ("dashboard.css", "text/css")]
    {
        let resp = get(&anon, &format!("/assets/{asset}"), None).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with(kind), "{asset}");
    }
    assert_eq!(get(&anon, "/assets/../secrets.key", None).await.unwrap().status(), 404);
    // Never on an app host: there the primary serves apps, not the dashboard.
    let port = coord.url.rsplit(':').next().unwrap();
    let on_app_host = anon
        .get(format!("{}/", coord.url))
        .header("host", format!("code--main--dev--admin.primary.localhost:{port}"))
        .header("Meridian-Session-Token", admin.token())
        .send()
        .await
        .unwrap();
    let body = on_app_host.text().await.unwrap();
    assert!(!body.contains("/assets/dashboard.js"), "{body}");
    assert_eq!(get(&anon, "/assets/other.js", None).await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn regions_list_the_round_trips_their_relays_measure_to_other_regions() {
    let m = Mesh::builder().region("tokyo").start().await;
    let admin = &m.admin;
    // tokyo's relay links to the primary's, times a round trip, and reports
    // it with its next heartbeat; the region lists the best healthy replica's.
    let rtt = wait_for(Duration::from_secs(20), "tokyo's link round trip to primary", || async {
        let tokyo = admin.region("tokyo").await;
        let link = tokyo["links"].as_array()?.iter().find(|l| l["region"] == "primary")?.clone();
        let replica = tokyo["replicas"][0]["link_rtts"].as_array()?.iter().find(|l| l["region"] == "primary")?.clone();
        (link == replica).then(|| link["rtt_ms"].as_u64().unwrap())
    })
    .await;
    assert!((1..1000).contains(&rtt), "{rtt} ms on loopback");
    // The primary's own entry lists no link to itself.
    let primary = admin.region("primary").await;
    assert!(primary["links"].as_array().unwrap().iter().all(|l| l["region"] != "primary"), "{primary}");
}
