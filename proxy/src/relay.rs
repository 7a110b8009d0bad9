//! The relay: where agents attach, and where this region's proxy opens
//! streams to them.
//!
//! Agents dial the relay listener and upgrade (`meridian_regions::tunnel`);
//! the relay checks the agent token with the coordinator, which records the
//! attachment (a route change every proxy hears of), and keeps one [`Tunnel`]
//! per agent. [`Relay::open`] is the one interface the data plane uses to
//! reach an agent: through this relay's own tunnel, or, for an agent attached
//! elsewhere, over a mesh link to the relay the route table names (one hop,
//! see [`crate::mesh`]). Peer relays link in with the mesh secret.

mod admission;
mod attach;

use crate::mesh::Mesh;
use crate::routes::RouteTable;
use admission::{Admission, Refusal, HANDSHAKE_DEADLINE};
use bytes::Bytes;
use http_body_util::Full;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use meridian_regions::api::{AgentAttach, AgentDetach};
use meridian_regions::client::Client;
use meridian_regions::data::{self, DataStream, Nonce, Opening};
use meridian_regions::headers::MESH_SECRET;
use meridian_regions::tunnel::{
    StreamError, Tunnel, AGENT_HEADER, GRANT_HEADER, LINK_PATH, LINK_PROTOCOL, TUNNEL_PATH, UPGRADE_PROTOCOL,
};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use uuid::Uuid;

/// Why the data plane could not reach an agent.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("the workspace agent is not connected to any region")]
    NotAttached,
    #[error("the region holding the workspace agent's tunnel ({0}) cannot be reached")]
    PeerUnreachable(String),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// A connection to an app in a workspace: a data connection the agent
/// dialed (see `meridian_regions::data`), or an HTTP/2 stream (over this
/// relay's tunnel, or a mesh link).
#[derive(Debug)]
pub enum Upstream {
    Data(DataStream),
    Stream(TokioIo<Upgraded>),
}

impl tokio::io::AsyncRead for Upstream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Data(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Self::Stream(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Upstream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Data(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Self::Stream(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Data(s) => std::pin::Pin::new(s).poll_flush(cx),
            Self::Stream(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Data(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Self::Stream(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Data connections the relay asked for and waits on, by nonce id.
type Pending = std::sync::Mutex<HashMap<[u8; 16], (Nonce, tokio::sync::oneshot::Sender<DataStream>)>>;

/// Forgets a pending data connection when its request ends, however it ends.
struct PendingGuard<'a>(&'a Pending, [u8; 16]);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
    }
}

/// Pause between searches for an agent that is re-attaching somewhere.
const SEARCH_AGAIN: std::time::Duration = crate::search::REUSE;

/// How long a request waits for an unreachable agent's route to change.
const ROUTE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Counts one stream relayed for a peer while it is open.
struct Relayed(Arc<std::sync::atomic::AtomicUsize>);

impl Relayed {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Longest wait for an agent to acknowledge a request to leave.
/// In the drain, how long a stream carried for a peer relay may be quiet
/// before it is closed (see [`Relay::start_draining`]): longer than the gaps
/// of a streamed response or a talking WebSocket, short enough that idle
/// pooled connections do not hold the shutdown.
pub const RELAYED_QUIET: std::time::Duration = std::time::Duration::from_secs(2);
const LEAVE_ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Relay {
    coordinator: Client,
    /// This replica, named when recording an attach or detach.
    replica_id: Uuid,
    /// This relay's own URL, so it never links to itself.
    own_url: String,
    /// This relay's URL as agents dial it (for mesh hops on data connections).
    agent_url: String,
    agents: RwLock<HashMap<Uuid, Tunnel>>,
    /// Where agents attached elsewhere are, and the links to reach them.
    pub routes: Arc<RouteTable>,
    pub mesh: Arc<Mesh>,
    /// Searches of the peer relays for moved agents.
    searches: crate::search::Searches,
    /// Checks attach tokens when the coordinator cannot vouch for an agent.
    auth: Arc<crate::auth::Auth>,
    /// Whether the coordinator is reachable (when it is not, routes may be stale).
    pub state: Arc<crate::state::ProxyState>,
    /// This relay's region, from the first registration (attach tokens name it).
    region: std::sync::OnceLock<String>,
    /// Agents admitted while the coordinator was unreachable, with their
    /// attach tokens, until the coordinator has recorded them.
    unrecorded: std::sync::Mutex<HashMap<Uuid, String>>,
    /// Attached agents and streams opened, for `/metrics`.
    attached: prometheus::IntGauge,
    streams: prometheus::IntCounter,
    /// Streams open now for peer relays (through this relay's tunnels).
    relayed: Arc<std::sync::atomic::AtomicUsize>,
    /// Turned true when the drain begins: relayed streams then end once quiet.
    draining: tokio::sync::watch::Sender<bool>,
    /// Data connections asked of agents and not yet dialed.
    pending: Pending,
}

fn switching(protocol: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static(protocol));
    resp.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("upgrade"));
    resp
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Relay")
    }
}

impl Relay {
    pub fn new(
        coordinator: Client,
        replica_id: Uuid,
        own_url: String,
        agent_url: String,
        mesh: Mesh,
        auth: Arc<crate::auth::Auth>,
        state: Arc<crate::state::ProxyState>,
    ) -> Arc<Self> {
        Arc::new(Self {
            attached: state.metrics.agents.clone(),
            streams: state.metrics.streams.clone(),
            state,
            coordinator,
            replica_id,
            own_url,
            agent_url,
            agents: RwLock::default(),
            relayed: Arc::default(),
            draining: tokio::sync::watch::channel(false).0,
            routes: Arc::default(),
            mesh: Arc::new(mesh),
            searches: Default::default(),
            auth,
            region: std::sync::OnceLock::new(),
            unrecorded: std::sync::Mutex::default(),
            pending: Pending::default(),
        })
    }

    /// Learns this relay's region (from a registration); it never changes.
    pub fn set_region(&self, name: &str) {
        let _ = self.region.set(name.to_owned());
    }

    /// Tells the coordinator about agents admitted while it was unreachable
    /// (called after each successful registration), so routes catch up.
    pub async fn record_offline_attachments(&self) {
        let pending: Vec<(Uuid, String)> =
            self.unrecorded.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (*k, v.clone())).collect();
        for (agent_id, attach_token) in pending {
            if self.tunnel(agent_id).is_some() {
                let ask = AgentAttach {
                    agent_token: String::new(),
                    attach_token: Some(attach_token),
                    replica_id: Some(self.replica_id),
                };
                if let Err(e) = self.coordinator.agent_attach(&ask).await {
                    if e.is_retryable() {
                        continue;
                    }
                    tracing::warn!(agent = %agent_id, error = %e, "the coordinator refused an offline attachment");
                }
            }
            self.unrecorded.lock().unwrap_or_else(|e| e.into_inner()).remove(&agent_id);
        }
    }

    /// Opens a byte stream to `target` (`host:port`) inside agent `agent_id`'s
    /// workspace: through this relay's own tunnel, else over a mesh link to
    /// the relay the route table names, which admits the stream only with
    /// `grant`, the verified app token of the request. An agent that is not
    /// reachable right now gets [`ROUTE_WAIT`] to show up (it may be
    /// re-attaching, and its new route a few milliseconds away) before the
    /// request fails.
    pub async fn open(&self, agent_id: Uuid, target: &str, grant: &str) -> Result<Upstream, DialError> {
        self.streams.inc();
        let deadline = tokio::time::Instant::now() + ROUTE_WAIT;
        let mut changes = self.routes.subscribe();
        loop {
            let e = match self.try_open(agent_id, target, grant, deadline).await {
                Err(e @ (DialError::NotAttached | DialError::PeerUnreachable(_))) => e,
                other => return other,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(self.no_path(agent_id, e));
            }
            // A dead peer relay, or no coordinator to push the new route: ask
            // the peers. Otherwise the coordinator's route update is on its way.
            let stale = matches!(e, DialError::PeerUnreachable(_)) || !self.state.registration().coordinator_reachable;
            if stale && self.search(agent_id).await {
                continue;
            }
            let retry = if stale { SEARCH_AGAIN } else { ROUTE_WAIT };
            let woken = tokio::time::timeout(retry, changes.changed());
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Err(self.no_path(agent_id, e));
            }
        }
    }

    /// A request that found no path to its agent within [`ROUTE_WAIT`]: rare,
    /// and worth a line saying which route this replica had, and how many it
    /// knew (none before its first route snapshot).
    fn no_path(&self, agent_id: Uuid, e: DialError) -> DialError {
        tracing::warn!(agent = %agent_id, error = %e, route = ?self.routes.get(agent_id),
            routes = self.routes.len(), "no path to the agent within the route wait");
        e
    }

    /// Asks the peer relays whether one holds `agent_id`'s tunnel (see
    /// [`crate::search`]) and routes to it (until the coordinator says otherwise).
    async fn search(&self, agent_id: Uuid) -> bool {
        let found = self.searches.find(&self.mesh, &self.own_url, agent_id, &self.state.metrics).await;
        let Some(route) = found else { return false };
        if self.routes.get(agent_id).as_ref() != Some(&route) {
            tracing::info!(agent = %agent_id, region = %route.region, "found a moved agent by asking the peer relays");
            self.routes.learn(agent_id, route);
        }
        true
    }

    async fn try_open(
        &self,
        agent_id: Uuid,
        target: &str,
        grant: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Upstream, DialError> {
        // A tunnel or link that closes under the request is a path that
        // died, not an answer: the request waits for the agent's next route
        // (or searches the peers) like one that found no path at all.
        if let Some(tunnel) = self.tunnel(agent_id) {
            return match self.open_local(&tunnel, target).await {
                Err(StreamError::TunnelClosed(_)) => Err(DialError::NotAttached),
                other => Ok(other?),
            };
        }
        let route = self.routes.get(agent_id).filter(|r| r.relay_url != self.own_url).ok_or(DialError::NotAttached)?;
        let unreachable = || DialError::PeerUnreachable(route.region.clone());
        let link = tokio::time::timeout_at(deadline, self.mesh.link(&route.relay_url)).await;
        let link = link.ok().flatten().ok_or_else(unreachable)?;
        if link.offers_data() {
            let agent = agent_id.to_string();
            let via = [(AGENT_HEADER, agent.as_str()), (GRANT_HEADER, grant), (data::DIAL_HEADER, &self.agent_url)];
            match self.await_data(&link, target, &via).await {
                Err(StreamError::Refused { status: 404, .. }) => return Err(DialError::NotAttached),
                Err(StreamError::TunnelClosed(_)) => return Err(unreachable()),
                Ok(Some(conn)) => return Ok(conn),
                Ok(None) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match link.open(target, Some((agent_id, grant))).await {
            Err(StreamError::Refused { status: 404, .. }) => Err(DialError::NotAttached),
            Err(StreamError::TunnelClosed(_)) => Err(unreachable()),
            other => Ok(Upstream::Stream(other?)),
        }
    }

    /// Opens a connection to `target` through an agent's tunnel held here: a
    /// data connection the agent dials, or an HTTP/2 stream when it cannot.
    async fn open_local(&self, tunnel: &Tunnel, target: &str) -> Result<Upstream, StreamError> {
        if tunnel.offers_data() {
            if let Some(conn) = self.await_data(tunnel, target, &[]).await? {
                return Ok(conn);
            }
            tracing::info!(relay = %self.own_url, "the agent cannot dial data connections here; using HTTP/2 streams");
        }
        Ok(Upstream::Stream(tunnel.open(target, None).await?))
    }

    /// Asks for a data connection to `target` over `tunnel` (an agent's, or
    /// a link to the relay holding it, see `meridian_regions::data`) and
    /// waits for the agent to dial this relay with the nonce. `None` when it
    /// cannot: the caller falls back to an HTTP/2 stream.
    async fn await_data(
        &self,
        tunnel: &Tunnel,
        target: &str,
        extra: &[(&str, &str)],
    ) -> Result<Option<Upstream>, StreamError> {
        let nonce = Nonce::random();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(nonce.id, (nonce.clone(), tx));
        let _forget = PendingGuard(&self.pending, nonce.id);
        if !tunnel.request_data(target, &nonce.to_header(), extra).await? {
            return Ok(None);
        }
        // The agent answers only once this relay acknowledged the connection.
        match rx.await {
            Ok(conn) => {
                self.state.metrics.data_connections.inc();
                Ok(Some(Upstream::Data(conn)))
            }
            Err(_) => Err(StreamError::TunnelClosed("the data connection was lost".into())),
        }
    }

    /// A data connection presenting `nonce`: handed to the request waiting
    /// for it (after the one-byte acknowledgement), or closed.
    async fn claim(&self, mut conn: DataStream, nonce: Nonce) {
        use tokio::io::AsyncWriteExt;
        let waiting = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get(&nonce.id) {
                Some((expected, _)) if expected.matches(&nonce) => pending.remove(&nonce.id).map(|(_, tx)| tx),
                _ => None,
            }
        };
        let Some(waiting) = waiting else {
            return tracing::warn!(?nonce, "refused a data connection with an unknown nonce");
        };
        let acked = tokio::time::timeout(data::DATA_TIMEOUT, async {
            conn.write_all(&[data::ACK]).await?;
            conn.flush().await
        });
        if matches!(acked.await, Ok(Ok(()))) {
            let _ = waiting.send(conn);
        }
    }

    /// Keys pooled app connections by the path they take: this relay's own
    /// tunnel, or the relay the route names. When an agent moves, new requests
    /// get new connections on the new path, and connections on the old path
    /// idle out instead of carrying requests into a relay that is leaving.
    pub fn path_key(&self, agent_id: Uuid) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        agent_id.hash(&mut h);
        if self.holds(agent_id) {
            self.replica_id.hash(&mut h);
        } else {
            self.routes.relay_hash(agent_id, &mut h);
        }
        h.finish()
    }

    /// Agents attached here that have not (yet) attached to another relay:
    /// their route does not name another relay.
    pub fn agents_staying(&self) -> usize {
        let agents = self.agents.read().unwrap_or_else(|e| e.into_inner());
        agents.keys().filter(|a| self.routes.get(**a).is_none_or(|r| r.relay_url == self.own_url)).count()
    }

    /// Streams open now for peer relays.
    pub fn relayed_streams(&self) -> usize {
        self.relayed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The drain has begun: a stream carried for a peer relay ends once no
    /// byte has moved on it for [`RELAYED_QUIET`] (an idle pooled connection,
    /// or the gap between two requests), while busy ones run on.
    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    /// Shutting down: asks every attached agent to attach elsewhere (each
    /// moves make-before-break, then closes this tunnel once its streams end).
    pub async fn ask_agents_to_leave(&self) {
        let tunnels: Vec<(Uuid, Tunnel)> =
            self.agents.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(a, t)| (*a, t.clone())).collect();
        let asks = tunnels.into_iter().map(|(agent, tunnel)| async move {
            let agreed = tokio::time::timeout(LEAVE_ASK_TIMEOUT, tunnel.ask_to_leave()).await.unwrap_or(false);
            tracing::info!(%agent, agreed, "asked an agent to attach elsewhere");
        });
        futures_util::future::join_all(asks).await;
    }

    /// Whether this relay holds an open tunnel of `agent_id` (without cloning it).
    fn holds(&self, agent_id: Uuid) -> bool {
        self.agents.read().unwrap_or_else(|e| e.into_inner()).get(&agent_id).is_some_and(Tunnel::is_open)
    }

    fn tunnel(&self, agent_id: Uuid) -> Option<Tunnel> {
        let agents = self.agents.read().unwrap_or_else(|e| e.into_inner());
        agents.get(&agent_id).filter(|t| t.is_open()).cloned()
    }

    /// Accepts agents and peer relays on `listener` (over TLS with `tls`) until
    /// `shutdown` flips to true, within the caps of [`Admission::for_this_process`].
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        self.serve_within(Admission::for_this_process(), listener, tls, shutdown).await;
    }

    /// [`Relay::serve`], holding unproven connections within `admission`'s caps.
    async fn serve_within(
        self: Arc<Self>,
        admission: Arc<Admission>,
        listener: tokio::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, usually: retrying at once only spins.
                        tracing::warn!(error = %e, "relay accept failed; pausing accepts");
                        self.state.metrics.relay_accept_errors.inc();
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                        continue;
                    }
                },
            };
            // Closed at once (dropped) when over a cap.
            let unproven = match admission.admit(peer.ip()) {
                Ok(unproven) => unproven,
                Err(refusal) => {
                    self.state.metrics.relay_refused.inc();
                    match refusal {
                        Refusal::Full(max) => {
                            tracing::warn!(%peer, max, "relay connection cap reached; refused a connection")
                        }
                        Refusal::Address(max) => {
                            tracing::debug!(%peer, max, "a client's relay connection cap reached; refused a connection")
                        }
                    }
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (relay, tls) = (self.clone(), tls.clone());
            tokio::spawn(async move {
                // Counted until it proves itself: an upgrade hands the
                // connection on (the tunnel or link runs in a task of its
                // own), a data connection is claimed, or it ends.
                let _unproven = unproven;
                match tls {
                    Some(acceptor) => match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => relay.serve_opening(stream, |s| DataStream::Server(Box::new(s)), peer).await,
                        _ => tracing::debug!(%peer, "relay TLS handshake failed"),
                    },
                    None => relay.serve_opening(tcp, DataStream::Plain, peer).await,
                }
            });
        }
    }

    /// A new connection (after TLS, if any): a data connection presenting a
    /// nonce (`wrap` makes it a data stream), or an agent or peer relay speaking HTTP.
    async fn serve_opening<T>(self: Arc<Self>, io: T, wrap: impl FnOnce(T) -> DataStream, peer: std::net::SocketAddr)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let result = match data::classify(io).await {
            Ok(Opening::Data(s, nonce)) => return self.claim(wrap(s), nonce).await,
            Ok(Opening::Other(s, read)) => self.serve_connection(TokioIo::new(data::Rewind::new(read, s))).await,
            Err(e) => return tracing::debug!(%peer, error = %e, "relay connection ended"),
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "relay connection ended");
        }
    }

    async fn serve_connection<T>(self: Arc<Self>, io: T) -> hyper::Result<()>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req| self.clone().handshake(req));
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HANDSHAKE_DEADLINE)
            .serve_connection(io, service)
            .with_upgrades()
            .await
    }

    /// Answers an agent's upgrade request: 101 and a tunnel, or a clear refusal.
    async fn handshake(
        self: Arc<Self>,
        mut req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        let reply = |status: StatusCode, msg: &str| {
            let mut r = Response::new(Full::new(Bytes::from(format!("{{\"message\":{msg:?}}}"))));
            *r.status_mut() = status;
            Ok(r)
        };
        let upgrade = |p: &str| {
            req.headers().get(hyper::header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(p.as_bytes()))
        };
        if req.uri().path() == LINK_PATH && upgrade(LINK_PROTOCOL) {
            return Ok(self.accept_link(req).await);
        }
        if req.uri().path() != TUNNEL_PATH || !upgrade(UPGRADE_PROTOCOL) {
            return reply(
                StatusCode::NOT_FOUND,
                "This is a Meridian relay; agents upgrade at /api/v2/agents/me/tunnel.",
            );
        }
        let agent_id = match self.admit_agent(req.headers()).await {
            Ok(agent_id) => agent_id,
            Err(attach::Refused(status, message)) => return reply(status, message),
        };
        tokio::spawn(async move {
            match hyper::upgrade::on(&mut req).await {
                Ok(io) => self.run_tunnel(agent_id, io).await,
                Err(e) => tracing::warn!(agent = %agent_id, error = %e, "agent upgrade failed"),
            }
        });
        Ok(switching(UPGRADE_PROTOCOL))
    }

    /// A peer relay links in: check the mesh secret, then serve its streams
    /// from this relay's own tunnels.
    async fn accept_link(self: Arc<Self>, mut req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let presented = req.headers().get(MESH_SECRET).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !self.mesh.admits(presented) {
            let mut r =
                Response::new(Full::new(Bytes::from_static(b"{\"message\":\"link refused: wrong mesh secret\"}")));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            return r;
        }
        tokio::spawn(async move {
            let Ok(io) = hyper::upgrade::on(&mut req).await else { return };
            tracing::info!("peer relay linked in");
            let relay = self.clone();
            let service = hyper::service::service_fn(move |req| relay.clone().link_stream(req));
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(meridian_regions::tunnel::PING_INTERVAL)
                .keep_alive_timeout(meridian_regions::tunnel::PING_TIMEOUT)
                .initial_stream_window_size(meridian_regions::tunnel::STREAM_WINDOW)
                .initial_connection_window_size(meridian_regions::tunnel::CONNECTION_WINDOW)
                .max_frame_size(meridian_regions::tunnel::MAX_FRAME)
                .max_send_buf_size(meridian_regions::tunnel::SEND_BUFFER)
                .max_concurrent_streams(meridian_regions::tunnel::MAX_STREAMS)
                // As on tunnels (see `Tunnel::client`): resets are the peer relay's own churn.
                .max_local_error_reset_streams(None)
                .serve_connection(io, service)
                .await;
            tracing::info!("peer relay link closed");
        });
        switching(LINK_PROTOCOL)
    }

    /// One stream over a link: `CONNECT target` for the agent in `meridian-agent`.
    async fn link_stream(
        self: Arc<Self>,
        mut req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        let status = |s: StatusCode| {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = s;
            Ok(r)
        };
        if req.uri().path() == meridian_regions::tunnel::PING_PATH {
            return status(StatusCode::NO_CONTENT);
        }
        let agent = req.headers().get(AGENT_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<Uuid>().ok());
        if let (Some(agent), true) = (agent, req.method() == hyper::Method::OPTIONS) {
            return status(if self.tunnel(agent).is_some() { StatusCode::OK } else { StatusCode::NOT_FOUND });
        }
        if let (Some(agent), true) = (agent, req.method() == hyper::Method::POST && req.uri().path() == data::DATA_PATH)
        {
            return status(self.link_data(agent, &req).await);
        }
        let target = req.uri().authority().map(|a| a.as_str().to_owned());
        let (Some(agent), Some(target), true) = (agent, target, req.method() == hyper::Method::CONNECT) else {
            return status(StatusCode::BAD_REQUEST);
        };
        // A user's request must stand behind every stream: the mesh secret
        // only admits the link, never a stream by itself.
        let grant = req.headers().get(GRANT_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !self.auth.admits_stream(grant, agent, &target) {
            tracing::warn!(%agent, %target, "refused a link stream without a valid grant");
            return status(StatusCode::FORBIDDEN);
        }
        // Only this relay's own tunnels: a link never forwards to another link.
        let Some(tunnel) = self.tunnel(agent) else { return status(StatusCode::NOT_FOUND) };
        let mut upstream = match self.open_local(&tunnel, &target).await {
            Ok(io) => io,
            Err(StreamError::Refused { status: s, .. }) => {
                return status(StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY))
            }
            // As for data connections: a tunnel that closed is an agent not attached here.
            Err(StreamError::TunnelClosed(_)) => return status(StatusCode::NOT_FOUND),
        };
        let relayed = Relayed::new(&self.relayed);
        let idle = self.state.pipe_idle();
        let drain = self.draining.subscribe();
        tokio::spawn(async move {
            let _relayed = relayed;
            if let Ok(down) = hyper::upgrade::on(&mut req).await {
                let mut down = TokioIo::new(down);
                let _ =
                    meridian_regions::pipe::pipe_until_drained(&mut down, &mut upstream, idle, RELAYED_QUIET, drain)
                        .await;
            }
        });
        status(StatusCode::OK)
    }

    /// A peer relay asks for a data connection from an agent attached here
    /// (a mesh hop): with a valid grant, the agent is asked to dial the peer
    /// directly; the answer is the agent's (204 dialed, 421 cannot).
    async fn link_data(&self, agent: Uuid, req: &Request<hyper::body::Incoming>) -> StatusCode {
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        let (Some(target), Some(nonce), Some(dial)) =
            (header(data::TARGET_HEADER), header(data::NONCE_HEADER), header(data::DIAL_HEADER))
        else {
            return StatusCode::BAD_REQUEST;
        };
        if !self.auth.admits_stream(header(GRANT_HEADER).unwrap_or_default(), agent, target) {
            tracing::warn!(%agent, %target, "refused a link data connection without a valid grant");
            return StatusCode::FORBIDDEN;
        }
        let Some(tunnel) = self.tunnel(agent) else { return StatusCode::NOT_FOUND };
        match tunnel.request_data(target, nonce, &[(data::DIAL_HEADER, dial)]).await {
            Ok(true) => StatusCode::NO_CONTENT,
            Ok(false) => StatusCode::from_u16(data::CANNOT_DIAL_BACK).unwrap_or(StatusCode::BAD_GATEWAY),
            Err(StreamError::Refused { status, .. }) => StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            // The agent's tunnel closed under the ask: it is not attached here
            // (any more), so the asking relay waits for its next route.
            Err(StreamError::TunnelClosed(_)) => StatusCode::NOT_FOUND,
        }
    }

    /// Holds one agent's tunnel until it ends, then forgets it (unless a newer
    /// tunnel of the same agent replaced it) and tells the coordinator.
    async fn run_tunnel<T>(&self, agent_id: Uuid, io: T)
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (tunnel, driver) = match Tunnel::client(io).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(agent = %agent_id, error = %e, "tunnel handshake failed");
                // The coordinator already routes to this relay: take that back,
                // unless another tunnel of the agent is here.
                if self.tunnel(agent_id).is_none() {
                    let detach = AgentDetach { agent_id, replica_id: Some(self.replica_id) };
                    let _ = self.coordinator.agent_detach(&detach).await;
                }
                return;
            }
        };
        {
            let mut agents = self.agents.write().unwrap_or_else(|e| e.into_inner());
            agents.insert(agent_id, tunnel.clone());
            self.attached.set(agents.len() as i64);
        }
        // Requests that arrived between the coordinator's route and this
        // registration wait on a route change: this is one.
        self.routes.poke();
        tracing::info!(agent = %agent_id, "agent attached");
        driver.await;
        let replaced = {
            let mut agents = self.agents.write().unwrap_or_else(|e| e.into_inner());
            match agents.get(&agent_id) {
                Some(t) if t.is_open() => true,
                _ => {
                    agents.remove(&agent_id);
                    self.attached.set(agents.len() as i64);
                    false
                }
            }
        };
        tracing::info!(agent = %agent_id, "agent detached");
        if !replaced {
            // A request whose stream this tunnel's end cut short waits on a
            // route change, but the agent's new route may have come before it
            // began (the agent moves make-before-break): the tunnel leaving is
            // the change that sends it there.
            self.routes.poke();
            let detach = AgentDetach { agent_id, replica_id: Some(self.replica_id) };
            if let Err(e) = self.coordinator.agent_detach(&detach).await {
                tracing::debug!(agent = %agent_id, error = %e, "cannot record the detach");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_regions::client::Credential;
    use meridian_regions::tunnel::TlsClient;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A relay whose coordinator is a closed port but counts as reachable
    /// (so a request for an unknown agent waits for its route).
    fn relay() -> Arc<Relay> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        relay_of(&format!("http://127.0.0.1:{port}"))
    }

    /// A relay whose coordinator is at `coordinator`.
    fn relay_of(coordinator: &str) -> Arc<Relay> {
        let coordinator = Client::new(coordinator, Credential::None, reqwest::Client::new());
        let state = crate::state::ProxyState::new();
        state.update_registration(|r| r.coordinator_reachable = true);
        let auth =
            crate::auth::Auth::new(coordinator.clone(), "http://login.test", false, Duration::ZERO, state.clone());
        let own = "http://relay.test".to_owned();
        let mesh = Mesh::new(TlsClient::new(None).unwrap());
        Relay::new(coordinator, Uuid::new_v4(), own.clone(), own, mesh, Arc::new(auth), state)
    }

    /// The agent's end of a tunnel, as an agent from before data connections
    /// answers: no data connections (405), every CONNECT accepted.
    async fn agent_end(io: tokio::io::DuplexStream) {
        let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
            let mut r = Response::new(Full::new(Bytes::new()));
            if req.method() != hyper::Method::CONNECT {
                *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            }
            Ok::<_, std::convert::Infallible>(r)
        });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(TokioIo::new(io), service)
            .await;
    }

    // Paused time: it moves only when every task waits, so a request woken by
    // the attach is answered at once and one left waiting sees the route wait out.
    #[tokio::test(start_paused = true)]
    async fn an_agent_attaching_here_wakes_the_requests_waiting_for_it() {
        let relay = relay();
        let agent = Uuid::new_v4();
        let opening = tokio::spawn({
            let relay = relay.clone();
            async move { relay.open(agent, "127.0.0.1:8080", "").await.map(drop) }
        });
        // On this one-thread runtime the request runs until it waits: once it
        // has counted its stream, it found no path and waits for a route.
        for _ in 0..1000 {
            if relay.streams.get() == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(relay.streams.get(), 1, "the request never started");
        assert!(!opening.is_finished(), "an agent attached nowhere was found");

        // The coordinator routes to this relay before the tunnel is registered
        // here; the registration itself must wake the waiting request, which
        // otherwise fails at the end of its route wait.
        let (here, there) = tokio::io::duplex(64 * 1024);
        tokio::spawn(agent_end(there));
        tokio::spawn({
            let relay = relay.clone();
            async move { relay.run_tunnel(agent, TokioIo::new(here)).await }
        });
        let opened = tokio::time::timeout(ROUTE_WAIT / 2, opening).await;
        let opened = opened.expect("the request was not woken by the attach").unwrap();
        assert!(opened.is_ok(), "the request was woken but not served: {opened:?}");
    }

    /// The agent's end of a tunnel that breaks at its first request, as one
    /// leaving this relay closes under a request that just began.
    async fn breaking_agent_end(io: tokio::io::DuplexStream) {
        let (asked, first) = tokio::sync::oneshot::channel::<()>();
        let asked = std::sync::Mutex::new(Some(asked));
        let service = hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
            if let Some(asked) = asked.lock().unwrap().take() {
                let _ = asked.send(());
            }
            std::future::pending::<Result<Response<Full<Bytes>>, std::convert::Infallible>>()
        });
        let serving = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(TokioIo::new(io), service);
        // Dropping the connection closes the duplex: the relay sees its tunnel end.
        tokio::select! {
            _ = serving => {}
            _ = first => {}
        }
    }

    /// Soak, rolling restart: a replica's agent moves to its sibling, whose
    /// route reaches this replica before a request that then starts on the
    /// old tunnel here, as it closes. The tunnel ending must send the
    /// request to the new route; it otherwise waits for a route change that
    /// already came and fails after the route wait.
    #[tokio::test]
    async fn a_request_cut_by_a_tunnel_leaving_takes_the_route_that_came_before() {
        use crate::routes::Route;
        use meridian_regions::app_token::{generate_key, Signer};
        let agent = Uuid::new_v4();
        // The sibling: holds the agent's new tunnel, admits this relay's link and the request's grant.
        let (sibling, addr, _stop) = serving(Admission::new(16, 16)).await;
        let (der, public) = generate_key("k1", [7u8; 32]);
        sibling.auth.set_keys(&[public]);
        let (there_here, there_agent) = tokio::io::duplex(64 * 1024);
        tokio::spawn(agent_end(there_agent));
        tokio::spawn({
            let sibling = sibling.clone();
            async move { sibling.run_tunnel(agent, TokioIo::new(there_here)).await }
        });
        let relay = relay();
        for r in [&relay, &sibling] {
            r.mesh.set_secret(meridian_regions::token::Secret::new("mesh"));
        }
        relay.routes.learn(agent, Route { region: "sibling".into(), relay_url: format!("http://{addr}") });
        // Here, the old tunnel, still open when the request starts.
        let (here, agent_here) = tokio::io::duplex(64 * 1024);
        tokio::spawn(breaking_agent_end(agent_here));
        tokio::spawn({
            let relay = relay.clone();
            async move { relay.run_tunnel(agent, TokioIo::new(here)).await }
        });
        for _ in 0..500 {
            if relay.tunnel(agent).is_some() && sibling.tunnel(agent).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(relay.tunnel(agent).is_some() && sibling.tunnel(agent).is_some(), "the tunnels never came up");

        let exp = chrono::Utc::now().timestamp() + 300;
        let grant = crate::auth::tests::grant_expiring(&Signer::new("k1", &der), agent, exp);
        let opened = tokio::time::timeout(Duration::from_secs(30), relay.open(agent, "127.0.0.1:8080", &grant)).await;
        let opened = opened.expect("the request hung");
        assert!(opened.is_ok(), "the request found no path: {:?}", opened.err());
        assert!(relay.tunnel(agent).is_none(), "the request went through the tunnel that broke");
    }

    /// An agent's connection that broke right after its upgrade: the relay's
    /// tunnel handshake fails, and the coordinator (which already routes to
    /// this relay) is told the agent is not here after all.
    #[tokio::test]
    async fn a_failed_tunnel_handshake_takes_the_attachment_back() {
        let coordinator = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = relay_of(&format!("http://{}", coordinator.local_addr().unwrap()));
        // The coordinator's side: the first request it gets, answered 200.
        let asked = tokio::spawn(async move {
            let (mut conn, _) = coordinator.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&request).contains("}") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await.unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        let agent = Uuid::new_v4();
        let (here, there) = tokio::io::duplex(1024);
        drop(there);
        tokio::time::timeout(Duration::from_secs(10), relay.run_tunnel(agent, TokioIo::new(here))).await.unwrap();
        let request = tokio::time::timeout(Duration::from_secs(5), asked).await.expect("no detach was sent").unwrap();
        assert!(request.starts_with("POST /api/v2/proxies/me/agent-detach "), "{request}");
        assert!(request.contains(&agent.to_string()), "{request}");
        assert!(relay.tunnel(agent).is_none());
    }

    async fn serving(
        admission: Arc<Admission>,
    ) -> (Arc<Relay>, std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
        let relay = relay();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(relay.clone().serve_within(admission, listener, None, stopped));
        (relay, addr, stop)
    }

    /// A connection to `addr` from loopback address `from`.
    async fn connect_from(from: [u8; 4], addr: std::net::SocketAddr) -> tokio::net::TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((std::net::Ipv4Addr::from(from), 0).into()).unwrap();
        socket.connect(addr).await.unwrap()
    }

    /// Whether the relay closes `conn` (without answering) within `within`.
    async fn closed(conn: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 1];
        matches!(tokio::time::timeout(within, conn.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }

    /// The probe's flood: one address opening connection after connection
    /// and never finishing a request. It gets its share, the next are
    /// closed at once, another address is still served, and a connection
    /// that does not prove itself is closed after the handshake deadline.
    #[tokio::test]
    async fn one_address_cannot_take_the_relay_port() {
        let (relay, addr, _stop) = serving(Admission::new(100, 3)).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(connect_from([127, 0, 0, 1], addr).await);
        }
        for conn in &mut held {
            assert!(answered(conn).await, "the address's share is served");
        }
        let mut fourth = connect_from([127, 0, 0, 1], addr).await;
        assert!(closed(&mut fourth, Duration::from_secs(2)).await, "a fourth connection of one address was held");
        assert_eq!(relay.state.metrics.relay_refused.get(), 1);
        let mut other = connect_from([127, 0, 0, 2], addr).await;
        assert!(answered(&mut other).await, "another address is served");

        // Silent connections (a request never finished) end at the deadline.
        let started = tokio::time::Instant::now();
        let mut silent = connect_from([127, 0, 0, 3], addr).await;
        silent.write_all(b"GET / HTTP/1.1\r\nhost: rel").await.unwrap();
        assert!(closed(&mut silent, HANDSHAKE_DEADLINE * 3).await, "a half-sent request was held");
        assert!(started.elapsed() >= HANDSHAKE_DEADLINE - Duration::from_millis(500), "closed before its deadline");
    }

    /// Asks the relay on `conn` for a path it does not serve: its 404 shows
    /// the connection was accepted and is being served.
    async fn answered(conn: &mut tokio::net::TcpStream) -> bool {
        if conn.write_all(b"GET / HTTP/1.1\r\nhost: relay\r\n\r\n").await.is_err() {
            return false;
        }
        // The whole answer (its JSON body ends the read), so the next one starts clean.
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 1024];
            while !answer.ends_with(b"}") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        });
        read.await.is_ok() && answer.starts_with(b"HTTP/1.1 404")
    }

    #[tokio::test]
    async fn the_relay_holds_at_most_its_maximum_of_connections() {
        let (relay, addr, _stop) = serving(Admission::new(2, 2)).await;
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(answered(&mut first).await && answered(&mut second).await, "two places, two connections served");

        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0) | Err(_))), "a connection beyond the maximum was not closed: {closed:?}");
        assert_eq!(relay.state.metrics.relay_refused.get(), 1);
        assert!(answered(&mut second).await, "the connections held are still served");

        // A place freed is a place for the next connection (the relay notices
        // the close asynchronously, so a connection may be refused first).
        drop(first);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut next = tokio::net::TcpStream::connect(addr).await.unwrap();
            if answered(&mut next).await {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the freed place was never given to a new connection");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn failed_accepts_pause_the_listener_instead_of_spinning() {
        // Lowers this process's descriptor limit: nextest runs each test in a process of its own.
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (relay, addr, _stop) = serving(Admission::new(admission::MAX_UNPROVEN, admission::MAX_UNPROVEN)).await;
        let mut waiting = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(answered(&mut waiting).await);

        // Out of file descriptors: every descriptor below a lowered limit in
        // use, so the next accept fails (EMFILE) while a connection waits.
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let highest = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, highest + 1, hard).unwrap();
        let mut fillers = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            fillers.push(f);
        }
        let mut blocked = std::net::TcpStream::connect(addr);
        assert!(blocked.is_err(), "a descriptor was left for the test's own connection");
        drop(fillers.pop());
        blocked = std::net::TcpStream::connect(addr);
        let blocked = blocked.unwrap();

        // Half a second of a listener that cannot accept: about five tries at
        // one per pause, where a loop without the pause makes thousands.
        let window = Duration::from_millis(500);
        tokio::time::sleep(window).await;
        let errors = relay.state.metrics.relay_accept_errors.get();
        drop(fillers);
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
        let most = (window.as_millis() / ACCEPT_PAUSE.as_millis()) as u64 + 2;
        assert!((1..=most).contains(&errors), "{errors} failed accepts in {window:?} (at most {most})");

        // Descriptors free again: the waiting connection is accepted and served.
        blocked.set_nonblocking(true).unwrap();
        let mut blocked = tokio::net::TcpStream::from_std(blocked).unwrap();
        assert!(answered(&mut blocked).await, "accepting did not resume");
    }
}
