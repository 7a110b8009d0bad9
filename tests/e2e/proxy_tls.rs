//! A proxy serving HTTPS (and HTTP/2) with a wildcard certificate, health-checked over TLS.

use crate::support::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn https_proxy_with_wildcard_certificate() {
    let dir = tempdir();
    let ca = test_ca("Meridian test CA");
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
    )
    .await;
    assert!(proxy.url.starts_with("https://"));
    // The coordinator's health check reaches it over TLS, trusting the CA.
    admin.wait_status("sydney", "ok", Duration::from_secs(15)).await;

    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca_pem).unwrap()).unwrap())
        .build()
        .unwrap();
    let resp = https.get(format!("{}/healthz", proxy.url)).send().await.unwrap();
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

    // Host routing is exact over TLS too: a connection opened (SNI) for one
    // app host cannot ask for another (421), and HTTP/2's `:authority` and a
    // `host` header must agree (400).
    let open = format!("open--main--dev--admin.region.localhost:{}", proxy.port);
    let other = format!("other--main--dev--admin.region.localhost:{}", proxy.port);
    let tls = tls_connector(&ca_pem, &[]);
    assert_eq!(h1_status(&tls, proxy.port, &open, &open).await, 200, "SNI = Host");
    assert_eq!(h1_status(&tls, proxy.port, &open, &other).await, 421, "SNI ≠ Host");
    assert_eq!(h1_status(&tls, proxy.port, &open, &open.to_uppercase()).await, 200, "case does not matter");
    // The server's suite order decides: this client lists AES-256-GCM-SHA384
    // first (rustls's default, as OpenSSL's), the proxy picks AES-128-GCM-SHA256.
    assert_eq!(negotiated_suite(&tls, proxy.port, &open).await, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let h2 = tls_connector(&ca_pem, &[b"h2"]);
    assert_eq!(h2_status(&h2, proxy.port, &open, None).await, 200, ":authority alone");
    assert_eq!(h2_status(&h2, proxy.port, &open, Some(&open)).await, 200, ":authority = host");
    assert_eq!(h2_status(&h2, proxy.port, &open, Some(&other)).await, 400, ":authority ≠ host");
    // HTTP/2 headers get the same budget as HTTP/1 (8 KiB + 32 KiB).
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(open.split(':').next().unwrap().to_owned()).unwrap();
    let (mut big, conn) = h2::client::handshake(h2.connect(name, tcp).await.unwrap()).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://{open}/big-headers")).header("x-big", "b".repeat(48 * 1024));
    let sent = big.send_request(req.body(()).unwrap(), true);
    let answer = match sent {
        Ok((resp, _)) => tokio::time::timeout(Duration::from_secs(5), resp).await.unwrap().map(|r| r.status().as_u16()),
        Err(e) => Err(e),
    };
    assert_eq!(answer.ok(), Some(431), "48 KiB of HTTP/2 headers: a 431 answer, as over HTTP/1");

    // SIGTERM: an HTTP/2 connection gets GOAWAY, its request in flight
    // completes, new streams on it are refused, and the proxy exits 0.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(open.split(':').next().unwrap().to_owned()).unwrap();
    let (mut client, conn) = h2::client::handshake(h2.connect(name, tcp).await.unwrap()).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("https://{open}/slow")).header("x-sample-delay-ms", "1500");
    let (in_flight, _) = client.send_request(req.body(()).unwrap(), true).unwrap();
    // In flight: the proxy counts it (besides the metrics request asking).
    wait_for(Duration::from_secs(5), "the slow request to be in flight", || async {
        (metric_with(&https, &proxy.url, "meridian_proxy_requests_in_flight").await? >= 2.0).then_some(())
    })
    .await;
    let mut proxy = proxy;
    proxy.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let resp = tokio::time::timeout(Duration::from_secs(10), in_flight).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200, "the request in flight completes");
    let after = async {
        let mut c = client.clone().ready().await?;
        let (resp, _) = c.send_request(http::Request::get(format!("https://{open}/late")).body(()).unwrap(), true)?;
        resp.await
    };
    let late = tokio::time::timeout(Duration::from_secs(10), after).await.unwrap();
    // Refused by the GOAWAY the proxy sent (or, had the stream crossed it, by
    // REFUSED_STREAM): not a reset or a closed connection, which a proxy
    // dying without a GOAWAY would give too.
    let refused = late.as_ref().err().is_some_and(|e| {
        (e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR))
            || e.reason() == Some(h2::Reason::REFUSED_STREAM)
    });
    assert!(refused, "a stream opened after the proxy's GOAWAY is refused by it: {late:?}");
    // The connection ends cleanly after the GOAWAY — or, when the late stream
    // was written while the proxy was closing the connection it had already
    // sent GOAWAY on, with that write's broken pipe or reset: a race of the
    // client's write against the close, not a fault (the late stream was
    // refused by the GOAWAY either way, above).
    let goaway = tokio::time::timeout(Duration::from_secs(10), conn).await.unwrap().unwrap();
    let raced_the_close =
        goaway.as_ref().err().and_then(|e| e.get_io()).is_some_and(|io| {
            matches!(io.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
        });
    assert!(goaway.is_ok() || raced_the_close, "the connection ends after GOAWAY, not with another error: {goaway:?}");
    assert!(proxy.proc.wait_exit(Duration::from_secs(15)).await.success());
}

/// The TLS cipher suite a handshake with SNI `sni` (host:port) settles on.
async fn negotiated_suite(tls: &tokio_rustls::TlsConnector, port: u16, sni: &str) -> rustls::CipherSuite {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.split(':').next().unwrap().to_owned()).unwrap();
    let s = tls.connect(name, tcp).await.unwrap();
    let offered = s.get_ref().1.negotiated_cipher_suite().unwrap();
    offered.suite()
}

/// Opens TLS with SNI `sni` (host:port), sends an HTTP/1.1 GET with `Host: host`; the status.
async fn h1_status(tls: &tokio_rustls::TlsConnector, port: u16, sni: &str, host: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.split(':').next().unwrap().to_owned()).unwrap();
    let mut s = tls.connect(name, tcp).await.unwrap();
    s.write_all(format!("GET /sni HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {answer:?}"))
}

/// An HTTP/2 GET for `https://{authority}/` with an optional `host` header; the status.
async fn h2_status(tls: &tokio_rustls::TlsConnector, port: u16, authority: &str, host: Option<&str>) -> u16 {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(authority.split(':').next().unwrap().to_owned()).unwrap();
    let s = tls.connect(name, tcp).await.unwrap();
    let (mut client, conn) = h2::client::handshake(s).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(format!("https://{authority}/h2"));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let (resp, _) = client.send_request(req.body(()).unwrap(), true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), resp).await.unwrap().unwrap().status().as_u16()
}
