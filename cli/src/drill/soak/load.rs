//! The soak's synthetic users: through every region at once, small GETs,
//! 1 MiB downloads, uploads whose hash the app checks, WebSockets held open
//! and echoing, and streamed responses. Every exchange is checked for being
//! the answer to this request (the echoed path, the body's pattern and
//! length, the hash, the message, the sequence) and recorded with its times.

use super::ledger::{Socket, Sockets, AGENT_PREFIX};
use crate::drill::traffic::transport;
use futures_util::{SinkExt, StreamExt};
use meridian_sample_app::pattern_byte;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

/// What kind of exchange a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Get,
    Download,
    Upload,
    /// One message echoed over a held WebSocket.
    WebSocket,
    /// One whole streamed response.
    Stream,
}

/// How one exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The client saw an error (a status, a reset, a closed connection): the cause.
    Failed(String),
    /// An answer that is not this request's, or a body that is not what was
    /// sent or asked for: what was wrong.
    Corrupt(String),
    /// No complete answer (or no progress) within the timeout.
    Hung,
}

#[derive(Debug, Clone)]
pub struct Record {
    pub region: String,
    pub kind: Kind,
    /// Since the soak started.
    pub sent: Duration,
    /// When the connection it went over began: a WebSocket message's is the
    /// WebSocket's opening, anything else's is `sent`.
    pub since: Duration,
    pub done: Duration,
    pub outcome: Outcome,
    /// Sent a second time, as a browser does, because a kept-alive connection
    /// closed before any answer to the first: what the first attempt saw.
    pub retried: Option<String>,
}

/// How much of each kind one region gets.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Small GETs per second.
    pub gets_per_s: u32,
    /// One 1 MiB download and one upload every this long.
    pub bulk_every: Duration,
    /// WebSockets held open at once; each echoes a message every `message_every`.
    pub websockets: usize,
    pub message_every: Duration,
    /// How long one WebSocket and one streamed response last: shorter than the
    /// proxies' drain period, so a graceful restart lets them finish.
    pub session: Duration,
    pub timeout: Duration,
}

pub const DOWNLOAD_BYTES: u64 = 1 << 20;
const UPLOAD_BYTES: usize = 256 << 10;
const STREAM_EVERY: Duration = Duration::from_millis(200);

/// Where one region's users go.
#[derive(Clone)]
pub struct Target {
    pub region: String,
    /// The app's root through this region, ending in `/`.
    pub url: String,
}

pub type Records = Arc<Mutex<Vec<Record>>>;

/// Starts every kind of traffic to every target; they run until `stop` turns true.
pub fn start(
    targets: &[Target],
    browser: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
    mix: Mix,
    epoch: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Records, Sockets, tokio::task::JoinSet<()>) {
    let records: Records = Arc::default();
    let sockets: Sockets = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for t in targets {
        let user = User {
            target: t.clone(),
            browser: browser.clone(),
            jar: jar.clone(),
            mix,
            epoch,
            records: records.clone(),
            sockets: sockets.clone(),
        };
        let every = Duration::from_secs(1) / mix.gets_per_s.max(1);
        tasks.spawn(user.clone().repeat(every, stop.clone(), |u, n| async move { u.get(n).await }));
        tasks.spawn(user.clone().repeat(mix.bulk_every, stop.clone(), |u, n| async move { u.download(n).await }));
        tasks.spawn(user.clone().repeat(mix.bulk_every, stop.clone(), |u, n| async move { u.upload(n).await }));
        tasks.spawn(user.clone().streams(stop.clone()));
        for i in 0..mix.websockets {
            tasks.spawn(user.clone().websockets(i, stop.clone()));
        }
    }
    (records, sockets, tasks)
}

#[derive(Clone)]
struct User {
    target: Target,
    browser: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
    mix: Mix,
    epoch: Instant,
    records: Records,
    /// The WebSockets opened, for the connection log's check ([`super::ledger`]).
    sockets: Sockets,
}

impl User {
    fn record(&self, kind: Kind, sent: Duration, outcome: Outcome, retried: Option<String>) {
        self.record_on(kind, sent, sent, outcome, retried);
    }

    fn record_on(&self, kind: Kind, since: Duration, sent: Duration, outcome: Outcome, retried: Option<String>) {
        let done = self.epoch.elapsed();
        let r = Record { region: self.target.region.clone(), kind, sent, since, done, outcome, retried };
        self.records.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }

    /// Runs `one(n)` every `every` (each in its own task, so a slow one does
    /// not delay the next) until stopped, then waits for those in flight.
    async fn repeat<F, Fut>(self, every: Duration, stop: tokio::sync::watch::Receiver<bool>, one: F)
    where
        F: Fn(User, u64) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inflight = tokio::task::JoinSet::new();
        for n in 0u64.. {
            ticker.tick().await;
            if *stop.borrow() {
                break;
            }
            inflight.spawn(one(self.clone(), n));
            while inflight.try_join_next().is_some() {}
        }
        while inflight.join_next().await.is_some() {}
    }

    /// `exchange` bounded by the timeout, recorded with its resend, if any.
    async fn timed(
        &self,
        kind: Kind,
        retried: &OnceLock<String>,
        exchange: impl std::future::Future<Output = Outcome>,
    ) {
        let sent = self.epoch.elapsed();
        let outcome = tokio::time::timeout(self.mix.timeout, exchange).await.unwrap_or(Outcome::Hung);
        self.record(kind, sent, outcome, retried.get().cloned());
    }

    async fn get(self, n: u64) {
        let path = format!("soak/{}/get/{n}", self.target.region);
        let url = format!("{}{path}", self.target.url);
        let retried = OnceLock::new();
        self.timed(Kind::Get, &retried, async {
            let resp = match send_once_more(|| self.browser.get(&url), &retried).await {
                Ok(r) => r,
                Err(e) => return Outcome::Failed(transport(&e)),
            };
            let status = resp.status().as_u16();
            let Ok(body) = resp.bytes().await else { return Outcome::Failed("body cut short".into()) };
            if status != 200 {
                return Outcome::Failed(status_cause(status, &body));
            }
            let echoed = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
            match echoed["uri"].as_str() {
                Some(uri) if uri.ends_with(&path) => Outcome::Ok,
                other => Outcome::Corrupt(format!("GET /{path} answered for {other:?}")),
            }
        })
        .await;
    }

    async fn download(self, n: u64) {
        let url = format!("{}soak/{}/download/{n}", self.target.url, self.target.region);
        let retried = OnceLock::new();
        self.timed(Kind::Download, &retried, async {
            let req =
                || self.browser.get(&url).header("x-sample-body-bytes", DOWNLOAD_BYTES).header("x-sample-body-seed", n);
            let mut resp = match send_once_more(req, &retried).await {
                Ok(r) => r,
                Err(e) => return Outcome::Failed(transport(&e)),
            };
            if resp.status() != 200 {
                let status = resp.status().as_u16();
                return Outcome::Failed(status_cause(status, &resp.bytes().await.unwrap_or_default()));
            }
            let mut at = 0u64;
            loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        let wrong = chunk.iter().enumerate().position(|(i, b)| *b != pattern_byte(n, at + i as u64));
                        if let Some(i) = wrong {
                            return Outcome::Corrupt(format!("download {n}: byte {} is not its own", at + i as u64));
                        }
                        at += chunk.len() as u64;
                    }
                    Ok(None) if at == DOWNLOAD_BYTES => return Outcome::Ok,
                    Ok(None) => return Outcome::Corrupt(format!("download {n}: {at} bytes of {DOWNLOAD_BYTES}")),
                    // The response was cut: the client knows it failed (nothing was passed off as whole).
                    Err(_) => return Outcome::Failed("download cut short".into()),
                }
            }
        })
        .await;
    }

    async fn upload(self, n: u64) {
        let url = format!("{}upload", self.target.url);
        let body: bytes::Bytes = (0..UPLOAD_BYTES as u64).map(|i| pattern_byte(n ^ 0x5eed, i)).collect();
        let sha: String = Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
        let retried = OnceLock::new();
        self.timed(Kind::Upload, &retried, async {
            let req = || self.browser.post(&url).header("x-sample-sha256", &sha).body(body.clone());
            let resp = match send_once_more(req, &retried).await {
                Ok(r) => r,
                Err(e) => return Outcome::Failed(transport(&e)),
            };
            let status = resp.status().as_u16();
            let Ok(answer) = resp.bytes().await else { return Outcome::Failed("answer cut short".into()) };
            match status {
                // The app received a body that is not the one sent.
                422 => Outcome::Corrupt(format!("upload {n}: {}", String::from_utf8_lossy(&answer))),
                200 => {
                    let seen = serde_json::from_slice::<serde_json::Value>(&answer).unwrap_or_default();
                    if seen["sha256"] == sha.as_str() {
                        Outcome::Ok
                    } else {
                        Outcome::Corrupt(format!("upload {n}: answered with {seen}"))
                    }
                }
                s => Outcome::Failed(status_cause(s, &answer)),
            }
        })
        .await;
    }

    /// Streamed responses one after another, each `session` long: the lines
    /// must come in order, and none later than the timeout after the last.
    async fn streams(self, stop: tokio::sync::watch::Receiver<bool>) {
        let count = (self.mix.session.as_millis() / STREAM_EVERY.as_millis()).max(1) as u64;
        let url = format!("{}stream?count={count}&every_ms={}", self.target.url, STREAM_EVERY.as_millis());
        while !*stop.borrow() {
            let sent = self.epoch.elapsed();
            let retried = OnceLock::new();
            let outcome = self.stream(&url, count, &retried).await;
            let failed = outcome != Outcome::Ok;
            self.record(Kind::Stream, sent, outcome, retried.into_inner());
            if failed {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    async fn stream(&self, url: &str, count: u64, retried: &OnceLock<String>) -> Outcome {
        let timeout = self.mix.timeout;
        let mut resp = match tokio::time::timeout(timeout, send_once_more(|| self.browser.get(url), retried)).await {
            Err(_) => return Outcome::Hung,
            Ok(Err(e)) => return Outcome::Failed(transport(&e)),
            Ok(Ok(r)) => r,
        };
        if resp.status() != 200 {
            let status = resp.status().as_u16();
            return Outcome::Failed(status_cause(status, &resp.bytes().await.unwrap_or_default()));
        }
        let mut text = String::new();
        loop {
            match tokio::time::timeout(timeout, resp.chunk()).await {
                Err(_) => return Outcome::Hung,
                Ok(Err(_)) => return Outcome::Failed("stream cut short".into()),
                Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(Ok(None)) => break,
            }
        }
        let expected: String = (0..count).map(|i| format!("{i}\n")).collect();
        if text == expected {
            Outcome::Ok
        } else {
            Outcome::Corrupt(format!("stream of {count} lines came as {} bytes out of order", text.len()))
        }
    }

    /// One WebSocket after another, each held `session`, echoing a message
    /// every `message_every`; each message is a record.
    async fn websockets(self, slot: usize, stop: tokio::sync::watch::Receiver<bool>) {
        let mut n = 0u64;
        for opening in 0u64.. {
            if *stop.borrow() {
                break;
            }
            let opened = self.epoch.elapsed();
            let agent = format!("{AGENT_PREFIX}{}/{slot}/{opening}", self.target.region);
            match tokio::time::timeout(self.mix.timeout, self.connect_ws(&agent)).await {
                Err(_) => self.record(Kind::WebSocket, opened, Outcome::Hung, None),
                Ok(Err(cause)) => self.record(Kind::WebSocket, opened, Outcome::Failed(cause), None),
                Ok(Ok(mut ws)) => {
                    let mut socket = Socket { agent, region: self.target.region.clone(), ..Default::default() };
                    let until = Instant::now() + self.mix.session;
                    while Instant::now() < until && !*stop.borrow() {
                        n += 1;
                        let text = format!("{}/{slot}/{n}", self.target.region);
                        let sent = self.epoch.elapsed();
                        (socket.sent, socket.sent_bytes) = (socket.sent + 1, socket.sent_bytes + text.len() as u64);
                        let outcome =
                            tokio::time::timeout(self.mix.timeout, echo(&mut ws, &text)).await.unwrap_or(Outcome::Hung);
                        let broken = outcome != Outcome::Ok;
                        if !broken {
                            socket.echoed += 1;
                            socket.echoed_bytes += text.len() as u64;
                        }
                        self.record_on(Kind::WebSocket, opened, sent, outcome, None);
                        if broken {
                            break;
                        }
                        tokio::time::sleep(self.mix.message_every).await;
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    self.sockets.lock().unwrap_or_else(|e| e.into_inner()).push(socket);
                    continue;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A WebSocket to the app's echo, named `agent` (its `User-Agent`).
    async fn connect_ws(&self, agent: &str) -> Result<Ws, String> {
        let url = reqwest::Url::parse(&self.target.url).map_err(|e| e.to_string())?;
        let ws_url = format!("{}ws", self.target.url.replacen("http", "ws", 1));
        let mut request = ws_url.into_client_request().map_err(|e| e.to_string())?;
        use reqwest::cookie::CookieStore;
        if let Some(cookies) = self.jar.cookies(&url) {
            request.headers_mut().insert("cookie", cookies);
        }
        let agent = agent.parse().map_err(|_| format!("{agent:?} is no header value"))?;
        request.headers_mut().insert("user-agent", agent);
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or(80);
        // `.localhost` names are loopback (RFC 6761), which the system resolver may not know.
        let tcp = if meridian_regions::resolve::is_localhost(host) {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await
        } else {
            tokio::net::TcpStream::connect((host, port)).await
        }
        .map_err(|e| format!("connect: {}", e.kind()))?;
        let (ws, resp) =
            tokio_tungstenite::client_async_tls_with_config(request, tcp, None, None).await.map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => format!("HTTP {}", r.status().as_u16()),
                e => format!("WebSocket handshake: {e}"),
            })?;
        drop(resp);
        Ok(ws)
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn echo(ws: &mut Ws, text: &str) -> Outcome {
    if ws.send(Message::text(text)).await.is_err() {
        return Outcome::Failed("WebSocket closed".into());
    }
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == text => return Outcome::Ok,
            Some(Ok(Message::Text(t))) => return Outcome::Corrupt(format!("sent {text:?}, echoed {:?}", t.as_str())),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None => return Outcome::Failed("WebSocket closed".into()),
            Some(Ok(other)) => return Outcome::Corrupt(format!("sent {text:?}, got {other:?}")),
            Some(Err(_)) => return Outcome::Failed("WebSocket closed".into()),
        }
    }
}

/// Sends a request; sends it once more, as browsers do, when it went over a
/// *reused* connection that closed before any answer: a server may close a
/// kept-alive connection, idle or at shutdown, just as a request goes out on
/// it. RFC 9110 §9.2.2 lets a client resend an idempotent request then;
/// Chromium, Firefox and curl resend any request, uploads too, that got no
/// response headers on a reused connection, and none that failed so on a
/// connection of its own (that is the server's answer). What the first attempt
/// saw goes into `retried`.
async fn send_once_more(
    request: impl Fn() -> reqwest::RequestBuilder,
    retried: &OnceLock<String>,
) -> reqwest::Result<reqwest::Response> {
    let dialed = Arc::new(AtomicBool::new(false));
    match DIALED.scope(dialed.clone(), request().send()).await {
        Err(e) if closed_before_answer(&e) && !dialed.load(Ordering::Relaxed) => {
            let _ = retried.set(meridian_regions::client::error_chain(&e));
            request().send().await
        }
        sent => sent,
    }
}

tokio::task_local! {
    /// Set when the request in whose scope it is dials a connection (see [`MarkDials`]).
    static DIALED: Arc<AtomicBool>;
}

/// A connector layer for the soak's client that marks the request that dials
/// a connection. reqwest's pool calls the connector while polling the request
/// that found no idle connection, so a request whose mark is unset went over a
/// pooled one. (One that dialed but then got a connection another request
/// freed is marked too: it is not resent, the stricter reading.)
#[derive(Clone, Copy)]
pub struct MarkDials;

impl<S> tower_layer::Layer<S> for MarkDials {
    type Service = Marked<S>;
    fn layer(&self, inner: S) -> Marked<S> {
        Marked(inner)
    }
}

#[derive(Clone)]
pub struct Marked<S>(S);

impl<S: tower_service::Service<R>, R> tower_service::Service<R> for Marked<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        let _ = DIALED.try_with(|d| d.store(true, Ordering::Relaxed));
        self.0.call(req)
    }
}

/// Whether a request failed because its connection closed (or was reset)
/// before any answer came, rather than not connecting or timing out.
fn closed_before_answer(e: &reqwest::Error) -> bool {
    if e.is_connect() || e.is_timeout() {
        return false;
    }
    std::iter::successors(std::error::Error::source(e), |s| s.source()).any(|s| {
        use std::io::ErrorKind::*;
        s.downcast_ref::<hyper::Error>().is_some_and(|h| h.is_incomplete_message() || h.is_canceled())
            || s.downcast_ref::<std::io::Error>()
                .is_some_and(|io| matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof))
    })
}

/// The cause of a status other than 200: the status and the first line of its page.
fn status_cause(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match meridian_proxy::pages::page_message(&text) {
        Some(why) => format!("HTTP {status}: {why}"),
        None => format!("HTTP {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server whose first connection answers its first request (kept
    /// alive) and closes without a word at its second, or, with `fresh`, at
    /// its first; later connections answer and close. Returns its address and
    /// how many connections it accepted.
    async fn server(fresh: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else { return };
                let first = count.fetch_add(1, Ordering::SeqCst) == 0;
                tokio::spawn(async move {
                    for i in 0u32.. {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => head.extend_from_slice(&buf[..k]),
                            }
                        }
                        let answer: &[u8] = match (first, fresh, i) {
                            (true, true, _) | (true, false, 1..) => return,
                            (true, false, 0) => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                            (false, ..) => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        };
                        let _ = tcp.write_all(answer).await;
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().connector_layer(MarkDials).build().unwrap()
    }

    #[tokio::test]
    async fn a_request_on_a_reused_connection_that_closed_before_any_answer_is_sent_once_more_and_noted() {
        let client = client();
        let get = |addr| client.get(format!("http://{addr}/"));
        let upload = |addr| client.post(format!("http://{addr}/upload")).body(vec![7u8; 64 << 10]);
        for (kind, request) in [("GET", &get as &dyn Fn(_) -> _), ("upload", &upload)] {
            let (addr, accepted) = server(false).await;
            let first = OnceLock::new();
            let resp = send_once_more(|| client.get(format!("http://{addr}/")), &first).await.unwrap();
            assert_eq!(resp.text().await.unwrap(), "ok");
            assert!(first.get().is_none(), "{kind}: the first request was resent");
            // The second goes over the kept-alive connection, which closes at it.
            let retried = OnceLock::new();
            let resp = send_once_more(|| request(addr), &retried).await.unwrap();
            assert_eq!(resp.text().await.unwrap(), "ok", "{kind}");
            let saw = retried.get().unwrap_or_else(|| panic!("{kind}: the resend is not noted"));
            assert!(saw.contains("closed") || saw.contains("reset"), "{kind}: {saw}");
            assert_eq!(accepted.load(Ordering::SeqCst), 2, "{kind}");
        }
    }

    #[tokio::test]
    async fn a_request_whose_own_connection_closed_before_any_answer_is_not_sent_again() {
        let client = client();
        let (addr, accepted) = server(true).await;
        let retried = OnceLock::new();
        let err = send_once_more(|| client.get(format!("http://{addr}/")), &retried).await.unwrap_err();
        assert!(closed_before_answer(&err), "{err}");
        assert!(retried.get().is_none(), "resent: {:?}", retried.get());
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // Nothing listens: a connect error is the client's answer at once.
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let retried = OnceLock::new();
        let err = send_once_more(|| client.get(format!("http://{gone}/")), &retried).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
        assert!(retried.get().is_none());
    }
}
