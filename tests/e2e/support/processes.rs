//! The processes a test starts: a PostgreSQL cluster, the coordinator, regional
//! proxies, the sample app, agents and `meridian demo`, each killed when dropped.

use super::*;

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

    /// A cluster that also listens on TCP 127.0.0.1 (trusting loopback), as a
    /// workspace's own database would; its TCP port. PostgreSQL cannot
    /// listen on port 0 and report the port: it takes one the kernel just
    /// freed, and another when that one was taken meanwhile (bounded).
    pub async fn start_tcp() -> (Self, u16) {
        let dir = tempfile::Builder::new().prefix("meridian-pg").tempdir().unwrap();
        let mut pg = EmbeddedPostgres::new(dir.path(), PgBinaries::find(None).unwrap()).unwrap();
        pg.set("listen_addresses", "127.0.0.1");
        for attempt in 1..=5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            pg.set_port(port);
            match tokio::task::block_in_place(|| pg.start()) {
                Ok(()) => {
                    pg.ensure_database().await.unwrap();
                    return (Self { pg, _dir: dir }, port);
                }
                Err(e) if attempt < 5 => eprintln!("PostgreSQL on port {port}: {e:#}; another port"),
                Err(e) => panic!("PostgreSQL would not start: {e:#}"),
            }
        }
        unreachable!()
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
        let log = unique_path(dir, name, "log");
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

    /// Waits (bounded) until the process reports the addresses it bound in
    /// `ready_file` (its `--ready-file`); `None` if it exits first.
    pub async fn listening(&mut self, ready_file: &Path) -> Option<Ready> {
        let name = self.name.clone();
        let child = &mut self.child;
        wait_for(Duration::from_secs(60), &format!("{name} to report where it listens"), || {
            let exited = child.try_wait().unwrap().is_some();
            let ready = meridian_regions::ready::read(ready_file);
            async move {
                match ready {
                    Some(r) => Some(Some(r)),
                    None if exited => Some(None),
                    None => None,
                }
            }
        })
        .await
    }
}

/// A path in `dir` no other process of this test run uses: `<name>-<n>.<ext>`.
pub fn unique_path(dir: &Path, name: &str, ext: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!("{name}-{}-{n}.{ext}", std::process::id()))
}

/// `args` with `--ready-file` set to a fresh path in `dir`, which it returns.
fn with_ready_file(args: &mut Vec<String>, dir: &Path, name: &str) -> PathBuf {
    let path = unique_path(dir, name, "ready.json");
    match args.iter().position(|a| a == "--ready-file") {
        Some(at) => args[at + 1] = path.display().to_string(),
        None => args.extend(["--ready-file".to_owned(), path.display().to_string()]),
    }
    path
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
    /// Its arguments, with the addresses it bound (a restart binds them again).
    pub args: Vec<String>,
    pub dir: PathBuf,
    /// What it reported it bound.
    pub ready: Ready,
}

impl Coordinator {
    /// Starts a coordinator on `postgres_url` with the given health interval
    /// (also used as the proxies' heartbeat interval), and waits until it answers.
    pub async fn start(dir: &Path, postgres_url: &str, interval: &str, extra: &[&str]) -> Self {
        let mut args = Self::args(dir, postgres_url, interval);
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_with(dir, args).await
    }

    /// The harness's arguments for a coordinator on a free port (what
    /// [`Coordinator::start`] passes before its extras); replicas in one `dir`
    /// share its secrets key.
    pub fn args(dir: &Path, postgres_url: &str, interval: &str) -> Vec<String> {
        [
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--postgres-url",
            postgres_url,
            "--proxy-health-interval",
            interval,
            "--heartbeat-interval",
            interval,
            "--secrets-key-file",
            &dir.join("secrets.key").to_string_lossy(),
            "--wildcard-access-url",
            "*.primary.localhost:0",
            "--app-timeout",
            "3s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    pub async fn start_with(dir: &Path, args: Vec<String>) -> Self {
        Self::start_bin(BIN, dir, args).await
    }

    /// [`Coordinator::start_with`] of another build of `meridian`.
    pub async fn start_bin(bin: &str, dir: &Path, mut args: Vec<String>) -> Self {
        if !args.iter().any(|a| a == "--data-dir") {
            // The primary region's state (its connection log), kept across restarts.
            args.extend(["--data-dir".to_owned(), state_dir(dir, "coordinator").display().to_string()]);
        }
        let ready_file = with_ready_file(&mut args, dir, "coordinator");
        let mut proc = Process::spawn_bin(bin, "coordinator", dir, &args);
        let ready = match proc.listening(&ready_file).await {
            Some(r) => r,
            None => panic!("coordinator exited before it listened:\n{}", proc.output()),
        };
        ready.pin(&mut args);
        let scheme = if args.iter().any(|a| a == "--tls-cert") { "https" } else { "http" };
        let url = format!("{scheme}://{}", ready.listen);
        let mut c = Self { proc, url, args, dir: dir.to_owned(), ready };
        c.wait_ready().await;
        c
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.ready.listen.port()
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

    /// Starts the same coordinator again (after a kill), on the same addresses.
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

/// A new directory under `dir` for one process's state (`--data-dir`).
pub fn state_dir(dir: &Path, name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!("state-{name}-{n}"))
}

/// A regional proxy on an ephemeral port.
pub struct Proxy {
    pub proc: Process,
    pub url: String,
    /// The port it listens on (0 if it exited before it listened).
    pub port: u16,
    /// What it reported it bound (`None` if it exited before it listened).
    pub ready: Option<Ready>,
    args: Vec<String>,
    dir: PathBuf,
}

impl Proxy {
    /// Spawns a proxy and waits until it listens; it may exit on its own
    /// (e.g. a refused token).
    pub async fn spawn(dir: &Path, coordinator: &str, token: &str, extra: &[&str]) -> Self {
        Self::spawn_named(dir, coordinator, token, "region", extra).await
    }

    /// Spawns a proxy serving apps under `*.{name}.localhost:PORT`.
    pub async fn spawn_named(dir: &Path, coordinator: &str, token: &str, name: &str, extra: &[&str]) -> Self {
        let mut args: Vec<String> = [
            "proxy",
            "--coordinator-url",
            coordinator,
            "--proxy-token",
            token,
            "--listen",
            "127.0.0.1:0",
            "--wildcard-access-url",
            &format!("*.{name}.localhost:0"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Harness defaults, unless the test sets its own; each proxy keeps its
        // state (the connection log) in a directory of its own, across restarts.
        let state = state_dir(dir, name).display().to_string();
        for (flag, value) in [("--drain-timeout", "5s"), ("--app-timeout", "3s"), ("--data-dir", &state)] {
            if !extra.contains(&flag) {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let scheme = if extra.contains(&"--tls-cert") { "https" } else { "http" };
        let ready_file = with_ready_file(&mut args, dir, "proxy");
        let mut proc = Process::spawn("proxy", dir, &args);
        let ready = proc.listening(&ready_file).await;
        if let Some(r) = &ready {
            r.pin(&mut args);
        }
        let port = ready.as_ref().map_or(0, |r| r.listen.port());
        Self { proc, url: format!("{scheme}://127.0.0.1:{port}"), port, ready, args, dir: dir.to_owned() }
    }

    /// Where its relay listens.
    pub fn relay(&self) -> std::net::SocketAddr {
        self.ready.as_ref().and_then(|r| r.relay).expect("the proxy reported its relay")
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
        let mut p = Self::spawn(dir, coordinator, token, &[]).await;
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
        let mut args = vec!["sample-app".to_owned(), "--listen".to_owned(), "127.0.0.1:0".to_owned()];
        args.extend(extra);
        let ready_file = with_ready_file(&mut args, dir, "sample-app");
        let mut proc = Process::spawn("sample-app", dir, &args);
        let Some(ready) = proc.listening(&ready_file).await else {
            panic!("the sample app exited before it listened:\n{}", proc.output())
        };
        Self { proc, port: ready.listen.port() }
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
        // Its SSH host key in the test's directory, not under $HOME (kept across restarts).
        if !extra.contains(&"--host-key-file") {
            args.extend(["--host-key-file".into(), unique_path(dir, "agent-host-key", "key").display().to_string()]);
        }
        Self { proc: Process::spawn("agent", dir, &args), args, dir: dir.to_owned() }
    }

    /// The arguments it was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Starts the same agent again after it died.
    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc = Process::spawn("agent", &self.dir, &self.args);
    }
}

/// `meridian demo` as a user starts it, on ports it picks (`--port 0`).
pub struct Demo {
    pub proc: Process,
    /// The coordinator's port.
    pub port: u16,
    /// Each region's name and the port users reach it on.
    pub regions: Vec<(String, u16)>,
    /// Everything it printed by the time it was ready.
    pub printed: String,
}

impl Demo {
    /// Starts `meridian demo --port 0 <args>` (`args` name its `--data-dir`),
    /// waits until it prints its URLs, and reads where it listens from its
    /// `demo.json`.
    pub async fn start(dir: &Path, args: &[String]) -> Self {
        Self::start_env(dir, args, &[]).await
    }

    /// [`Demo::start`] with these environment variables (its children inherit them).
    pub async fn start_env(dir: &Path, args: &[String], env: &[(&str, &str)]) -> Self {
        let data_dir = args
            .iter()
            .position(|a| a == "--data-dir")
            .map(|at| PathBuf::from(&args[at + 1]))
            .expect("the demo's tests name its --data-dir");
        let mut all = vec!["demo".to_owned(), "--port".into(), "0".into()];
        all.extend(args.iter().cloned());
        let mut proc = Process::spawn_env(BIN, "demo", dir, &all, env);
        let log = proc.log.clone();
        let printed = wait_for(Duration::from_secs(120), "the demo to print its URLs", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let exited = proc.child.try_wait().unwrap();
            assert!(exited.is_none(), "demo exited: {exited:?}\n{text}");
            async move { text.contains("Ctrl-C stops everything").then_some(text) }
        })
        .await;
        let info: Value = serde_json::from_slice(&std::fs::read(data_dir.join("demo.json")).unwrap()).unwrap();
        let port_of = |url: &str| url::Url::parse(url).unwrap().port().unwrap();
        let port = port_of(info["coordinator_url"].as_str().unwrap());
        let regions = info["regions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r[0].as_str().unwrap().to_owned(), port_of(r[1].as_str().unwrap())))
            .collect();
        Self { proc, port, regions, printed }
    }

    /// The port users reach `region` on.
    pub fn port_of(&self, region: &str) -> u16 {
        self.regions.iter().find(|(r, _)| r == region).map(|(_, p)| *p).unwrap_or_else(|| panic!("no region {region}"))
    }
}
