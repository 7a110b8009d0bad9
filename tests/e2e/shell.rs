//! A workspace's shell and TCP ports through regions (`meridian ssh`,
//! `config-ssh`, `port-forward`), with Debian's OpenSSH client and `psql` as
//! users run them; sessions that outlive the region they run through; and
//! what a region refuses before anything reaches the agent.
//!
//! The "workspace" is this machine: the agent runs the test user's shell,
//! and its loopback is the test's.

use crate::support::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A signed-in CLI for `user` of `m`, its files in `dir`.
struct Cli {
    config_dir: std::path::PathBuf,
    ssh_config: std::path::PathBuf,
}

impl Cli {
    fn login(m: &Mesh, user: &str, dir: &Path) -> Self {
        let cli = Self { config_dir: dir.join("cli"), ssh_config: dir.join("ssh/config") };
        let password = password_of(user);
        let out = cli.run(&["login", &m.coord.url, "--username", user, "--password", &password], 30);
        assert!(out.status.success(), "login: {}", text(&out));
        cli
    }

    fn command(&self, bin: &str) -> Command {
        let mut cmd = Command::new(bin);
        cmd.env("MERIDIAN_CONFIG_DIR", &self.config_dir)
            .env_remove("MERIDIAN_URL")
            .env_remove("MERIDIAN_SESSION_TOKEN")
            .stdin(std::process::Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str], secs: u64) -> std::process::Output {
        output_within(self.command(BIN).args(args), Duration::from_secs(secs), &format!("meridian {args:?}"))
    }

    /// OpenSSH's `ssh` (or `scp`, `sftp`) with the configuration `config-ssh` wrote.
    fn openssh(&self, bin: &str, args: &[&str], secs: u64) -> std::process::Output {
        let mut cmd = self.command(bin);
        cmd.arg("-F").arg(&self.ssh_config).args(args);
        output_within(&mut cmd, Duration::from_secs(secs), &format!("{bin} {args:?}"))
    }

    fn config_ssh(&self) {
        let config = self.ssh_config.display().to_string();
        let out = self.run(&["config-ssh", "--ssh-config", &config], 30);
        assert!(out.status.success(), "config-ssh: {}", text(&out));
    }
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn sha256_file(path: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

/// Two regions, the agent on frankfurt; the admin owns workspace `dev`.
pub(crate) async fn mesh() -> Mesh {
    Mesh::builder()
        .user("bob")
        .region("sydney")
        .region("frankfurt")
        .workspace(|app| json!([{"slug": "code", "port": app}]))
        .agent_on("frankfurt")
        .start()
        .await
}

/// `meridian ssh` and OpenSSH through `config-ssh`: commands and their exit
/// statuses, a PTY, scp of 20 MiB both ways, sftp, `ssh -W` (direct-tcpip)
/// and `ssh -R`; `config-ssh` twice changes nothing; an agent whose host key
/// changed is refused by `ssh` until `config-ssh` runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_scp_sftp_and_forwards_work_through_a_region_with_the_agents_real_host_key() {
    let mut m = mesh().await;
    let dir = m.dir.path().to_owned();
    let cli = Cli::login(&m, "admin", &dir);

    let out = cli.run(&["ssh", "dev", "--", "echo hello $((6*7)); echo oops >&2; exit 7"], 60);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello 42\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), "oops");
    // The region it went through is remembered for the next run (kept until
    // another is clearly nearer: `selection::nearest_first`).
    let choices: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cli.config_dir.join("region.json")).unwrap()).unwrap();
    let chosen = choices[m.coord.url.trim_end_matches('/')].as_str().unwrap_or_default().to_owned();
    assert!(["primary", "sydney", "frankfurt"].contains(&chosen.as_str()), "region.json: {choices}");
    // The connection log has the session, through the region the CLI chose.
    let ssh = logged(&m, "kind=ssh").await;
    assert_eq!((ssh[0]["user"].as_str(), ssh[0]["target"].as_str()), (Some("admin"), Some("ssh")), "{ssh:#?}");
    assert_eq!(ssh[0]["region"].as_str(), Some(chosen.as_str()), "{ssh:#?}");

    // Meridian's own client on a terminal (`script` gives it one): a login
    // shell on a PTY, keystrokes typed, the shell's exit status as its own.
    let mut script = cli.command("script");
    script.args(["-qec", &format!("{BIN} ssh dev"), "/dev/null"]);
    script.stdin(std::fs::File::open(write_file(&dir, "typed", "tty; echo typed-$((6*7)); exit 4\n")).unwrap());
    let out = output_within(&mut script, Duration::from_secs(60), "meridian ssh in script");
    assert!(text(&out).contains("typed-42") && text(&out).contains("/dev/pts/"), "{:?}: {}", out.status, text(&out));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));

    cli.config_ssh();
    let config = std::fs::read_to_string(&cli.ssh_config).unwrap();
    let known = std::fs::read_to_string(cli.ssh_config.with_file_name("meridian_known_hosts")).unwrap();
    assert!(config.contains("Host meridian.dev meridian.dev.main"), "{config}");
    assert!(known.contains("meridian.dev.main ssh-ed25519 "), "{known}");
    cli.config_ssh();
    assert_eq!(std::fs::read_to_string(&cli.ssh_config).unwrap(), config, "config-ssh is not idempotent");

    let out = cli.openssh("ssh", &["meridian.dev", "echo $((6*7)); exit 3"], 60);
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).trim()), (Some(3), "42"), "{}", text(&out));
    // A PTY (through `script`, which gives ssh a terminal).
    let mut script = cli.command("script");
    let ssh = format!("ssh -F {} -tt meridian.dev 'tty; echo TERM=$TERM'", cli.ssh_config.display());
    script.args(["-qec", &ssh, "/dev/null"]);
    let out = output_within(&mut script, Duration::from_secs(60), "ssh -tt in script");
    assert!(text(&out).contains("/dev/pts/") && text(&out).contains("TERM="), "no PTY: {}", text(&out));

    // scp of 20 MiB each way, checked by SHA-256.
    let up = dir.join("up.bin");
    let data: Vec<u8> = (0..20u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(&up, &data).unwrap();
    let (remote, back) = (dir.join("remote.bin"), dir.join("back.bin"));
    let out = cli.openssh("scp", &[up.to_str().unwrap(), &format!("meridian.dev:{}", remote.display())], 120);
    assert!(out.status.success(), "scp up: {}", text(&out));
    let out = cli.openssh("scp", &[&format!("meridian.dev:{}", remote.display()), back.to_str().unwrap()], 120);
    assert!(out.status.success(), "scp down: {}", text(&out));
    assert_eq!(sha256_file(&remote), sha256_file(&up));
    assert_eq!(sha256_file(&back), sha256_file(&up));

    // sftp: a directory made, a file put, renamed, listed and removed.
    let sd = dir.join("sftp-dir");
    let batch = dir.join("batch");
    std::fs::write(
        &batch,
        format!(
            "mkdir {sd}\nput {up} {sd}/a\nrename {sd}/a {sd}/b\nls -l {sd}\nrm {sd}/b\nrmdir {sd}\n",
            sd = sd.display(),
            up = up.display()
        ),
    )
    .unwrap();
    let out = cli.openssh("sftp", &["-b", batch.to_str().unwrap(), "meridian.dev"], 120);
    assert!(out.status.success() && text(&out).contains("20971520"), "sftp: {}", text(&out));
    assert!(!sd.exists(), "sftp's rmdir did not happen");

    // `ssh -W` opens a direct-tcpip channel (as `-L` and VS Code do) to a
    // service in the workspace that answers a line.
    let service = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service_port = service.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let (tcp, _) = service.accept().await.unwrap();
        let (r, mut w) = tcp.into_split();
        let mut line = String::new();
        tokio::io::BufReader::new(r).read_line(&mut line).await.unwrap();
        w.write_all(format!("pong {line}").as_bytes()).await.unwrap();
    });
    let mut direct = cli.command("ssh");
    direct.arg("-F").arg(&cli.ssh_config).args(["-W", &format!("127.0.0.1:{service_port}"), "meridian.dev"]);
    direct.stdin(std::fs::File::open(write_file(&dir, "ping", "ping\n")).unwrap());
    let out = output_within(&mut direct, Duration::from_secs(60), "ssh -W");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pong ping\n", "ssh -W: {}", text(&out));

    let app = m.app.as_ref().unwrap().port;
    // `ssh -R 0:…`: the agent listens in the workspace and carries connections back.
    let mut r = cli.command("ssh");
    // LogLevel INFO: ssh says which port it was given (the managed block quiets it).
    let spec = format!("0:127.0.0.1:{app}");
    r.arg("-F").arg(&cli.ssh_config).args(["-o", "LogLevel=INFO", "-N", "-R", &spec, "meridian.dev"]);
    let err = dir.join("ssh-r.err");
    r.stderr(std::fs::File::create(&err).unwrap());
    let mut forwarding = Killed(r.spawn().unwrap());
    let port: u16 = wait_for(Duration::from_secs(30), "ssh -R to allocate a port", || async {
        let said = std::fs::read_to_string(&err).unwrap_or_default();
        said.split("Allocated port ").nth(1)?.split_whitespace().next()?.parse().ok()
    })
    .await;
    let reply = bounded_client().get(format!("http://127.0.0.1:{port}/reverse")).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    forwarding.0.kill().unwrap();

    // A new host key: plain ssh refuses the agent until config-ssh runs again.
    let old_key: String = known.lines().last().unwrap().split(' ').skip(1).collect::<Vec<_>>().join(" ");
    {
        let agent = m.agent.as_mut().unwrap();
        let key_file = agent_key_file(agent);
        agent.proc.kill();
        std::fs::remove_file(&key_file).unwrap();
        agent.restart();
    }
    let published = wait_for(Duration::from_secs(30), "the agent's new host key", || async {
        let list = m.admin.get("/api/v2/workspaces").await.expect_status(200);
        let key = list["workspaces"][0]["agents"][0]["host_key"].as_str()?.to_owned();
        (key != old_key).then_some(key)
    })
    .await;
    m.admin.wait_agent_on("dev", "frankfurt").await;
    let out = cli.openssh("ssh", &["meridian.dev", "true"], 60);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    assert!(text(&out).contains("Host key verification failed"), "{}", text(&out));
    cli.config_ssh();
    let known_now = std::fs::read_to_string(cli.ssh_config.with_file_name("meridian_known_hosts")).unwrap();
    assert!(known_now.contains(&published), "config-ssh did not write the new key");
    let out = cli.openssh("ssh", &["meridian.dev", "true"], 60);
    assert!(out.status.success(), "{}", text(&out));
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_file(dir: &Path, name: &str, content: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// The `--host-key-file` the harness gave `agent`.
fn agent_key_file(agent: &Agent) -> std::path::PathBuf {
    let args = agent.args();
    let at = args.iter().position(|a| a == "--host-key-file").expect("the harness sets --host-key-file");
    std::path::PathBuf::from(&args[at + 1])
}

/// `port-forward` to the test's real PostgreSQL ("inside the workspace"):
/// `psql` runs a query through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_reaches_a_postgres_in_the_workspace_through_port_forward() {
    let m = mesh().await;
    let dir = m.dir.path().to_owned();
    let cli = Cli::login(&m, "admin", &dir);
    // The workspace's database: a PostgreSQL cluster on a TCP port of its loopback.
    let (_db, db_port) = Postgres::start_tcp().await;
    let ready = dir.join("forward.json");
    let spec = format!("0:{db_port}");
    let mut forward = cli.command(BIN);
    forward.args(["port-forward", "dev", "--tcp", &spec, "--ready-file", ready.to_str().unwrap()]);
    let _forward = Killed(forward.spawn().unwrap());
    let local: String = wait_for(Duration::from_secs(30), "port-forward to listen", || async {
        let ready: Value = serde_json::from_slice(&std::fs::read(&ready).ok()?).ok()?;
        Some(ready["forwards"][0]["listen"].as_str()?.to_owned())
    })
    .await;
    let (host, port) = local.rsplit_once(':').unwrap();
    let mut psql = cli.command("psql");
    psql.args(["-h", host, "-p", port, "-U", "meridian", "-d", "meridian", "-tAc", "select 6 * 7"]);
    let out = output_within(&mut psql, Duration::from_secs(60), "psql through port-forward");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42", "{}", text(&out));
    // psql's connection is one record in the connection log, with its bytes.
    let tcp = logged(&m, "kind=tcp").await;
    let r = &tcp[0];
    assert_eq!((r["user"].as_str(), r["target"].as_str()), (Some("admin"), Some(db_port.to_string().as_str())), "{r}");
    assert!(r["bytes_up"].as_u64() > Some(0) && r["bytes_down"].as_u64() > Some(0), "{r}");
}

/// The records matching `query` once there is one (the region ships each
/// as its session ends, within a second or two).
async fn logged(m: &Mesh, query: &str) -> Vec<Value> {
    wait_for(Duration::from_secs(20), &format!("a connection record matching {query}"), || async {
        let page = m.admin.get(&format!("/api/v2/connection-log?{query}")).await.expect_status(200);
        let entries = page["entries"].as_array()?.clone();
        (!entries.is_empty()).then_some(entries)
    })
    .await
}

/// Nothing but the workspace owner's token for exactly this stream opens
/// it, and what a region refuses says why: another user, an admin (404 at
/// the coordinator), a signed-out session (401), no token (401), a token for another stream, a tampered one,
/// a proxy or agent token in its place (404), no upgrade (400); a session
/// the agent does not hold (410).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_refused_without_the_owners_token_for_exactly_that_stream() {
    let m = mesh().await;
    let bob = m.login("bob").await;
    let reply = bob.post("/api/v2/workspaces/admin/dev/stream-token", json!({"target": "ssh"})).await;
    assert_eq!(reply.status, 404, "another user's workspace: {}", reply.body);
    // An admin is no owner either (without --dangerous-allow-admin-streams).
    let spec = json!({"name": "box", "owner": "bob", "agents": [{"name": "main", "apps": []}]});
    m.admin.post("/api/v2/workspaces", spec).await.expect_status(201);
    let reply = m.admin.post("/api/v2/workspaces/bob/box/stream-token", json!({"target": "ssh"})).await;
    assert_eq!(reply.status, 404, "an admin, for a member's workspace: {}", reply.body);
    assert_eq!(bob.post("/api/v2/workspaces/bob/box/stream-token", json!({"target": "ssh"})).await.status, 200);
    let reply = bob.post("/api/v2/workspaces/bob/box/stream-token", json!({"target": "udp:53"})).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    // A session that ended gets no token.
    bob.post("/api/v2/users/logout", json!({})).await.expect_status(204);
    let reply = bob.post("/api/v2/workspaces/bob/box/stream-token", json!({"target": "ssh"})).await;
    assert_eq!(reply.status, 401, "a signed-out session: {}", reply.body);
    let token = |target: &str| {
        let admin = &m.admin;
        let target = target.to_owned();
        async move {
            let reply = admin.post("/api/v2/workspaces/admin/dev/stream-token", json!({ "target": target })).await;
            reply.expect_status(200)
        }
    };
    let ssh = token("ssh").await;
    assert!(ssh["host_key"].as_str().unwrap().starts_with("ssh-ed25519 "), "{ssh}");
    assert_eq!(ssh["path"], "/@admin/dev.main/ssh");
    let tcp = token(&format!("tcp:{}", m.app.as_ref().unwrap().port)).await;
    let port = m.proxy("sydney").port;
    let open = |path: &str, token: Option<&str>, extra: &str| {
        let token = token.map(|t| format!("Meridian-Stream-Token: {t}\r\n")).unwrap_or_default();
        format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: upgrade\r\nUpgrade: meridian-stream\r\n\
             Meridian-Resume-Session: {}\r\nMeridian-Resume-Received: 0\r\n{token}{extra}\r\n",
            "0123456789abcdef0123456789abcdef"
        )
    };
    let ssh_token = ssh["token"].as_str().unwrap();
    let mut tampered = ssh_token.to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let cases: Vec<(&str, String, u16)> = vec![
        ("no token", open("/@admin/dev.main/ssh", None, ""), 401),
        ("a port's token on the ssh path", open("/@admin/dev.main/ssh", tcp["token"].as_str(), ""), 404),
        ("a tampered token", open("/@admin/dev.main/ssh", Some(&tampered), ""), 404),
        ("a proxy token", open("/@admin/dev.main/ssh", Some(m.token("sydney")), ""), 404),
        ("an agent token", open("/@admin/dev.main/ssh", m.agent_token.as_deref(), ""), 404),
        ("another user's path", open("/@bob/dev.main/ssh", Some(ssh_token), ""), 404),
        (
            "no upgrade",
            format!("GET /@admin/dev.main/ssh HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nMeridian-Stream-Token: {ssh_token}\r\n\r\n"),
            400,
        ),
        ("the agent must be named", open("/@admin/dev/ssh", Some(ssh_token), ""), 400),
        ("a session the agent does not hold", open("/@admin/dev.main/ssh", Some(ssh_token), "").replace("Received: 0", "Received: 5"), 410),
    ];
    for (what, raw, want) in cases {
        assert_eq!(raw_status(port, &raw).await, want, "{what}");
    }
    // The owner's token opens it: the agent switches protocols.
    assert_eq!(raw_status(port, &open("/@admin/dev.main/ssh", Some(ssh_token), "")).await, 101);
}

/// A session carrying numbered lines (`meridian ssh`) and one carrying a
/// checksummed stream each way (`port-forward`) through a region that is
/// SIGKILLed mid-way (the one holding the agent's tunnel, too) and through
/// one that is partitioned: the client resumes through another region with
/// nothing lost or repeated, within 3 s, without signing in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_through_another_region_when_theirs_is_killed_or_partitioned() {
    let mut m = mesh().await;
    let dir = m.dir.path().to_owned();
    // Virginia sits behind a link the test partitions.
    let link = pending_link().await;
    let access = format!("http://{}", link.addr());
    let token = m.admin.create_region("virginia").await;
    let mut virginia = Proxy::spawn_named(&dir, &m.coord.url, &token, "virginia", &["--access-url", &access]).await;
    link.set_upstreams(vec![virginia.ready.as_ref().unwrap().listen]);
    virginia.wait_registered().await;
    m.admin.wait_status("virginia", "ok", Duration::from_secs(10)).await;
    let cli = Cli::login(&m, "admin", &dir);

    // SIGKILL of frankfurt, which holds both the client's path and the agent's tunnel.
    let killed = numbered_lines(&cli, "frankfurt", 1500, || m.take_proxy("frankfurt").proc.kill()).await;
    assert!(killed <= Duration::from_secs(3), "stalled {killed:?} after frankfurt was killed");

    // A partition: virginia stops carrying bytes (no reset, no close).
    let stalled = numbered_lines(&cli, "virginia", 1500, || link.set_mode(meridian_netsim::Mode::Stall)).await;
    assert!(stalled <= Duration::from_secs(3), "stalled {stalled:?} after virginia was partitioned");
    link.set_mode(meridian_netsim::Mode::Pass);

    // port-forward: 24 MiB each way with a checksum, through sydney, killed mid-way.
    let got = checksummed_forward(&cli, &dir, "sydney", || {
        let sydney = m.regions.iter_mut().find(|r| r.name == "sydney").unwrap();
        sydney.replicas[0].proc.kill();
    })
    .await;
    assert!(got, "the forwarded stream arrived changed");
}

/// Runs `meridian ssh --region REGION dev -- <print 1..=N>` and applies
/// `fault` once a few hundred lines arrived; checks every line arrived once,
/// in order, and returns the stall the client reported.
async fn numbered_lines(cli: &Cli, region: &str, n: u32, fault: impl FnOnce()) -> Duration {
    let dir = cli.config_dir.parent().unwrap().to_owned();
    let (out, err) = (dir.join(format!("lines-{region}.out")), dir.join(format!("lines-{region}.err")));
    let mut cmd = cli.command(BIN);
    cmd.env("MERIDIAN_LOG", "meridian_cli=info").args(["ssh", "--region", region, "dev", "--"]);
    cmd.arg(format!("i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo $i; sleep 0.005; done"));
    cmd.stdout(std::fs::File::create(&out).unwrap()).stderr(std::fs::File::create(&err).unwrap());
    let mut child = Killed(cmd.spawn().unwrap());
    wait_for(Duration::from_secs(60), "the first 200 lines", || async {
        (std::fs::read_to_string(&out).unwrap_or_default().lines().count() >= 200).then_some(())
    })
    .await;
    fault();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "meridian ssh through {region} did not finish in 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let said = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(status.success(), "meridian ssh through {region} failed: {said}");
    let lines: Vec<u32> = std::fs::read_to_string(&out).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(lines.len(), n as usize, "lines lost or doubled through {region}");
    assert!(lines.iter().copied().eq(1..=n), "lines out of order through {region}");
    let ms: u64 = said
        .split("stalled_ms=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("the session never resumed through another region: {said}"));
    Duration::from_millis(ms)
}

/// `port-forward` through `region` to a workspace port that sends 24 MiB and
/// hashes what it receives; `fault` once 4 MiB went each way. Whether both
/// directions arrived exactly.
async fn checksummed_forward(cli: &Cli, dir: &Path, region: &str, fault: impl FnOnce()) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 24 << 20;
    let payload = |seed: u32| -> Vec<u8> { (0..SIZE as u32).map(|i| (i.wrapping_mul(seed) >> 7) as u8).collect() };
    let (to_workspace, from_workspace) = (payload(2654435761), payload(40503));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let workspace_port = listener.local_addr().unwrap().port();
    let sent_back = from_workspace.clone();
    // The workspace's service: sends its payload, hashes what arrives, answers the hash after it.
    let service = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = tcp.into_split();
        let send = async move {
            w.write_all(&sent_back).await.unwrap();
            w
        };
        let recv = async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            Sha256::digest(&got)
        };
        let (mut w, hash) = tokio::join!(send, recv);
        w.write_all(hash.as_slice()).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let ready = dir.join(format!("forward-{region}.json"));
    let mut cmd = cli.command(BIN);
    cmd.args(["port-forward", "dev", "--region", region, "--tcp", &format!("0:{workspace_port}")]);
    cmd.args(["--ready-file", ready.to_str().unwrap()]);
    let _forward = Killed(cmd.spawn().unwrap());
    let local: String = wait_for(Duration::from_secs(30), "port-forward to listen", || async {
        let ready: Value = serde_json::from_slice(&std::fs::read(&ready).ok()?).ok()?;
        Some(ready["forwards"][0]["listen"].as_str()?.to_owned())
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(&local).await.unwrap();
    let (mut r, mut w) = tcp.into_split();
    let mut fault = Some(fault);
    let upload = async move {
        for (i, chunk) in to_workspace.chunks(1 << 20).enumerate() {
            w.write_all(chunk).await.unwrap();
            if i == 3 {
                fault_once(&mut fault);
            }
        }
        w.shutdown().await.unwrap();
        to_workspace
    };
    let download = async move {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let (sent, got) =
        tokio::time::timeout(Duration::from_secs(120), async { tokio::join!(upload, download) }).await.expect("stuck");
    service.await.unwrap();
    got.len() == SIZE + 32 && got[..SIZE] == from_workspace[..] && got[SIZE..] == Sha256::digest(&sent)[..]
}

fn fault_once(fault: &mut Option<impl FnOnce()>) {
    if let Some(f) = fault.take() {
        f();
    }
}

/// The web terminal in Chromium (`tests/browser/terminal.js`): through the
/// region the dashboard picked, a command typed and its output read; that
/// region's proxy partitioned (SIGSTOP), then back, picked again and
/// SIGKILLed, while typing goes on (the page moves to another region each
/// time, and each command typed meanwhile runs once); a reload brings the
/// scrollback back; no CSP violation; axe finds nothing serious.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_terminal_survives_its_regions_partition_and_death_and_a_reload_brings_its_scrollback_back() {
    let m = mesh().await;
    let pid = m.proxy("sydney").proc.pid().to_string();
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let url = m.coord.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut node = Command::new("node");
        node.current_dir(&browser_dir).arg("terminal.js");
        node.args([url.as_str(), "admin", ADMIN_PASSWORD, "admin", "dev", "main", "sydney", &pid]);
        output_within(&mut node, Duration::from_secs(240), "node terminal.js")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("web terminal moves: {}", String::from_utf8_lossy(&out.stdout).trim());
}

/// With `--dangerous-allow-admin-streams`, an admin may open a shell in a
/// member's workspace (and a member still may not in another's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_open_members_shells_only_where_the_coordinator_allows_it() {
    let m =
        Mesh::builder().coordinator_args(&["--dangerous-allow-admin-streams"]).user("bob").user("carol").start().await;
    let spec = json!({"name": "box", "owner": "bob", "agents": [{"name": "main", "apps": []}]});
    m.admin.post("/api/v2/workspaces", spec).await.expect_status(201);
    let reply = m.admin.post("/api/v2/workspaces/bob/box/stream-token", json!({"target": "ssh"})).await;
    assert_eq!(reply.expect_status(200)["path"], "/@bob/box.main/ssh");
    let carol = m.login("carol").await;
    assert_eq!(carol.post("/api/v2/workspaces/bob/box/stream-token", json!({"target": "ssh"})).await.status, 404);
}
