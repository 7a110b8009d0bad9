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

use meridian_regions::headers::MESH_SECRET;
use meridian_regions::token::Secret;
use meridian_regions::tunnel::{dial_upgrade, TlsClient, Tunnel, LINK_PATH, LINK_PROTOCOL};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Longest wait to dial and upgrade a link (a partitioned peer never answers).
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

type Slot = Arc<tokio::sync::Mutex<Option<Tunnel>>>;

pub struct Mesh {
    secret: RwLock<Option<Secret>>,
    /// Every live relay's mesh URL and region, from the last registration.
    peers: RwLock<HashMap<String, String>>,
    /// One slot per peer relay URL; the slot's lock serializes dialing.
    links: Mutex<HashMap<String, Slot>>,
    tls: TlsClient,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh").field("links", &self.links.lock().map(|l| l.len()).unwrap_or(0)).finish()
    }
}

impl Mesh {
    pub fn new(tls: TlsClient) -> Self {
        Self { tls, secret: RwLock::default(), peers: RwLock::default(), links: Mutex::default() }
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

    /// The open link to `url`, dialing it if there is none.
    pub async fn link(&self, url: &str) -> Option<Tunnel> {
        let slot = self.links.lock().unwrap_or_else(|e| e.into_inner()).entry(url.to_owned()).or_default().clone();
        let mut link = slot.lock().await;
        if let Some(t) = link.as_ref().filter(|t| t.is_open()) {
            return Some(t.clone());
        }
        let secret = self.secret.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        let credentials = [(MESH_SECRET, secret.expose())];
        let dial = dial_upgrade(url, LINK_PATH, LINK_PROTOCOL, &credentials, &self.tls);
        let io = match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                tracing::warn!(relay = %url, error = %e, "cannot link to a peer relay");
                return None;
            }
            Err(_) => {
                tracing::warn!(relay = %url, "linking to a peer relay timed out");
                return None;
            }
        };
        let (tunnel, driver) = Tunnel::client(io).await.ok()?;
        tokio::spawn(driver);
        tracing::info!(relay = %url, "linked to a peer relay");
        *link = Some(tunnel.clone());
        Some(tunnel)
    }
}
