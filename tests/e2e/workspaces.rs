//! The workspaces API: create (agent tokens shown once), list, delete, validation.

use crate::support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn workspaces_are_created_listed_and_deleted() {
    let m = Mesh::builder().interval("10s").user("bob").start().await;
    let (admin, bob) = (&m.admin, m.login("bob").await);

    let spec = json!({"name": "dev", "agents": [{"name": "main", "apps": [
        {"slug": "code", "port": 8080},
        {"slug": "notebook", "url": "http://127.0.0.1:8888", "share": "public", "subdomain": false},
    ]}]});
    let created = admin.post("/api/v2/workspaces", spec.clone()).await.expect_status(201);
    let token = created["agent_tokens"]["main"].as_str().unwrap();
    assert_eq!(token.split(':').count(), 2, "agent token is <agent-id>:<secret>");
    assert_eq!(created["workspace"]["owner"], "admin");
    let agent = &created["workspace"]["agents"][0];
    assert_eq!(agent["connected"], false);
    assert_eq!(agent["apps"][0]["share"], "owner", "share defaults to owner");
    assert_eq!(agent["apps"][0]["subdomain"], true);
    assert_eq!(agent["apps"][1]["share"], "public");
    admin.post("/api/v2/workspaces", spec.clone()).await.expect_status(409);

    // Bob may not create for admin; admin may create for bob.
    let mut for_admin = spec.clone();
    for_admin["owner"] = json!("admin");
    bob.post("/api/v2/workspaces", for_admin).await.expect_status(403);
    let mut for_bob = spec.clone();
    for_bob["owner"] = json!("bob");
    admin.post("/api/v2/workspaces", for_bob).await.expect_status(201);

    let mine = bob.get("/api/v2/workspaces").await.expect_status(200);
    assert_eq!(mine["workspaces"].as_array().unwrap().len(), 1);
    assert_eq!(mine["workspaces"][0]["owner"], "bob");
    bob.get("/api/v2/workspaces?owner=all").await.expect_status(403);
    bob.get("/api/v2/workspaces?owner=admin").await.expect_status(403);
    let all = admin.get("/api/v2/workspaces?owner=all").await.expect_status(200);
    assert_eq!(all["workspaces"].as_array().unwrap().len(), 2);

    bob.delete("/api/v2/workspaces/admin/dev").await.expect_status(403);
    bob.delete("/api/v2/workspaces/bob/dev").await.expect_status(204);
    bob.delete("/api/v2/workspaces/bob/dev").await.expect_status(404);
    assert_eq!(bob.get("/api/v2/workspaces").await.expect_status(200)["workspaces"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_workspaces_are_refused() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let coord = Coordinator::start(dir.path(), &pg.url(), "10s", &[]).await;
    let admin = coord.admin().await;
    let app = |a: serde_json::Value| json!({"name": "dev", "agents": [{"name": "main", "apps": [a]}]});
    let cases = [
        json!({"name": "Dev", "agents": [{"name": "main"}]}),
        json!({"name": "dev", "agents": []}),
        json!({"name": "dev", "agents": [{"name": "main"}, {"name": "main"}]}),
        json!({"name": "dev", "agents": [{"name": "a--b"}]}),
        app(json!({"slug": "code"})),
        app(json!({"slug": "code", "port": 8080, "url": "http://127.0.0.1:8080"})),
        app(json!({"slug": "code", "port": 0})),
        app(json!({"slug": "code", "port": 70000})),
        app(json!({"slug": "code", "url": "http://example.com:8080"})),
        app(json!({"slug": "code", "url": "file:///etc/passwd"})),
        app(json!({"slug": "Code", "port": 8080})),
        app(json!({"slug": "code", "port": 8080, "share": "everyone"})),
        json!({"name": "dev", "agents": [{"name": "main", "apps": [{"slug": "a", "port": 8080}, {"slug": "a", "port": 8081}]}]}),
    ];
    for case in cases {
        let r = admin.post("/api/v2/workspaces", case.clone()).await;
        assert_eq!(r.status, 400, "{case} → {}", r.body);
        assert!(r.body["message"].is_string());
    }
    assert_eq!(admin.get("/api/v2/workspaces").await.expect_status(200)["workspaces"], json!([]));
}
