//! `meridian demo`: a whole deployment on loopback, from real processes of
//! this binary — a coordinator on an embedded PostgreSQL, one proxy per
//! region, the sample app, and a workspace agent — with every URL and the
//! credentials printed. Ctrl-C stops them in order (agent, proxies, coordinator).

use anyhow::{bail, Context, Result};
use clap::Args;
use meridian_regions::api::{AgentSpec, App, CreateRegion, CreateWorkspace, Share};
use meridian_regions::client::{http_client, Client, ClientError, Credential};
use meridian_regions::token::Secret;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "demo";

#[derive(Args)]
pub struct DemoArgs {
    /// Regional proxies to run, besides the primary.
    #[arg(long, env = "MERIDIAN_REGIONS", value_delimiter = ',', default_value = "sydney,frankfurt")]
    regions: Vec<String>,
    /// First port: the coordinator takes it, each region the next ones.
    #[arg(long, env = "MERIDIAN_PORT", default_value_t = 7080)]
    port: u16,
    /// Where the demo keeps its database, logs and password [default: <data dir>/demo].
    #[arg(long, env = "MERIDIAN_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// Child processes, stopped in reverse order of start on drop.
struct Children(Vec<(String, Child)>);

impl Children {
    /// Starts this binary with `args`; `secret` goes in the environment, never on
    /// the command line, where any local user could read it.
    fn spawn(&mut self, name: &str, dir: &Path, args: &[String], secret: Option<(&str, &str)>) -> Result<()> {
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new(std::env::current_exe()?);
        if let Some((var, value)) = secret {
            cmd.env(var, value);
        }
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Ctrl-C reaches the demo only, which stops children in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.0.push((name.to_owned(), child));
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (name, child) in self.0.iter_mut().rev() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!("{name} did not stop; killing it");
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

pub async fn run(args: DemoArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let dir = match args.data_dir {
        Some(d) => d,
        None => default_dir()?,
    };
    std::fs::create_dir_all(&dir)?;
    let base = format!("http://127.0.0.1:{}", args.port);
    let mut children = Children(Vec::new());
    let s = |v: &str| v.to_owned();
    children.spawn(
        "coordinator",
        &dir,
        &[
            s("coordinator"),
            s("--listen"),
            format!("127.0.0.1:{}", args.port),
            s("--data-dir"),
            dir.join("data").display().to_string(),
            s("--wildcard-access-url"),
            format!("*.localhost:{}", args.port),
            s("--proxy-health-interval"),
            s("2s"),
            s("--heartbeat-interval"),
            s("2s"),
        ],
        None,
    )?;
    let http = http_client(None).map_err(anyhow::Error::msg)?;
    wait("the coordinator", Duration::from_secs(60), || async {
        Client::new(&base, Credential::None, http.clone()).buildinfo().await.ok()
    })
    .await?;
    let password = password(&dir)?;
    let anon = Client::new(&base, Credential::None, http.clone());
    let token = match anon.first_user(USER, password.expose()).await {
        Ok(r) => r.session_token,
        Err(_) => anon.login(USER, password.expose()).await.context("cannot sign in as the demo user")?.session_token,
    };
    let api = Client::new(&base, Credential::Session(Secret::new(token)), http.clone());

    let mut region_urls = Vec::new();
    for (i, name) in args.regions.iter().enumerate() {
        let port = args.port + 1 + i as u16;
        let proxy_token = region_token(&api, name).await?;
        children.spawn(
            &format!("proxy-{name}"),
            &dir,
            &[
                s("proxy"),
                s("--coordinator-url"),
                base.clone(),
                s("--listen"),
                format!("127.0.0.1:{port}"),
                s("--wildcard-access-url"),
                format!("*.{name}.localhost:{port}"),
                s("--login-url"),
                base.clone(),
            ],
            Some(("MERIDIAN_PROXY_TOKEN", &proxy_token)),
        )?;
        region_urls.push((name.clone(), port));
    }
    let app_port = free_port()?;
    children.spawn("sample-app", &dir, &[s("sample-app"), s("--listen"), format!("127.0.0.1:{app_port}")], None)?;
    let _ = api.delete_workspace(USER, "dev").await;
    let apps = vec![
        App { slug: s("code"), port: Some(app_port), url: None, subdomain: true, share: Share::Owner },
        App { slug: s("public"), port: Some(app_port), url: None, subdomain: true, share: Share::Public },
        App { slug: s("docs"), port: Some(app_port), url: None, subdomain: false, share: Share::Owner },
    ];
    let ws = api
        .create_workspace(&CreateWorkspace {
            name: s("dev"),
            owner: None,
            agents: vec![AgentSpec { name: s("main"), apps }],
        })
        .await?;
    let agent_token = ws.agent_tokens.get("main").context("no agent token")?.clone();
    // Attached to the primary, the agent is one relay hop from every region.
    children.spawn(
        "agent",
        &dir,
        &[s("agent"), s("--coordinator-url"), base.clone()],
        Some(("MERIDIAN_AGENT_TOKEN", &agent_token)),
    )?;
    wait("every region to be healthy", Duration::from_secs(60), || async {
        let list = api.regions().await.ok()?;
        list.regions.iter().all(|r| r.healthy).then_some(())
    })
    .await?;
    wait("the agent to attach", Duration::from_secs(60), || async {
        let list = api.workspaces(None).await.ok()?;
        list.workspaces.first()?.agents.first()?.connected.then_some(())
    })
    .await?;

    println!("\nMeridian demo is running (logs in {}).\n", dir.display());
    println!("  sign in         {base}/login   username {USER}   password {}", password.expose());
    println!("  coordinator     {base}   (the primary region; API under /api/v2)");
    for (name, port) in &region_urls {
        println!("  region {:<8} http://127.0.0.1:{port}", name);
    }
    println!("\nThe workspace dev (agent main, attached to the primary) serves the sample app:");
    for (name, port) in &region_urls {
        println!("  via {name:<11} http://code--main--dev--{USER}.{name}.localhost:{port}/   (sign in first)");
    }
    println!("  public app      http://public--main--dev--{USER}.localhost:{}/   (no sign-in)", args.port);
    println!("  path app        {base}/@{USER}/dev/apps/docs/");
    println!("  WebSocket echo  ws://public--main--dev--{USER}.localhost:{}/ws", args.port);
    println!(
        "\nCLI: meridian login {base} --username {USER} --password '{}'; meridian regions list",
        password.expose()
    );
    println!("Ctrl-C stops everything.");
    shutdown.await;
    println!("stopping...");
    drop(children);
    Ok(())
}

/// The region's proxy token: created with the region, or regenerated if it exists.
async fn region_token(api: &Client, name: &str) -> Result<String> {
    match api.create_region(&CreateRegion { name: name.to_owned(), display_name: None }).await {
        Ok(r) => Ok(r.proxy_token),
        Err(ClientError::Api { status, .. }) if status.as_u16() == 409 => {
            Ok(api.regenerate_token(name).await?.proxy_token)
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

fn default_dir() -> Result<PathBuf> {
    let base = if nix::unistd::geteuid().is_root() {
        PathBuf::from("/var/lib/meridian")
    } else {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/meridian")).context("set --data-dir")?
    };
    Ok(base.join("demo"))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `f` until it returns `Some`, at most `deadline`.
async fn wait<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("timed out waiting for {what}; see the logs");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
