//! Everything a benchmark run talks to, on loopback: the sample app (plain
//! and TLS), nginx in front of it (plain and TLS), nginx in front of a
//! rathole tunnel to it (the same topology as Meridian's), and Meridian — a
//! coordinator on an embedded PostgreSQL, regions `sydney` (agent `main`'s),
//! `frankfurt` (one mesh hop away) and `secure` (TLS, agent `tls`'s), each one
//! worker thread.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// One way to reach the app: a URL plus the headers that route and authorize it.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// For Meridian targets: the app URL whose token cookie goes in `headers`
    /// (tokens live 5 minutes, so each run gets a fresh one, see [`Stack::fresh`]).
    pub app_url: Option<String>,
    /// The processes a request passes through, for CPU time per request.
    pub procs: Vec<crate::cpu::Process>,
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub direct: Target,
    pub direct_tls: Target,
    pub nginx: Target,
    pub nginx_tls: Target,
    /// nginx's TLS listener as Debian's nginx 1.22 ships it: TLS 1.2 only.
    pub nginx_tls12: Target,
    pub rathole: Target,
    pub rathole_tls: Target,
    /// nginx+rathole sent Meridian's request (its `Host` and cookies) and
    /// forwarding it as Meridian does (see [`crate::nginx`]).
    pub rathole_forwarding: Target,
    pub meridian: Target,
    pub meridian_tls: Target,
    /// Through frankfurt to the agent on sydney.
    pub meridian_hop: Target,
    /// As `meridian`, through a region that records no connection log (`--no-connection-log`).
    pub meridian_unlogged: Target,
    /// The floor rows (see [`crate::bare`]), if started.
    pub floors: Option<Floors>,
    /// Signs in again for fresh app tokens.
    pub api: crate::api::Api,
    /// Agent `main`'s process (on sydney), for the bulk rows.
    pub agent_pid: u32,
    cert: PathBuf,
    /// The sydney proxy's process (for its memory).
    pub sydney_pid: u32,
    pub sydney_port: u16,
    /// Held to be stopped (SIGTERM, then SIGKILL) when the stack drops.
    _procs: Vec<Proc>,
}

/// A port nothing listens on, and one this harness has not handed out
/// before: the kernel may offer a port again once its listener is closed.
/// Given one port, the second process cannot listen and exits, and the first
/// answers the second's target: a row measured through the wrong path (a
/// run's pingora+hop row was bare pingora's, its pingora and hop at 0 µs).
pub(crate) fn free_port() -> Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no port the harness has not used already")
}

pub(crate) fn spawn(bin: &Path, args: &[String], dir: &Path, name: &str, env: &[(&str, &str)]) -> Result<Proc> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut cmd = Command::new(bin);
    cmd.args(args).envs(env.iter().copied()).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    Ok(Proc(cmd.spawn().with_context(|| format!("cannot start {name} ({})", bin.display()))?))
}

/// [`spawn`]s a Meridian process with `--ready-file` and waits (at most 60 s,
/// failing at once if it exits) until it reports the addresses it bound.
pub(crate) async fn spawn_ready(
    bin: &Path,
    args: &[String],
    dir: &Path,
    name: &str,
    env: &[(&str, &str)],
) -> Result<(Proc, meridian_regions::ready::Ready)> {
    let ready_file = dir.join(format!("{name}.ready.json"));
    let mut args = args.to_vec();
    args.extend(["--ready-file".to_owned(), ready_file.display().to_string()]);
    let mut proc = spawn(bin, &args, dir, name, env)?;
    let start = Instant::now();
    loop {
        if let Some(ready) = meridian_regions::ready::read(&ready_file) {
            return Ok((proc, ready));
        }
        if let Some(status) = proc.0.try_wait()? {
            bail!("{name} exited ({status}) before it listened; see {}", dir.join(format!("{name}.log")).display());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("timed out waiting for {name} to listen");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `f` every 50 ms until it holds, at most `deadline`.
pub(crate) async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        if start.elapsed() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn listening(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
}

/// A self-signed certificate for `localhost` names, as PEM files in `dir`.
fn certificate(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let key = rcgen::KeyPair::generate()?;
    let names = vec!["localhost".into(), "*.secure.localhost".into(), "127.0.0.1".into()];
    let cert = rcgen::CertificateParams::new(names)?.self_signed(&key)?;
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.pem())?;
    std::fs::write(&k, key.serialize_pem())?;
    Ok((c, k))
}

/// What starting Meridian's regions and agents for the stack needs.
struct MeridianArgs<'a> {
    bin: &'a Path,
    dir: &'a Path,
    /// The coordinator's URL.
    base: &'a str,
    cert: &'a Path,
    /// `--tls-cert` and `--tls-key` for the TLS region.
    tls_args: &'a [String],
}

impl MeridianArgs<'_> {
    /// sydney and frankfurt (plain) and secure (TLS), one worker thread each:
    /// their ports and pids by name.
    async fn regions(
        &self,
        api: &crate::api::Api,
        procs: &mut Vec<Proc>,
    ) -> Result<(HashMap<&'static str, u16>, HashMap<&'static str, u32>)> {
        let s = |v: &str| v.to_owned();
        let (mut ports, mut pids) = (HashMap::new(), HashMap::new());
        // `quiet` is sydney without the connection log: what the log costs, row against row.
        for (name, tls) in [("sydney", false), ("frankfurt", false), ("secure", true), ("quiet", false)] {
            let token = api.create_region(name).await?;
            let mut args = vec![
                s("proxy"),
                s("--coordinator-url"),
                s(self.base),
                s("--listen"),
                s("127.0.0.1:0"),
                s("--wildcard-access-url"),
                format!("*.{name}.localhost:0"),
                s("--threads"),
                s("1"),
                // The memory workload holds 10,000 connections from one address.
                s("--max-connections-per-client"),
                s("20000"),
                s("--max-connections"),
                s("20000"),
                s("--data-dir"),
                self.dir.join(format!("state-{name}")).display().to_string(),
            ];
            if tls {
                args.extend(self.tls_args.iter().cloned());
                args.extend([s("--ca-cert"), self.cert.display().to_string()]);
            }
            if name == "quiet" {
                args.push(s("--no-connection-log"));
            }
            let (proc, ready) =
                spawn_ready(self.bin, &args, self.dir, name, &[("MERIDIAN_PROXY_TOKEN", &token)]).await?;
            pids.insert(name, proc.pid());
            procs.push(proc);
            ports.insert(name, ready.listen.port());
        }
        Ok((ports, pids))
    }

    /// One agent per region a row goes to (main on sydney, tls on secure),
    /// so that no row but the hop makes a mesh hop; their pids go into `pids`.
    async fn agents(
        &self,
        api: &crate::api::Api,
        app: u16,
        procs: &mut Vec<Proc>,
        pids: &mut HashMap<&'static str, u32>,
    ) -> Result<()> {
        let tokens = api.create_workspace(app, &["main", "tls", "unlogged"]).await?;
        let agents = [("main", "sydney"), ("tls", "secure"), ("unlogged", "quiet")];
        for ((agent, region), token) in agents.into_iter().zip(&tokens) {
            // The TLS region's certificate is self-signed.
            let cert = self.cert.display().to_string();
            let agent_args = ["agent", "--coordinator-url", self.base, "--region", region, "--ca-cert", &cert];
            // One worker thread, as every proxy and both rathole ends get.
            let env = [("MERIDIAN_AGENT_TOKEN", token.as_str()), ("TOKIO_WORKER_THREADS", "1")];
            let agent_args: Vec<String> = agent_args.map(String::from).to_vec();
            let proc = spawn(self.bin, &agent_args, self.dir, &format!("agent-{agent}"), &env)?;
            pids.insert(agent, proc.pid());
            procs.push(proc);
            api.wait_agent(agent, region).await?;
        }
        Ok(())
    }
}

/// The Meridian rows: through sydney (the agent's region), through frankfurt
/// (one mesh hop to it) and through the TLS region, each with a signed-in
/// app cookie and the processes on its path.
async fn signed_targets(
    api: &crate::api::Api,
    ports: &HashMap<&'static str, u16>,
    pids: &HashMap<&'static str, u32>,
    app_pid: u32,
    cert: &Path,
) -> Result<Vec<Target>> {
    use crate::cpu::Process;
    let s = |v: &str| v.to_owned();
    let through = |name: &'static str, agent: &str, region: &str, scheme: &str| {
        let port = ports[region];
        let host = format!("code--{agent}--bench--admin.{region}.localhost:{port}");
        (name, format!("{scheme}://{host}/"), format!("{scheme}://127.0.0.1:{port}/"), host)
    };
    let p = |role: &'static str, pid: u32| Process { role, pid };
    let mut signed = Vec::new();
    for ((name, app_url, url, host), path) in [
        (through("meridian", "main", "sydney", "http"), vec![p("proxy", pids["sydney"]), p("agent", pids["main"])]),
        (
            through("meridian-hop", "main", "frankfurt", "http"),
            vec![p("proxy", pids["frankfurt"]), p("agent's proxy", pids["sydney"]), p("agent", pids["main"])],
        ),
        (through("meridian-tls", "tls", "secure", "https"), vec![p("proxy", pids["secure"]), p("agent", pids["tls"])]),
        (
            through("meridian, no connection log", "unlogged", "quiet", "http"),
            vec![p("proxy", pids["quiet"]), p("agent", pids["unlogged"])],
        ),
    ] {
        let cookie = api.app_cookie(&app_url, cert).await?;
        let headers = vec![(s("Host"), host), (s("Cookie"), cookie)];
        let mut procs = path;
        procs.push(p("app", app_pid));
        signed.push(Target { name, url, headers, app_url: Some(app_url), procs });
    }
    Ok(signed)
}

/// The rows Meridian is compared with: the sample app (plain and TLS) to
/// connect to directly, nginx in front of it, nginx in front of rathole, and
/// the floor rows (bare pingora) if asked for.
struct Baselines {
    /// The sample app's plain and TLS ports.
    app: u16,
    app_tls: u16,
    nginx: crate::nginx::Ports,
    floors: Option<FloorProcs>,
    /// app, app TLS, nginx, rathole server, rathole client.
    pids: [u32; 5],
    procs: Vec<Proc>,
}

impl Baselines {
    async fn start(meridian: &Path, d: &Path, tls_args: &[String], bare_pingora: Option<&Path>) -> Result<Self> {
        let published = published_pingora();
        let (cert, key) = (Path::new(&tls_args[1]), Path::new(&tls_args[3]));
        let app_args = ["sample-app", "--listen", "127.0.0.1:0"].map(String::from).to_vec();
        let (app_proc, app) = spawn_ready(meridian, &app_args, d, "app", &[]).await?;
        let tls_app_args: Vec<String> = app_args.iter().chain(tls_args).cloned().collect();
        let (app_tls_proc, app_tls) = spawn_ready(meridian, &tls_app_args, d, "app-tls", &[]).await?;
        let (app, app_tls) = (app.listen.port(), app_tls.listen.port());
        // nginx and rathole cannot listen on port 0 and say where: they get
        // ports the kernel just freed, none handed out twice (see `free_port`).
        let nginx = crate::nginx::Ports {
            app,
            port: free_port()?,
            tls_port: free_port()?,
            tunnel: free_port()?,
            tunnel_port: free_port()?,
            tunnel_tls_port: free_port()?,
            tls12_port: free_port()?,
            tunnel_forwarding_port: free_port()?,
        };
        let nginx_proc = crate::nginx::start(d, &nginx, cert, key)?;
        let floors = match bare_pingora {
            Some(bin) => Some(FloorProcs::start(bin, published.as_deref(), d, app, (cert, key))?),
            None => None,
        };
        let rathole = crate::rathole::start(&rathole_bin(), d, free_port()?, nginx.tunnel, app)?;
        let pids = [app_proc.pid(), app_tls_proc.pid(), nginx_proc.pid(), rathole.server.pid(), rathole.client.pid()];
        let procs = vec![app_proc, app_tls_proc, nginx_proc, rathole.server, rathole.client];
        let floor_ports = floors.as_ref().map(|f| f.ports[..f.procs.len()].to_vec()).unwrap_or_default();
        for port in [nginx.port, nginx.tls_port, nginx.tls12_port, nginx.tunnel_forwarding_port, nginx.tunnel]
            .into_iter()
            .chain(floor_ports)
        {
            wait_until("a listener", Duration::from_secs(20), || listening(port)).await?;
        }
        Ok(Self { app, app_tls, nginx, floors, pids, procs })
    }

    /// The rows through these processes, each ending at the app.
    fn targets(&mut self) -> (Vec<Target>, Option<Floors>) {
        use crate::cpu::Process;
        let [app_pid, app_tls_pid, nginx_pid, server_pid, client_pid] = self.pids;
        let p = |role: &'static str, pid: u32| Process { role, pid };
        let plain = |name: &'static str, url: String, path: &[Process]| {
            let mut procs = path.to_vec();
            procs.push(p("app", app_pid));
            Target { name, url, headers: Vec::new(), app_url: None, procs }
        };
        let via_nginx = [p("nginx", nginx_pid)];
        let via_rathole = [p("nginx", nginx_pid), p("rathole server", server_pid), p("rathole client", client_pid)];
        let floors = self.floors.take().map(|f| {
            let [bare, bare_tls, hop, hop_tls, forward, published, published_tls, front] = f.ports;
            let [bare_pid, bare_tls_pid, hop_pid, hop_tls_pid, forward_pid, front_pid] = f.pids();
            let published_pids = (f.procs.len() == 8).then(|| (f.procs[6].pid(), f.procs[7].pid()));
            let url = |scheme: &str, port: u16| format!("{scheme}://127.0.0.1:{port}/");
            let via_hop = |pid| [p("pingora", pid), p("hop", forward_pid)];
            self.procs.extend(f.procs);
            Floors {
                bare: plain("bare pingora", url("http", bare), &[p("pingora", bare_pid)]),
                bare_tls: plain("bare pingora", url("https", bare_tls), &[p("pingora", bare_tls_pid)]),
                hop: plain("pingora+hop", url("http", hop), &via_hop(hop_pid)),
                hop_tls: plain("pingora+hop", url("https", hop_tls), &via_hop(hop_tls_pid)),
                hop_alone: plain("hop", url("http", forward), &[p("hop", forward_pid)]),
                two_hops: plain("hop+hop", url("http", front), &[p("front hop", front_pid), p("hop", forward_pid)]),
                published: published_pids.map(|(pid, tls_pid)| {
                    (
                        plain(PUBLISHED, url("http", published), &[p("pingora", pid)]),
                        plain(PUBLISHED, url("https", published_tls), &[p("pingora", tls_pid)]),
                    )
                }),
                bare_pid,
                bare_port: bare,
            }
        });
        let n = &self.nginx;
        let rows = vec![
            plain("direct", format!("http://127.0.0.1:{}/", self.app), &[]),
            Target {
                procs: vec![p("app", app_tls_pid)],
                ..plain("direct", format!("https://127.0.0.1:{}/", self.app_tls), &[])
            },
            plain("nginx", format!("http://127.0.0.1:{}/", n.port), &via_nginx),
            plain("nginx", format!("https://127.0.0.1:{}/", n.tls_port), &via_nginx),
            plain("nginx+rathole", format!("http://127.0.0.1:{}/", n.tunnel_port), &via_rathole),
            plain("nginx+rathole", format!("https://127.0.0.1:{}/", n.tunnel_tls_port), &via_rathole),
            plain(NGINX_TLS12, format!("https://127.0.0.1:{}/", n.tls12_port), &via_nginx),
            plain(FORWARDING, format!("http://127.0.0.1:{}/", n.tunnel_forwarding_port), &via_rathole),
        ];
        (rows, floors)
    }
}

/// Starts the coordinator (its own database under `d`), which health-checks
/// the TLS region with `cert`, and signs in its first admin.
async fn coordinator(meridian: &Path, d: &Path, cert: &Path) -> Result<(Proc, String, crate::api::Api)> {
    let args = [
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &d.join("data").display().to_string(),
        "--wildcard-access-url",
        "*.localhost:0",
        "--ca-cert",
        &cert.display().to_string(),
    ]
    .map(String::from);
    let (proc, ready) = spawn_ready(meridian, &args, d, "coordinator", &[]).await?;
    let base = format!("http://{}", ready.listen);
    let http = reqwest::Client::new();
    wait_until("the coordinator", Duration::from_secs(60), || {
        let url = format!("{base}/healthz");
        let http = http.clone();
        async move { http.get(url).send().await.is_ok_and(|r| r.status().is_success()) }
    })
    .await?;
    let api = crate::api::Api::first_user(&base).await?;
    Ok((proc, base, api))
}

impl Stack {
    pub async fn start(meridian: &Path, bare_pingora: Option<&Path>) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("meridian-bench").tempdir()?;
        let d = dir.path().to_owned();
        let (cert, key) = certificate(&d)?;
        let tls_args =
            ["--tls-cert".to_owned(), cert.display().to_string(), "--tls-key".into(), key.display().to_string()];
        let mut baselines = Baselines::start(meridian, &d, &tls_args, bare_pingora).await?;
        let (coordinator, base, api) = coordinator(meridian, &d, &cert).await?;
        let mut procs = std::mem::take(&mut baselines.procs);
        procs.push(coordinator);
        let meridian_args = MeridianArgs { bin: meridian, dir: &d, base: &base, cert: &cert, tls_args: &tls_args };
        let (ports, mut pids) = meridian_args.regions(&api, &mut procs).await?;
        api.wait_healthy().await?;
        meridian_args.agents(&api, baselines.app, &mut procs, &mut pids).await?;
        let signed = signed_targets(&api, &ports, &pids, baselines.pids[0], &cert).await?;
        let (rows, floors) = baselines.targets();
        procs.append(&mut baselines.procs);
        let [direct, direct_tls, nginx, nginx_tls, rathole, rathole_tls, nginx_tls12, forwarding]: [Target; 8] =
            rows.try_into().map_err(|_| anyhow::anyhow!("eight baseline rows"))?;
        let [meridian, meridian_hop, meridian_tls, meridian_unlogged]: [Target; 4] =
            signed.try_into().map_err(|_| anyhow::anyhow!("four Meridian rows"))?;
        // Meridian's headers as they are: nginx keeps its cookies from the app
        // and checks no token, so one that expires changes nothing.
        let rathole_forwarding = Target { headers: meridian.headers.clone(), ..forwarding };
        let stack = Stack {
            direct,
            direct_tls,
            nginx,
            nginx_tls,
            nginx_tls12,
            rathole,
            rathole_tls,
            rathole_forwarding,
            floors,
            meridian,
            meridian_hop,
            meridian_tls,
            meridian_unlogged,
            api,
            cert,
            sydney_pid: pids["sydney"],
            sydney_port: ports["sydney"],
            agent_pid: pids["main"],
            _procs: procs,
            dir,
        };
        stack.check_references().await?;
        Ok(stack)
    }

    /// The reference rows do what they say, or nothing is measured: nginx's
    /// TLS listener speaks TLS 1.3 and its TLS 1.2 one does not, and the app
    /// behind the forwarding row is asked what the app behind Meridian is
    /// asked (the sample app answers with the request's method, target and
    /// fields).
    async fn check_references(&self) -> Result<()> {
        use anyhow::ensure;
        let root = reqwest::Certificate::from_pem(&std::fs::read(&self.cert)?)?;
        let tls13 = reqwest::Client::builder()
            .add_root_certificate(root)
            .min_tls_version(reqwest::tls::Version::TLS_1_3)
            .build()?;
        let speaks_tls13 = |t: &Target| tls13.get(&t.url).send();
        let over_tls13 = speaks_tls13(&self.nginx_tls).await.context("nginx's TLS listener does not speak TLS 1.3")?;
        ensure!(over_tls13.status().is_success(), "nginx's TLS listener answers {} over TLS 1.3", over_tls13.status());
        ensure!(speaks_tls13(&self.nginx_tls12).await.is_err(), "nginx's TLS 1.2 listener speaks TLS 1.3");
        let http = reqwest::Client::new();
        let asked = |t: Target| {
            let mut req = http.get(&t.url);
            for (name, value) in &t.headers {
                req = req.header(name, value);
            }
            async move {
                let echo: serde_json::Value = req.send().await?.error_for_status()?.json().await?;
                let mut fields: Vec<(String, String)> = serde_json::from_value(echo["headers"].clone())?;
                fields.sort();
                anyhow::Ok((echo["method"].clone(), echo["uri"].clone(), fields))
            }
        };
        let (meridian, nginx) =
            (asked(self.fresh(&self.meridian).await?).await?, asked(self.rathole_forwarding.clone()).await?);
        ensure!(
            meridian == nginx,
            "the app is asked {nginx:?} through nginx+rathole's forwarding row, {meridian:?} through Meridian"
        );
        Ok(())
    }

    /// `t` with a freshly issued app token cookie (Meridian targets only): an
    /// expired token would send every request to the coordinator for a new one.
    pub async fn fresh(&self, t: &Target) -> Result<Target> {
        let mut t = t.clone();
        if let Some(app_url) = &t.app_url {
            let cookie = self.api.app_cookie(app_url, &self.cert).await?;
            for (name, value) in &mut t.headers {
                if name == "Cookie" {
                    *value = cookie.clone();
                }
            }
        }
        Ok(t)
    }

    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps every process's log (the directory is not removed at the end).
    pub fn keep_logs(&mut self) -> Result<PathBuf> {
        let dir = std::mem::replace(&mut self.dir, tempfile::TempDir::new()?);
        Ok(dir.keep())
    }
}

/// The floor rows' targets (see [`crate::bare`]).
#[derive(Clone)]
pub struct Floors {
    /// Bare pingora in front of the app, plain and TLS.
    pub bare: Target,
    pub bare_tls: Target,
    /// Bare pingora in front of a hop in front of the app, plain and TLS.
    pub hop: Target,
    pub hop_tls: Target,
    /// The hop alone in front of the app, and a second hop in front of it:
    /// the least one process and two processes on the path can cost
    /// (WebSocket round trips: Meridian's path has two, nginx's one).
    pub hop_alone: Target,
    pub two_hops: Target,
    /// Bare pingora as published (without the vendored patches), plain and
    /// TLS, if its binary was built (`benches/run` builds it).
    pub published: Option<(Target, Target)>,
    /// The plain bare pingora's process and port (for its idle memory).
    pub bare_pid: u32,
    pub bare_port: u16,
}

/// The row of bare pingora as published.
const PUBLISHED: &str = "bare pingora, published";
/// The reference row of nginx's TLS listener at TLS 1.2 only (see [`crate::nginx`]).
pub const NGINX_TLS12: &str = "nginx, TLS 1.2 only";
/// The reference row of nginx+rathole sent Meridian's request.
pub const FORWARDING: &str = "nginx+rathole, Meridian's request";

/// `benches/published-pingora`'s binary (pingora 0.9.1 from crates.io,
/// without the vendored patches), if built, beside this checkout's `target/`.
fn published_pingora() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let root = exe.parent()?.parent()?.parent()?;
    let bin = root.join("benches/published-pingora/target/release/bare-pingora-published");
    if !bin.exists() {
        eprintln!("no {} (benches/run builds it): the published pingora row is left out", bin.display());
    }
    bin.exists().then_some(bin)
}

/// The floor rows' processes: bare pingora (plain, TLS) in front of the
/// app and in front of the hop, the hop, a second hop in front of it, and
/// bare pingora as published (plain, TLS) if its binary is given.
struct FloorProcs {
    /// bare, bare TLS, bare over the hop, bare TLS over the hop, the hop,
    /// published, published TLS, the front hop.
    ports: [u16; 8],
    procs: Vec<Proc>,
}

impl FloorProcs {
    fn start(bin: &Path, published: Option<&Path>, dir: &Path, app: u16, (cert, key): (&Path, &Path)) -> Result<Self> {
        let mut ports = [0u16; 8];
        for port in &mut ports {
            *port = free_port()?;
        }
        let [bare, bare_tls, hop, hop_tls, forward, published_port, published_tls, front] = ports;
        let at = |port: u16| format!("127.0.0.1:{port}");
        let tls = [cert.display().to_string(), key.display().to_string()];
        let pingora = |listen: u16, upstream: u16, tls: &[String]| {
            let mut args = vec!["--bare-pingora".to_owned(), at(listen), at(upstream)];
            args.extend(tls.iter().cloned());
            args
        };
        let mut procs = vec![
            spawn(bin, &pingora(bare, app, &[]), dir, "bare-pingora", &[])?,
            spawn(bin, &pingora(bare_tls, app, &tls), dir, "bare-pingora-tls", &[])?,
            spawn(bin, &pingora(hop, forward, &[]), dir, "pingora-hop", &[])?,
            spawn(bin, &pingora(hop_tls, forward, &tls), dir, "pingora-hop-tls", &[])?,
            spawn(bin, &["--forward".to_owned(), at(forward), at(app)], dir, "hop", &[])?,
            spawn(bin, &["--forward".to_owned(), at(front), at(forward)], dir, "front-hop", &[])?,
        ];
        if let Some(published) = published {
            procs.push(spawn(published, &pingora(published_port, app, &[]), dir, "pingora-published", &[])?);
            procs.push(spawn(published, &pingora(published_tls, app, &tls), dir, "pingora-published-tls", &[])?);
        }
        Ok(Self { ports, procs })
    }

    fn pids(&self) -> [u32; 6] {
        let pid = |i: usize| self.procs[i].pid();
        [pid(0), pid(1), pid(2), pid(3), pid(4), pid(5)]
    }
}

/// rathole from `cargo install` (in `~/.cargo/bin`), or from `PATH`.
pub(crate) fn rathole_bin() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".cargo/bin/rathole"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "rathole".into())
}
