//! Shell and TCP streams (see `meridian_regions::stream`): a relay
//! connection whose target is `ssh.meridian:22` or `tcp.meridian:{port}`
//! carries one HTTP/1.1 upgrade request from the client (through the
//! region, which authorized it); the agent answers `101` and the bytes that
//! follow are a resumable session (`meridian_regions::resume`) whose local
//! side is the agent's SSH server or a connection to the port.
//!
//! Sessions outlive their path: when a region dies, the client opens a new
//! path through another one naming the session, and the session goes on
//! there. A session with no path for [`RESUME_WINDOW`] ends.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use meridian_regions::resume::{self, Endpoint, RECEIVED_HEADER, SESSION_HEADER};
use meridian_regions::stream::{StreamKind, UPGRADE_PROTOCOL};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a session waits for a new path after losing its own: long
/// enough for a client to try every region, short enough that an
/// abandoned shell does not linger (5 minutes, as the web terminal's PTY).
pub const RESUME_WINDOW: Duration = Duration::from_secs(300);
/// Longest wait for a TCP connection to a workspace port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most sessions an agent holds at once (each holds a local connection or a shell).
const MAX_SESSIONS: usize = 10_000;

/// A path arriving for a session: the session answers with what it
/// received (for the `101`), then gets the upgraded connection.
struct Takeover {
    peer_received: u64,
    received: oneshot::Sender<u64>,
    path: oneshot::Receiver<hyper::upgrade::Upgraded>,
}

struct Entry {
    kind: StreamKind,
    paths: mpsc::Sender<Takeover>,
}

/// The agent's sessions, shared by every tunnel it has held (a session
/// outlives the tunnel it started on).
#[derive(Clone)]
pub struct Streams {
    sessions: Arc<Mutex<HashMap<String, Entry>>>,
    ssh: crate::ssh::Server,
    terminals: crate::terminal::Terminals,
}

impl Streams {
    pub fn new(ssh: crate::ssh::Server) -> Self {
        Self { sessions: Arc::default(), ssh, terminals: Default::default() }
    }

    /// Serves the one upgrade request on a relay connection for `kind`.
    pub async fn serve<T>(&self, io: T, kind: StreamKind)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let streams = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let streams = streams.clone();
            async move { Ok::<_, Infallible>(streams.open(req, kind).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "stream connection ended");
        }
    }

    /// Starts or resumes the session the request names, or says why not.
    async fn open(&self, mut req: Request<hyper::body::Incoming>, kind: StreamKind) -> Response<Full<Bytes>> {
        if kind == StreamKind::Terminal {
            return self.terminal(req);
        }
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        let upgrade = header(hyper::header::UPGRADE.as_str()).is_some_and(|u| u.eq_ignore_ascii_case(UPGRADE_PROTOCOL));
        if !upgrade {
            return answer(StatusCode::BAD_REQUEST, format!("a stream is opened with `Upgrade: {UPGRADE_PROTOCOL}`"));
        }
        let Some(id) = header(SESSION_HEADER).filter(|id| resume::valid_session_id(id)).map(str::to_owned) else {
            return answer(StatusCode::BAD_REQUEST, format!("{SESSION_HEADER} must be 32 lowercase hex digits"));
        };
        let Some(peer_received) = header(RECEIVED_HEADER).and_then(|n| n.parse::<u64>().ok()) else {
            return answer(StatusCode::BAD_REQUEST, format!("{RECEIVED_HEADER} must be a byte count"));
        };
        let paths = match self.session(&id, kind, peer_received).await {
            Ok(paths) => paths,
            Err(refused) => return refused,
        };
        let (received_tx, received_rx) = oneshot::channel();
        let (path_tx, path_rx) = oneshot::channel();
        let takeover = Takeover { peer_received, received: received_tx, path: path_rx };
        let gone = || answer(StatusCode::GONE, "the session has ended".into());
        if paths.send(takeover).await.is_err() {
            return gone();
        }
        let Ok(received) = received_rx.await else { return gone() };
        tokio::spawn(async move {
            match hyper::upgrade::on(&mut req).await {
                Ok(up) => {
                    let _ = path_tx.send(up);
                }
                Err(e) => tracing::debug!(error = %e, "stream upgrade failed"),
            }
        });
        let mut resp = Response::new(Full::default());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("upgrade"));
        h.insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static(UPGRADE_PROTOCOL));
        h.insert(RECEIVED_HEADER, received.into());
        resp
    }

    /// The web terminal's WebSocket (RFC 6455 §4.2.2): `?session=ID&cols=C&rows=R`.
    fn terminal(&self, mut req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
        let query: HashMap<String, String> =
            url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()).into_owned().collect();
        let Some(id) = query.get("session").filter(|id| resume::valid_session_id(id)).cloned() else {
            return answer(StatusCode::BAD_REQUEST, "a terminal needs ?session= (32 lowercase hex digits)".into());
        };
        let dim = |k: &str| query.get(k).and_then(|v| v.parse::<u16>().ok()).filter(|n| *n > 0).unwrap_or(24);
        let size = (dim("cols").max(2), dim("rows"));
        let key = req.headers().get("sec-websocket-key").map(|k| derive_accept_key(k.as_bytes()));
        let websocket =
            req.headers().get(hyper::header::UPGRADE).is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let (Some(accept), true) = (key, websocket) else {
            return answer(StatusCode::BAD_REQUEST, "a terminal is opened with a WebSocket".into());
        };
        let terminals = self.terminals.clone();
        tokio::spawn(async move {
            match hyper::upgrade::on(&mut req).await {
                Ok(up) => {
                    use tokio_tungstenite::tungstenite::protocol::Role;
                    let ws =
                        tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
                    terminals.serve(ws, id, size).await;
                }
                Err(e) => tracing::debug!(error = %e, "terminal upgrade failed"),
            }
        });
        let mut resp = Response::new(Full::default());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("upgrade"));
        h.insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static("websocket"));
        if let Ok(v) = hyper::header::HeaderValue::from_str(&accept) {
            h.insert("sec-websocket-accept", v);
        }
        h.insert("sec-websocket-protocol", hyper::header::HeaderValue::from_static(crate::terminal::SUBPROTOCOL));
        resp
    }

    /// The session `id` (started here when new): where its paths go.
    async fn session(
        &self,
        id: &str,
        kind: StreamKind,
        peer_received: u64,
    ) -> Result<mpsc::Sender<Takeover>, Response<Full<Bytes>>> {
        {
            let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            match sessions.get(id) {
                Some(e) if e.kind != kind => {
                    return Err(answer(StatusCode::CONFLICT, "the session was opened for another stream".into()))
                }
                Some(e) => return Ok(e.paths.clone()),
                None if peer_received > 0 => {
                    return Err(answer(
                        StatusCode::GONE,
                        "the session has ended (or waited too long for its client); open a new one".into(),
                    ))
                }
                None if sessions.len() >= MAX_SESSIONS => {
                    return Err(answer(StatusCode::SERVICE_UNAVAILABLE, "this agent holds too many sessions".into()))
                }
                None => {}
            }
        }
        let local = self.local(kind).await?;
        let (tx, rx) = mpsc::channel(4);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = sessions.get(id) {
            // Opened twice at once: the first one stands.
            return Ok(e.paths.clone());
        }
        sessions.insert(id.to_owned(), Entry { kind, paths: tx.clone() });
        tokio::spawn(run_session(self.sessions.clone(), id.to_owned(), local, rx));
        Ok(tx)
    }

    /// The local side of a new session: the SSH server, or a connection to the port.
    async fn local(&self, kind: StreamKind) -> Result<Local, Response<Full<Bytes>>> {
        match kind {
            StreamKind::Ssh => {
                let (ours, server) = tokio::io::duplex(256 << 10);
                self.ssh.serve(server);
                Ok(Box::new(ours))
            }
            StreamKind::Tcp(port) => {
                let connect = tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port));
                match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                    Ok(Ok(tcp)) => {
                        let _ = tcp.set_nodelay(true);
                        Ok(Box::new(tcp))
                    }
                    Ok(Err(e)) => Err(answer(
                        StatusCode::BAD_GATEWAY,
                        format!("nothing accepts connections on port {port} in the workspace ({e})"),
                    )),
                    Err(_) => Err(answer(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("port {port} in the workspace did not accept the connection in time"),
                    )),
                }
            }
            // Served as a WebSocket by `terminal`, never as a session.
            StreamKind::Terminal => {
                Err(answer(StatusCode::BAD_REQUEST, "a terminal is opened with a WebSocket".into()))
            }
        }
    }
}

/// A session's local side.
type Local = Box<dyn LocalIo>;
trait LocalIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> LocalIo for T {}

/// Runs a session over each path it is given until it finishes, or waits
/// for a path longer than [`RESUME_WINDOW`].
async fn run_session(
    sessions: Arc<Mutex<HashMap<String, Entry>>>,
    id: String,
    local: Local,
    mut paths: mpsc::Receiver<Takeover>,
) {
    let (r, w) = tokio::io::split(local);
    let mut endpoint = Endpoint::with_timing(r, w, resume::Timing::AGENT);
    let mut next: Option<Takeover> = None;
    loop {
        let takeover = match next.take() {
            Some(t) => t,
            None => match tokio::time::timeout(RESUME_WINDOW, paths.recv()).await {
                Ok(Some(t)) => t,
                _ => {
                    tracing::info!(session = %short(&id), "a session's client did not come back; ending it");
                    break;
                }
            },
        };
        if takeover.received.send(endpoint.received()).is_err() {
            continue;
        }
        let Ok(path) = takeover.path.await else { continue };
        let superseded = async {
            next = paths.recv().await;
            if next.is_none() {
                std::future::pending::<()>().await;
            }
        };
        match endpoint.run(TokioIo::new(path), takeover.peer_received, superseded).await {
            Ok(resume::Outcome::Finished) => break,
            Ok(resume::Outcome::Lost(why)) => {
                tracing::info!(session = %short(&id), why, "a session lost its path; waiting for its client")
            }
            Err(e) => {
                tracing::warn!(session = %short(&id), error = %e, "a session's client broke the protocol; ending it");
                break;
            }
        }
    }
    sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
}

/// A session id as logs show it: its first 8 digits (the whole id lets its
/// holder resume the session, so it is never logged).
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn answer(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(message + "\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    resp
}
