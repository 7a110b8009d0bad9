//! The agent tunnel: one multiplexed connection from an agent to a relay.
//!
//! The agent dials the relay and sends `GET /api/v2/agents/me/tunnel` with
//! `Upgrade: meridian-tunnel` and its `Meridian-Agent-Token`. After `101`, the
//! roles flip: the relay is the HTTP/2 *client* and the agent the HTTP/2
//! *server*, so the relay can open streams to an agent that only dials out.
//! Each stream is one `CONNECT host:port` (RFC 9113 §8.5): after `200` it is a
//! raw byte pipe to that address on the workspace's loopback, over which the
//! proxy speaks HTTP (or TLS) exactly as it would over TCP.

pub use crate::tls_client::TlsClient;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::Duration;

/// The upgrade request's path and protocol token.
pub const TUNNEL_PATH: &str = "/api/v2/agents/me/tunnel";
pub const UPGRADE_PROTOCOL: &str = "meridian-tunnel";
/// A relay-to-relay link: the dialing relay is the HTTP/2 client and names
/// the agent of each stream in [`AGENT_HEADER`].
pub const LINK_PATH: &str = "/api/v2/relays/me/link";
pub const LINK_PROTOCOL: &str = "meridian-link";
pub const AGENT_HEADER: &str = "meridian-agent";
/// On a link stream: the verified app token of the request the stream is for.
/// The relay holding the tunnel checks it (signature, time, agent and target)
/// before it opens anything, so the mesh secret alone opens no app.
pub const GRANT_HEADER: &str = "meridian-stream-grant";
/// Relay → agent over the tunnel: `POST` here asks the agent to attach
/// elsewhere (the relay is shutting down); it moves make-before-break.
pub const LEAVE_PATH: &str = "/meridian/leave";
/// Relay → relay over a link: `GET` here is answered at once (204); its
/// round trip is the link's, reported to the coordinator for the dashboard.
pub const PING_PATH: &str = "/meridian/ping";
/// Longest wait for a TCP connection or an upgrade answer.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep-alive pings on the tunnel: a dead or partitioned peer is noticed
/// within interval + timeout (5 s), even with no traffic, so an agent moves to
/// another region within seconds. A ping is a 17-byte frame.
pub const PING_INTERVAL: Duration = Duration::from_secs(2);
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 flow control and framing on tunnels and links, for both ends: a
/// stream may have 4 MiB in flight (a 1 MiB answer never waits for a window
/// update), the connection 16 MiB, and DATA frames carry up to 256 KiB (the
/// default 16 KiB costs a frame header and a wake-up per 16 KiB).
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
pub const MAX_FRAME: u32 = 256 << 10;
/// Bytes an HTTP/2 sender buffers per stream before waiting for the peer.
pub const SEND_BUFFER: usize = 1 << 20;
/// Streams one tunnel or link may carry at once. Pooled idle app connections
/// hold their stream open, and every region's proxy keeps its own pool, so
/// hyper's default of 200 could make new requests queue behind idle streams.
pub const MAX_STREAMS: u32 = 4096;

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the agent's tunnel is gone: {0}")]
    TunnelClosed(String),
    /// The agent answered, but refused or could not reach the target.
    #[error("the agent could not open {target}: HTTP {status}")]
    Refused { target: String, status: u16 },
}

/// The relay's handle on one agent tunnel: cheap to clone, one per agent.
#[derive(Clone, Debug)]
pub struct Tunnel {
    sender: SendRequest<Empty<Bytes>>,
    /// Whether the agent dials data connections (see [`crate::data`]);
    /// cleared when it says it cannot, so later streams go straight to HTTP/2.
    data: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Tunnel {
    /// Starts the relay (HTTP/2 client) side on an upgraded connection. The
    /// returned future drives the connection and ends when the tunnel does.
    pub async fn client<T>(io: T) -> hyper::Result<(Self, impl std::future::Future<Output = ()>)>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_send_buf_size(SEND_BUFFER)
            // Streams this side resets (a pooled connection dropped while
            // the app still sends) are remembered, so frames still in flight
            // for them are dropped quietly; and resets are never counted
            // against the tunnel. HTTP/2's rapid-reset defence guards a server
            // from anonymous clients; here the peer is an authenticated agent
            // or relay, and the resets are our own: counting them (1,024 over
            // the tunnel's life) closed the tunnel under load.
            .max_concurrent_reset_streams(MAX_STREAMS as usize)
            .max_local_error_reset_streams(None)
            .handshake(io)
            .await?;
        let driver = async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "tunnel connection ended");
            }
        };
        let data = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        Ok((Self { sender, data }, driver))
    }

    /// One round trip over this tunnel or link: a request the peer answers
    /// at once (a relay's 204 for [`PING_PATH`]; an older one's 400 is as quick).
    pub async fn round_trip(&self) -> Result<Duration, StreamError> {
        let req = hyper::Request::get(PING_PATH)
            .body(Empty::<Bytes>::new())
            .map_err(|e| StreamError::TunnelClosed(e.to_string()))?;
        let mut sender = self.sender.clone();
        sender.ready().await.map_err(|e| StreamError::TunnelClosed(e.to_string()))?;
        let started = std::time::Instant::now();
        sender.send_request(req).await.map_err(|e| StreamError::TunnelClosed(e.to_string()))?;
        Ok(started.elapsed())
    }

    /// Whether to ask this agent for data connections.
    pub fn offers_data(&self) -> bool {
        self.data.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks the agent to dial a data connection to `target`, presenting
    /// `nonce` (see [`crate::data`]); `extra` headers say where to dial (a
    /// mesh hop) and, over a link, for which agent and with which grant.
    /// `Ok(false)` when it cannot (an older agent or relay, or the relay is not
    /// reachable from the agent): use [`Tunnel::open`].
    pub async fn request_data(&self, target: &str, nonce: &str, extra: &[(&str, &str)]) -> Result<bool, StreamError> {
        use crate::data::{CANNOT_DIAL_BACK, DATA_PATH, NONCE_HEADER, TARGET_HEADER};
        let mut req = hyper::Request::builder()
            .method(hyper::Method::POST)
            .uri(DATA_PATH)
            .header(TARGET_HEADER, target)
            .header(NONCE_HEADER, nonce);
        for (name, value) in extra {
            req = req.header(*name, *value);
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| StreamError::TunnelClosed(e.to_string()))?;
        let mut sender = self.sender.clone();
        sender.ready().await.map_err(|e| StreamError::TunnelClosed(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| StreamError::TunnelClosed(e.to_string()))?;
        match resp.status().as_u16() {
            204 => Ok(true),
            // An agent from before data connections answers 405, a relay 400:
            // never ask this peer again. An agent that cannot reach the relay
            // it was asked to dial for a mesh hop may still reach its own.
            status @ (CANNOT_DIAL_BACK | 405 | 400) => {
                let hop = extra.iter().any(|(name, _)| *name == crate::data::DIAL_HEADER);
                if status != CANNOT_DIAL_BACK || !hop {
                    self.data.store(false, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(false)
            }
            status => Err(StreamError::Refused { target: target.to_owned(), status }),
        }
    }

    /// Whether the tunnel can still carry new streams.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Over a relay link: whether the peer holds agent `agent`'s tunnel
    /// (an `OPTIONS` request answered 200 or 404).
    pub async fn probe(&self, agent: uuid::Uuid) -> bool {
        let req = hyper::Request::builder()
            .method(hyper::Method::OPTIONS)
            .uri("http://relay/")
            .header(AGENT_HEADER, agent.to_string())
            .body(Empty::<Bytes>::new());
        let Ok(req) = req else { return false };
        let mut sender = self.sender.clone();
        if sender.ready().await.is_err() {
            return false;
        }
        sender.send_request(req).await.is_ok_and(|r| r.status() == hyper::StatusCode::OK)
    }

    /// Asks the agent to attach elsewhere ([`LEAVE_PATH`]); whether it agreed.
    pub async fn ask_to_leave(&self) -> bool {
        let req = hyper::Request::builder().method(hyper::Method::POST).uri(LEAVE_PATH).body(Empty::<Bytes>::new());
        let Ok(req) = req else { return false };
        let mut sender = self.sender.clone();
        if sender.ready().await.is_err() {
            return false;
        }
        sender.send_request(req).await.is_ok_and(|r| r.status() == hyper::StatusCode::OK)
    }

    /// Opens a byte stream to `target` (`host:port` inside the workspace);
    /// over a relay link, `link` names whose workspace and carries the app
    /// token that authorizes the stream ([`GRANT_HEADER`]).
    pub async fn open(&self, target: &str, link: Option<(uuid::Uuid, &str)>) -> Result<TokioIo<Upgraded>, StreamError> {
        let mut req = hyper::Request::builder().method(hyper::Method::CONNECT).uri(target);
        if let Some((agent, grant)) = link {
            req = req.header(AGENT_HEADER, agent.to_string()).header(GRANT_HEADER, grant);
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| StreamError::TunnelClosed(e.to_string()))?;
        let mut sender = self.sender.clone();
        sender.ready().await.map_err(|e| StreamError::TunnelClosed(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| StreamError::TunnelClosed(e.to_string()))?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(StreamError::Refused { target: target.to_owned(), status: resp.status().as_u16() });
        }
        let upgraded = hyper::upgrade::on(resp).await.map_err(|e| StreamError::TunnelClosed(e.to_string()))?;
        Ok(TokioIo::new(upgraded))
    }
}

/// TLS settings for a relay listener serving `certificate` (reloaded when its files change).
pub fn tls_acceptor(
    certificate: std::sync::Arc<crate::certificate::ReloadingCertificate>,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(certificate);
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// Dials `base_url` (`http`, or `https` with `tls`) and upgrades `path` to
/// `protocol`, sending `credentials` as headers; returns the upgraded connection.
pub async fn dial_upgrade(
    base_url: &str,
    path: &str,
    protocol: &str,
    credentials: &[(&str, &str)],
    tls: &TlsClient,
) -> anyhow::Result<Upgraded> {
    Ok(dial_upgrade_with(base_url, path, protocol, credentials, tls).await?.0)
}

/// Why an upgrade did not happen: the connection failed (`status` is
/// `None`), or the server answered `status` with `message` (its body, cut short).
#[derive(Debug, thiserror::Error)]
#[error("{}", match status { Some(s) => format!("{s}: {message}"), None => message.clone() })]
pub struct UpgradeError {
    pub status: Option<u16>,
    pub message: String,
}

impl UpgradeError {
    fn io(e: impl std::fmt::Display) -> Self {
        Self { status: None, message: e.to_string() }
    }
}

/// [`dial_upgrade`], with the `101`'s headers, and a refusal's status and message.
pub async fn dial_upgrade_with(
    base_url: &str,
    path: &str,
    protocol: &str,
    headers: &[(&str, &str)],
    tls: &TlsClient,
) -> Result<(Upgraded, hyper::HeaderMap), UpgradeError> {
    let url = url::Url::parse(base_url).map_err(UpgradeError::io)?;
    let host = url.host_str().ok_or_else(|| UpgradeError::io(format!("{base_url} has no host")))?.to_owned();
    let port = url.port_or_known_default().ok_or_else(|| UpgradeError::io(format!("{base_url} has no port")))?;
    let connect = tokio::time::timeout(DIAL_TIMEOUT, crate::resolve::connect(&host, port));
    let tcp = connect
        .await
        .map_err(|_| UpgradeError::io(format!("{host}:{port}: no connection within {DIAL_TIMEOUT:?}")))?
        .map_err(|e| UpgradeError::io(format!("{host}:{port}: {e}")))?;
    tcp.set_nodelay(true).map_err(UpgradeError::io)?;
    let authority = format!("{host}:{port}");
    match url.scheme() {
        "http" => upgrade_over(TokioIo::new(tcp), &authority, path, protocol, headers).await,
        "https" => {
            let bare = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let name = rustls::pki_types::ServerName::try_from(bare).map_err(UpgradeError::io)?;
            let stream = tokio::time::timeout(DIAL_TIMEOUT, tls.connector().connect(name, tcp))
                .await
                .map_err(|_| UpgradeError::io(format!("{authority}: no TLS handshake within {DIAL_TIMEOUT:?}")))?
                .map_err(|e| UpgradeError::io(format!("{authority}: TLS: {e}")))?;
            upgrade_over(TokioIo::new(stream), &authority, path, protocol, headers).await
        }
        other => Err(UpgradeError::io(format!("{base_url}: unsupported scheme {other}"))),
    }
}

/// Longest refusal message kept from a server's answer.
const MAX_REFUSAL: usize = 1024;

async fn upgrade_over<T>(
    io: T,
    authority: &str,
    path: &str,
    protocol: &str,
    headers: &[(&str, &str)],
) -> Result<(Upgraded, hyper::HeaderMap), UpgradeError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(UpgradeError::io)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONNECTION, "upgrade")
        .header(hyper::header::UPGRADE, protocol);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(UpgradeError::io)?;
    let resp = tokio::time::timeout(DIAL_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| UpgradeError::io(format!("{authority} did not answer within {DIAL_TIMEOUT:?}")))?
        .map_err(|e| UpgradeError::io(format!("{authority}: {e}")))?;
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(DIAL_TIMEOUT, resp.into_body().collect()).await;
        let text = body.ok().and_then(|b| b.ok()).map(|b| b.to_bytes()).unwrap_or_default();
        let text = String::from_utf8_lossy(&text[..text.len().min(MAX_REFUSAL)]).into_owned();
        // An HTML error page's message, else the text as it came.
        let message = text
            .split_once("<p>")
            .and_then(|(_, rest)| rest.split_once("</p>"))
            .map_or_else(|| text.trim().to_owned(), |(m, _)| m.trim().to_owned());
        return Err(UpgradeError { status: Some(status), message });
    }
    let headers = resp.headers().clone();
    let up = hyper::upgrade::on(resp).await.map_err(UpgradeError::io)?;
    Ok((up, headers))
}
