//! Finding a moved agent without the coordinator: ask the peer relays which
//! of them holds its tunnel.
//!
//! Used when the route table points at a relay that cannot be reached, or
//! while the coordinator cannot push the new route. So that a mesh of a
//! hundred regions is not asked a hundred questions per request:
//!
//! - one search per agent at a time, shared by every request waiting for
//!   that agent, and its answer (found or not) reused for [`REUSE`];
//! - peers already linked are asked first (a probe on an open link is one
//!   HTTP/2 stream); at most [`FANOUT`] probes are in flight at once, and the
//!   search stops at the first peer that holds the agent;
//! - peers in their dial backoff (see [`crate::mesh`]) answer "no" at once.
//!
//! So a region spends at most one search per moved agent per [`REUSE`], and
//! a search costs probes until the first hit (all peers only when the agent
//! is nowhere).

use crate::mesh::Mesh;
use crate::routes::Route;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Longest a search may take.
const TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a finished search's answer stands for other requests.
pub const REUSE: Duration = Duration::from_millis(200);
/// Probes in flight at once.
const FANOUT: usize = 8;

/// A search's answer and when it came.
type Search = Shared<BoxFuture<'static, (Option<Route>, Instant)>>;

/// The searches of one relay.
#[derive(Default)]
pub struct Searches {
    /// Per agent: the search under way or just finished.
    by_agent: Mutex<HashMap<Uuid, Search>>,
}

impl Searches {
    /// Where `agent` is, by asking the peers in `mesh` (all but `own_url`):
    /// the search under way, a fresh answer, or a new search.
    pub async fn find(
        &self,
        mesh: &Arc<Mesh>,
        own_url: &str,
        agent: Uuid,
        metrics: &crate::metrics::Metrics,
    ) -> Option<Route> {
        let search = {
            let mut by_agent = self.by_agent.lock().unwrap_or_else(|e| e.into_inner());
            // Under way, or answered less than REUSE ago (whether or not anyone waited for it).
            by_agent.retain(|_, search| search.peek().is_none_or(|(_, at)| at.elapsed() < REUSE));
            match by_agent.get(&agent) {
                Some(search) => search.clone(),
                None => {
                    metrics.searches.inc();
                    let probes = metrics.search_probes.clone();
                    let search = search(mesh.clone(), own_url.to_owned(), agent, probes);
                    by_agent.insert(agent, search.clone());
                    search
                }
            }
        };
        search.await.0
    }
}

/// One search, on a task of its own (it ends even if its requests give up).
fn search(mesh: Arc<Mesh>, own_url: String, agent: Uuid, probes: prometheus::IntCounter) -> Search {
    let task = tokio::spawn(async move {
        let mut peers: Vec<(String, String)> = mesh.peers().into_iter().filter(|(url, _)| *url != own_url).collect();
        peers.sort_by_key(|(url, _)| !mesh.is_linked(url));
        let asked = futures_util::stream::iter(peers)
            .map(|(url, region)| {
                let (mesh, probes) = (mesh.clone(), probes.clone());
                async move {
                    let link = mesh.link(&url).await?;
                    probes.inc();
                    link.probe(agent).await.then_some(Route { region, relay_url: url })
                }
            })
            .buffer_unordered(FANOUT);
        let first = async move {
            futures_util::pin_mut!(asked);
            while let Some(found) = asked.next().await {
                if found.is_some() {
                    return found;
                }
            }
            None
        };
        (tokio::time::timeout(TIMEOUT, first).await.ok().flatten(), Instant::now())
    });
    async move { task.await.unwrap_or((None, Instant::now())) }.boxed().shared()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_regions::token::Secret;
    use meridian_regions::tunnel::TlsClient;

    #[tokio::test]
    async fn concurrent_requests_for_one_agent_share_one_search() {
        let mesh = Arc::new(Mesh::new(TlsClient::new(None).unwrap()));
        mesh.set_secret(Secret::new("s"));
        // Twenty peers nothing listens at: every probe's dial is refused.
        let peers: HashMap<String, String> = (0..20)
            .map(|i| {
                let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
                (format!("http://127.0.0.1:{port}"), format!("r{i}"))
            })
            .collect();
        mesh.set_peers(peers);
        let (searches, metrics) = (Searches::default(), crate::metrics::Metrics::new());
        let agent = Uuid::new_v4();
        let many = (0..100).map(|_| searches.find(&mesh, "http://me", agent, &metrics));
        let found = futures_util::future::join_all(many).await;
        assert!(found.iter().all(Option::is_none));
        assert_eq!(metrics.searches.get(), 1, "a hundred requests, one search");
        // Within REUSE the answer stands; after it, a new search, whose dials
        // are skipped while each peer is in its backoff.
        searches.find(&mesh, "http://me", agent, &metrics).await;
        assert_eq!(metrics.searches.get(), 1);
        tokio::time::sleep(REUSE.mul_f64(1.5)).await;
        searches.find(&mesh, "http://me", agent, &metrics).await;
        assert_eq!(metrics.searches.get(), 2);
        // Another agent is another search.
        searches.find(&mesh, "http://me", Uuid::new_v4(), &metrics).await;
        assert_eq!(metrics.searches.get(), 3);
    }
}
