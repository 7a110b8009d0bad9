//! Reaching an agent from a request: its tunnel here, else a mesh link to
//! the relay the route names (a data connection the agent dials straight to
//! this relay, or a stream over the link), else a search of the peers; a
//! request waits up to [`ROUTE_WAIT`] for a path to show up.

use super::data::Pending;
use super::Relay;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use meridian_regions::data::{self, DataStream};
use meridian_regions::tunnel::{StreamError, Tunnel, AGENT_HEADER, GRANT_HEADER};
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

/// Pause between searches for an agent that is re-attaching somewhere.
const SEARCH_AGAIN: std::time::Duration = crate::search::REUSE;

/// How long a request waits for an unreachable agent's route to change.
const ROUTE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What dialing keeps: searches of the peers, data connections asked for,
/// and the streams opened (for `/metrics`).
pub(super) struct Dials {
    pub searches: crate::search::Searches,
    pub pending: Pending,
    pub streams: prometheus::IntCounter,
}

impl Dials {
    pub fn new(streams: prometheus::IntCounter) -> Self {
        Self { searches: Default::default(), pending: Pending::default(), streams }
    }
}

impl Relay {
    /// Opens a byte stream to `target` (`host:port`) inside agent `agent_id`'s
    /// workspace: through this relay's own tunnel, else over a mesh link to
    /// the relay the route table names, which admits the stream only with
    /// `grant`, the verified app token of the request. An agent that is not
    /// reachable right now gets [`ROUTE_WAIT`] to show up (it may be
    /// re-attaching, and its new route a few milliseconds away) before the
    /// request fails.
    pub async fn open(&self, agent_id: Uuid, target: &str, grant: &str) -> Result<Upstream, DialError> {
        self.dials.streams.inc();
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
        let found = self.dials.searches.find(&self.mesh, &self.own_url, agent_id, &self.state.metrics).await;
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
        if let Some(tunnel) = self.agents.tunnel(agent_id) {
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
    pub(super) async fn open_local(&self, tunnel: &Tunnel, target: &str) -> Result<Upstream, StreamError> {
        if tunnel.offers_data() {
            if let Some(conn) = self.await_data(tunnel, target, &[]).await? {
                return Ok(conn);
            }
            tracing::info!(relay = %self.own_url, "the agent cannot dial data connections here; using HTTP/2 streams");
        }
        Ok(Upstream::Stream(tunnel.open(target, None).await?))
    }

    /// Keys pooled app connections by the path they take: this relay's own
    /// tunnel, or the relay the route names. When an agent moves, new requests
    /// get new connections on the new path, and connections on the old path
    /// idle out instead of carrying requests into a relay that is leaving.
    pub fn path_key(&self, agent_id: Uuid) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        agent_id.hash(&mut h);
        if self.agents.holds(agent_id) {
            self.agents.replica_id.hash(&mut h);
        } else {
            self.routes.relay_hash(agent_id, &mut h);
        }
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::admission::Admission;
    use super::super::testing::{agent_end, relay, serving};
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::{Request, Response};
    use std::time::Duration;

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
            if relay.dials.streams.get() == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(relay.dials.streams.get(), 1, "the request never started");
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
            if relay.agents.tunnel(agent).is_some() && sibling.agents.tunnel(agent).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            relay.agents.tunnel(agent).is_some() && sibling.agents.tunnel(agent).is_some(),
            "the tunnels never came up"
        );

        let exp = chrono::Utc::now().timestamp() + 300;
        let grant = crate::auth::tests::grant_expiring(&Signer::new("k1", &der), agent, exp);
        let opened = tokio::time::timeout(Duration::from_secs(30), relay.open(agent, "127.0.0.1:8080", &grant)).await;
        let opened = opened.expect("the request hung");
        assert!(opened.is_ok(), "the request found no path: {:?}", opened.err());
        assert!(relay.agents.tunnel(agent).is_none(), "the request went through the tunnel that broke");
    }
}
