//! Proxy tokens: wrong, deleted and regenerated tokens stop a proxy with a
//! clear message and a non-zero exit.

use crate::support::*;
use serde_json::json;
use std::time::Duration;

/// The proxy's exit status when the coordinator refuses its token.
const EXIT_TOKEN_REFUSED: i32 = 77;

async fn expect_refused(proxy: &mut Proxy) {
    let status = proxy.proc.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(EXIT_TOKEN_REFUSED), "{}", proxy.proc.output());
    let out = proxy.proc.output();
    assert!(out.contains("refused the proxy token"), "names the token problem: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_deleted_and_regenerated_tokens_are_refused() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let coord = Coordinator::start(dir.path(), &pg.url(), "1s", &[]).await;
    let admin = coord.admin().await;
    let token = admin.create_region("sydney").await;
    let region_id = token.split(':').next().unwrap().to_owned();

    // A well-formed token with the wrong secret: 401 from the API, and the proxy exits.
    let wrong = format!("{region_id}:not-the-secret");
    let reply = reqwest::Client::new()
        .post(format!("{}/api/v2/proxies/me/register", coord.url))
        .header("Meridian-Proxy-Token", &wrong)
        .json(&json!({"replica_id": uuid::Uuid::new_v4(), "access_url": "http://127.0.0.1:1",
                      "wildcard_hostname": "", "version": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 401);
    let mut proxy = Proxy::spawn(dir.path(), &coord.url, &wrong, &[]).await;
    expect_refused(&mut proxy).await;

    // Regenerating invalidates the old token: a running proxy on it exits at its next heartbeat.
    let mut old = Proxy::start(dir.path(), &coord.url, &token).await;
    let new = admin.post("/api/v2/regions/sydney/regenerate-token", json!({})).await.expect_status(200)["proxy_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new, token);
    expect_refused(&mut old).await;
    let mut current = Proxy::start(dir.path(), &coord.url, &new).await;
    admin.wait_status("sydney", "ok", Duration::from_secs(5)).await;

    // Deleting the region stops its token working too.
    admin.delete("/api/v2/regions/sydney").await.expect_status(204);
    expect_refused(&mut current).await;
    let list = admin.get("/api/v2/regions").await.expect_status(200);
    assert!(list["regions"].as_array().unwrap().iter().all(|r| r["name"] != "sydney"));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_token_is_a_config_error() {
    let dir = tempdir();
    let mut proxy = Proxy::spawn(dir.path(), "http://127.0.0.1:1", "no-colon-here", &[]).await;
    let status = proxy.proc.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(64));
    assert!(proxy.proc.output().contains("--proxy-token"), "{}", proxy.proc.output());
}
