//! The fault vocabulary: the outages a drill rehearses, and what it asks the
//! demo's fault controller (`crate::demo::control`) to do, over its loopback
//! HTTP API. The demo injects and heals; the drill asks and measures.

use serde::{Deserialize, Serialize};

/// A named outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// SIGKILL a region's proxy; healing starts it again.
    KillRegion,
    /// Cut all of a region's traffic (users, peers, agents, coordinator) without killing it.
    PartitionRegion,
    /// SIGKILL the coordinator (and with it the primary region); healing starts it again.
    KillCoordinator,
    /// Stop the coordinator's PostgreSQL; healing starts it again.
    StopPostgres,
    /// Restart a region's replicas one at a time, each gracefully (SIGTERM),
    /// the next once the last is serving again; healing has nothing to do.
    RestartRegion,
    /// Reset the agents' tunnels to every region (they re-attach); healing has nothing to do.
    CutTunnel,
}

impl Scenario {
    pub fn needs_region(self) -> bool {
        matches!(self, Scenario::KillRegion | Scenario::PartitionRegion | Scenario::RestartRegion)
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
        f.write_str(v.as_str().unwrap_or("?"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Inject,
    Heal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultRequest {
    pub action: Action,
    pub scenario: Scenario,
    pub region: Option<String>,
}

/// What the demo tells drills about itself.
/// One of the demo's processes, for a soak's resource accounting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Process {
    pub name: String,
    pub pid: u32,
    /// A proxy's own listener, whose `/metrics` counts the mesh links it
    /// holds (connections that last as long as both relays do).
    #[serde(default)]
    pub metrics_url: Option<String>,
}
