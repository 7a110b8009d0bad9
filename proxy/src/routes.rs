//! The route table: which relay holds each agent's tunnel, as pushed by the
//! coordinator (`proxies/me/routes`, a long poll woken by Postgres NOTIFY).
//!
//! The data plane only reads it; nothing on the hot path asks the
//! coordinator. While the coordinator is unreachable the table keeps its last
//! contents (degraded mode) and the follower retries with jittered backoff.

use meridian_regions::api::{AgentRoute, RouteUpdate};
use meridian_regions::client::Client;
use rand::Rng;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;
use uuid::Uuid;

/// How long each long poll waits for a change before asking again.
const POLL_WAIT: Duration = Duration::from_secs(20);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where one agent's tunnel is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub region: String,
    pub relay_url: String,
}

#[derive(Debug)]
pub struct RouteTable {
    routes: RwLock<HashMap<Uuid, Route>>,
    /// Bumped after every applied update, for requests waiting on a route.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self { routes: RwLock::default(), changed: tokio::sync::watch::channel(0).0 }
    }
}

impl RouteTable {
    /// Fires after the next applied update.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn get(&self, agent: Uuid) -> Option<Route> {
        self.routes.read().unwrap_or_else(|e| e.into_inner()).get(&agent).cloned()
    }

    /// Feeds the relay URL of `agent`'s route (if any) into `h`, without cloning it.
    pub fn relay_hash(&self, agent: Uuid, h: &mut impl std::hash::Hasher) {
        use std::hash::Hash;
        if let Some(r) = self.routes.read().unwrap_or_else(|e| e.into_inner()).get(&agent) {
            r.relay_url.hash(h);
        }
    }

    pub fn len(&self) -> usize {
        self.routes.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes the requests waiting on a route: an agent attached to this
    /// relay, which is a route of its own, or its tunnel here ended.
    pub fn poke(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Records where an agent was found without the coordinator; its next
    /// route update replaces this.
    pub fn learn(&self, agent: Uuid, route: Route) {
        self.routes.write().unwrap_or_else(|e| e.into_inner()).insert(agent, route);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Applies an update; a snapshot (`replace`) drops every route it does not name.
    pub fn apply(&self, update: &RouteUpdate, replace: bool) {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if replace {
            routes.clear();
        }
        for r in update.all_routes() {
            match route(&r) {
                Some(route) => routes.insert(r.agent_id, route),
                None => routes.remove(&r.agent_id),
            };
        }
        drop(routes);
        if !update.is_empty() || replace {
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Follows the coordinator's route feed until `stop` turns true. A feed
    /// that breaks at the connection (not an answer such as a 503) tells
    /// `state` the coordinator is gone.
    pub async fn follow(
        &self,
        client: &Client,
        mut stop: tokio::sync::watch::Receiver<bool>,
        state: &crate::state::ProxyState,
    ) {
        let mut version = None;
        let mut backoff = FIRST_BACKOFF;
        while !*stop.borrow() {
            let wait = tokio::select! {
                _ = stop.changed() => return,
                update = client.routes(version, POLL_WAIT) => match update {
                    Ok(update) => {
                        if !update.is_empty() {
                            tracing::debug!(from = ?version, to = update.version, changes = update.routes.len(), "routes updated");
                        }
                        self.apply(&update, version.is_none());
                        state.access.apply(&update.access, version.is_none());
                        version = Some(update.version);
                        backoff = FIRST_BACKOFF;
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot follow routes; keeping the cached ones");
                        if !matches!(e, meridian_regions::client::ClientError::Api { .. }) {
                            state.coordinator_lost(&e.to_string());
                        }
                        let wait = backoff.mul_f64(rand::rng().random_range(0.5..1.5));
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        wait
                    }
                },
            };
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(wait) => {}
                // Registered again: the coordinator is back, follow it now.
                _ = state.coordinator_back.notified() => backoff = FIRST_BACKOFF,
            }
        }
    }
}

fn route(r: &AgentRoute) -> Option<Route> {
    Some(Route { region: r.region.clone()?, relay_url: r.relay_url.clone()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(agent: Uuid, relay: Option<&str>) -> AgentRoute {
        AgentRoute {
            agent_id: agent,
            region: relay.map(|_| "sydney".into()),
            replica_id: relay.map(|_| Uuid::nil()),
            relay_url: relay.map(str::to_owned),
        }
    }

    #[test]
    fn updates_move_and_drop_routes_and_snapshots_replace() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let table = RouteTable::default();
        table.apply(
            &RouteUpdate {
                version: 2,
                routes: vec![at(a, Some("http://x")), at(b, Some("http://x"))],
                ..Default::default()
            },
            true,
        );
        table.apply(&RouteUpdate { version: 3, routes: vec![at(a, Some("http://y"))], ..Default::default() }, false);
        assert_eq!(table.get(a).unwrap().relay_url, "http://y", "a later change wins");
        assert_eq!(table.get(b).unwrap().relay_url, "http://x", "a delta keeps other routes");
        table.apply(&RouteUpdate { version: 4, routes: vec![at(b, None)], ..Default::default() }, false);
        assert_eq!(table.get(b), None, "a detach removes the route");
        table.apply(&RouteUpdate { version: 9, routes: vec![at(b, Some("http://z"))], ..Default::default() }, true);
        assert_eq!((table.get(a), table.len()), (None, 1), "a snapshot replaces everything");
        let grouped = RouteUpdate {
            version: 10,
            relays: vec![meridian_regions::api::RelayAgents {
                region: "frankfurt".into(),
                replica_id: None,
                relay_url: "http://f".into(),
                agents: vec![a, b],
            }],
            ..Default::default()
        };
        table.apply(&grouped, true);
        assert_eq!(table.get(a).unwrap().relay_url, "http://f", "a grouped snapshot");
        assert_eq!((table.get(b).unwrap().region.as_str(), table.len()), ("frankfurt", 2));
    }
}
