//! Dialing a relay and serving the tunnel (the agent is the HTTP/2 server).

use crate::policy::Policy;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meridian_regions::api::RelayInfo;
use meridian_regions::data;
use meridian_regions::headers::{AGENT_ATTACH_TOKEN, AGENT_TOKEN};
use meridian_regions::stream::StreamKind;
use meridian_regions::token::Secret;
use meridian_regions::tunnel::{
    dial_upgrade, TlsClient, CONNECTION_WINDOW, LEAVE_PATH, MAX_FRAME, MAX_STREAMS, PING_INTERVAL, PING_TIMEOUT,
    SEND_BUFFER, STREAM_WINDOW, TUNNEL_PATH, UPGRADE_PROTOCOL,
};
use std::convert::Infallible;
use std::time::Duration;
use tokio::net::TcpStream;

/// Longest wait for a TCP connection to an app.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `relay` (TLS when its URL is `https`) and upgrades to the
/// tunnel protocol, presenting the attach token the coordinator gave for the
/// relay's region: short-lived, and good at that region's relays alone. The
/// agent token (it lives as long as the workspace) goes to the coordinator
/// only; a coordinator of an earlier release gives no such token, and then
/// the agent token is presented as it was.
pub async fn dial(relay: &RelayInfo, token: &Secret, tls: &TlsClient) -> anyhow::Result<Upgraded> {
    let credentials = match &relay.attach_token {
        Some(attach) => [(AGENT_ATTACH_TOKEN, attach.expose())],
        None => [(AGENT_TOKEN, token.expose())],
    };
    dial_upgrade(&relay.url, TUNNEL_PATH, UPGRADE_PROTOCOL, &credentials, tls).await
}

/// Longest time open streams get to finish when the agent leaves a relay on purpose.
const LEAVE_DRAIN: Duration = Duration::from_secs(30);

/// What serving a tunnel needs besides the connection: which targets are
/// allowed, and how to dial the relay back for data connections.
#[derive(Clone)]
pub struct Serving {
    pub policy: Policy,
    /// The relay the tunnel goes to; data connections dial it too.
    pub relay_url: std::sync::Arc<str>,
    /// Every relay the coordinator gave this agent: the only ones a mesh hop
    /// may ask it to dial instead.
    pub relays: Relays,
    pub tls: TlsClient,
    /// How long a pipe may carry nothing (`--pipe-idle-timeout`).
    pub pipe_idle: std::time::Duration,
    /// Shell and TCP sessions: shared by every tunnel (a session outlives its path).
    pub streams: crate::streams::Streams,
}

/// The relays the coordinator has given this agent since it attached, added
/// to by the attach loop. A relay that restarted listens on a new address:
/// asked to dial one it does not know, the agent refuses (the relay falls back
/// to a stream) and asks the loop to fetch the list again, so the next asks
/// find it. Relays are only added: a list fetched while a region was
/// unreachable leaves it out, and its relays must still be dialed once it heals.
#[derive(Clone)]
pub struct Relays {
    list: tokio::sync::watch::Receiver<std::sync::Arc<[String]>>,
    stale: std::sync::Arc<tokio::sync::Notify>,
}

/// The attach loop's end of [`Relays`]: adds to the list, hears when it is stale.
pub struct RelaysUpdater {
    list: tokio::sync::watch::Sender<std::sync::Arc<[String]>>,
    stale: std::sync::Arc<tokio::sync::Notify>,
}

impl Relays {
    pub fn new(urls: impl IntoIterator<Item = String>) -> (Self, RelaysUpdater) {
        let (tx, list) = tokio::sync::watch::channel(urls.into_iter().collect());
        let stale = std::sync::Arc::new(tokio::sync::Notify::new());
        (Self { list, stale: stale.clone() }, RelaysUpdater { list: tx, stale })
    }

    /// Whether `url` is one of the relays; when not, the list is marked stale.
    fn admits(&self, url: &str) -> bool {
        let known = self.list.borrow().iter().any(|r| r == url);
        if !known {
            self.stale.notify_one();
        }
        known
    }
}

/// The most relays an agent remembers for one tunnel (the oldest go first).
const MAX_RELAYS: usize = 1024;

impl RelaysUpdater {
    /// Adds the relays of `urls` the list does not hold yet.
    pub fn add(&self, urls: impl IntoIterator<Item = String>) {
        let known = self.list.borrow().clone();
        let new: Vec<String> = urls.into_iter().filter(|u| !known.contains(u)).collect();
        if new.is_empty() {
            return;
        }
        let mut all: Vec<String> = known.iter().cloned().chain(new).collect();
        all.drain(..all.len().saturating_sub(MAX_RELAYS));
        self.list.send_replace(all.into());
    }

    /// Resolves once a mesh hop asked for a relay the list does not hold.
    pub async fn stale(&self) {
        self.stale.notified().await;
    }
}

/// Serves the relay's streams until the tunnel closes, or, once `leave` is
/// cancelled, closes it gracefully (GOAWAY; open streams may finish). When the
/// relay asks the agent to go elsewhere, `asked` is cancelled.
pub async fn serve<T>(
    io: T,
    serving: Serving,
    leave: tokio_util::sync::CancellationToken,
    asked: tokio_util::sync::CancellationToken,
) where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let (serving, asked) = (serving.clone(), asked.clone());
        async move {
            if req.method() == Method::POST && req.uri().path() == LEAVE_PATH {
                tracing::info!("the relay is shutting down and asked us to attach elsewhere");
                asked.cancel();
                return Ok(Response::new(Empty::new()));
            }
            if req.method() == Method::POST && req.uri().path() == data::DATA_PATH {
                return data_connection(req, &serving).await;
            }
            handle(req, serving).await
        }
    });
    let conn = tunnel_server().serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = leave.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(LEAVE_DRAIN, conn).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "tunnel ended");
    }
}

/// The agent's end of a tunnel: the HTTP/2 server, with the tunnel's
/// keep-alive, windows, framing and [`MAX_STREAMS`] streams at once.
fn tunnel_server() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buf_size(SEND_BUFFER)
        .max_concurrent_streams(MAX_STREAMS)
        .max_local_error_reset_streams(None);
    builder
}

fn status(s: StatusCode) -> Result<Response<Empty<Bytes>>, Infallible> {
    let mut r = Response::new(Empty::new());
    *r.status_mut() = s;
    Ok(r)
}

/// Checks `target` against the policy and connects to the app: the socket,
/// or the status that tells the relay why not.
async fn connect_app(target: &str, policy: &Policy) -> Result<TcpStream, StatusCode> {
    let addr = policy.check(target).map_err(|why| {
        tracing::warn!(%target, why, "refused a stream");
        StatusCode::FORBIDDEN
    })?;
    let app = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%target, error = %e, "app refused the connection");
            return Err(StatusCode::BAD_GATEWAY);
        }
        Err(_) => return Err(StatusCode::GATEWAY_TIMEOUT),
    };
    let _ = app.set_nodelay(true);
    Ok(app)
}

/// `POST /meridian/data`: connect to the app, dial the relay back with the
/// nonce (see `meridian_regions::data`), answer 204 and copy bytes.
async fn data_connection(
    req: Request<hyper::body::Incoming>,
    serving: &Serving,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let (Some(target), Some(nonce)) = (header(data::TARGET_HEADER), header(data::NONCE_HEADER)) else {
        return status(StatusCode::BAD_REQUEST);
    };
    // A shell or TCP stream: no app to connect to first; the session does (see `streams`).
    let stream = StreamKind::from_target(target);
    let mut app = match stream {
        Some(_) => None,
        None => match connect_app(target, &serving.policy).await {
            Ok(app) => Some(app),
            Err(s) => return status(s),
        },
    };
    let dial_to = match header(data::DIAL_HEADER) {
        None => &*serving.relay_url,
        Some(url) if serving.relays.admits(url) => url,
        Some(url) => {
            tracing::warn!(relay = %url, "refused to dial a relay this agent was not given; asking for the list again");
            return status(StatusCode::from_u16(data::CANNOT_DIAL_BACK).unwrap_or(StatusCode::BAD_GATEWAY));
        }
    };
    let mut relay = match data::dial(dial_to, nonce, &serving.tls).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(relay = %dial_to, error = %e, "cannot dial a data connection; the relay falls back to a stream");
            return status(StatusCode::from_u16(data::CANNOT_DIAL_BACK).unwrap_or(StatusCode::BAD_GATEWAY));
        }
    };
    let idle = serving.pipe_idle;
    let streams = serving.streams.clone();
    tokio::spawn(async move {
        match (stream, app.as_mut()) {
            (Some(kind), _) => streams.serve(relay, kind).await,
            // A plain data connection: the bytes stay in the kernel (splice).
            (None, Some(app)) => {
                let _ = match &mut relay {
                    data::DataStream::Plain(tcp) => meridian_regions::pipe::splice(tcp, app, idle).await,
                    tls => meridian_regions::pipe::pipe(tls, app, idle).await,
                };
            }
            (None, None) => {}
        }
    });
    status(StatusCode::NO_CONTENT)
}

/// One `CONNECT host:port` stream: check the target, connect, then pipe bytes.
async fn handle(
    mut req: Request<hyper::body::Incoming>,
    serving: Serving,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    if req.method() != Method::CONNECT {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let target = req.uri().authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
    if let Some(kind) = StreamKind::from_target(&target) {
        tokio::spawn(async move {
            match hyper::upgrade::on(&mut req).await {
                Ok(up) => serving.streams.serve(TokioIo::new(up), kind).await,
                Err(e) => tracing::debug!(error = %e, "stream upgrade failed"),
            }
        });
        return status(StatusCode::OK);
    }
    let idle = serving.pipe_idle;
    let mut app = match connect_app(&target, &serving.policy).await {
        Ok(app) => app,
        Err(s) => return status(s),
    };
    tokio::spawn(async move {
        match hyper::upgrade::on(&mut req).await {
            Ok(up) => {
                let _ = meridian_regions::pipe::pipe(&mut TokioIo::new(up), &mut app, idle).await;
            }
            Err(e) => tracing::debug!(error = %e, "stream upgrade failed"),
        }
    });
    status(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_regions::tunnel::Tunnel;

    /// A list fetched while a region is unreachable leaves its relays out: they
    /// stay known. One the agent was never given is refused, and marks the list stale.
    #[tokio::test]
    async fn relays_are_only_added_and_an_unknown_one_asks_for_the_list_again() {
        let (relays, updater) = Relays::new(["http://a".to_owned(), "http://b".to_owned()]);
        updater.add(["http://a".to_owned(), "http://c".to_owned()]);
        for known in ["http://a", "http://b", "http://c"] {
            assert!(relays.admits(known), "{known}");
        }
        let stale = tokio::time::timeout(Duration::from_millis(50), updater.stale());
        assert!(stale.await.is_err(), "stale while every relay asked for was known");
        assert!(!relays.admits("http://elsewhere"));
        tokio::time::timeout(Duration::from_secs(5), updater.stale())
            .await
            .expect("an unknown relay marks the list stale");
        // Bounded: the oldest go first.
        updater.add((0..MAX_RELAYS - 1).map(|i| format!("http://r{i}")));
        assert!(
            !relays.admits("http://a")
                && !relays.admits("http://b")
                && relays.admits("http://c")
                && relays.admits("http://r0")
        );
    }

    /// One tunnel carries [`MAX_STREAMS`] streams at once (idle pooled app
    /// connections hold theirs open; hyper's default is 200), and one more
    /// waits for a free stream instead of failing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tunnel_carries_4096_streams_at_once_and_the_next_waits_for_one() {
        let (relay_io, agent_io) = tokio::io::duplex(1 << 20);
        let release = tokio_util::sync::CancellationToken::new();
        let held = release.clone();
        // Every CONNECT is accepted and its stream held open until `release`.
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            let held = held.clone();
            async move {
                tokio::spawn(async move {
                    if let Ok(stream) = hyper::upgrade::on(&mut req).await {
                        held.cancelled().await;
                        drop(stream);
                    }
                });
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            }
        });
        tokio::spawn(tunnel_server().serve_connection(TokioIo::new(agent_io), service));
        let (tunnel, driver) = Tunnel::client(TokioIo::new(relay_io)).await.unwrap();
        tokio::spawn(driver);

        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..MAX_STREAMS {
            let tunnel = tunnel.clone();
            opening.spawn(async move { tunnel.open("127.0.0.1:8080", None).await.map_err(|e| e.to_string()) });
        }
        let all = tokio::time::timeout(Duration::from_secs(60), opening.join_all()).await;
        let streams: Vec<_> = all.expect("fewer than MAX_STREAMS streams opened at once").into_iter().collect();
        assert_eq!(
            streams.iter().filter(|s| s.is_ok()).count(),
            MAX_STREAMS as usize,
            "{:?}",
            streams.iter().find(|s| s.is_err())
        );

        let next = tokio::spawn({
            let tunnel = tunnel.clone();
            async move { tunnel.open("127.0.0.1:8080", None).await.map(drop).map_err(|e| e.to_string()) }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!next.is_finished(), "a stream past the limit was not made to wait: {:?}", next.await);
        release.cancel();
        drop(streams);
        let opened =
            tokio::time::timeout(Duration::from_secs(10), next).await.expect("still waiting after streams closed");
        assert_eq!(opened.unwrap(), Ok(()));
    }

    /// The request head a relay at a loopback port receives from `dial`.
    async fn dial_head(relay: &RelayInfo) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = RelayInfo { url: format!("http://{}", listener.local_addr().unwrap()), ..relay.clone() };
        let seen = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early");
                head.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n").await.unwrap();
            String::from_utf8(head).unwrap().to_ascii_lowercase()
        });
        let tls = TlsClient::new(None).unwrap();
        assert!(dial(&relay, &Secret::new("agent-secret"), &tls).await.is_err(), "refused by the fake relay");
        tokio::time::timeout(Duration::from_secs(10), seen).await.unwrap().unwrap()
    }

    /// What a relay (any region's: one may be compromised) receives is the
    /// attach token for its own region, never the agent token.
    #[tokio::test]
    async fn relays_get_the_attach_token_for_their_region_never_the_agent_token() {
        let relay = RelayInfo {
            region: "sydney".into(),
            url: String::new(),
            healthy_since: None,
            attach_token: Some(Secret::new("sydney-attach-token")),
        };
        let head = dial_head(&relay).await;
        assert!(head.contains("meridian-agent-attach-token: sydney-attach-token"), "{head}");
        assert!(!head.contains("agent-secret") && !head.contains("meridian-agent-token:"), "{head}");
        // A coordinator of an earlier release gave no attach token: the agent token, as before.
        let legacy = dial_head(&RelayInfo { attach_token: None, ..relay }).await;
        assert!(legacy.contains("meridian-agent-token: agent-secret"), "{legacy}");
    }
}
