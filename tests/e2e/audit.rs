//! The audit log: every state change through the API is recorded with who,
//! from where, and what changed (never a secret); admins read it through
//! `GET /api/v2/audit-log` (filters, pages) and `meridian audit list`; others
//! are refused; records past `--log-retention` go.

use crate::support::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

/// Every entry of the log matching `query`, newest first, following pages.
async fn entries(admin: &Api, query: &str) -> Vec<Value> {
    admin.every_page("/api/v2/audit-log", query).await
}

fn actions(entries: &[Value]) -> Vec<&str> {
    entries.iter().map(|e| e["action"].as_str().unwrap()).collect()
}

/// Users, regions, workspaces, sign-in and sign-out each leave a record
/// with actor, target, source and the fields that changed, newest first;
/// filters and pages select exactly; no token or password is in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_through_the_api_is_recorded_without_its_secrets() {
    let m = Mesh::builder().user("bob").start().await;
    let admin = &m.admin;
    let region =
        admin.post("/api/v2/regions", json!({"name": "tokyo", "display_name": "Tokyo"})).await.expect_status(201);
    let first_token = region["proxy_token"].as_str().unwrap().to_owned();
    admin
        .send(Method::PATCH, "/api/v2/regions/tokyo", Some(json!({"display_name": "Tokyo 2"})))
        .await
        .expect_status(200);
    let regenerated = admin.post("/api/v2/regions/tokyo/regenerate-token", json!({})).await.expect_status(200);
    let second_token = regenerated["proxy_token"].as_str().unwrap().to_owned();
    admin.delete("/api/v2/regions/tokyo").await.expect_status(204);
    admin
        .post(
            "/api/v2/workspaces",
            json!({"name": "scratch", "owner": "bob", "agents": [{"name": "main", "apps": []}]}),
        )
        .await
        .expect_status(201);
    admin.delete("/api/v2/workspaces/bob/scratch").await.expect_status(204);
    let wrong = Api::anonymous(&m.coord.url)
        .post("/api/v2/users/login", json!({"username": "bob", "password": "not-bobs-password"}))
        .await;
    assert_eq!(wrong.status, 401);
    let bob = m.login("bob").await;
    bob.post("/api/v2/users/logout", json!({})).await.expect_status(204);

    let all = entries(admin, "limit=3").await;
    let mine: Vec<&str> = actions(&all).into_iter().filter(|a| !a.starts_with("user.") || a.contains("log")).collect();
    // Newest first; the mesh's own set-up (first user, bob) is older still.
    let wanted = [
        "user.logout",
        "user.login",
        "user.login_failed",
        "workspace.delete",
        "workspace.create",
        "region.delete",
        "region.regenerate_token",
        "region.update",
        "region.create",
    ];
    assert_eq!(&mine[..wanted.len()], wanted, "the log, newest first: {all:#?}");
    let find = |action: &str| all.iter().find(|e| e["action"] == action).unwrap().clone();
    let update = find("region.update");
    assert_eq!((update["actor"].as_str(), update["target"].as_str()), (Some("admin"), Some("tokyo")));
    assert_eq!(update["changes"], json!({"display_name": ["Tokyo", "Tokyo 2"]}));
    assert_eq!(update["source"], "127.0.0.1");
    assert_eq!(find("workspace.create")["target"], "bob/scratch");
    assert_eq!(find("workspace.create")["changes"], json!({"agents": [null, ["main"]]}));
    let failed = find("user.login_failed");
    assert_eq!((failed["actor"].as_str(), failed["target"].as_str()), (Some("bob"), Some("bob")));
    assert_eq!(find("user.logout")["actor"], "bob");
    assert!(all.iter().any(|e| e["action"] == "user.create"
        && e["target"] == "bob"
        && e["changes"]["admin"] == json!([null, false])));
    // No secret: the proxy tokens, the passwords, the session.
    let text = serde_json::to_string(&all).unwrap();
    let secrets = [first_token, second_token, password_of("bob"), password_of("admin"), "not-bobs-password".into()];
    for secret in secrets.iter().map(String::as_str).chain([bob.token()]) {
        assert!(!text.contains(secret), "a secret is in the audit log");
    }

    // Filters: by kind of action, by actor, by target, by time.
    assert_eq!(actions(&entries(admin, "action=region").await), wanted[5..].to_vec());
    assert_eq!(actions(&entries(admin, "action=region.delete").await), ["region.delete"]);
    let bobs: Vec<Value> = entries(admin, "user=bob").await;
    assert_eq!(actions(&bobs), ["user.logout", "user.login", "user.login_failed"]);
    assert_eq!(entries(admin, "target=tokyo").await.len(), 4);
    let newest = all[0]["at"].as_str().unwrap();
    let later = chrono::DateTime::parse_from_rfc3339(newest).unwrap() + chrono::Duration::seconds(1);
    let since = later.to_rfc3339().replace('+', "%2B");
    assert!(entries(admin, &format!("since={since}")).await.is_empty());
    // Pages of 3 hold what one page of 1000 does, once each.
    let whole = entries(admin, "limit=1000").await;
    assert_eq!(whole, all);

    // Only admins; bad queries are clear 400s.
    let member = m.login("bob").await;
    assert_eq!(member.get("/api/v2/audit-log").await.status, 403);
    assert_eq!(Api::anonymous(&m.coord.url).get("/api/v2/audit-log").await.status, 401);
    for bad in ["limit=0", "limit=1001", "since=yesterday", "colour=blue"] {
        let reply = admin.get(&format!("/api/v2/audit-log?{bad}")).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
    }

    // The CLI: JSON lines of every page, the same records.
    let mut cli = Command::new(BIN);
    cli.args(["audit", "list", "--url", &m.coord.url, "--json", "--all", "--limit", "2", "--action", "region"]);
    cli.env("MERIDIAN_SESSION_TOKEN", admin.token()).env("MERIDIAN_CONFIG_DIR", m.dir.path());
    let out = output_within(&mut cli, Duration::from_secs(30), "meridian audit list");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(actions(&lines), wanted[5..].to_vec());
}

/// Records older than `--log-retention` are deleted (here at the
/// coordinator's start); newer ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_past_the_retention_period_are_deleted() {
    let mut m = Mesh::builder().coordinator_args(&["--log-retention", "1h"]).start().await;
    m.admin.post("/api/v2/regions", json!({"name": "tokyo"})).await.expect_status(201);
    {
        use sqlx::Connection;
        let mut db = sqlx::PgConnection::connect_with(&m.pg.pg.connect_options()).await.unwrap();
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target_kind, target) \
             VALUES (now() - interval '2 hours', 'admin', 'region.create', 'region', 'ancient')",
        )
        .execute(&mut db)
        .await
        .unwrap();
    }
    assert_eq!(entries(&m.admin, "target=ancient").await.len(), 1);
    m.coord.restart().await;
    let admin = &m.admin;
    wait_for(Duration::from_secs(20), "the old record to go", || async {
        entries(admin, "target=ancient").await.is_empty().then_some(())
    })
    .await;
    assert_eq!(actions(&entries(admin, "target=tokyo").await), ["region.create"], "a newer record went too");
}

/// A change and its record are one transaction: while the audit log cannot
/// be written (a constraint added by hand refuses every row), creating a
/// region, a user or a workspace, deleting a region and signing in fail
/// with 500 and change nothing; once it can, each is made with its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_record_cannot_be_written_is_not_made() {
    use sqlx::Connection;
    let m = Mesh::builder().user("bob").start().await;
    let admin = &m.admin;
    admin.post("/api/v2/regions", json!({"name": "osaka"})).await.expect_status(201);
    let mut db = sqlx::PgConnection::connect_with(&m.pg.pg.connect_options()).await.unwrap();
    sqlx::query("ALTER TABLE audit_log ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
        .execute(&mut db)
        .await
        .unwrap();
    let workspace = json!({"name": "scratch", "agents": [{"name": "main", "apps": []}]});
    let attempts = [
        admin.post("/api/v2/regions", json!({"name": "tokyo"})).await.status,
        admin.post("/api/v2/users", json!({"username": "carol", "password": "carol-password"})).await.status,
        admin.post("/api/v2/workspaces", workspace.clone()).await.status,
        admin.delete("/api/v2/regions/osaka").await.status,
        Api::anonymous(&m.coord.url)
            .post("/api/v2/users/login", json!({"username": "bob", "password": password_of("bob")}))
            .await
            .status,
    ];
    assert_eq!(attempts, [500; 5], "each change refused with its record");
    let regions: Vec<String> = admin.get("/api/v2/regions").await.expect_status(200)["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(regions.contains(&"osaka".to_owned()) && !regions.contains(&"tokyo".to_owned()), "{regions:?}");
    assert_eq!(
        Api::anonymous(&m.coord.url)
            .post("/api/v2/users/login", json!({"username": "carol", "password": "carol-password"}))
            .await
            .status,
        401,
        "carol was not made"
    );
    let workspaces = admin.get("/api/v2/workspaces").await.expect_status(200);
    assert_eq!(workspaces["workspaces"], json!([]), "no workspace was made");

    sqlx::query("ALTER TABLE audit_log DROP CONSTRAINT refuse_all").execute(&mut db).await.unwrap();
    admin.post("/api/v2/regions", json!({"name": "tokyo"})).await.expect_status(201);
    admin.post("/api/v2/workspaces", workspace).await.expect_status(201);
    let made = entries(admin, "target=tokyo").await;
    assert_eq!(actions(&made), ["region.create"], "one record, of the change that was made");
    assert_eq!(actions(&entries(admin, "action=workspace").await), ["workspace.create"]);
}
