//! The demo's fault controller: what `meridian drill` asks the demo to break
//! and heal. It listens on loopback only, takes a random bearer token, and
//! both are written to `<data dir>/demo.json` (mode 0600) with what a drill
//! needs to know about the deployment.

use super::children::Children;
use crate::faults::{Action, FaultRequest, Process, Scenario};
use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use meridian_netsim::{Link, Mode};
use meridian_regions::token::Secret;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const INFO_FILE: &str = "demo.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoInfo {
    pub coordinator_url: String,
    pub username: String,
    /// The app label drills send traffic to (`code--main--dev--demo`).
    pub app: String,
    pub control_url: String,
    pub control_token: Secret,
    /// Each region's name and the URL users reach it at, in the topology's order.
    #[serde(default)]
    pub regions: Vec<(String, String)>,
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

/// A region's simulated network: every path into it is a link.
pub struct RegionLinks {
    pub name: String,
    /// Users (the access URL and app hosts), balanced over the replicas as a
    /// load balancer would; the coordinator's health checks come this way too.
    pub users: Link,
    pub replicas: Vec<ReplicaLinks>,
    /// This region's calls to the coordinator.
    pub coordinator: Link,
}

/// The paths into one replica of a region.
pub struct ReplicaLinks {
    /// The demo's name for its process (`proxy-sydney`, `proxy-sydney-2`, …).
    pub process: String,
    /// Other regions' relays.
    pub mesh: Link,
    /// Agents attaching to this replica (no latency: workspaces sit next to their region).
    pub agents: Link,
}

impl RegionLinks {
    fn links(&self) -> impl Iterator<Item = &Link> {
        [&self.users, &self.coordinator].into_iter().chain(self.replicas.iter().flat_map(|r| [&r.mesh, &r.agents]))
    }

    fn set_mode(&self, mode: Mode) -> Result<()> {
        self.links().for_each(|l| l.set_mode(mode));
        Ok(())
    }
}

/// How long a replica restarted by `restart-region` may take to drain, and to serve again.
const RESTART_GRACE: Duration = Duration::from_secs(30);

pub struct Faults {
    pub children: Mutex<Children>,
    pub regions: Vec<RegionLinks>,
    /// The coordinator's embedded PostgreSQL (`<data dir>/data`).
    pub postgres_dir: PathBuf,
}

impl Faults {
    fn region(&self, req: &FaultRequest) -> Result<&RegionLinks> {
        let name = req.region.as_deref().context("this scenario needs a region")?;
        self.regions.iter().find(|r| r.name == name).with_context(|| format!("the demo has no region {name:?}"))
    }

    fn children(&self) -> std::sync::MutexGuard<'_, Children> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every child's name and process id.
    pub fn processes(&self) -> Vec<Process> {
        let children = self.children().pids();
        children
            .into_iter()
            .filter_map(|(name, pid, metrics_url)| Some(Process { name, pid: pid?, metrics_url }))
            .collect()
    }

    /// Restarts the region's replicas one at a time: SIGTERM (it drains and
    /// hands its agents to another relay), start it again, and wait until it
    /// has registered before the next.
    async fn restart_region(self: &Arc<Self>, req: &FaultRequest) -> Result<()> {
        let http = reqwest::Client::new();
        for i in 0..self.region(req)?.replicas.len() {
            let faults = self.clone();
            let req2 = req.clone();
            let ready_file = tokio::task::spawn_blocking(move || {
                let name = faults.region(&req2)?.replicas[i].process.clone();
                let mut children = faults.children();
                children.terminate(&name, RESTART_GRACE)?;
                children.restart(&name)?;
                anyhow::Ok(children.ready_file(&name))
            })
            .await??;
            let replica = &self.region(req)?.replicas[i];
            let deadline = Instant::now() + RESTART_GRACE;
            loop {
                // It listens where it did before (its ports are pinned), once it says so.
                let url =
                    meridian_regions::ready::read(&ready_file).map(|r| format!("http://{}/healthz-report", r.listen));
                let report = match url {
                    Some(url) => http.get(&url).timeout(Duration::from_secs(2)).send().await.ok(),
                    None => None,
                };
                let v = match report {
                    Some(r) => r.json::<serde_json::Value>().await.unwrap_or_default(),
                    None => serde_json::Value::Null,
                };
                if v["status"] == "ok" && v["last_registration_at"].is_string() {
                    break;
                }
                if Instant::now() > deadline {
                    anyhow::bail!("{} did not register again within {RESTART_GRACE:?}", replica.process);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    fn apply(&self, req: &FaultRequest) -> Result<()> {
        let region = || self.region(req);
        let replicas = |r: &RegionLinks| r.replicas.iter().map(|x| x.process.clone()).collect::<Vec<_>>();
        let mut children = self.children();
        match (req.scenario, req.action) {
            (Scenario::KillRegion, Action::Inject) => replicas(region()?).iter().try_for_each(|n| children.kill(n)),
            (Scenario::KillRegion, Action::Heal) => replicas(region()?).iter().try_for_each(|n| children.restart(n)),
            (Scenario::PartitionRegion, Action::Inject) => region()?.set_mode(Mode::Stall),
            (Scenario::PartitionRegion, Action::Heal) => region()?.set_mode(Mode::Pass),
            (Scenario::KillCoordinator, Action::Inject) => children.kill("coordinator"),
            (Scenario::KillCoordinator, Action::Heal) => children.restart("coordinator"),
            (Scenario::CutTunnel, Action::Inject) => {
                self.regions.iter().flat_map(|r| &r.replicas).for_each(|r| r.agents.reset_all());
                Ok(())
            }
            (Scenario::CutTunnel | Scenario::RestartRegion, Action::Heal) => Ok(()),
            (Scenario::RestartRegion, Action::Inject) => anyhow::bail!("restart-region is not a blocking fault"),
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
    let app = axum::Router::new()
        .route("/fault", axum::routing::post(fault))
        .route("/processes", axum::routing::get(processes))
        .with_state(Control { faults, token });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

fn authorized(control: &Control, headers: &HeaderMap) -> bool {
    let presented = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    presented.is_some_and(|t| control.token.matches(t))
}

async fn fault(
    State(control): State<Control>,
    headers: HeaderMap,
    axum::Json(req): axum::Json<FaultRequest>,
) -> (StatusCode, String) {
    if !authorized(&control, &headers) {
        return (StatusCode::UNAUTHORIZED, "wrong or missing control token".into());
    }
    tracing::info!(scenario = %req.scenario, action = ?req.action, region = ?req.region, "drill");
    let faults = control.faults.clone();
    let done = if (req.scenario, req.action) == (Scenario::RestartRegion, Action::Inject) {
        Ok(faults.restart_region(&req).await)
    } else {
        tokio::task::spawn_blocking(move || faults.apply(&req)).await
    };
    match done {
        Ok(Ok(())) => (StatusCode::NO_CONTENT, String::new()),
        Ok(Err(e)) => (StatusCode::BAD_REQUEST, format!("{e:#}")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn processes(State(control): State<Control>, headers: HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !authorized(&control, &headers) {
        return (StatusCode::UNAUTHORIZED, "wrong or missing control token").into_response();
    }
    let faults = control.faults.clone();
    match tokio::task::spawn_blocking(move || faults.processes()).await {
        Ok(list) => axum::Json(list).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
