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
}

fn ca_params() -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, "Meridian test CA");
    p
}
