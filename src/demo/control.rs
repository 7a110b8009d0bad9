//! The demo's fault controller: what `meridian drill` asks the demo to break
//! and heal. It listens on loopback only, takes a random bearer token, and
//! both are written to `<data dir>/demo.json` (mode 0600) with what a drill
//! needs to know about the deployment.

use super::children::Children;
use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use meridian_netsim::{Link, Mode};
use meridian_regions::token::Secret;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const INFO_FILE: &str = "demo.json";

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
}

impl Scenario {
    pub fn needs_region(self) -> bool {
        matches!(self, Scenario::KillRegion | Scenario::PartitionRegion)
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoInfo {
    pub coordinator_url: String,
    pub username: String,
    /// The app label drills send traffic to (`code--main--dev--demo`).
    pub app: String,
    pub control_url: String,
    pub control_token: Secret,
}

impl DemoInfo {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(INFO_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("cannot read {} (is `meridian demo` running with this data dir?)", path.display())
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a demo description", path.display()))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(INFO_FILE);
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        f.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        Ok(())
    }
}

/// A region's simulated network: every path into it is one link.
pub struct RegionLinks {
    pub name: String,
    /// Users (the access URL and app hosts); the coordinator's health checks come this way too.
    pub users: Link,
    /// Other regions' relays.
    pub mesh: Link,
    /// Agents attaching to this region (no latency: workspaces sit next to their region).
    pub agents: Link,
    /// This region's calls to the coordinator.
    pub coordinator: Link,
}

impl RegionLinks {
    fn set_mode(&self, mode: Mode) -> Result<()> {
        for link in [&self.users, &self.mesh, &self.agents, &self.coordinator] {
            link.set_mode(mode);
        }
        Ok(())
    }
}

pub struct Faults {
    pub children: Mutex<Children>,
    pub regions: Vec<RegionLinks>,
    /// The coordinator's embedded PostgreSQL (`<data dir>/data`).
    pub postgres_dir: PathBuf,
}

impl Faults {
    fn apply(&self, req: &FaultRequest) -> Result<()> {
        let region = || {
            let name = req.region.as_deref().context("this scenario needs a region")?;
            self.regions.iter().find(|r| r.name == name).with_context(|| format!("the demo has no region {name:?}"))
        };
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        match (req.scenario, req.action) {
            (Scenario::KillRegion, Action::Inject) => children.kill(&format!("proxy-{}", region()?.name)),
            (Scenario::KillRegion, Action::Heal) => children.restart(&format!("proxy-{}", region()?.name)),
            (Scenario::PartitionRegion, Action::Inject) => region()?.set_mode(Mode::Stall),
            (Scenario::PartitionRegion, Action::Heal) => region()?.set_mode(Mode::Pass),
            (Scenario::KillCoordinator, Action::Inject) => children.kill("coordinator"),
            (Scenario::KillCoordinator, Action::Heal) => children.restart("coordinator"),
            (Scenario::StopPostgres, action) => {
                drop(children);
                let bins = meridian_coordinator::embedded_postgres::PgBinaries::find(None)?;
                let mut pg = meridian_coordinator::embedded_postgres::EmbeddedPostgres::new(&self.postgres_dir, bins)?;
                match action {
                    Action::Inject => pg.stop_started_elsewhere(),
                    Action::Heal => pg.start_for_elsewhere(),
                }
            }
        }
    }
}

#[derive(Clone)]
struct Control {
    faults: Arc<Faults>,
    token: Secret,
}

/// Serves the controller on 127.0.0.1 until the process ends; returns its URL.
pub async fn serve(faults: Arc<Faults>, token: Secret) -> Result<String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new().route("/fault", axum::routing::post(fault)).with_state(Control { faults, token });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

async fn fault(
    State(control): State<Control>,
    headers: HeaderMap,
    axum::Json(req): axum::Json<FaultRequest>,
) -> (StatusCode, String) {
    let presented = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|t| control.token.matches(t)) {
        return (StatusCode::UNAUTHORIZED, "wrong or missing control token".into());
    }
    tracing::info!(scenario = %req.scenario, action = ?req.action, region = ?req.region, "drill");
    let faults = control.faults.clone();
    match tokio::task::spawn_blocking(move || faults.apply(&req)).await {
        Ok(Ok(())) => (StatusCode::NO_CONTENT, String::new()),
        Ok(Err(e)) => (StatusCode::BAD_REQUEST, format!("{e:#}")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
