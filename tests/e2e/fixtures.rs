//! The bad-input fixture tables (`tests/fixtures/*.yaml`, see their README),
//! driven raw against a real proxy, agent and a recording app: what the client
//! got, whether the connection closed, and what reached the app.

use crate::support::*;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest wait for any one answer.
const ANSWER: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestCase {
    name: String,
    raw: String,
    status: u16,
    #[serde(default)]
    close: bool,
    reaches_app: Option<bool>,
    forwarded: Option<String>,
}

/// An HTTP/2 request sent as raw frames (`h2.yaml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct H2Case {
    name: String,
    /// The header block in order, pseudo-headers included: `[name, value]` pairs.
    headers: Vec<(String, String)>,
    /// DATA frames after the HEADERS frame, the last ending the stream (none: HEADERS ends it).
    #[serde(default)]
    data: Vec<String>,
    /// The HEADERS frame ends the stream even though DATA frames follow.
    #[serde(default)]
    data_after_end: bool,
    outcome: H2Outcome,
    /// Whether the request reaches the app; absent: either (the head of a
    /// request whose body breaks its framing may have gone before the body).
    reaches_app: Option<bool>,
    forwarded: Option<String>,
}

/// What the proxy did with the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum H2Outcome {
    /// A response (HEADERS) on the stream.
    Answer,
    /// The stream reset (RST_STREAM) or the connection ended (GOAWAY): a malformed request.
    Reset,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamCase {
    name: String,
    method: String,
    response: String,
}

fn load<T: serde::de::DeserializeOwned>(file: &str) -> Vec<T> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An app that records every byte and request head it receives, answers
/// `{"conn": N, "target": "..."}`, and answers `/bad/{i}` with upstream case
/// `i`'s raw response.
struct RecordingApp {
    port: u16,
    bytes: Arc<AtomicU64>,
    raw: Arc<Mutex<Vec<u8>>>,
    /// (connection number, request target), in arrival order.
    seen: Arc<Mutex<Vec<(u64, String)>>>,
}

impl RecordingApp {
    async fn start(bad: Vec<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = RecordingApp { port, bytes: Default::default(), raw: Default::default(), seen: Default::default() };
        let (bytes, raw, seen, bad) = (app.bytes.clone(), app.raw.clone(), app.seen.clone(), Arc::new(bad));
        tokio::spawn(async move {
            for conn in 1u64.. {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (bytes, raw, seen, bad) = (bytes.clone(), raw.clone(), seen.clone(), bad.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, stream, &bytes, &raw, &seen, &bad).await;
                });
            }
        });
        app
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    fn raw_since(&self, from: u64) -> String {
        let raw = self.raw.lock().unwrap();
        String::from_utf8_lossy(&raw[from as usize..]).into_owned()
    }

    fn seen(&self) -> Vec<(u64, String)> {
        self.seen.lock().unwrap().clone()
    }
}

/// Reads what comes next on `stream` into `buf`, counting and keeping it;
/// false at the end of the stream.
async fn record(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    bytes: &AtomicU64,
    raw: &Mutex<Vec<u8>>,
) -> std::io::Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    bytes.fetch_add(n as u64, Ordering::SeqCst);
    raw.lock().unwrap().extend_from_slice(&chunk[..n]);
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

/// One app connection: minimal HTTP/1.1 (httparse for heads; bodies by
/// Content-Length or to the last chunk).
async fn serve(
    conn: u64,
    mut stream: TcpStream,
    bytes: &AtomicU64,
    raw: &Mutex<Vec<u8>>,
    seen: &Mutex<Vec<(u64, String)>>,
    bad: &[String],
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        // A whole head, then its body.
        let (head_len, target, method, body) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 256];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let header = |name: &str| {
                    req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.to_vec())
                };
                let body = match (header("content-length"), header("transfer-encoding")) {
                    (_, Some(_)) => None,
                    (Some(cl), None) => Some(String::from_utf8_lossy(&cl).trim().parse::<usize>().unwrap_or(0)),
                    (None, None) => Some(0),
                };
                break (n, req.path.unwrap_or("").to_owned(), req.method.unwrap_or("").to_owned(), body);
            }
            if !record(&mut stream, &mut buf, bytes, raw).await? {
                return Ok(());
            }
        };
        let end = loop {
            let rest = &buf[head_len..];
            let end = match body {
                Some(len) => (rest.len() >= len).then_some(head_len + len),
                None => rest.windows(5).position(|w| w == b"0\r\n\r\n").map(|p| head_len + p + 5),
            };
            if let Some(end) = end {
                break end;
            }
            if !record(&mut stream, &mut buf, bytes, raw).await? {
                return Ok(());
            }
        };
        buf.drain(..end);
        seen.lock().unwrap().push((conn, target.clone()));
        let bad_case = target.strip_prefix("/bad/").and_then(|i| i.parse::<usize>().ok()).and_then(|i| bad.get(i));
        let response = match bad_case {
            Some(raw) => raw.clone(),
            None => {
                let body = json!({"conn": conn, "target": target}).to_string();
                let body = if method == "HEAD" { String::new() } else { body };
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
        };
        stream.write_all(response.as_bytes()).await?;
    }
}

struct World {
    app: RecordingApp,
    proxy: Proxy,
    vars: Vec<(&'static str, String)>,
    /// A client holding the public apps' token cookies.
    client: reqwest::Client,
    host: String,
    coord_url: String,
    /// The coordinator's app-token key, as proxies receive it.
    key: meridian_regions::app_token::PublicKey,
    /// The CA's PEM file, when the proxy serves HTTPS.
    tls: Option<std::path::PathBuf>,
    _rest: (Agent, Coordinator, Postgres, tempfile::TempDir),
}

async fn world(bad: Vec<String>, proxy_args: &[&str]) -> World {
    world_with(bad, proxy_args, false).await
}

/// [`world`], with the proxy on HTTPS (HTTP/2 over ALPN) when `tls`: a test
/// CA signs its certificate, and the coordinator, the agent and the world's
/// client trust it (`World::tls` holds the CA's PEM file).
async fn world_with(bad: Vec<String>, proxy_args: &[&str], tls: bool) -> World {
    let dir = tempdir();
    let ca_pem = dir.path().join("ca.pem");
    let (mut coord_args, mut proxy_args, mut agent_args) = (
        vec!["--dangerous-allow-path-app-sharing".to_owned()],
        strings(proxy_args),
        vec!["--region".to_owned(), "fixture".into()],
    );
    if tls {
        let ca = test_ca("Meridian fixture CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let names = vec!["*.fixture.localhost".to_owned(), "127.0.0.1".into()];
        let leaf = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();
        let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        std::fs::write(&cert_pem, leaf.pem()).unwrap();
        std::fs::write(&key_pem, key.serialize_pem()).unwrap();
        let ca_arg = ca_pem.display().to_string();
        coord_args.extend(["--ca-cert".to_owned(), ca_arg.clone()]);
        proxy_args.extend([
            "--tls-cert".to_owned(),
            cert_pem.display().to_string(),
            "--tls-key".into(),
            key_pem.display().to_string(),
        ]);
        agent_args.extend(["--ca-cert".to_owned(), ca_arg]);
    }
    let pg = Postgres::start().await;
    // A public path app is part of the fixtures (its answers come sandboxed).
    let coord = Coordinator::start(dir.path(), &pg.url(), "1s", &refs(&coord_args)).await;
    let admin = coord.admin().await;
    let token = admin.create_region("fixture").await;
    let mut proxy = Proxy::spawn_named(dir.path(), &coord.url, &token, "fixture", &refs(&proxy_args)).await;
    if tls {
        // The harness's own probe does not trust the test CA; the coordinator does.
        admin.wait_status("fixture", "ok", Duration::from_secs(30)).await;
    } else {
        proxy.wait_registered().await;
    }
    let app = RecordingApp::start(bad).await;
    let apps = json!([
        {"slug": "raw", "port": app.port, "share": "public"},
        {"slug": "rawp", "port": app.port, "share": "public", "subdomain": false},
        {"slug": "private", "port": app.port, "subdomain": false},
        {"slug": "code", "port": app.port},
    ]);
    let created = admin
        .post("/api/v2/workspaces", json!({"name": "dev", "agents": [{"name": "main", "apps": apps}]}))
        .await
        .expect_status(201);
    let agent = Agent::spawn_with(
        dir.path(),
        &coord.url,
        created["agent_tokens"]["main"].as_str().unwrap(),
        &refs(&agent_args),
    );
    admin.wait_agent_on("dev", "fixture").await;

    // Open both public apps once, signed out, to get their token cookies.
    let (client, jar) = if tls { client_with_jar_trusting(&ca_pem) } else { client_with_jar() };
    let (app_label, base, port) = ("raw--main--dev--admin", "fixture.localhost", proxy.port);
    let host = format!("{app_label}.{base}:{port}");
    let scheme = if tls { "https" } else { "http" };
    let sub_url = format!("{scheme}://{host}/");
    let path_url = format!("{scheme}://127.0.0.1:{port}/@admin/dev/apps/rawp/");
    let mut cookies = Vec::new();
    for url in [&sub_url, &path_url] {
        let (hops, resp) = follow(&client, url).await;
        assert_eq!(resp.status(), 200, "{url}: {hops:?}");
        let cookie = reqwest::cookie::CookieStore::cookies(&*jar, &url.parse().unwrap()).expect("a token cookie");
        cookies.push(cookie.to_str().unwrap().to_owned());
    }
    let vars = vec![
        ("{host}", host.clone()),
        ("{cookie}", cookies[0].clone()),
        ("{path_cookie}", cookies[1].clone()),
        ("{proxy}", format!("127.0.0.1:{port}")),
        ("{app}", app_label.to_owned()),
        ("{base}", base.to_owned()),
        ("{port}", port.to_string()),
    ];
    let credential = meridian_regions::client::Credential::Proxy(meridian_regions::token::Secret::new(&token));
    let keys = meridian_regions::client::Client::new(&coord.url, credential, reqwest::Client::new()).keys().await;
    let key = keys.expect("the proxy keys").keys.into_iter().next().expect("a key");
    let tls = tls.then_some(ca_pem);
    World { app, proxy, vars, client, host, coord_url: coord.url.clone(), key, tls, _rest: (agent, coord, pg, dir) }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// [`client_with_jar`] trusting the CA in `ca_pem` too.
fn client_with_jar_trusting(ca_pem: &std::path::Path) -> (reqwest::Client, Arc<reqwest::cookie::Jar>) {
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_pem).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(LoopbackResolver))
        .add_root_certificate(ca)
        .build()
        .unwrap();
    (client, jar)
}

/// A browser-like client (loopback names, no automatic redirects) whose cookies can be read.
/// Fills the placeholders of a raw request.
fn expand(raw: &str, vars: &[(&str, String)]) -> Vec<u8> {
    let mut s = raw.to_owned();
    while let Some(start) = s.find("{{repeat:") {
        let end = start + s[start..].find("}}").expect("unclosed {{repeat:N:TEXT}}");
        let (n, text) = s[start + 9..end].split_once(':').expect("{{repeat:N:TEXT}}");
        let repeated = text.repeat(n.parse().expect("a repeat count"));
        s.replace_range(start..end + 2, &repeated);
    }
    for (k, v) in vars {
        s = s.replace(k, v);
    }
    s.into_bytes()
}

/// Sends `raw` on a new connection; the first response's status, and whether
/// the proxy then closed the connection with nothing more sent (only waited
/// for when `expect_close`).
async fn exchange(port: u16, raw: &[u8], expect_close: bool) -> (u16, Option<bool>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // The proxy may refuse before reading everything: a failed write is fine.
    let _ = s.write_all(raw).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (status, end) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = resp.parse(&buf) {
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (resp.code.unwrap(), n + len);
        }
        let n = tokio::time::timeout(ANSWER, s.read(&mut chunk)).await.expect("an answer in time").unwrap_or(0);
        assert!(n > 0, "connection closed without an answer: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    if !expect_close {
        return (status, None);
    }
    // Read to the end: only the one response may come, then EOF.
    let closed = loop {
        match tokio::time::timeout(ANSWER, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
    };
    let after = String::from_utf8_lossy(buf.get(end..).unwrap_or_default()).into_owned();
    assert!(after.is_empty(), "bytes after the one response: {after:?}");
    (status, Some(closed))
}

async fn run_request_cases(w: &World, file: &str) {
    let cases: Vec<RequestCase> = load(file);
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in &cases {
        let raw = expand(&case.raw, &w.vars);
        let (bytes_before, seen_before) = (w.app.bytes(), w.app.seen().len());
        let (status, closed) = exchange(w.proxy.port, &raw, case.close).await;
        let mut wrong = Vec::new();
        if status != case.status {
            wrong.push(format!("status {status}, want {}", case.status));
        }
        if closed == Some(false) {
            wrong.push("the connection stayed open".to_owned());
        }
        let reached = w.app.bytes() > bytes_before;
        if reached != case.reaches_app.unwrap_or(case.status < 400) {
            wrong.push(format!("reached the app: {reached}"));
        }
        if case.close && w.app.raw_since(bytes_before).contains("smuggled") {
            wrong.push("a request pipelined behind it reached the app".to_owned());
        }
        if let Some(want) = &case.forwarded {
            let seen: Vec<String> = w.app.seen()[seen_before..].iter().map(|(_, t)| t.clone()).collect();
            if seen.first() != Some(want) {
                wrong.push(format!("the app saw {seen:?}, want {want:?}"));
            }
        }
        if !wrong.is_empty() {
            failures.push(format!("{file}: {}: {}", case.name, wrong.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// One HTTP/2 frame: 9 bytes of header (length, type, flags, stream), then the payload.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A header block of literal fields, not indexed, names and values as they
/// are (RFC 7541 §6.2.2, no Huffman): whatever the case puts there is sent,
/// uppercase names and control bytes included, which HTTP/2 libraries refuse to send.
fn header_block(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    fn length(out: &mut Vec<u8>, mut n: usize) {
        if n < 127 {
            out.push(n as u8);
            return;
        }
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    let mut block = Vec::new();
    for (name, value) in headers {
        block.push(0);
        length(&mut block, name.len());
        block.extend_from_slice(name);
        length(&mut block, value.len());
        block.extend_from_slice(value);
    }
    block
}

/// Sends `case` as the first stream of a new HTTP/2 connection (TLS, ALPN
/// h2) and reads frames until the proxy answers the stream or refuses it.
async fn h2_exchange(w: &World, case: &H2Case) -> Result<H2Outcome, String> {
    let connector = tls_connector(w.tls.as_deref().expect("a TLS world"), &[b"h2"]);
    let tcp = TcpStream::connect(("127.0.0.1", w.proxy.port)).await.unwrap();
    let sni = rustls::pki_types::ServerName::try_from(w.host.split(':').next().unwrap().to_owned()).unwrap();
    let mut s = connector.connect(sni, tcp).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "HTTP/2 over ALPN");
    let headers: Vec<(Vec<u8>, Vec<u8>)> =
        case.headers.iter().map(|(n, v)| (expand(n, &w.vars), expand(v, &w.vars))).collect();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 0x4, 0, 0, &[]); // SETTINGS
    let (end_stream, end_headers) = (0x1, 0x4);
    let ends = case.data.is_empty() || case.data_after_end;
    frame(&mut out, 0x1, end_headers | if ends { end_stream } else { 0 }, 1, &header_block(&headers));
    for (i, data) in case.data.iter().enumerate() {
        let last = i + 1 == case.data.len();
        frame(&mut out, 0x0, if last { end_stream } else { 0 }, 1, &expand(data, &w.vars));
    }
    // The proxy may refuse before reading everything: a failed write is fine.
    let _ = s.write_all(&out).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, stream) = (buf[3], u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff);
            match (kind, stream) {
                (0x1, 1) => return Ok(H2Outcome::Answer),
                (0x3, 1) | (0x7, _) => return Ok(H2Outcome::Reset),
                _ => {}
            }
            buf.drain(..9 + len);
        }
        let n = tokio::time::timeout(ANSWER, s.read(&mut chunk)).await.map_err(|_| "no answer in time")?;
        match n {
            Ok(0) | Err(_) => return Err("connection closed without a frame for the stream".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_framing_cases_get_their_documented_answers() {
    let w = world_with(Vec::new(), &[], true).await;
    let cases: Vec<H2Case> = load("h2.yaml");
    assert!(!cases.is_empty());
    // Each case asks for its own path: what reached the app is told by path,
    // so a head forwarded late is never counted for the next case.
    let path = |c: &H2Case| c.headers.iter().find(|(n, _)| n == ":path").map(|(_, v)| v.clone()).unwrap_or_default();
    let reached = |p: &str| !p.is_empty() && w.app.seen().iter().any(|(_, t)| t == p);
    let mut failures = Vec::new();
    for case in &cases {
        let seen_before = w.app.seen().len();
        let outcome = h2_exchange(&w, case).await;
        let mut wrong = Vec::new();
        if outcome != Ok(case.outcome) {
            wrong.push(format!("{outcome:?}, want {:?}", case.outcome));
        }
        if case.reaches_app == Some(true) && !reached(&path(case)) {
            wrong.push("did not reach the app".to_owned());
        }
        if let Some(want) = &case.forwarded {
            let seen: Vec<String> = w.app.seen()[seen_before..].iter().map(|(_, t)| t.clone()).collect();
            if seen.first() != Some(want) {
                wrong.push(format!("the app saw {seen:?}, want {want:?}"));
            }
        }
        if !wrong.is_empty() {
            failures.push(format!("h2.yaml: {}: {}", case.name, wrong.join("; ")));
        }
    }
    // Once every case has run (nothing still on its way): no refused request
    // ever reached the app, nor any byte of a request hidden in a body.
    for case in cases.iter().filter(|c| c.reaches_app == Some(false)) {
        if reached(&path(case)) {
            failures.push(format!("h2.yaml: {}: reached the app", case.name));
        }
    }
    if w.app.raw_since(0).contains("smuggled") {
        failures.push("h2.yaml: a request hidden in a body reached the app".to_owned());
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_hosts_and_paths_get_their_documented_answers() {
    let w = world(Vec::new(), &[]).await;
    for file in ["requests.yaml", "hosts.yaml", "paths.yaml"] {
        run_request_cases(&w, file).await;
    }
}

#[derive(Debug, Deserialize)]
struct TokenCase {
    name: String,
    tamper: Option<String>,
    expect: String,
    #[serde(default)]
    proxy: bool,
}

async fn refetches(w: &World) -> u64 {
    let base = format!("http://127.0.0.1:{}", w.proxy.port);
    metric(&base, "meridian_proxy_key_refetches_total").await.unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_matrix_through_the_proxy() {
    let w = world(Vec::new(), &[]).await;
    // The owner's genuine token for the owner-only app `code`.
    let (owner, jar) = client_with_jar();
    browser_login(&owner, &w.coord_url, "admin", ADMIN_PASSWORD).await;
    let url = format!("http://code--main--dev--admin.fixture.localhost:{}/", w.proxy.port);
    let (hops, resp) = follow(&owner, &url).await;
    assert_eq!(resp.status(), 200, "{hops:?}");
    let cookies = reqwest::cookie::CookieStore::cookies(&*jar, &url.parse().unwrap()).unwrap();
    let token = cookies
        .to_str()
        .unwrap()
        .split("; ")
        .find_map(|c| c.strip_prefix("meridian_app_token="))
        .expect("an app token")
        .to_owned();

    // Presented without a session: served only if the token holds, else sent to log in.
    let stranger = browser();
    let cases: Vec<TokenCase> = load("tokens.yaml");
    let mut checked = 0;
    for case in cases.iter().filter(|c| c.proxy) {
        let presented = match &case.tamper {
            Some(how) => meridian_regions::app_token::tamper(&token, how, &w.key).expect("a tamperable token"),
            None => token.clone(),
        };
        let before = refetches(&w).await;
        let r = stranger.get(&url).header("cookie", format!("meridian_app_token={presented}")).send().await.unwrap();
        let want = if case.expect == "ok" { 200 } else { 303 };
        assert_eq!(r.status(), want, "{}", case.name);
        let refetched = refetches(&w).await - before;
        let want_refetch = u64::from(case.expect == "unknown_key");
        assert_eq!(refetched, want_refetch, "{}: key refetches", case.name);
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} cases go through the proxy");
    // Another unknown key id at once: refused without another refetch.
    let unknown = meridian_regions::app_token::tamper(&token, "kid_unknown", &w.key).unwrap();
    let before = refetches(&w).await;
    let r = stranger.get(&url).header("cookie", format!("meridian_app_token={unknown}")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(refetches(&w).await, before, "key refetches are rate-limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_upstream_connections_are_never_reused() {
    let cases: Vec<UpstreamCase> = load("upstream.yaml");
    let w = world(cases.iter().map(|c| c.response.clone()).collect(), &[]).await;
    for (i, case) in cases.iter().enumerate() {
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
        // Whatever the client gets for the bad answer (it may be an error)...
        let _ = w.client.request(method, format!("http://{}/bad/{i}", w.host)).send().await;
        let bad_conn = w.app.seen().iter().rev().find(|(_, t)| *t == format!("/bad/{i}")).map(|(c, _)| *c);
        let bad_conn = bad_conn.unwrap_or_else(|| panic!("{}: the app never got the request", case.name));
        // ...the next request is answered by the app, on another connection.
        let next = w.client.get(format!("http://{}/after/{i}", w.host)).send().await.unwrap();
        assert_eq!(next.status(), 200, "{}", case.name);
        let body = next.text().await.unwrap();
        assert!(!body.contains("SMUGGLED"), "{}: a leftover answer was served: {body}", case.name);
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["target"], format!("/after/{i}"), "{}", case.name);
        assert_ne!(answer["conn"], bad_conn, "{}: the poisoned connection was reused", case.name);
    }
}

/// HTTP/1.1 pipelining (RFC 9112 §9.3.2): requests sent back to back on one
/// connection, before any answer, are each answered, in order; the last one
/// (with a body) asks to close, and the proxy closes after answering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let w = world(Vec::new(), &[]).await;
    let raw = expand(
        "GET /first HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n\
         GET /second?x=1 HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n\
         POST /third HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        &w.vars,
    );
    let mut s = TcpStream::connect(("127.0.0.1", w.proxy.port)).await.unwrap();
    s.write_all(&raw).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(ANSWER, s.read_to_end(&mut all)).await.expect("the proxy closed in time").unwrap();
    // Each answer: a head, then a body of its Content-Length.
    let mut targets = Vec::new();
    let mut rest = &all[..];
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = resp.parse(rest) else {
            panic!("not a whole answer: {:?}", String::from_utf8_lossy(rest));
        };
        assert_eq!(resp.code, Some(200), "{}", String::from_utf8_lossy(rest));
        let len = resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length"));
        let len: usize = std::str::from_utf8(len.expect("a content-length").value).unwrap().parse().unwrap();
        let body: Value = serde_json::from_slice(&rest[n..n + len]).unwrap();
        targets.push(body["target"].as_str().unwrap().to_owned());
        rest = &rest[n + len..];
    }
    assert_eq!(targets, ["/first", "/second?x=1", "/third"], "{}", String::from_utf8_lossy(&all));
}
