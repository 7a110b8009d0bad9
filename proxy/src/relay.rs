//! The relay: where agents attach, and where this region's proxy opens
//! streams to them.
//!
//! Agents dial the relay listener and upgrade (`meridian_regions::tunnel`);
//! the relay checks the agent's attach token, the coordinator records the
//! attachment (a route change every proxy hears of), and the relay keeps one
//! [`Tunnel`] per agent. [`Relay::open`] is the one interface the data plane
//! uses to reach an agent: through this relay's own tunnel, or, for an agent
//! attached elsewhere, over a mesh link to the relay the route table names
//! (one hop, see [`crate::mesh`]). Peer relays link in with the mesh secret.
//!
//! Each concern owns its state:
//!
//! - [`listener`]: the accept loop within [`admission`]'s caps, and what a
//!   new connection is (a data connection, an agent's upgrade, a peer's link);
//! - [`agents`] and [`attach`]: the tunnels held here, who may attach, and
//!   telling the coordinator;
//! - [`dial`] and [`data`]: reaching an agent from a request (its tunnel, a
//!   mesh link, a search of the peers) and matching the data connections
//!   agents dial back to the requests that asked for them;
//! - [`link`]: the streams peer relays open to this relay's agents;
//! - [`drain`]: ending those streams once quiet when the replica stops.

mod admission;
mod agents;
mod attach;
mod data;
mod dial;
mod drain;
mod link;
mod listener;

use crate::mesh::Mesh;
use crate::routes::RouteTable;
use meridian_regions::client::Client;
use std::sync::Arc;
use uuid::Uuid;

pub use dial::{DialError, Upstream};
pub use drain::RELAYED_QUIET;

pub struct Relay {
    /// Where agents attached elsewhere are, and the links to reach them.
    pub routes: Arc<RouteTable>,
    pub mesh: Arc<Mesh>,
    /// Whether the coordinator is reachable (when it is not, routes may be stale), and the metrics.
    pub state: Arc<crate::state::ProxyState>,
    /// Checks attach tokens and the grants of link streams.
    auth: Arc<crate::auth::Auth>,
    /// This relay's own URL, so it never links to itself.
    own_url: String,
    /// This relay's URL as agents dial it (for mesh hops on data connections).
    agent_url: String,
    agents: agents::Agents,
    dials: dial::Dials,
    drain: drain::Drain,
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
        state.metrics.register(Box::new(mesh.open_links.clone()));
        Arc::new(Self {
            agents: agents::Agents::new(coordinator, replica_id, state.metrics.agents.clone()),
            dials: dial::Dials::new(state.metrics.streams.clone()),
            drain: drain::Drain::default(),
            state,
            own_url,
            agent_url,
            routes: Arc::default(),
            mesh: Arc::new(mesh),
            auth,
        })
    }

    /// Learns this relay's region (from a registration); it never changes.
    pub fn set_region(&self, name: &str) {
        let _ = self.agents.region.set(name.to_owned());
    }

    /// Tells the coordinator about agents admitted while it was unreachable
    /// (called after each successful registration), so routes catch up.
    pub async fn record_offline_attachments(&self) {
        self.agents.record_offline().await
    }

    /// Agents attached here that have not (yet) attached to another relay:
    /// their route does not name another relay.
    pub fn agents_staying(&self) -> usize {
        self.agents.staying(|agent| self.routes.get(agent).is_none_or(|r| r.relay_url == self.own_url))
    }

    /// Shutting down: asks every attached agent to attach elsewhere (each
    /// moves make-before-break, then closes this tunnel once its streams end).
    pub async fn ask_agents_to_leave(&self) {
        self.agents.ask_to_leave().await
    }

    /// Streams open now for peer relays.
    pub fn relayed_streams(&self) -> usize {
        self.drain.relayed()
    }

    /// The drain has begun: a stream carried for a peer relay ends once no
    /// byte has moved on it for [`RELAYED_QUIET`] (an idle pooled connection,
    /// or the gap between two requests), while busy ones run on.
    pub fn start_draining(&self) {
        self.drain.start()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A relay for unit tests, and an agent's end of a tunnel.

    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use meridian_regions::client::Credential;
    use meridian_regions::tunnel::TlsClient;
    use std::time::Duration;

    /// A relay whose coordinator is a closed port but counts as reachable
    /// (so a request for an unknown agent waits for its route).
    pub fn relay() -> Arc<Relay> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        relay_of(&format!("http://127.0.0.1:{port}"))
    }

    /// A relay whose coordinator is at `coordinator`.
    pub fn relay_of(coordinator: &str) -> Arc<Relay> {
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
    pub async fn agent_end(io: tokio::io::DuplexStream) {
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

    /// A relay serving on an ephemeral port within `admission`'s caps, until the sender is dropped or sent true.
    pub async fn serving(
        admission: Arc<super::admission::Admission>,
    ) -> (Arc<Relay>, std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
        let relay = relay();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(relay.clone().serve_within(admission, listener, None, stopped));
        (relay, addr, stop)
    }
}
