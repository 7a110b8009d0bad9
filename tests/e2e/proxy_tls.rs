//! A proxy serving HTTPS (and HTTP/2) with a wildcard certificate, health-checked over TLS.

use crate::support::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn https_proxy_with_wildcard_certificate() {
    let dir = tempdir();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params(), rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["*.region.localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (ca_pem, cert_pem, key_pem) =
        (dir.path().join("ca.pem"), dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert_pem, leaf.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();

    let pg = Postgres::start().await;
    let ca_arg = ca_pem.to_str().unwrap();
    let coord = Coordinator::start(dir.path(), &pg.url(), "1s", &["--ca-cert", ca_arg]).await;
    let admin = coord.admin().await;
    let token = admin.create_region("sydney").await;
    let proxy = Proxy::spawn(
        dir.path(),
        &coord.url,
        &token,
        &["--tls-cert", cert_pem.to_str().unwrap(), "--tls-key", key_pem.to_str().unwrap()],
    );
    assert!(proxy.url.starts_with("https://"));
    // The coordinator's health check reaches it over TLS, trusting the CA.
    admin.wait_status("sydney", "ok", Duration::from_secs(15)).await;

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca_pem).unwrap()).unwrap())
        .build()
        .unwrap();
    let resp = client.get(format!("{}/healthz", proxy.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "h2 is negotiated over ALPN");
    // A client that does not trust the CA is refused at the handshake.
    assert!(reqwest::get(format!("{}/healthz", proxy.url)).await.is_err());

    // An agent attaches to the region's relay over TLS (its URL is https), and
    // an app is served to an HTTP/2 client end to end.
    let sydney = admin.region("sydney").await;
    let relay = sydney["replicas"][0]["relay_address"].as_str().unwrap().to_owned();
    assert!(relay.starts_with("https://"), "{relay}");
    let app = SampleApp::start(dir.path()).await;
    let ws = serde_json::json!({"name": "dev", "agents": [{"name": "main", "apps": [
        {"slug": "open", "port": app.port, "share": "public"}]}]});
    let created = admin.post("/api/v2/workspaces", ws).await.expect_status(201);
    let agent_token = created["agent_tokens"]["main"].as_str().unwrap();
    let args: Vec<String> = [
        "agent",
        "--coordinator-url",
        &coord.url,
        "--agent-token",
        agent_token,
        "--region",
        "sydney",
        "--ca-cert",
        ca_arg,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _agent = Process::spawn("agent", dir.path(), &args);
    admin.wait_agent_on("dev", "sydney").await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca_pem).unwrap()).unwrap())
        .dns_resolver(std::sync::Arc::new(LoopbackResolver))
        .build()
        .unwrap();
    let url = format!("https://open--main--dev--admin.region.localhost:{}/over-tls", proxy.port);
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let seen: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(seen["uri"], "/over-tls");
    let proto: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).unwrap();
    assert!(proto.contains(&("x-forwarded-proto".into(), "https".into())), "{proto:?}");
}

fn ca_params() -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, "Meridian test CA");
    p
}
