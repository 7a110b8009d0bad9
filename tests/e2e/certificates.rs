//! Certificates that rotate: the coordinator and a proxy reload `--tls-cert`/
//! `--tls-key` when the files change, under load, with no request failing.

use crate::support::*;
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A leaf certificate for the test's hosts, signed by `ca`: (cert PEM, key PEM, cert DER).
fn leaf(ca: &rcgen::CertifiedIssuer<'_, rcgen::KeyPair>) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names = vec!["*.region.localhost".into(), "localhost".into(), "127.0.0.1".into()];
    let cert = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}
/// What one stream of requests saw.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    failed: std::sync::Mutex<Vec<String>>,
    /// Answers over a connection that presented the new certificate.
    on_new: AtomicU64,
    /// Answers over a connection that presented neither (a client that saw no certificate).
    on_neither: AtomicU64,
}

/// Requests `url` with `client` until `stop`, counting answers and which
/// certificate their connection presented.
fn load(client: reqwest::Client, url: String, ders: [Vec<u8>; 2], stop: Arc<AtomicBool>) -> Arc<Seen> {
    let seen = Arc::new(Seen::default());
    let out = seen.clone();
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            match client.get(&url).timeout(Duration::from_secs(10)).send().await {
                Ok(r) if r.status() == 200 => {
                    let presented = r.extensions().get::<reqwest::tls::TlsInfo>().and_then(|t| t.peer_certificate());
                    let new = presented == Some(ders[1].as_slice());
                    let neither = !new && presented != Some(ders[0].as_slice());
                    match r.bytes().await {
                        Ok(_) => {
                            seen.ok.fetch_add(1, Ordering::Relaxed);
                            seen.on_new.fetch_add(new as u64, Ordering::Relaxed);
                            seen.on_neither.fetch_add(neither as u64, Ordering::Relaxed);
                        }
                        Err(e) => seen.failed.lock().unwrap().push(format!("{url}: body: {e}")),
                    }
                }
                Ok(r) => seen.failed.lock().unwrap().push(format!("{url}: HTTP {}", r.status())),
                Err(e) => seen.failed.lock().unwrap().push(format!("{url}: {e:?}")),
            }
        }
    });
    out
}

/// A client trusting `ca` that reports the peer certificate; `fresh`: a new
/// connection with a full TLS handshake for every request (HTTP/1.1, no
/// pooling, no session resumption: a resumed session presents no certificate).
fn client(ca: &Path, fresh: bool, delay_ms: u32) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-sample-delay-ms", delay_ms.into());
    let b = reqwest::Client::builder().dns_resolver(Arc::new(LoopbackResolver)).default_headers(headers).tls_info(true);
    let b = if fresh {
        let mut config = rustls_client(ca);
        config.resumption = rustls::client::Resumption::disabled();
        b.use_preconfigured_tls(config).http1_only().pool_max_idle_per_host(0)
    } else {
        b.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
    };
    b.build().unwrap()
}

fn rustls_client(ca: &Path) -> rustls::ClientConfig {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The certificate a new TLS connection to `port` is given.
async fn presented(ca: &Path, port: u16, name: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::ServerName;
    let config = rustls_client(ca);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = tls.connect(ServerName::try_from(name.to_owned()).unwrap(), tcp).await.ok()?;
    Some(stream.get_ref().1.peer_certificates()?[0].to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_certificate_reaches_new_connections_and_no_request_fails() {
    let dir = tempdir();
    let ca = test_ca("Meridian rotation test CA");
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let (old_cert, old_key, old_der) = leaf(&ca);
    let (new_cert, new_key, new_der) = leaf(&ca);
    // One secret for both processes, as a cert-manager Certificate mounted twice.
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &old_cert).unwrap();
    std::fs::write(&key, &old_key).unwrap();
    let tls_args = ["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];

    let pg = Postgres::start().await;
    let ca_arg = ca_pem.to_str().unwrap();
    let mut args: Vec<String> =
        ["coordinator", "--listen", "127.0.0.1:0", "--postgres-url", &pg.url()].iter().map(|s| s.to_string()).collect();
    args.extend(
        ["--proxy-health-interval", "1s", "--heartbeat-interval", "1s", "--ca-cert", ca_arg]
            .into_iter()
            .chain(tls_args)
            .map(str::to_owned),
    );
    args.extend(["--secrets-key-file".to_owned(), dir.path().join("secrets.key").display().to_string()]);
    let coord = Coordinator::start_with(dir.path(), args).await;
    let api = client(&ca_pem, false, 0);
    let first = Api::with_http(&coord.url, api.clone(), None)
        .post("/api/v2/users/first", json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .await
        .expect_status(201);
    let admin = Api::with_http(&coord.url, api, first["session_token"].as_str());
    let token = admin.create_region("sydney").await;
    let mut proxy_args = vec!["--ca-cert", ca_arg];
    proxy_args.extend(tls_args);
    let proxy = Proxy::spawn(dir.path(), &coord.url, &token, &proxy_args).await;
    admin.wait_status("sydney", "ok", Duration::from_secs(20)).await;
    let relay_port = proxy.relay().port();

    let app = SampleApp::start(dir.path()).await;
    let ws = json!({"name": "dev", "agents": [{"name": "main", "apps": [
        {"slug": "open", "port": app.port, "share": "public"}]}]});
    let created = admin.post("/api/v2/workspaces", ws).await.expect_status(201);
    let agent_token = created["agent_tokens"]["main"].as_str().unwrap();
    let _agent = Agent::spawn_with(dir.path(), &coord.url, agent_token, &["--region", "sydney", "--ca-cert", ca_arg]);
    admin.wait_agent_on("dev", "sydney").await;

    // Load: through the proxy to the app and to the coordinator's API, each
    // over a new connection per request and over one kept-alive connection
    // whose requests take 100 ms (so some are in flight at the swap).
    let stop = Arc::new(AtomicBool::new(false));
    let app_url = format!("https://open--main--dev--admin.region.localhost:{}/rotation", proxy.port);
    let api_url = format!("{}/api/v2/buildinfo", coord.url);
    let streams = [
        (
            "app, new connections",
            load(client(&ca_pem, true, 0), app_url.clone(), [old_der.clone(), new_der.clone()], stop.clone()),
        ),
        (
            "app, kept alive",
            load(client(&ca_pem, false, 100), app_url, [old_der.clone(), new_der.clone()], stop.clone()),
        ),
        (
            "API, new connections",
            load(client(&ca_pem, true, 0), api_url.clone(), [old_der.clone(), new_der.clone()], stop.clone()),
        ),
        ("API, kept alive", load(client(&ca_pem, false, 0), api_url, [old_der.clone(), new_der.clone()], stop.clone())),
    ];
    wait_for(Duration::from_secs(10), "every stream to be served", || async {
        streams.iter().all(|(_, s)| s.ok.load(Ordering::Relaxed) >= 5).then_some(())
    })
    .await;
    assert_eq!(presented(&ca_pem, proxy.port, "localhost").await.as_deref(), Some(old_der.as_slice()));

    // Rotate as a person or a careless tool would: the key first, so for a
    // moment the files hold a mismatched pair, which must not be taken.
    let rotated = Instant::now();
    std::fs::write(&key, &new_key).unwrap();
    std::fs::write(&cert, &new_cert).unwrap();
    for (what, port) in [("proxy", proxy.port), ("relay", relay_port), ("coordinator", coord.port())] {
        wait_for(Duration::from_secs(10), &format!("the {what} to present the new certificate"), || async {
            (presented(&ca_pem, port, "localhost").await? == new_der).then_some(())
        })
        .await;
    }
    let swap = rotated.elapsed();
    let before: Vec<u64> = streams.iter().map(|(_, s)| s.ok.load(Ordering::Relaxed)).collect();
    // Keep the load on until every stream has 50 more answers, the fresh
    // connections on the new certificate.
    let counts = || -> Vec<String> {
        let c = |(n, s): &(&str, Arc<Seen>)| {
            let (ok, new) = (s.ok.load(Ordering::Relaxed), s.on_new.load(Ordering::Relaxed));
            format!("{n}: {ok} ok ({new} on the new certificate), {} failed", s.failed.lock().unwrap().len())
        };
        streams.iter().map(c).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let more = streams.iter().zip(&before).all(|((_, s), b)| s.ok.load(Ordering::Relaxed) >= b + 50);
        let mut fresh = streams.iter().filter(|(n, _)| n.ends_with("new connections"));
        if more && fresh.all(|(_, s)| s.on_new.load(Ordering::Relaxed) >= 50) {
            break;
        }
        assert!(Instant::now() < deadline, "no 50 more answers on every stream in 30 s: {:?}", counts());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);

    let report = counts();
    for (name, s) in &streams {
        assert_eq!(s.on_neither.load(Ordering::Relaxed), 0, "{name}: every answer names its certificate");
        let failed = s.failed.lock().unwrap().clone();
        assert!(failed.is_empty(), "{name}: {} failed: {failed:?}", failed.len());
    }
    // Connections kept alive across the swap keep the certificate they were
    // opened with: the kept-alive streams' 50 answers and more since the swap
    // all came over connections that presented the old one.
    for (name, kept) in streams.iter().filter(|(n, _)| n.ends_with("kept alive")) {
        assert_eq!(
            kept.on_new.load(Ordering::Relaxed),
            0,
            "{name}: a kept-alive connection changed certificate: {report:?}"
        );
    }
    assert!(proxy.proc.output().contains("TLS certificate reloaded"), "{}", proxy.proc.output());
    eprintln!("rotation: new certificate served by proxy, relay and coordinator within {swap:?}; {report:?}");
}
