//! The end-to-end harness: a PostgreSQL cluster per test, `meridian`
//! processes on ephemeral loopback ports, an admin API client, and bounded
//! polling in place of sleeps.

#![allow(dead_code)]

use meridian_coordinator::embedded_postgres::{EmbeddedPostgres, PgBinaries};
use serde_json::{json, Value};
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_meridian");
pub const ADMIN_PASSWORD: &str = "admin-password";

/// A port free now, for a process to listen on (see `meridian_netsim::free_port`).
pub fn free_port() -> u16 {
    meridian_netsim::free_port().expect("a free loopback port")
}

/// Polls `f` until it returns `Some`, at most `deadline`; panics naming `what`.
pub async fn wait_for<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        // An attempt that hangs is bounded by what is left of the deadline too.
        let left = deadline.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, f()).await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(_) => panic!("timed out after {deadline:?} waiting for {what} (an attempt hung)"),
        }
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The test API clients' bound on one call: no test waits forever on a
/// coordinator that stopped answering.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A plain HTTP client whose every call ends within [`CALL_TIMEOUT`].
pub fn bounded_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(CALL_TIMEOUT).build().expect("an HTTP client")
}

/// A real PostgreSQL cluster in a temporary directory, for `--postgres-url`.
pub struct Postgres {
    pub pg: EmbeddedPostgres,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("meridian-pg").tempdir().unwrap();
        let mut pg = EmbeddedPostgres::new(dir.path(), PgBinaries::find(None).unwrap()).unwrap();
        tokio::task::block_in_place(|| pg.start()).unwrap();
        pg.ensure_database().await.unwrap();
        Self { pg, _dir: dir }
    }

    pub fn url(&self) -> String {
        self.pg.url()
    }
}

/// A running `meridian` process whose output goes to a log file; SIGKILLed on drop.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Process {
    pub fn spawn(name: &str, dir: &Path, args: &[String]) -> Self {
        Self::spawn_bin(BIN, name, dir, args)
    }

    /// [`Process::spawn`] of another build of `meridian` (the upgrade test's previous release).
    pub fn spawn_bin(bin: &str, name: &str, dir: &Path, args: &[String]) -> Self {
        Self::spawn_env(bin, name, dir, args, &[])
    }

    /// [`Process::spawn_bin`] with these environment variables besides `PATH` and `MERIDIAN_LOG`.
    pub fn spawn_env(bin: &str, name: &str, dir: &Path, args: &[String], env: &[(&str, &str)]) -> Self {
        let log = dir.join(format!("{name}-{}.log", free_port()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("MERIDIAN_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self { child, log, name: name.into() }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).unwrap();
    }

    /// Waits (bounded) for the process to exit on its own.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let name = self.name.clone();
        let child = &mut self.child;
        wait_for(deadline, &format!("{name} to exit"), || {
            let status = child.try_wait().unwrap();
            async move { status }
        })
        .await
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.name == "demo" {
            // The demo's children live in their own process groups: only the
            // demo can stop them, so it gets SIGTERM and time to do so.
            let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.output());
        }
    }
}

/// A coordinator on an ephemeral port.
pub struct Coordinator {
    pub proc: Process,
    pub url: String,
    pub args: Vec<String>,
    pub dir: PathBuf,
}

impl Coordinator {
    /// Starts a coordinator on `postgres_url` with the given health interval
    /// (also used as the proxies' heartbeat interval), and waits until it answers.
    pub async fn start(dir: &Path, postgres_url: &str, interval: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let mut args = Self::args(dir, port, postgres_url, interval);
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_with(dir, args, format!("http://127.0.0.1:{port}")).await
    }

    /// The harness's arguments for a coordinator on `port` (what [`Coordinator::start`]
    /// passes before its extras); replicas in one `dir` share its secrets key.
    pub fn args(dir: &Path, port: u16, postgres_url: &str, interval: &str) -> Vec<String> {
        [
            "coordinator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--postgres-url",
            postgres_url,
            "--proxy-health-interval",
            interval,
            "--heartbeat-interval",
            interval,
            "--secrets-key-file",
            &dir.join("secrets.key").to_string_lossy(),
            "--wildcard-access-url",
            &format!("*.primary.localhost:{port}"),
            "--app-timeout",
            "3s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    pub async fn start_with(dir: &Path, args: Vec<String>, url: String) -> Self {
        Self::start_bin(BIN, dir, args, url).await
    }

    /// [`Coordinator::start_with`] of another build of `meridian`.
    pub async fn start_bin(bin: &str, dir: &Path, args: Vec<String>, url: String) -> Self {
        let proc = Process::spawn_bin(bin, "coordinator", dir, &args);
        let mut c = Self { proc, url, args, dir: dir.to_owned() };
        c.wait_ready().await;
        c
    }

    pub async fn wait_ready(&mut self) {
        let url = format!("{}/healthz", self.url);
        let proc = &mut self.proc;
        wait_for(Duration::from_secs(30), "coordinator /healthz", || {
            let exited = proc.child.try_wait().unwrap();
            assert!(exited.is_none(), "coordinator exited: {exited:?}\n{}", proc.output());
            let url = url.clone();
            // Liveness only: a coordinator serving HTTPS with a test CA is probed too.
            let probe = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
            async move { probe.get(&url).send().await.ok().filter(|r| r.status().is_success()) }
        })
        .await;
    }

    /// Starts the same coordinator again (after a kill).
    pub async fn restart(&mut self) {
        self.proc.kill();
        self.proc = Process::spawn("coordinator", &self.dir, &self.args);
        self.wait_ready().await;
    }

    /// Creates the first user and returns an admin client.
    pub async fn admin(&self) -> Api {
        let resp: Value = Api::anonymous(&self.url)
            .post("/api/v2/users/first", json!({"username": "admin", "password": ADMIN_PASSWORD}))
            .await
            .expect_status(201);
        Api::with_token(&self.url, resp["session_token"].as_str().unwrap())
    }
}

/// A regional proxy on an ephemeral port.
pub struct Proxy {
    pub proc: Process,
    pub url: String,
    pub port: u16,
    args: Vec<String>,
    dir: PathBuf,
}

impl Proxy {
    /// Spawns a proxy; it may exit on its own (e.g. a refused token).
    pub fn spawn(dir: &Path, coordinator: &str, token: &str, extra: &[&str]) -> Self {
        Self::spawn_named(dir, coordinator, token, "region", extra)
    }

    /// Spawns a proxy serving apps under `*.{name}.localhost:PORT`.
    pub fn spawn_named(dir: &Path, coordinator: &str, token: &str, name: &str, extra: &[&str]) -> Self {
        Self::spawn_on(dir, coordinator, token, name, free_port(), extra)
    }

    /// [`Proxy::spawn_named`] listening on `port`.
    pub fn spawn_on(dir: &Path, coordinator: &str, token: &str, name: &str, port: u16, extra: &[&str]) -> Self {
        let mut args: Vec<String> = [
            "proxy",
            "--coordinator-url",
            coordinator,
            "--proxy-token",
            token,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--wildcard-access-url",
            &format!("*.{name}.localhost:{port}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Harness defaults, unless the test sets its own.
        for (flag, value) in [("--drain-timeout", "5s"), ("--app-timeout", "3s")] {
            if !extra.contains(&flag) {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let scheme = if extra.contains(&"--tls-cert") { "https" } else { "http" };
        let proc = Process::spawn("proxy", dir, &args);
        Self { proc, url: format!("{scheme}://127.0.0.1:{port}"), port, args, dir: dir.to_owned() }
    }

    /// Starts the same proxy again (same port, same replica) after it died.
    pub async fn restart(&mut self) {
        self.proc.kill();
        self.proc = Process::spawn("proxy", &self.dir, &self.args);
        self.wait_registered().await;
    }

    /// SIGTERM, waits for the exit (which must be 0), and starts the same proxy again.
    pub async fn restart_gracefully(&mut self, drain_within: Duration) {
        self.proc.signal(nix::sys::signal::Signal::SIGTERM);
        let status = self.proc.wait_exit(drain_within).await;
        assert!(status.success(), "{} exited with {status:?}", self.proc.name);
        self.proc = Process::spawn("proxy", &self.dir, &self.args);
        self.wait_registered().await;
    }

    /// Spawns a proxy and waits until it has registered.
    pub async fn start(dir: &Path, coordinator: &str, token: &str) -> Self {
        let mut p = Self::spawn(dir, coordinator, token, &[]);
        p.wait_registered().await;
        p
    }

    pub async fn report(&self) -> Option<Value> {
        let url = format!("{}/healthz-report", self.url);
        reqwest::Client::new().get(url).timeout(Duration::from_secs(5)).send().await.ok()?.json().await.ok()
    }

    /// Waits until the proxy's report shows a registration newer than `after`.
    pub async fn wait_registered_after(&mut self, after: Option<String>) {
        let url = format!("{}/healthz-report", self.url);
        let proc = &mut self.proc;
        wait_for(Duration::from_secs(30), "proxy registration", || {
            let exited = proc.child.try_wait().unwrap();
            assert!(exited.is_none(), "proxy exited: {exited:?}\n{}", proc.output());
            let (url, after) = (url.clone(), after.clone());
            async move {
                let r: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
                let at = r["last_registration_at"].as_str()?.to_owned();
                (r["coordinator_reachable"] == true && Some(&at) > after.as_ref()).then_some(())
            }
        })
        .await;
    }

    pub async fn wait_registered(&mut self) {
        self.wait_registered_after(None).await;
    }
}

/// A coordinator API client with an optional session token.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// The body, after checking the status (printing the body if it differs).
    pub fn expect_status(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.body);
        self.body
    }
}

impl Api {
    pub fn anonymous(base: &str) -> Self {
        Self { http: bounded_client(), base: base.into(), token: None }
    }

    pub fn with_token(base: &str, token: &str) -> Self {
        Self { http: bounded_client(), base: base.into(), token: Some(token.into()) }
    }

    /// A client sending requests through `http` (e.g. one trusting a test CA).
    pub fn with_http(base: &str, http: reqwest::Client, token: Option<&str>) -> Self {
        Self { http, base: base.into(), token: token.map(str::to_owned) }
    }

    /// Signs in as `username` and returns a client with that session.
    pub async fn login(base: &str, username: &str, password: &str) -> Self {
        let body = serde_json::json!({ "username": username, "password": password });
        let reply = Self::anonymous(base).post("/api/v2/users/login", body).await.expect_status(200);
        Self::with_token(base, reply["session_token"].as_str().unwrap())
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("Meridian-Session-Token", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request to the coordinator failed");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Reply { status, body }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The session token this client sends.
    pub fn token(&self) -> &str {
        self.token.as_deref().unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Creates a region and returns its proxy token.
    pub async fn create_region(&self, name: &str) -> String {
        let body = self.post("/api/v2/regions", json!({"name": name, "display_name": name})).await.expect_status(201);
        body["proxy_token"].as_str().unwrap().to_owned()
    }

    /// The region named `name` as the API lists it.
    pub async fn region(&self, name: &str) -> Value {
        let list = self.get("/api/v2/regions").await.expect_status(200);
        list["regions"].as_array().unwrap().iter().find(|r| r["name"] == name).cloned().expect("region listed")
    }

    /// Waits until region `name` has `status`; returns how long that took.
    pub async fn wait_status(&self, name: &str, status: &str, deadline: Duration) -> Duration {
        let start = Instant::now();
        wait_for(deadline, &format!("region {name} to be {status}"), || async {
            (self.region(name).await["status"] == status).then_some(())
        })
        .await;
        start.elapsed()
    }
}

/// `POST`s `body` to the coordinator's `path` as a proxy holding `proxy_token`.
pub async fn proxy_call(base: &str, proxy_token: &str, path: &str, body: Value) -> Reply {
    let resp = bounded_client()
        .post(format!("{base}{path}"))
        .header("Meridian-Proxy-Token", proxy_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    Reply { status, body: resp.json().await.unwrap_or(Value::Null) }
}

/// A self-signed CA named `name`, for tests that issue their own certificates.
pub fn test_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("meridian-e2e").tempdir().unwrap()
}

/// The sample app (the tests' upstream) on an ephemeral port.
pub struct SampleApp {
    pub proc: Process,
    pub port: u16,
}

impl SampleApp {
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, Vec::new()).await
    }

    /// The sample app serving HTTPS with a self-signed certificate (an app
    /// that speaks TLS itself, for `{port}s--` URLs).
    pub async fn start_tls(dir: &Path) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.join("app-cert.pem"), dir.join("app-key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let extra = vec![
            "--tls-cert".to_owned(),
            cert_path.display().to_string(),
            "--tls-key".to_owned(),
            key_path.display().to_string(),
        ];
        Self::start_with(dir, extra).await
    }

    async fn start_with(dir: &Path, extra: Vec<String>) -> Self {
        let port = free_port();
        let mut args = vec!["sample-app".to_owned(), "--listen".to_owned(), format!("127.0.0.1:{port}")];
        args.extend(extra);
        let proc = Process::spawn("sample-app", dir, &args);
        wait_for(Duration::from_secs(10), "sample app", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()
        })
        .await;
        Self { proc, port }
    }
}

/// A workspace agent process.
pub struct Agent {
    pub proc: Process,
    args: Vec<String>,
    dir: PathBuf,
}

impl Agent {
    pub fn spawn(dir: &Path, coordinator: &str, token: &str, region: Option<&str>) -> Self {
        let region: Vec<&str> = region.map(|r| vec!["--region", r]).unwrap_or_default();
        Self::spawn_with(dir, coordinator, token, &region)
    }

    pub fn spawn_with(dir: &Path, coordinator: &str, token: &str, extra: &[&str]) -> Self {
        let mut args: Vec<String> =
            ["agent", "--coordinator-url", coordinator, "--agent-token", token].iter().map(|s| s.to_string()).collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Self { proc: Process::spawn("agent", dir, &args), args, dir: dir.to_owned() }
    }

    /// Starts the same agent again after it died.
    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc = Process::spawn("agent", &self.dir, &self.args);
    }
}

impl Api {
    /// Creates workspace `dev` (agent `main`) with the public app `open` on
    /// `app_port`, starts its agent preferring `region`, and waits until it is attached.
    pub async fn public_app_workspace(&self, dir: &Path, coordinator: &str, app_port: u16, region: &str) -> Agent {
        let apps = json!([{"slug": "open", "port": app_port, "share": "public"}]);
        let created = self
            .post("/api/v2/workspaces", json!({"name": "dev", "agents": [{"name": "main", "apps": apps}]}))
            .await
            .expect_status(201);
        let agent = Agent::spawn(dir, coordinator, created["agent_tokens"]["main"].as_str().unwrap(), Some(region));
        self.wait_agent_on("dev", region).await;
        agent
    }

    /// Waits until `owner`'s workspace `ws` has its agent connected to `region`.
    pub async fn wait_agent_on(&self, ws: &str, region: &str) -> Duration {
        self.wait_agent_within(ws, region, Duration::from_secs(20)).await
    }

    /// The region the workspace's first agent is connected to, if it is.
    pub async fn agent_region(&self, ws: &str) -> Option<String> {
        let list = self.get("/api/v2/workspaces?owner=all").await.body;
        let found = list["workspaces"].as_array()?.iter().find(|w| w["name"] == ws)?.clone();
        let agent = &found["agents"][0];
        (agent["connected"] == true).then(|| agent["region"].as_str().map(str::to_owned)).flatten()
    }

    /// [`Api::wait_agent_on`] with a deadline; returns how long it took.
    pub async fn wait_agent_within(&self, ws: &str, region: &str, deadline: Duration) -> Duration {
        let start = Instant::now();
        wait_for(deadline, &format!("agent of {ws} on {region}"), || async {
            let list = self.get("/api/v2/workspaces?owner=all").await.body;
            let found = list["workspaces"].as_array()?.iter().find(|w| w["name"] == ws)?.clone();
            let agent = found["agents"][0].clone();
            (agent["connected"] == true && agent["region"] == region).then_some(())
        })
        .await;
        start.elapsed()
    }
}

/// Resolves every name to loopback: `*.localhost` app hosts work as in a
/// browser, and no test can send traffic anywhere else.
pub struct LoopbackResolver;

impl reqwest::dns::Resolve for LoopbackResolver {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(std::net::SocketAddr::from(([127, 0, 0, 1], 0))));
        Box::pin(std::future::ready(Ok(addrs)))
    }
}

/// [`browser`] with its cookie jar in hand.
pub fn client_with_jar() -> (reqwest::Client, std::sync::Arc<reqwest::cookie::Jar>) {
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(std::sync::Arc::new(LoopbackResolver))
        .build()
        .unwrap();
    (client, jar)
}

/// The value of cookie `name` that `jar` would send to `url`.
pub fn jar_cookie(jar: &reqwest::cookie::Jar, url: &str, name: &str) -> Option<String> {
    let header = reqwest::cookie::CookieStore::cookies(jar, &url.parse().unwrap())?;
    let header = header.to_str().ok()?.to_owned();
    header.split("; ").find_map(|c| c.strip_prefix(&format!("{name}=")).map(str::to_owned))
}

/// Sends `raw` (a whole HTTP/1.1 request) to loopback `port`; the status of the answer.
pub async fn raw_status(port: u16, raw: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(raw.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut head)).await.unwrap().unwrap();
    let status = std::str::from_utf8(&head[9..12]).unwrap_or_default();
    status.parse().unwrap_or_else(|_| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(&head)))
}

/// A browser-like client: a cookie jar, no automatic redirects, loopback
/// only, and bounded: a connection within 5 s, and no read waiting more than
/// 30 s (a long transfer that keeps moving is not cut).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(std::sync::Arc::new(LoopbackResolver))
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Runs `cmd` to its end, at most `limit` (its output goes to files, so a
/// chatty child never blocks on a full pipe); past that it is killed and the
/// test fails naming `what` with what it printed.
pub fn output_within(cmd: &mut Command, limit: Duration, what: &str) -> std::process::Output {
    let dir = tempdir();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let file = |p: &Path| std::fs::File::create(p).unwrap();
    let mut child = cmd
        .stdout(file(&out))
        .stderr(file(&err))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}): run scripts/install-deps --tests"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            let printed = String::from_utf8_lossy(&std::fs::read(&out).unwrap_or_default()).into_owned()
                + &String::from_utf8_lossy(&std::fs::read(&err).unwrap_or_default());
            panic!("{what} ran past {limit:?} and was killed:\n{printed}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output { status, stdout: std::fs::read(&out).unwrap(), stderr: std::fs::read(&err).unwrap() }
}

/// Follows redirects by hand (at most 10), returning every hop's status and the final response.
pub async fn follow(client: &reqwest::Client, url: &str) -> (Vec<(u16, String)>, reqwest::Response) {
    let mut url = reqwest::Url::parse(url).unwrap();
    let mut hops = Vec::new();
    for _ in 0..10 {
        let resp = client.get(url.clone()).timeout(Duration::from_secs(15)).send().await.unwrap();
        let status = resp.status().as_u16();
        hops.push((status, url.to_string()));
        if !(300..400).contains(&status) {
            return (hops, resp);
        }
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        url = url.join(&location).unwrap();
    }
    panic!("redirect loop: {hops:?}");
}

/// Signs `client`'s cookie jar in at the coordinator (as a browser's login form does).
pub async fn browser_login(client: &reqwest::Client, coordinator: &str, username: &str, password: &str) {
    // A browser names the page's origin on every POST; the API checks it.
    let origin = reqwest::Url::parse(coordinator).unwrap().origin().ascii_serialization();
    let resp = client
        .post(format!("{coordinator}/api/v2/users/login"))
        .header("origin", origin)
        .json(&serde_json::json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// A user-space network link (latency, stalls, resets) in front of `upstream`.
pub async fn link_to(upstream: &str) -> meridian_netsim::Link {
    let url = reqwest::Url::parse(upstream).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], url.port_or_known_default().unwrap()));
    meridian_netsim::Link::start("127.0.0.1:0".parse().unwrap(), addr).await.unwrap()
}

/// What steady traffic saw for one target.
#[derive(Debug, Default, Clone)]
pub struct TrafficStats {
    pub ok: u64,
    /// Each failure: when its request was sent (milliseconds since the
    /// start), and what happened.
    pub failed: Vec<(u128, String)>,
    /// The longest a successful request took: how long requests waited
    /// while the system recovered (a request waits for a moving agent's route).
    pub slowest_ok: Duration,
}

/// The value of metric `series` (a name, or a name with its labels as
/// printed: `name{label="v"}`) on the `/metrics` page of the process at
/// `base`; `None` when it does not answer or has no such series. The one
/// metrics reader of the harness.
pub async fn metric(base: &str, series: &str) -> Option<f64> {
    metric_with(&reqwest::Client::new(), base, series).await
}

/// [`metric`] with `client` (one that trusts a test CA, for HTTPS).
pub async fn metric_with(client: &reqwest::Client, base: &str, series: &str) -> Option<f64> {
    let url = format!("{}/metrics", base.trim_end_matches('/'));
    let text = client.get(url).timeout(Duration::from_secs(5)).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// [`metric`] for a counter or gauge that must be there.
pub async fn counter_of(base: &str, series: &str) -> u64 {
    metric(base, series).await.unwrap_or_else(|| panic!("no {series} at {base}/metrics")) as u64
}

/// What the sample app behind `app` (an app URL through Meridian, without a
/// trailing `/`) has seen of requests tagged `x-sample-tag: tag`: (received, in flight).
pub async fn app_seen(client: &reqwest::Client, app: &str, tag: &str) -> Option<(u64, u64)> {
    let resp =
        client.get(format!("{app}/__sample/seen?tag={tag}")).timeout(Duration::from_secs(5)).send().await.ok()?;
    let v: serde_json::Value = resp.json().await.ok()?;
    Some((v["received"].as_u64()?, v["in_flight"].as_u64()?))
}

/// Waits until the sample app behind `app` is answering every request tagged
/// `tag` that the test sent (`n`): they are in flight at the app.
pub async fn wait_in_flight_at_app(client: &reqwest::Client, app: &str, tag: &str, n: u64) {
    wait_for(Duration::from_secs(10), &format!("{n} requests tagged {tag} in flight at the app"), || async {
        app_seen(client, app, tag).await.filter(|(_, in_flight)| *in_flight >= n)
    })
    .await;
}

/// Steady synthetic traffic: one request every `every` to each target, each
/// bounded by a timeout, so a hang is counted as a failure, never waited out.
pub struct Traffic {
    started: Instant,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<(String, tokio::task::JoinHandle<TrafficStats>)>,
    /// Requests served so far, per target.
    served: Vec<Arc<std::sync::atomic::AtomicU64>>,
}

impl Traffic {
    pub fn start(targets: Vec<(String, reqwest::Client, String)>, every: Duration) -> Self {
        Self::start_with_timeout(targets, every, Duration::from_secs(5))
    }

    /// [`Traffic::start`] where a request slower than `timeout` counts as failed.
    pub fn start_with_timeout(
        targets: Vec<(String, reqwest::Client, String)>,
        every: Duration,
        timeout: Duration,
    ) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        let served: Vec<Arc<std::sync::atomic::AtomicU64>> = targets.iter().map(|_| Arc::default()).collect();
        let tasks = targets
            .into_iter()
            .zip(served.clone())
            .map(|((name, client, url), count)| {
                let stopped = stopped.clone();
                let task = tokio::spawn(async move {
                    let mut stats = TrafficStats::default();
                    while !*stopped.borrow() {
                        let at = started.elapsed().as_millis();
                        let begun = Instant::now();
                        let sent = client.get(&url).timeout(timeout).send().await;
                        match sent {
                            Ok(r) if r.status() == 200 => match r.bytes().await {
                                Ok(_) => {
                                    stats.ok += 1;
                                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    stats.slowest_ok = stats.slowest_ok.max(begun.elapsed());
                                }
                                Err(e) => stats.failed.push((at, format!("body: {e}"))),
                            },
                            Ok(r) => stats.failed.push((at, format!("HTTP {}", r.status()))),
                            Err(e) => stats.failed.push((at, format!("{e:?}"))),
                        }
                        tokio::time::sleep(every).await;
                    }
                    stats
                });
                (name, task)
            })
            .collect();
        Self { started, stop, tasks, served }
    }

    /// Waits until every target has been served `n` requests: traffic is flowing.
    pub async fn wait_flowing(&self, n: u64) {
        wait_for(Duration::from_secs(10), &format!("{n} requests served to every target"), || async {
            self.served.iter().all(|c| c.load(std::sync::atomic::Ordering::Relaxed) >= n).then_some(())
        })
        .await;
    }

    /// Milliseconds since the traffic started (the clock of [`TrafficStats::failed`]).
    pub fn now_ms(&self) -> u128 {
        self.started.elapsed().as_millis()
    }

    /// Stops and returns each target's stats.
    pub async fn stop(self) -> Vec<(String, TrafficStats)> {
        let _ = self.stop.send(true);
        let mut out = Vec::new();
        for (name, task) in self.tasks {
            out.push((name, tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap()));
        }
        out
    }
}

/// `meridian demo` as a user starts it, on a free run of ports.
pub struct Demo {
    pub proc: Process,
    /// The coordinator's port; region `i` (from 1) is at `port + i`.
    pub port: u16,
    /// Everything it printed by the time it was ready.
    pub printed: String,
}

impl Demo {
    /// Starts `meridian demo --port P <args>` where P and the `regions` ports
    /// after it are free, and waits until it prints its URLs.
    pub async fn start(dir: &Path, regions: u16, args: &[String]) -> Self {
        let port = (0..50)
            .map(|_| free_port())
            .find(|p| (1..=regions).all(|i| TcpListener::bind(("127.0.0.1", p + i)).is_ok()))
            .unwrap();
        let mut all = vec!["demo".to_owned(), "--port".into(), port.to_string()];
        all.extend(args.iter().cloned());
        let mut proc = Process::spawn("demo", dir, &all);
        let log = proc.log.clone();
        let printed = wait_for(Duration::from_secs(120), "the demo to print its URLs", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let exited = proc.child.try_wait().unwrap();
            assert!(exited.is_none(), "demo exited: {exited:?}\n{text}");
            async move { text.contains("Ctrl-C stops everything").then_some(text) }
        })
        .await;
        Self { proc, port, printed }
    }
}

#[tokio::test]
#[should_panic(expected = "an attempt hung")]
async fn wait_for_bounds_an_attempt_that_hangs() {
    wait_for(Duration::from_millis(200), "an answer that never comes", std::future::pending::<Option<()>>).await;
}

/// A TLS client trusting the CA in `ca` (PEM), offering `alpn`.
pub fn tls_connector(ca: &std::path::Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let mut config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

#[test]
#[should_panic(expected = "sleep ran past 500ms and was killed")]
fn a_child_running_past_its_limit_is_killed_and_named() {
    output_within(Command::new("sleep").arg("30"), Duration::from_millis(500), "sleep");
}
