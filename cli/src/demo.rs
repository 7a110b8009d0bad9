//! `meridian demo`: a whole deployment on loopback, from real processes of
//! this binary — a coordinator on an embedded PostgreSQL, one proxy per
//! region, the sample app, and a workspace agent — with every URL and the
//! credentials printed. Ctrl-C stops them in order (agent, proxies, coordinator).
//!
//! Regions sit behind user-space links that add each region's latency from
//! the topology ([`topology`]), so latency-based selection and cross-region
//! hops are visible on one machine; [`control`] lets `meridian drill` kill,
//! partition and heal parts of the running demo; [`children`] runs the processes.

pub mod children;
pub mod control;
pub mod topology;

use anyhow::{bail, Context, Result};
use children::{Children, Spec};
use clap::Args;
use control::{DemoInfo, Faults, RegionLinks, ReplicaLinks};
use meridian_netsim::Link;
use meridian_regions::api::{AgentSpec, App, Cors, CreateRegion, CreateWorkspace, Share};
use meridian_regions::client::{http_client, Client, ClientError, Credential};
use meridian_regions::token::Secret;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use topology::Topology;

const USER: &str = "demo";

#[derive(Args)]
pub struct DemoArgs {
    /// Regional proxies to run, besides the primary [default: the topology's regions].
    #[arg(long, env = "MERIDIAN_REGIONS", value_delimiter = ',')]
    regions: Option<Vec<String>>,
    /// Simulated geography: each region's added latency (see deploy/local/topology.toml)
    /// [default: that file's three regions].
    #[arg(long, env = "MERIDIAN_TOPOLOGY")]
    topology: Option<PathBuf>,
    /// First port: the coordinator takes it, each region the next ones; 0
    /// picks free ones (see `demo.json` in the data directory for which).
    #[arg(long, env = "MERIDIAN_PORT", default_value_t = 7080)]
    port: u16,
    /// Where the demo keeps its database, logs and password [default: <data dir>/demo].
    #[arg(long, env = "MERIDIAN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// How often the coordinator checks region health (and proxies heartbeat).
    #[arg(long, env = "MERIDIAN_PROXY_HEALTH_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    proxy_health_interval: Duration,
    /// Proxy replicas per region, behind the region's (simulated) load balancer.
    #[arg(long, env = "MERIDIAN_DEMO_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    replicas: u16,
}

/// One region: where users reach it, and the links into each replica.
struct RegionPlan {
    name: String,
    latency: Duration,
    links: RegionLinks,
}

pub async fn run(args: DemoArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let mut topology = Topology::load(args.topology.as_deref())?;
    if let Some(names) = &args.regions {
        topology = topology.restricted_to(names)?;
    }
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => default_dir()?,
    };
    std::fs::create_dir_all(&dir)?;
    let mut children = Children::new(dir.clone())?;
    let http = http_client(None).map_err(anyhow::Error::msg)?;
    let (api, password, coordinator) = start_coordinator(&args, &dir, &http, &mut children).await?;
    let base = format!("http://{coordinator}");

    let mut plans = Vec::new();
    for (i, region) in topology.regions.iter().enumerate() {
        let user_port = if args.port == 0 { 0 } else { args.port + 1 + i as u16 };
        let plan = plan_region(region, user_port, coordinator, args.replicas).await?;
        let proxy_token = region_token(&api, &plan).await?;
        for replica in &plan.links.replicas {
            let ready_file = children.ready_file(&replica.process);
            let state = dir.join("regions").join(&replica.process);
            children.spawn(proxy_spec(&plan, replica, &base, (&ready_file, &state), proxy_token.clone()))?;
        }
        let mut listens = Vec::new();
        for replica in &plan.links.replicas {
            let ready = listening(&mut children, &replica.process).await?;
            let relay = ready.relay.context("a proxy's ready file names its relay")?;
            replica.mesh.set_upstreams(vec![relay]);
            replica.agents.set_upstreams(vec![relay]);
            listens.push(ready.listen);
        }
        plan.links.users.set_upstreams(listens);
        plans.push(plan);
    }
    let app_ready = children.ready_file("sample-app").display().to_string();
    children.spawn(Spec {
        name: "sample-app".into(),
        args: ["sample-app", "--listen", "127.0.0.1:0", "--ready-file", &app_ready].map(String::from).to_vec(),
        secret: None,
    })?;
    let app_port = listening(&mut children, "sample-app").await?.listen.port();
    wait("every region to be healthy", Duration::from_secs(60), &mut children, || regions_healthy(&api)).await?;
    // Started once every region is up, so it attaches to its preferred region at once.
    let agent_token = workspace(&api, app_port).await?;
    children.spawn(Spec {
        name: "agent".into(),
        args: {
            let key = dir.join("agent-ssh-host-key");
            let mut args =
                ["agent", "--coordinator-url", &base, "--region", topology.agent_region()].map(String::from).to_vec();
            args.extend(["--host-key-file".into(), key.display().to_string()]);
            args
        },
        secret: Some(("MERIDIAN_AGENT_TOKEN", agent_token)),
    })?;
    wait("the agent to attach", Duration::from_secs(60), &mut children, || agent_attached(&api)).await?;

    let region_ports: Vec<(String, Duration, u16)> =
        plans.iter().map(|p| (p.name.clone(), p.latency, p.links.users.addr().port())).collect();
    let faults = Arc::new(Faults {
        children: Mutex::new(children),
        regions: plans.into_iter().map(|p| p.links).collect(),
        postgres_dir: dir.join("data"),
    });
    let control_token = Secret::new(uuid::Uuid::new_v4().simple().to_string());
    let control_url = control::serve(faults.clone(), control_token.clone()).await?;
    let app = format!("code--main--dev--{USER}");
    let regions =
        region_ports.iter().map(|(name, _, port)| (name.clone(), format!("http://127.0.0.1:{port}"))).collect();
    DemoInfo { coordinator_url: base.clone(), username: USER.into(), app, control_url, control_token, regions }
        .save(&dir)?;
    print_urls(&dir, &base, coordinator.port(), &password, &region_ports, topology.agent_region());
    print_shell(app_port);
    shutdown.await;
    println!("stopping...");
    let _ = std::fs::remove_file(dir.join(control::INFO_FILE));
    // On a blocking thread: this runtime must keep forwarding the regions'
    // links while the proxies deregister through them.
    let stopping = faults.clone();
    tokio::task::spawn_blocking(move || stopping.children.lock().unwrap_or_else(|e| e.into_inner()).stop_all()).await?;
    Ok(())
}

/// Starts the coordinator (the primary region) and signs in as the demo
/// user, creating it on a fresh data directory: the API client, the password,
/// and the address the coordinator listens on.
async fn start_coordinator(
    args: &DemoArgs,
    dir: &Path,
    http: &reqwest::Client,
    children: &mut Children,
) -> Result<(Client, Secret, SocketAddr)> {
    let interval = humantime::format_duration(args.proxy_health_interval).to_string();
    let data = dir.join("data").display().to_string();
    let (listen, wildcard) = (format!("127.0.0.1:{}", args.port), format!("*.localhost:{}", args.port));
    let ready_file = children.ready_file("coordinator").display().to_string();
    let flags = [
        "coordinator",
        "--listen",
        &listen,
        "--ready-file",
        &ready_file,
        // Pinned once bound (see `listening`): a restarted coordinator's relay
        // keeps its address, as a deployment's fixed port would.
        "--relay-listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--wildcard-access-url",
        &wildcard,
        "--proxy-health-interval",
        &interval,
        "--heartbeat-interval",
        &interval,
    ];
    children.spawn(Spec { name: "coordinator".into(), args: flags.map(String::from).to_vec(), secret: None })?;
    let coordinator = listening(children, "coordinator").await?.listen;
    let base = format!("http://{coordinator}");
    wait("the coordinator", Duration::from_secs(60), children, || async {
        Client::new(&base, Credential::None, http.clone()).buildinfo().await.map_err(|e| e.to_string())
    })
    .await?;
    let password = password(dir)?;
    let anon = Client::new(&base, Credential::None, http.clone());
    let token = match anon.first_user(USER, password.expose()).await {
        Ok(r) => r.session_token,
        Err(_) => anon.login(USER, password.expose()).await.context("cannot sign in as the demo user")?.session_token,
    };
    Ok((Client::new(&base, Credential::Session(Secret::new(token)), http.clone()), password, coordinator))
}

/// Waits until child `name` reports the addresses it bound, and pins them
/// for its restarts.
async fn listening(children: &mut Children, name: &str) -> Result<meridian_regions::ready::Ready> {
    let path = children.ready_file(name);
    let ready = wait(&format!("{name} to listen"), Duration::from_secs(60), children, || {
        let path = path.clone();
        async move { meridian_regions::ready::read(&path).ok_or_else(|| format!("no {} yet", path.display())) }
    })
    .await?;
    children.pin(name, &ready)?;
    Ok(ready)
}

/// Every region healthy, or which are not and why.
async fn regions_healthy(api: &Client) -> Result<(), String> {
    let list = api.regions().await.map_err(|e| e.to_string())?;
    let down: Vec<String> = list
        .regions
        .iter()
        .filter(|r| !r.healthy)
        .map(|r| {
            let why = r.replicas.iter().find_map(|p| p.error.as_deref()).map(|e| format!(" ({e})"));
            format!("{} is {}{}", r.name, r.status.as_str(), why.unwrap_or_default())
        })
        .collect();
    if down.is_empty() {
        Ok(())
    } else {
        Err(down.join(", "))
    }
}

/// The demo workspace's agent is connected.
async fn agent_attached(api: &Client) -> Result<(), String> {
    let list = api.workspaces(None).await.map_err(|e| e.to_string())?;
    let attached = list.workspaces.first().and_then(|w| w.agents.first()).is_some_and(|a| a.connected);
    if attached {
        Ok(())
    } else {
        Err("the agent is not connected".to_owned())
    }
}

/// Binds the region's links: users on `user_port` (printed, stable, balanced
/// over the replicas; 0 picks one), the rest on free ports. They reach the
/// replicas once those report where they listen (see [`listening`]).
async fn plan_region(
    region: &topology::RegionSpec,
    user_port: u16,
    coordinator: SocketAddr,
    replicas: u16,
) -> Result<RegionPlan> {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut links = Vec::new();
    for i in 0..replicas {
        let process =
            if i == 0 { format!("proxy-{}", region.name) } else { format!("proxy-{}-{}", region.name, i + 1) };
        let replica =
            ReplicaLinks { process, mesh: Link::start_pending(any).await?, agents: Link::start_pending(any).await? };
        replica.mesh.set_latency(region.latency);
        links.push(replica);
    }
    let users = Link::start_pending(([127, 0, 0, 1], user_port).into())
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{user_port} for region {}", region.name))?;
    users.set_latency(region.latency);
    let links = RegionLinks {
        name: region.name.clone(),
        users,
        replicas: links,
        coordinator: Link::start(any, coordinator).await?,
    };
    Ok(RegionPlan { name: region.name.clone(), latency: region.latency, links })
}

/// A replica's proxy: on free ports it reports in `ready_file`, known to users
/// and agents by its region's links.
/// Its state (the connection log until stored) in `state`.
fn proxy_spec(
    plan: &RegionPlan,
    links: &ReplicaLinks,
    base: &str,
    (ready_file, state): (&Path, &Path),
    proxy_token: String,
) -> Spec {
    let user_port = plan.links.users.addr().port();
    let args = [
        "proxy".to_owned(),
        "--coordinator-url".into(),
        format!("http://{}", plan.links.coordinator.addr()),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--ready-file".into(),
        ready_file.display().to_string(),
        "--access-url".into(),
        format!("http://127.0.0.1:{user_port}"),
        "--wildcard-access-url".into(),
        format!("*.{}.localhost:{user_port}", plan.name),
        "--relay-listen".into(),
        "127.0.0.1:0".into(),
        "--relay-url".into(),
        format!("http://{}", links.agents.addr()),
        "--mesh-url".into(),
        format!("http://{}", links.mesh.addr()),
        "--login-url".into(),
        base.to_owned(),
        "--data-dir".into(),
        state.display().to_string(),
    ];
    Spec { name: links.process.clone(), args: args.to_vec(), secret: Some(("MERIDIAN_PROXY_TOKEN", proxy_token)) }
}

/// (Re)creates the demo workspace and returns its agent's token.
async fn workspace(api: &Client, app_port: u16) -> Result<String> {
    let s = |v: &str| v.to_owned();
    let _ = api.delete_workspace(USER, "dev").await;
    let apps = vec![
        App {
            slug: s("code"),
            port: Some(app_port),
            url: None,
            subdomain: true,
            share: Share::Owner,
            cors: Cors::Default,
        },
        App {
            slug: s("public"),
            port: Some(app_port),
            url: None,
            subdomain: true,
            share: Share::Public,
            cors: Cors::Default,
        },
        App {
            slug: s("docs"),
            port: Some(app_port),
            url: None,
            subdomain: false,
            share: Share::Owner,
            cors: Cors::Default,
        },
    ];
    let ws = api
        .create_workspace(&CreateWorkspace {
            name: s("dev"),
            owner: None,
            agents: vec![AgentSpec { name: s("main"), apps }],
        })
        .await?;
    Ok(ws.agent_tokens.get("main").context("no agent token")?.clone())
}

fn print_urls(dir: &Path, base: &str, port: u16, password: &Secret, regions: &[(String, Duration, u16)], agent: &str) {
    println!("\nMeridian demo is running (logs in {}).\n", dir.display());
    println!("  dashboard       {base}/   (open it first: your workspace, app links, regions by latency)");
    println!("  sign in         {base}/login   username {USER}   password {}", password.expose());
    println!("  coordinator     {base}   (the primary region; API under /api/v2)");
    for (name, latency, port) in regions {
        println!("  region {name:<9} http://127.0.0.1:{port}   (+{} ms each way)", latency.as_millis());
    }
    println!("\nThe workspace dev (agent main, attached to {agent}) serves the sample app:");
    for (name, _, port) in regions {
        println!("  via {name:<12}http://code--main--dev--{USER}.{name}.localhost:{port}/   (sign in first)");
    }
    println!("  public app      http://public--main--dev--{USER}.localhost:{port}/   (no sign-in)");
    println!("  path app        {base}/@{USER}/dev/apps/docs/");
    println!("  WebSocket echo  ws://public--main--dev--{USER}.localhost:{port}/ws");
    println!("\nCLI: meridian login {base} --username {USER} --password '{}'", password.expose());
    println!("     meridian regions ping              (which region is nearest)");
    println!("     meridian drill kill-region --region {agent}   (rehearse an outage; see --help)");
}

/// The commands that reach the workspace's shell and ports (after `meridian login`).
fn print_shell(app_port: u16) {
    println!("\nShell and TCP (through the nearest region; a session survives that region's death):");
    println!("     meridian ssh dev                   (a terminal; `meridian ssh dev -- CMD` runs a command)");
    println!("     meridian config-ssh                (then plain `ssh meridian.dev`, scp, sftp, VS Code, JetBrains)");
    println!("     meridian port-forward dev --tcp 18080:{app_port}   (the sample app on 127.0.0.1:18080)");
    println!("Ctrl-C stops everything.");
}

/// The region's proxy token: created with the region (and its hostnames, as
/// an admin sets them), or regenerated if it exists.
async fn region_token(api: &Client, plan: &RegionPlan) -> Result<String> {
    let user_port = plan.links.users.addr().port();
    let hosts = meridian_regions::api::RegionHosts {
        access_url: Some(format!("http://127.0.0.1:{user_port}")),
        wildcard_hostname: Some(format!("*.{}.localhost:{user_port}", plan.name)),
    };
    let name = plan.name.clone();
    match api.create_region(&CreateRegion { name: name.clone(), display_name: None, hosts }).await {
        Ok(r) => Ok(r.proxy_token),
        Err(ClientError::Api { status, .. }) if status.as_u16() == 409 => {
            Ok(api.regenerate_token(&name).await?.proxy_token)
        }
        Err(e) => Err(e.into()),
    }
}

/// The demo user's password, generated once and kept (0600) in the data directory.
fn password(dir: &Path) -> Result<Secret> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("demo-password");
    if let Ok(p) = std::fs::read_to_string(&path) {
        return Ok(Secret::new(p.trim()));
    }
    let p: String = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?.write_all(p.as_bytes())?;
    Ok(Secret::new(p))
}

pub fn default_dir() -> Result<PathBuf> {
    let base = if nix::unistd::geteuid().is_root() {
        PathBuf::from("/var/lib/meridian")
    } else {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/meridian")).context("set --data-dir")?
    };
    Ok(base.join("demo"))
}

/// Polls `f` until it returns `Ok`, at most `deadline`; fails at once if a
/// child exits meanwhile (naming it, with the end of its log), and on the
/// deadline with `f`'s last word on what is missing.
async fn wait<T, F, Fut>(what: &str, deadline: Duration, children: &mut Children, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let missing = match f().await {
            Ok(v) => return Ok(v),
            Err(missing) => missing,
        };
        children.check_running()?;
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}: {missing}; logs in {}", children.dir().display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
