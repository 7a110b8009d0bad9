//! API authorization and validation: each refusal has its own status and a
//! JSON `{message}` body.

use crate::support::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn refusals_have_the_right_status() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let coord = Coordinator::start(dir.path(), &pg.url(), "10s", &[]).await;
    let anon = Api::anonymous(&coord.url);

    // Nothing but the first-user call works before the first user exists.
    anon.get("/api/v2/regions").await.expect_status(401);
    let admin = coord.admin().await;
    let again = anon.post("/api/v2/users/first", json!({"username": "eve", "password": "password123"})).await;
    assert_eq!(again.status, 409, "a second first-user call is refused: {}", again.body);
    assert!(again.body["message"].as_str().unwrap().contains("first user"));

    // Unauthenticated and bad-token listing → 401.
    let unauth = anon.get("/api/v2/regions").await.expect_status(401);
    assert!(unauth["message"].is_string());
    Api::with_token(&coord.url, "garbage").get("/api/v2/regions").await.expect_status(401);
    let forged = format!("{}:forged", uuid::Uuid::new_v4());
    Api::with_token(&coord.url, &forged).get("/api/v2/regions").await.expect_status(401);

    // Admin creates a member; the member can list but not create regions.
    admin.post("/api/v2/users", json!({"username": "bob", "password": "bob-password"})).await.expect_status(201);
    let login = anon.post("/api/v2/users/login", json!({"username": "bob", "password": "bob-password"})).await;
    let bob = Api::with_token(&coord.url, login.expect_status(200)["session_token"].as_str().unwrap());
    assert_eq!(bob.get("/api/v2/users/me").await.expect_status(200)["admin"], false);
    bob.get("/api/v2/regions").await.expect_status(200);
    bob.post("/api/v2/regions", json!({"name": "sydney"})).await.expect_status(403);
    bob.post("/api/v2/users", json!({"username": "mallory", "password": "password123"})).await.expect_status(403);
    bob.delete("/api/v2/regions/primary").await.expect_status(403);

    // Wrong password and unknown user look the same.
    let wrong = anon.post("/api/v2/users/login", json!({"username": "bob", "password": "nope-nope"})).await;
    let unknown = anon.post("/api/v2/users/login", json!({"username": "zed", "password": "nope-nope"})).await;
    assert_eq!((wrong.status, unknown.status), (401, 401));
    assert_eq!(wrong.body, unknown.body);

    // Duplicates → 409; invalid names and bodies → 400.
    admin.create_region("sydney").await;
    admin.post("/api/v2/regions", json!({"name": "sydney"})).await.expect_status(409);
    admin.post("/api/v2/regions", json!({"name": "primary"})).await.expect_status(409);
    admin.post("/api/v2/users", json!({"username": "bob", "password": "password123"})).await.expect_status(409);
    for name in ["", "Sydney", "syd ney", "syd--ney", "-x", "x-", "a/b", &"a".repeat(33)] {
        let r = admin.post("/api/v2/regions", json!({ "name": name })).await;
        assert_eq!(r.status, 400, "region name {name:?}: {}", r.body);
        assert!(r.body["message"].as_str().unwrap().contains("name"), "{}", r.body);
    }
    admin.post("/api/v2/regions", json!({"name": "ok-name", "display_name": "bad\nname"})).await.expect_status(400);
    admin.post("/api/v2/users", json!({"username": "short", "password": "1234"})).await.expect_status(400);
    admin.post("/api/v2/regions", json!({"nom": "x"})).await.expect_status(400);
    admin.post("/api/v2/regions", json!("not an object")).await.expect_status(400);

    // Unknown regions and routes → 404; the primary cannot be deleted or re-tokened.
    admin.delete("/api/v2/regions/atlantis").await.expect_status(404);
    admin.post("/api/v2/regions/atlantis/regenerate-token", json!({})).await.expect_status(404);
    admin.delete("/api/v2/regions/primary").await.expect_status(400);
    admin.post("/api/v2/regions/primary/regenerate-token", json!({})).await.expect_status(400);
    admin.get("/api/v2/nowhere").await.expect_status(404);

    // The primary is listed first, ok, with the coordinator's URL.
    let list = admin.get("/api/v2/regions").await.expect_status(200);
    let regions = list["regions"].as_array().unwrap();
    assert_eq!(regions[0]["name"], "primary");
    assert_eq!(regions[0]["status"], "ok");
    assert_eq!(regions[0]["access_url"], coord.url.as_str());
    assert_eq!(regions[1]["name"], "sydney");
    assert_eq!(regions[1]["status"], "unregistered");
}

#[tokio::test(flavor = "multi_thread")]
async fn login_sets_the_session_cookie_and_the_cookie_authenticates() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let coord = Coordinator::start(dir.path(), &pg.url(), "10s", &[]).await;
    coord.admin().await;
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/api/v2/users/login", coord.url))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.starts_with("meridian_session="), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap();
    let me = http.get(format!("{}/api/v2/users/me", coord.url)).header("cookie", cookie).send().await.unwrap();
    assert_eq!(me.status(), 200);
    let me: serde_json::Value = me.json().await.unwrap();
    assert_eq!(me["username"], "admin");
    assert_eq!(me["admin"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_drives_the_api() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let coord = Coordinator::start(dir.path(), &pg.url(), "1s", &[]).await;
    let cfg = dir.path().join("cli");
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(args).env("MERIDIAN_CONFIG_DIR", &cfg).env_remove("MERIDIAN_URL").env_remove("MERIDIAN_SESSION_TOKEN");
        let out = output_within(&mut cmd, Duration::from_secs(30), &format!("meridian {args:?}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = cli(&["regions", "list"]);
    assert!(!ok && out.contains("meridian login"), "{out}");
    let (ok, out) = cli(&["login", &coord.url, "--username", "admin", "--password", "password123", "--first-user"]);
    assert!(ok, "{out}");
    let mode =
        std::fs::metadata(cfg.join("session.json")).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert_eq!(mode.unwrap() & 0o077, 0, "the saved session is private");
    let (ok, out) = cli(&["regions", "create", "sydney"]);
    assert!(ok, "{out}");
    let token = out.lines().map(str::trim).find(|l| l.len() > 37 && l.as_bytes()[36] == b':').unwrap().to_owned();
    let _proxy = Proxy::start(dir.path(), &coord.url, &token).await;
    let table = wait_for(std::time::Duration::from_secs(5), "sydney ok in the table", || {
        let (ok, out) = cli(&["regions", "list"]);
        async move { (ok && out.lines().any(|l| l.starts_with("sydney") && l.contains(" ok "))).then_some(out) }
    })
    .await;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("LAST HEARTBEAT") && table.contains("s ago"), "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("primary"), "{table}");
    let (ok, out) = cli(&["regions", "create", "sydney"]);
    assert!(!ok && out.contains("already exists"), "{out}");
    let (ok, out) = cli(&["users", "create", "carol", "--password", "carol-password"]);
    assert!(ok && out.contains("carol"), "{out}");
    let (ok, out) = cli(&[
        "workspaces",
        "create",
        "dev",
        "--app",
        "code=8080",
        "--app",
        "nb=http://127.0.0.1:8888,share=public,path",
    ]);
    assert!(ok && out.contains("Agent main's token"), "{out}");
    let (ok, out) = cli(&["workspaces", "list"]);
    assert!(
        ok && out
            .lines()
            .any(|l| l.starts_with("admin") && l.contains("dev") && l.contains("offline") && l.contains("code,nb")),
        "{out}"
    );
    let (ok, out) = cli(&["workspaces", "create", "dev", "--app", "code=8080,share=everyone"]);
    assert!(!ok && out.contains("share="), "{out}");
    let (ok, out) = cli(&["workspaces", "delete", "dev"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["workspaces", "list", "--json"]);
    assert!(ok && out.contains("\"workspaces\": []"), "{out}");
    let (ok, out) = cli(&["regions", "edit", "sydney", "--wildcard-hostname", "*.apps.sydney.localhost"]);
    assert!(ok && out.contains("sydney"), "{out}");
    let (ok, out) = cli(&["regions", "edit", "sydney", "--wildcard-hostname", "*.primary.localhost"]);
    assert!(!ok && out.contains("primary"), "the primary's wildcard is taken: {out}");
    let (ok, out) =
        cli(&["regions", "create", "perth", "--access-url", "http://perth.localhost:1", "--wildcard-hostname", "nope"]);
    assert!(!ok && out.contains("wildcard_hostname"), "{out}");
    let (ok, out) = cli(&["regions", "regenerate-token", "sydney"]);
    assert!(ok && out.contains(':'), "{out}");
    let (ok, out) = cli(&["regions", "delete", "sydney"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["regions", "list", "--json"]);
    assert!(ok, "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["regions"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_an_internal_listener_the_proxy_api_is_served_only_there() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let coord = Coordinator::start(dir.path(), &pg.url(), "1s", &["--internal-listen", "127.0.0.1:0"]).await;
    let internal = coord.ready.internal.expect("the coordinator reported its internal listener");
    let admin = coord.admin().await;
    let token = admin.create_region("sydney").await;
    // The public listener refuses the proxy API, saying where it is.
    let public = proxy_call(&coord.url, &token, "/api/v2/proxies/me/register", json!({})).await;
    assert_eq!(public.status, 404, "{}", public.body);
    assert!(public.body["message"].as_str().unwrap().contains("--internal-listen"), "{}", public.body);
    // A proxy pointed at the internal listener registers and is health-checked.
    let proxy = Proxy::spawn(dir.path(), &format!("http://{internal}"), &token, &[]).await;
    admin.wait_status("sydney", "ok", std::time::Duration::from_secs(20)).await;
    // Readiness is answered by the coordinator's own proxy, in front of the API.
    assert_eq!(reqwest::get(format!("{}/readyz", coord.url)).await.unwrap().status(), 200);
    // The users' API stays on the public listener.
    assert_eq!(admin.get("/api/v2/users/me").await.status, 200);
    drop(proxy);
}

/// A region whose access URL answers, but not as a Meridian proxy (here the
/// sample app, as a load balancer pointed at the wrong service would): the
/// health check reads no health report there, so the region is `unhealthy`
/// (not `unreachable`, not `ok`) with a reason naming it.
#[tokio::test(flavor = "multi_thread")]
async fn a_region_whose_access_url_is_not_its_proxy_is_unhealthy() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let coord = Coordinator::start(dir.path(), &pg.url(), "1s", &[]).await;
    let admin = coord.admin().await;
    let token = admin.create_region("sydney").await;
    let app = SampleApp::start(dir.path()).await;
    let wrong = format!("http://127.0.0.1:{}", app.port);
    let mut proxy = Proxy::spawn_named(dir.path(), &coord.url, &token, "sydney", &["--access-url", &wrong]).await;
    proxy.wait_registered().await;
    admin.wait_status("sydney", "unhealthy", std::time::Duration::from_secs(10)).await;
    let region = admin.region("sydney").await;
    let reasons = region.to_string();
    assert!(reasons.contains("unreadable health report"), "the reason is given: {region}");
    assert_eq!(region["healthy"], false, "{region}");
    assert_eq!(metric(&coord.url, "meridian_regions{status=\"unhealthy\"}").await, Some(1.0));
}
