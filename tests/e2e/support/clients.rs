//! Clients as users run them: a browser-like client (cookie jar, no automatic
//! redirects, loopback only, bounded), redirects followed by hand, raw requests,
//! TLS clients trusting a test CA, and user-space links in front of a process.

use super::*;

/// A plain HTTP client whose every call ends within [`CALL_TIMEOUT`].
pub fn bounded_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(CALL_TIMEOUT).build().expect("an HTTP client")
}

/// A self-signed CA named `name`, for tests that issue their own certificates.
pub fn test_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// Resolves every name to loopback: `*.localhost` app hosts work as in a
/// browser, and no test can send traffic anywhere else.
pub struct LoopbackResolver;

impl reqwest::dns::Resolve for LoopbackResolver {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(std::net::SocketAddr::from(([127, 0, 0, 1], 0))));
        Box::pin(std::future::ready(Ok(addrs)))
    }
}

/// [`browser`] with its cookie jar in hand.
pub fn client_with_jar() -> (reqwest::Client, std::sync::Arc<reqwest::cookie::Jar>) {
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(std::sync::Arc::new(LoopbackResolver))
        .build()
        .unwrap();
    (client, jar)
}

/// The value of cookie `name` that `jar` would send to `url`.
pub fn jar_cookie(jar: &reqwest::cookie::Jar, url: &str, name: &str) -> Option<String> {
    let header = reqwest::cookie::CookieStore::cookies(jar, &url.parse().unwrap())?;
    let header = header.to_str().ok()?.to_owned();
    header.split("; ").find_map(|c| c.strip_prefix(&format!("{name}=")).map(str::to_owned))
}

/// Sends `raw` (a whole HTTP/1.1 request) to loopback `port`; the status of the answer.
pub async fn raw_status(port: u16, raw: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(raw.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut head)).await.unwrap().unwrap();
    let status = std::str::from_utf8(&head[9..12]).unwrap_or_default();
    status.parse().unwrap_or_else(|_| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(&head)))
}

/// A browser-like client: a cookie jar, no automatic redirects, loopback
/// only, and bounded: a connection within 5 s, and no read waiting more than
/// 30 s (a long transfer that keeps moving is not cut).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(std::sync::Arc::new(LoopbackResolver))
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Follows redirects by hand (at most 10), returning every hop's status and the final response.
pub async fn follow(client: &reqwest::Client, url: &str) -> (Vec<(u16, String)>, reqwest::Response) {
    let mut url = reqwest::Url::parse(url).unwrap();
    let mut hops = Vec::new();
    for _ in 0..10 {
        let resp = client.get(url.clone()).timeout(Duration::from_secs(15)).send().await.unwrap();
        let status = resp.status().as_u16();
        hops.push((status, url.to_string()));
        if !(300..400).contains(&status) {
            return (hops, resp);
        }
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        url = url.join(&location).unwrap();
    }
    panic!("redirect loop: {hops:?}");
}

/// Signs `client`'s cookie jar in at the coordinator (as a browser's login form does).
pub async fn browser_login(client: &reqwest::Client, coordinator: &str, username: &str, password: &str) {
    // A browser names the page's origin on every POST; the API checks it.
    let origin = reqwest::Url::parse(coordinator).unwrap().origin().ascii_serialization();
    let resp = client
        .post(format!("{coordinator}/api/v2/users/login"))
        .header("origin", origin)
        .json(&serde_json::json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// A user-space network link (latency, stalls, resets) in front of `upstream`.
pub async fn link_to(upstream: &str) -> meridian_netsim::Link {
    let url = reqwest::Url::parse(upstream).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], url.port_or_known_default().unwrap()));
    meridian_netsim::Link::start("127.0.0.1:0".parse().unwrap(), addr).await.unwrap()
}

/// A link whose upstream is set later ([`meridian_netsim::Link::set_upstreams`]),
/// for a process that must be told the link's address before it listens.
pub async fn pending_link() -> meridian_netsim::Link {
    meridian_netsim::Link::start_pending("127.0.0.1:0".parse().unwrap()).await.unwrap()
}

/// A TLS client trusting the CA in `ca` (PEM), offering `alpn`.
pub fn tls_connector(ca: &std::path::Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let mut config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}
