//! Control-plane scale, simulated in one process: a real coordinator (and
//! its embedded PostgreSQL) with 1,000 region replicas heartbeating and
//! following routes like real proxies, and 10,000 agents attached; reports
//! the coordinator's CPU and memory and PostgreSQL's transactions per second.
//!
//! The replicas are tasks here, not processes; their health reports come from
//! one small HTTP server that answers for all of them. They share one client
//! address, as proxies behind a NAT do. Every call that fails is counted by
//! cause, and a run with any failed call is a failed run.

use crate::stack::Proc;
use anyhow::{bail, Context, Result};
use meridian_regions::api::{AgentAttach, AgentSpec, App, Cors, CreateRegion, CreateWorkspace, RegisterProxy, Share};
use meridian_regions::client::{http_client, Client, Credential};
use meridian_regions::token::Secret;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub regions: usize,
    pub replicas: usize,
    pub agents: usize,
    /// How long the steady state is measured (then as long again with the connection log shipped).
    pub window: Duration,
    /// Connection records the regions ship per second in all, in the second window.
    pub records_per_sec: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ControlPlane {
    pub regions: usize,
    pub replicas: usize,
    pub agents: usize,
    pub window_secs: f64,
    /// Coordinator CPU over the window, as a share of one core (1.0 = a whole core).
    pub coordinator_cpu_cores: f64,
    pub coordinator_rss_kib: u64,
    pub postgres_transactions_per_sec: f64,
    pub heartbeats_per_sec: f64,
    /// The second window: every region ships its connection records each second.
    pub connection_log: LogShipping,
    /// Calls that failed (setup, heartbeats, route polls), in all and by cause.
    pub failed_calls: u64,
    /// The search for a moved agent across one relay per region.
    pub mesh_search: crate::mesh_search::MeshSearch,
    pub failures: std::collections::BTreeMap<String, u64>,
}

/// Failed calls by cause, shared by the simulated replicas.
#[derive(Default)]
struct Failures(std::sync::Mutex<std::collections::BTreeMap<String, u64>>);

impl Failures {
    fn count(&self, what: &str, e: &meridian_regions::client::ClientError) {
        // The cause without the URL and ids, so alike failures add up.
        let cause = match e {
            meridian_regions::client::ClientError::Api { status, message, .. } => {
                format!("{what}: HTTP {}: {message}", status.as_u16())
            }
            other => format!("{what}: {}", other.to_string().split(": ").last().unwrap_or_default()),
        };
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(cause).or_default() += 1;
    }

    fn take(&self) -> std::collections::BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Calls under way at once while setting up (registrations, attachments).
const SETUP_CONCURRENCY: usize = 32;

const INTERVAL: &str = "10s";

pub async fn simulate(meridian: &Path, scale: Scale) -> Result<ControlPlane> {
    let dir = tempfile::Builder::new().prefix("meridian-cp").tempdir()?;
    let farm = health_farm().await?;
    let (coordinator, base, data, admin, http) = start_coordinator(meridian, dir.path()).await?;
    let failures = Arc::new(Failures::default());
    let replicas = populate(&admin, &base, &http, farm, &scale, &failures).await?;
    // The first `regions` replicas are one of each region: they ship the connection log.
    let replicas_of_regions: Vec<Client> = replicas.iter().take(scale.regions).map(|(c, _)| c.clone()).collect();

    // Steady state: every replica heartbeats each interval and long-polls routes.
    let stop = Arc::new(tokio::sync::Notify::new());
    let beats = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = steady_state(replicas, &scale, &stop, &beats, &failures);
    tokio::time::sleep(Duration::from_secs(10)).await; // every replica has beaten once
    let pg = postgres(&data).await?;
    let heartbeats_now = || beats.load(std::sync::atomic::Ordering::Relaxed);
    let (cpu0, tx0, beats0, t0) =
        (cpu_seconds(coordinator.pid())?, transactions(&pg).await?, heartbeats_now(), Instant::now());
    tokio::time::sleep(scale.window).await;
    let window = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(coordinator.pid())? - cpu0;
    let tx = transactions(&pg).await? - tx0;
    let heartbeats = heartbeats_now() - beats0;
    let rss = crate::memory::rss_kib(coordinator.pid())?;
    let connection_log = ship_records(replicas_of_regions, &scale, coordinator.pid(), &pg, &failures).await?;
    stop.notify_waiters();
    tasks.abort_all();
    let failures = failures.take();
    if !failures.is_empty() {
        // What the coordinator said about them (the log goes with the temporary directory).
        let log = std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("ERROR")).take(20) {
            eprintln!("coordinator: {line}");
        }
    }
    drop(coordinator);
    let mesh_search = crate::mesh_search::simulate(scale.regions, 1000).await?;
    Ok(ControlPlane {
        mesh_search,
        failed_calls: failures.values().sum(),
        failures,
        regions: scale.regions,
        replicas: scale.replicas,
        agents: scale.agents,
        window_secs: window,
        coordinator_cpu_cores: cpu / window,
        coordinator_rss_kib: rss,
        postgres_transactions_per_sec: tx as f64 / window,
        heartbeats_per_sec: heartbeats as f64 / window,
        connection_log,
    })
}

/// The connection log at the control plane: records shipped, stored, lost,
/// and what they cost the coordinator beyond the steady state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogShipping {
    pub records_per_sec: f64,
    /// Records in batches the coordinator acknowledged, and rows it holds.
    pub shipped: u64,
    pub stored: u64,
    /// Acknowledged but not stored (must be 0).
    pub lost: u64,
    /// Coordinator CPU over the window, shipping and steady state together.
    pub coordinator_cpu_cores: f64,
    pub postgres_transactions_per_sec: f64,
}

/// For one window, each region ships a batch each second, its share of
/// `scale.records_per_sec`; then the stored rows are counted against the acknowledged.
async fn ship_records(
    regions: Vec<Client>,
    scale: &Scale,
    coordinator: u32,
    pg: &sqlx::PgPool,
    failures: &Arc<Failures>,
) -> Result<LogShipping> {
    use meridian_regions::connection_log::{Batch, Ending, Kind, Record, Statuses};
    let per_region = scale.records_per_sec.div_ceil(scale.regions.max(1));
    let shipped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (cpu0, tx0, t0) = (cpu_seconds(coordinator)?, transactions(pg).await?, Instant::now());
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in regions.into_iter().enumerate() {
        let (shipped, failures, window) = (shipped.clone(), failures.clone(), scale.window);
        let offset = Duration::from_millis((i as u64 * 1000) / scale.regions.max(1) as u64);
        tasks.spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, Duration::from_secs(1));
            let end = Instant::now() + window;
            while Instant::now() < end {
                ticker.tick().await;
                let now = chrono::Utc::now();
                let record = |_| Record {
                    id: uuid::Uuid::new_v4(),
                    kind: Kind::App,
                    started_at: now - chrono::Duration::seconds(60),
                    ended_at: now,
                    user_id: None,
                    owner: format!("owner{i}"),
                    workspace: "dev".into(),
                    agent: Some("main".into()),
                    agent_id: None,
                    target: "code".into(),
                    replica_id: uuid::Uuid::nil(),
                    client_addr: Some("127.0.0.1".into()),
                    user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) control-plane simulation".into()),
                    bytes_up: 512,
                    bytes_down: 16384,
                    requests: 12,
                    statuses: Statuses { success: 12, ..Default::default() },
                    ending: Ending::Idle,
                    reason: None,
                };
                let batch = Batch { records: (0..per_region).map(record).collect() };
                match client.ship_connection_log(&batch, Duration::from_secs(10)).await {
                    Ok(_) => shipped.fetch_add(per_region as u64, std::sync::atomic::Ordering::Relaxed),
                    Err(e) => {
                        failures.count("connection-log", &e);
                        0
                    }
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let window = t0.elapsed().as_secs_f64();
    let (cpu, tx) = (cpu_seconds(coordinator)? - cpu0, transactions(pg).await? - tx0);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM connection_log").fetch_one(pg).await?;
    let shipped = shipped.load(std::sync::atomic::Ordering::Relaxed);
    Ok(LogShipping {
        records_per_sec: shipped as f64 / window,
        shipped,
        stored: stored as u64,
        lost: shipped.saturating_sub(stored as u64),
        coordinator_cpu_cores: cpu / window,
        postgres_transactions_per_sec: tx as f64 / window,
    })
}

/// Creates `scale`'s regions, registers its replicas (their health reports
/// answered by `farm`) and attaches its agents, counting failed calls: each
/// replica's client and registration, for the steady state.
async fn populate(
    admin: &Client,
    base: &str,
    http: &reqwest::Client,
    farm: std::net::SocketAddr,
    scale: &Scale,
    failures: &Failures,
) -> Result<Vec<(Client, RegisterProxy)>> {
    use futures_util::StreamExt;
    let mut tokens = Vec::new();
    for i in 0..scale.regions {
        let region = CreateRegion { name: format!("r{i}"), display_name: None, hosts: Default::default() };
        tokens.push(admin.create_region(&region).await?.proxy_token);
    }
    let replicas: Vec<(Client, RegisterProxy)> = (0..scale.replicas)
        .map(|i| {
            let client =
                Client::new(base, Credential::Proxy(Secret::new(tokens[i % scale.regions].clone())), http.clone());
            let req = RegisterProxy {
                replica_id: uuid::Uuid::new_v4(),
                access_url: format!("http://{farm}/replica/{i}"),
                wildcard_hostname: format!("*.r{}.localhost:1", i % scale.regions),
                relay_address: Some(format!("http://127.0.0.1:1/{i}")),
                mesh_address: None,
                version: meridian_regions::VERSION.into(),
                link_rtts: Vec::new(),
            };
            (client, req)
        })
        .collect();
    let registered = futures_util::stream::iter(&replicas)
        .map(|(client, req)| async move { client.register(req).await.err() })
        .buffer_unordered(SETUP_CONCURRENCY)
        .filter_map(|e| async move { e })
        .collect::<Vec<_>>()
        .await;
    registered.iter().for_each(|e| failures.count("register", e));
    let agent_tokens = agents(admin, scale.agents).await?;
    let attached = futures_util::stream::iter(agent_tokens.iter().enumerate())
        .map(|(i, token)| {
            let (client, replica) = &replicas[i % replicas.len()];
            let attach =
                AgentAttach { agent_token: token.clone(), attach_token: None, replica_id: Some(replica.replica_id) };
            async move { client.agent_attach(&attach).await.err() }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .filter_map(|e| async move { e })
        .collect::<Vec<_>>()
        .await;
    attached.iter().for_each(|e| failures.count("agent-attach", e));
    Ok(replicas)
}

/// Starts the coordinator on a port it picks (its own database under `dir`) and
/// signs in its first admin: the process, its URL, its data directory, the
/// admin's client and the HTTP client.
async fn start_coordinator(
    meridian: &Path,
    dir: &Path,
) -> Result<(Proc, String, std::path::PathBuf, Client, reqwest::Client)> {
    let data = dir.join("data");
    let args = [
        "coordinator".to_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--proxy-health-interval".into(),
        INTERVAL.into(),
        "--heartbeat-interval".into(),
        INTERVAL.into(),
    ];
    let (coordinator, ready) = crate::stack::spawn_ready(meridian, &args, dir, "coordinator", &[]).await?;
    let http = http_client(None).map_err(anyhow::Error::msg)?;
    let start = Instant::now();
    let base = format!("http://{}", ready.listen);
    let anon = Client::new(&base, Credential::None, http.clone());
    while anon.buildinfo().await.is_err() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the coordinator did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let session = anon.first_user("admin", "bench-password").await?.session_token;
    let admin = Client::new(&base, Credential::Session(Secret::new(session)), http.clone());

    Ok((coordinator, base, data, admin, http))
}

/// Every replica heartbeats each interval and long-polls routes until `stop`,
/// starting over one interval (a rolling start); heartbeats counted in `beats`.
fn steady_state(
    replicas: Vec<(Client, RegisterProxy)>,
    scale: &Scale,
    stop: &Arc<tokio::sync::Notify>,
    beats: &Arc<std::sync::atomic::AtomicU64>,
    failures: &Arc<Failures>,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (client, req)) in replicas.into_iter().enumerate() {
        let (stop, beats, failures) = (stop.clone(), beats.clone(), failures.clone());
        let offset = Duration::from_millis((i as u64 * 10_000) / scale.replicas as u64);
        tasks.spawn(async move {
            // Replicas start over one interval (a rolling start), each with a snapshot.
            let follow = async {
                tokio::time::sleep(offset).await;
                let mut version = None;
                loop {
                    match client.routes(version, Duration::from_secs(20)).await {
                        Ok(u) => version = Some(u.version),
                        Err(e) => {
                            failures.count("routes", &e);
                            tokio::time::sleep(Duration::from_secs(1)).await
                        }
                    }
                }
            };
            let heartbeat = async {
                tokio::time::sleep(offset).await;
                loop {
                    match client.register(&req).await {
                        Ok(_) => beats.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        Err(e) => {
                            failures.count("heartbeat", &e);
                            0
                        }
                    };
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            };
            tokio::select! { _ = stop.notified() => {}, _ = follow => {}, _ = heartbeat => {} }
        });
    }
    tasks
}

/// Creates workspaces of 10 agents each until there are `n` agents; their tokens.
async fn agents(admin: &Client, n: usize) -> Result<Vec<String>> {
    use futures_util::StreamExt;
    let created = futures_util::stream::iter(0..n.div_ceil(10))
        .map(|w| async move {
            let count = (n - w * 10).min(10);
            let app = App {
                slug: "code".into(),
                port: Some(8080),
                url: None,
                subdomain: true,
                share: Share::Owner,
                cors: Cors::Default,
            };
            let agents = (0..count).map(|a| AgentSpec { name: format!("a{a}"), apps: vec![app.clone()] }).collect();
            admin.create_workspace(&CreateWorkspace { name: format!("w{w}"), owner: None, agents }).await
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut tokens = Vec::with_capacity(n);
    for c in created {
        tokens.extend(c.context("cannot create the simulated workspaces")?.agent_tokens.into_values());
    }
    Ok(tokens)
}

/// One server answering every replica's `/healthz-report` with a healthy report.
async fn health_farm() -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let report = serde_json::json!({
        "status": "ok", "errors": [], "warnings": [], "coordinator_reachable": true,
        "last_registration_at": null, "version": meridian_regions::VERSION,
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{report}",
        report.len()
    );
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

async fn postgres(data: &Path) -> Result<sqlx::PgPool> {
    let options =
        sqlx::postgres::PgConnectOptions::new().socket(data.join("run")).username("meridian").database("meridian");
    Ok(sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(options).await?)
}

async fn transactions(pg: &sqlx::PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = 'meridian'",
    )
    .fetch_one(pg)
    .await?)
}

/// User plus system CPU time of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').context("bad stat")?.1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(ticks / hz)
}

impl ControlPlane {
    pub fn markdown(&self) -> String {
        format!(
            "### Control plane: {} regions, {} replicas heartbeating every {INTERVAL} and following routes, {} agents attached\n\n\
             | measured over {:.0} s | value |\n|---|---|\n\
             | coordinator CPU | {:.0}% of one core |\n| coordinator RSS | {} MiB |\n\
             | PostgreSQL transactions/s | {:.0} |\n| heartbeats/s | {:.0} |\n| failed calls | {} {:?} |\n",
            self.regions,
            self.replicas,
            self.agents,
            self.window_secs,
            self.coordinator_cpu_cores * 100.0,
            self.coordinator_rss_kib / 1024,
            self.postgres_transactions_per_sec,
            self.heartbeats_per_sec,
            self.failed_calls,
            self.failures,
        ) + &format!(
            "\n| and with the regions shipping the connection log | {:.0} records/s |\n|---|---|\n\
             | records acknowledged, stored, lost | {}, {}, {} |\n| coordinator CPU (steady state and shipping) | {:.0}% of one core |\n\
             | PostgreSQL transactions/s | {:.0} |\n",
            self.connection_log.records_per_sec,
            self.connection_log.shipped,
            self.connection_log.stored,
            self.connection_log.lost,
            self.connection_log.coordinator_cpu_cores * 100.0,
            self.connection_log.postgres_transactions_per_sec,
        ) + "\n" + &self.mesh_search.markdown()
    }
}
