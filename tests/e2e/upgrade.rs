//! Rolling upgrades: a coordinator of the previous schema version and the
//! current one serve side by side on one database (migrations only expand;
//! `coordinator/migrations/README.md`).

use crate::support::*;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// The previous release's binary, built by `scripts/build-previous`.
fn previous_bin() -> String {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/previous/meridian");
    assert!(bin.is_file(), "{} is missing: run scripts/build-previous (scripts/test does)", bin.display());
    bin.display().to_string()
}
async fn schema_version(pg: &Postgres) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&pg.pg.connect_options()).await.unwrap();
    sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(&mut conn).await.unwrap()
}

/// The previous release's coordinator. It cannot listen on port 0 and say
/// where (`--ready-file` is newer), so it gets a port the kernel just freed,
/// and another if a process took that one meanwhile (bounded).
async fn start_previous(dir: &Path, postgres_url: &str) -> Coordinator {
    for attempt in 1..=5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut args = Coordinator::args(dir, postgres_url, "1s");
        let listen = args.iter().position(|a| a == "--listen").unwrap() + 1;
        args[listen] = format!("127.0.0.1:{port}");
        let wildcard = args.iter().position(|a| a == "--wildcard-access-url").unwrap() + 1;
        args[wildcard] = format!("*.primary.localhost:{port}");
        let mut proc = Process::spawn_bin(&previous_bin(), "coordinator", dir, &args);
        let url = format!("http://127.0.0.1:{port}");
        let up = wait_for(Duration::from_secs(60), "the previous coordinator to answer or exit", || {
            let exited = proc.child.try_wait().unwrap().is_some();
            let health = format!("{url}/healthz");
            async move {
                if exited {
                    return Some(false);
                }
                let ok = reqwest::get(&health).await.ok().is_some_and(|r| r.status().is_success());
                ok.then_some(true)
            }
        })
        .await;
        if up {
            let ready = meridian_regions::ready::Ready {
                pid: proc.child.id(),
                listen: ([127, 0, 0, 1], port).into(),
                access_url: None,
                relay: None,
                internal: None,
            };
            return Coordinator { proc, url, args, dir: dir.to_owned(), ready };
        }
        let out = proc.output();
        assert!(out.contains("cannot listen") && attempt < 5, "the previous coordinator exited:\n{out}");
    }
    unreachable!()
}

fn names(list: &serde_json::Value, key: &str) -> Vec<String> {
    list[key].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_previous_and_the_current_coordinator_serve_side_by_side_on_one_database() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    // The previous release owns the database first and fills it.
    let old = start_previous(dir.path(), &pg.url()).await;
    let old_url = old.url.clone();
    let before = schema_version(&pg).await;
    let admin_old = old.admin().await;
    let sydney_token = admin_old.create_region("sydney").await;
    let ws = json!({"name": "before", "agents": [{"name": "main", "apps": [{"slug": "code", "port": 8080}]}]});
    admin_old.post("/api/v2/workspaces", ws).await.expect_status(201);
    admin_old
        .post("/api/v2/users", json!({"username": "member", "password": "member-password", "admin": false}))
        .await
        .expect_status(201);

    // The current release starts on the same database while the old one
    // serves, and migrates it further.
    let new = Coordinator::start(dir.path(), &pg.url(), "1s", &[]).await;
    let new_url = new.url.clone();
    let after = schema_version(&pg).await;
    assert!(after > before, "the current release migrated the schema ({before} → {after})");

    // Both serve, each the other's data; sessions from either work on both.
    let admin_new = Api::login(&new_url, "admin", ADMIN_PASSWORD).await;
    admin_new.create_region("frankfurt").await;
    let ws = json!({"name": "after", "agents": [{"name": "main", "apps": [{"slug": "code", "port": 8080}]}]});
    admin_new.post("/api/v2/workspaces", ws).await.expect_status(201);
    let admin_old_again = Api::login(&old_url, "admin", ADMIN_PASSWORD).await;
    for (which, api) in [
        ("old, signed in before", &admin_old),
        ("old, signed in after", &admin_old_again),
        ("new", &admin_new),
        ("old's session on the new", &Api::with_token(&new_url, admin_old.token())),
        ("new's session on the old", &Api::with_token(&old_url, admin_new.token())),
    ] {
        let regions = names(&api.get("/api/v2/regions").await.expect_status(200), "regions");
        assert!(regions.contains(&"sydney".into()) && regions.contains(&"frankfurt".into()), "{which}: {regions:?}");
        let workspaces = names(&api.get("/api/v2/workspaces").await.expect_status(200), "workspaces");
        assert!(
            workspaces.contains(&"before".into()) && workspaces.contains(&"after".into()),
            "{which}: {workspaces:?}"
        );
        assert_eq!(api.get("/api/v2/users/me").await.expect_status(200)["username"], "admin", "{which}");
    }
    for url in [&old_url, &new_url] {
        Api::login(url, "member", "member-password").await;
    }

    // A region registered through the current release is health-checked and
    // listed as healthy by the previous one too (health lives in Postgres).
    let _proxy = Proxy::spawn(dir.path(), &new_url, &sydney_token, &[]).await;
    admin_old.wait_status("sydney", "ok", Duration::from_secs(20)).await;
    admin_new.wait_status("sydney", "ok", Duration::from_secs(20)).await;
    drop((old, new));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_starts_on_a_database_a_newer_release_migrated_further() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let mut coord = Coordinator::start(dir.path(), &pg.url(), "1s", &[]).await;
    let url = coord.url.clone();
    coord.admin().await;
    // A later release's (expanding) migration, unknown to this build.
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect_with(&pg.pg.connect_options()).await.unwrap();
        sqlx::query("ALTER TABLE regions ADD COLUMN later_release_note text").execute(&mut conn).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99991231, 'a later release', true, '\\x00', 1)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
    }
    // Restarted mid-upgrade (a rescheduled pod), it starts and serves.
    coord.restart().await;
    let admin = Api::login(&url, "admin", ADMIN_PASSWORD).await;
    admin.create_region("sydney").await;
    assert_eq!(admin.region("sydney").await["status"], "unregistered");
}
