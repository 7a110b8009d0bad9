//! The relay mesh: links from this relay to the relays of every other region
//! and of this region's sibling replicas, so the data plane reaches an agent
//! attached anywhere in one relay hop.
//!
//! A link is one HTTP/1.1 upgrade to `meridian-link` (then HTTP/2, one
//! `CONNECT` per stream, the agent named in `meridian-agent`), authenticated
//! with the mesh secret handed out at registration, which the receiving relay
//! checks locally (constant time), so links form even while the coordinator is
//! down. Links are dialed on first use and again after they drop; links to
//! relays that left the region map are closed at the next registration.
//!
//! One dial per peer at a time, shared by every request that needs it (none
//! queues behind another's dial), and a failed dial is remembered: the peer
//! is not dialed again before its backoff ends (250 ms doubling to 5 s), and
//! requests meanwhile learn at once that it is unreachable.

use futures_util::future::{BoxFuture, FutureExt, Shared};
use meridian_regions::api::LinkRtt;
use meridian_regions::headers::MESH_SECRET;
use meridian_regions::token::Secret;
use meridian_regions::tunnel::{dial_upgrade, TlsClient, Tunnel, LINK_PATH, LINK_PROTOCOL};
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// Longest wait to dial and upgrade a link (a partitioned peer never answers).
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a peer's first failed dial before it is dialed again; doubles
/// with each further failure up to [`MAX_BACKOFF`]. A dead relay costs one
/// dial per backoff, not one per request.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest a link round-trip measurement may take, the dial included.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(3);

/// A dial in progress, awaited by every request that needs the link.
type Dial = Shared<BoxFuture<'static, Result<Tunnel, String>>>;

/// What this relay knows of one peer relay.
#[derive(Default)]
struct Peer {
    link: Option<Tunnel>,
    /// The dial in progress and its number (only that dial's outcome is recorded).
    dialing: Option<(u64, Dial)>,
    dials: u64,
    /// Failed dials in a row, and when the next dial may start.
    failures: u32,
    retry_at: Option<Instant>,
}

pub struct Mesh {
    /// The last round trips measured to other regions (see [`Mesh::measure`]).
    round_trips: RwLock<Vec<LinkRtt>>,
    measuring: std::sync::atomic::AtomicBool,
    secret: RwLock<Option<Secret>>,
    /// Every live relay's mesh URL and region, from the last registration.
    peers: RwLock<HashMap<String, String>>,
    /// Per peer relay URL; never locked across an await.
    links: Mutex<HashMap<String, Peer>>,
    /// Links open now, dialed by this relay or linked in by a peer: each holds
    /// a connection for as long as both relays live (a soak tells these from leaks).
    pub open_links: prometheus::IntGauge,
    tls: TlsClient,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh").field("links", &self.links.lock().map(|l| l.len()).unwrap_or(0)).finish()
    }
}

impl Mesh {
    pub fn new(tls: TlsClient) -> Self {
        Self {
            tls,
            secret: RwLock::default(),
            peers: RwLock::default(),
            links: Mutex::default(),
            open_links: prometheus::IntGauge::new(
                "meridian_relay_mesh_links",
                "Mesh links open now, dialed by this relay or linked in by a peer relay",
            )
            .unwrap_or_else(|e| unreachable!("static metric: {e}")),
            round_trips: RwLock::default(),
            measuring: Default::default(),
        }
    }

    /// Installs the mesh secret from a registration.
    pub fn set_secret(&self, secret: Secret) {
        *self.secret.write().unwrap_or_else(|e| e.into_inner()) = Some(secret);
    }

    /// Whether `presented` is the mesh secret (never true before the first registration).
    pub fn admits(&self, presented: &str) -> bool {
        self.secret.read().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|s| s.matches(presented))
    }

    /// Installs the live relays (mesh URL → region) and closes links to
    /// relays that are gone (they deregistered or were pruned).
    pub fn set_peers(&self, current: HashMap<String, String>) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.retain(|url, _| current.contains_key(url));
        *self.peers.write().unwrap_or_else(|e| e.into_inner()) = current;
    }

    /// The live relays: mesh URL → region.
    pub fn peers(&self) -> HashMap<String, String> {
        self.peers.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Measures one round trip to a replica of every other region (linking
    /// to it if needed: warm links also spare a user's first request the
    /// dial), keeping the results for the next heartbeat. One measurement at
    /// a time; each peer bounded by [`MEASURE_TIMEOUT`].
    pub async fn measure(&self, own_region: &str) {
        use std::sync::atomic::Ordering;
        if self.measuring.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut one_per_region: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        for (url, region) in self.peers() {
            if region != own_region {
                let e = one_per_region.entry(region).or_insert_with(|| url.clone());
                if url < *e {
                    *e = url;
                }
            }
        }
        let measured = futures_util::future::join_all(one_per_region.into_iter().map(|(region, url)| async move {
            let rtt = tokio::time::timeout(MEASURE_TIMEOUT, async {
                let link = self.link(&url).await?;
                link.round_trip().await.ok()
            })
            .await
            .ok()
            .flatten()?;
            Some(LinkRtt { region, rtt_ms: u32::try_from(rtt.as_millis()).unwrap_or(u32::MAX).max(1) })
        }))
        .await;
        *self.round_trips.write().unwrap_or_else(|e| e.into_inner()) = measured.into_iter().flatten().collect();
        self.measuring.store(false, Ordering::Release);
    }

    /// The round trips of the last [`Mesh::measure`].
    pub fn round_trips(&self) -> Vec<LinkRtt> {
        self.round_trips.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether a link to `url` is open now.
    pub fn is_linked(&self, url: &str) -> bool {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.get(url).and_then(|p| p.link.as_ref()).is_some_and(Tunnel::is_open)
    }

    /// The open link to `url`: the one there is, the dial in progress, or a
    /// new dial; `None` at once while `url` is in its backoff after failing.
    pub async fn link(&self, url: &str) -> Option<Tunnel> {
        let (number, dial) = {
            let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
            let peer = links.entry(url.to_owned()).or_default();
            if let Some(t) = peer.link.as_ref().filter(|t| t.is_open()) {
                return Some(t.clone());
            }
            match &peer.dialing {
                Some((number, dial)) => (*number, dial.clone()),
                None if peer.retry_at.is_some_and(|at| Instant::now() < at) => return None,
                None => {
                    let secret = self.secret.read().unwrap_or_else(|e| e.into_inner()).clone()?;
                    peer.dials += 1;
                    let dial = dial(url.to_owned(), secret, self.tls.clone(), self.open_links.clone());
                    peer.dialing = Some((peer.dials, dial.clone()));
                    (peer.dials, dial)
                }
            }
        };
        let outcome = dial.await;
        self.record(url, number, &outcome);
        outcome.ok()
    }

    /// Records dial `number`'s outcome for `url` (once: later callers of the
    /// same dial find it recorded).
    fn record(&self, url: &str, number: u64, outcome: &Result<Tunnel, String>) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let Some(peer) = links.get_mut(url) else { return };
        if peer.dialing.as_ref().is_none_or(|(n, _)| *n != number) {
            return;
        }
        peer.dialing = None;
        match outcome {
            Ok(tunnel) => {
                if peer.failures > 0 {
                    tracing::info!(relay = %url, after = peer.failures, "linked to a peer relay again");
                }
                peer.link = Some(tunnel.clone());
                (peer.failures, peer.retry_at) = (0, None);
            }
            Err(e) => {
                let backoff = backoff(peer.failures);
                if peer.failures == 0 {
                    tracing::warn!(relay = %url, error = %e, ?backoff, "cannot link to a peer relay; backing off");
                }
                peer.failures = peer.failures.saturating_add(1);
                peer.retry_at = Some(Instant::now() + backoff);
            }
        }
    }
}

/// The wait after `failures` failed dials in a row: doubling, capped, jittered.
fn backoff(failures: u32) -> Duration {
    let base = FIRST_BACKOFF.saturating_mul(1 << failures.min(8)).min(MAX_BACKOFF);
    base.mul_f64(rand::rng().random_range(0.75..1.25))
}

/// Dials `url` on a task of its own (it finishes even if every request that
/// waited for it gave up), shared by all who wait.
fn dial(url: String, secret: Secret, tls: TlsClient, open: prometheus::IntGauge) -> Dial {
    let task = tokio::spawn(async move {
        let credentials = [(MESH_SECRET, secret.expose())];
        let dial = dial_upgrade(&url, LINK_PATH, LINK_PROTOCOL, &credentials, &tls);
        let io = match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {DIAL_TIMEOUT:?}")),
        };
        let (tunnel, driver) = Tunnel::client(io).await.map_err(|e| e.to_string())?;
        open.inc();
        tokio::spawn(async move {
            driver.await;
            open.dec();
        });
        tracing::info!(relay = %url, "linked to a peer relay");
        Ok(tunnel)
    });
    async move { task.await.unwrap_or_else(|e| Err(format!("dial task failed: {e}"))) }.boxed().shared()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let lo = |f| backoff(f).as_secs_f64();
        assert!((0.18..0.32).contains(&lo(0)), "{}", lo(0));
        assert!((0.37..0.63).contains(&lo(1)), "{}", lo(1));
        for f in [5, 9, 30, u32::MAX] {
            assert!(lo(f) <= MAX_BACKOFF.as_secs_f64() * 1.25, "{f}: {}", lo(f));
        }
    }

    #[tokio::test]
    async fn a_refusing_peer_is_dialed_once_per_backoff_and_waiters_share_the_dial() {
        let mesh = Mesh::new(TlsClient::new(None).unwrap());
        mesh.set_secret(Secret::new("s"));
        // A port nothing listens on: every dial is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let many = (0..50).map(|_| mesh.link(&url));
        let started = Instant::now();
        let all = futures_util::future::join_all(many).await;
        assert!(all.iter().all(Option::is_none));
        assert!(started.elapsed() < Duration::from_secs(2), "waiters did not queue: {:?}", started.elapsed());
        let dials = |m: &Mesh| m.links.lock().unwrap()[&url].dials;
        assert_eq!(dials(&mesh), 1, "fifty requests, one dial");
        // Within the backoff: refused at once, no dial.
        assert!(mesh.link(&url).await.is_none());
        assert_eq!(dials(&mesh), 1);
        // After it: one more dial, and a longer backoff.
        tokio::time::sleep(FIRST_BACKOFF.mul_f64(1.3)).await;
        assert!(mesh.link(&url).await.is_none());
        assert_eq!(dials(&mesh), 2);
        assert_eq!(mesh.links.lock().unwrap()[&url].failures, 2);
    }
}
