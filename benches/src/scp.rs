//! scp of one file each way (OpenSSH's `scp`, over SFTP) to the workspace's
//! SSH server, through rathole forwarding that server's port and through
//! Meridian (`meridian ssh --stdio --region sydney` as OpenSSH's
//! `ProxyCommand`, as `config-ssh` writes it). Both rows reach the same SSH
//! server, the agent's own (russh): for rathole's row it listens on a port
//! of its own in a process of its own (`meridian-bench --ssh-server`), since
//! the agent's listens on none. Host keys are checked in both rows.
//!
//! CPU per MiB: each process on the path, and "scp + ssh" for the client
//! side (scp, ssh, and in Meridian's row the `ProxyCommand` it runs),
//! measured as the finished children's CPU time.

use crate::bulk::BulkRow;
use crate::cpu::Process;
use crate::stack::{free_port, spawn_ready, Stack};
use anyhow::{bail, Context, Result};
use meridian_regions::api::StreamTokenRequest;
use meridian_regions::client::{Client, Credential};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// The file each copy carries: 128 MiB (4 MiB in a quick run).
const SIZE_MIB: u64 = 128;
const QUICK_MIB: u64 = 4;
/// Longest one copy may take.
const COPY_DEADLINE: Duration = Duration::from_secs(180);

/// `meridian-bench --ssh-server KEY READY`: the agent's SSH server on a port
/// of its own (127.0.0.1, port 0, reported in READY), until killed.
pub fn serve(key: &Path, ready: &Path) -> Result<()> {
    let key = meridian_agent::ssh::host_key::load_or_create(key).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let (listen, accepting) = listen(key).await?;
        let report = meridian_regions::ready::Ready {
            pid: std::process::id(),
            listen,
            access_url: None,
            relay: None,
            internal: None,
        };
        meridian_regions::ready::write(ready, &report)?;
        accepting.await;
        Ok(())
    })
}

/// The agent's SSH server on a loopback port of its own: where it listens,
/// and the loop accepting connections (until the listener fails).
async fn listen(
    key: russh::keys::PrivateKey,
) -> Result<(std::net::SocketAddr, impl std::future::Future<Output = ()> + Send + 'static)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = meridian_agent::ssh::Server::new(key);
    let accepting = async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            server.serve(tcp);
        }
    };
    Ok((addr, accepting))
}

/// The scp rows (upload, download) for rathole and Meridian, interleaved
/// over `rounds`. `bench` is this benchmark's binary, which serves the SSH
/// server behind rathole; without it (the test suite builds none) the
/// server runs in this process, and its CPU time is not counted.
pub async fn run(
    stack: &Stack,
    meridian: &Path,
    bench: Option<&Path>,
    rounds: u32,
    quick: bool,
) -> Result<Vec<BulkRow>> {
    let size = if quick { QUICK_MIB } else { SIZE_MIB } * MIB;
    let dir = stack.log_dir().join("scp");
    std::fs::create_dir_all(&dir)?;
    // The workspace's SSH server on a port, and rathole forwarding it.
    let key = dir.join("ssh_host_ed25519_key");
    let host_key = meridian_agent::ssh::host_key::load_or_create(&key).map_err(anyhow::Error::msg)?;
    let public = meridian_agent::ssh::host_key::public_line(&host_key);
    let (server, ssh_port) = match bench {
        Some(bench) => {
            let args = ["--ssh-server".to_owned(), key.display().to_string()];
            let (server, ready) = spawn_ready(bench, &args, &dir, "ssh-server", &[]).await?;
            (Some(server), ready.listen.port())
        }
        None => (None, in_process(host_key).await?),
    };
    let rathole_port = free_port()?;
    let rathole = crate::rathole::start(&crate::stack::rathole_bin(), &dir, free_port()?, rathole_port, ssh_port)?;
    // The agent's published host key, for Meridian's row.
    let http = meridian_regions::client::http_client(None).map_err(anyhow::Error::msg)?;
    let client = Client::new(stack.api.base(), Credential::Session(stack.api.session().clone()), http);
    let owner = client.me().await?.username;
    let request = StreamTokenRequest { agent: Some("main".into()), target: "ssh".into() };
    let agent_key =
        client.stream_token(&owner, "bench", &request).await?.host_key.context("the agent published no host key")?;
    let config = ssh_config(&dir, meridian, stack.api.base(), rathole_port, &public, &agent_key)?;
    let env = [
        ("MERIDIAN_SESSION_TOKEN", stack.api.session().expose()),
        ("MERIDIAN_CONFIG_DIR", &*dir.display().to_string()),
    ];
    let file = dir.join("up.bin");
    std::fs::write(&file, (0..size).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<u8>>())?;
    let p = |role: &'static str, pid: u32| Process { role, pid };
    let targets = [
        ("rathole", "rathole-ssh", {
            let mut procs = vec![p("rathole server", rathole.server.pid()), p("rathole client", rathole.client.pid())];
            procs.extend(server.as_ref().map(|s| p("SSH server", s.pid())));
            procs
        }),
        ("meridian ssh", "meridian-ssh", vec![p("proxy", stack.sydney_pid), p("agent", stack.agent_pid)]),
    ];
    // rathole's tunnel comes up after its client dials in.
    crate::stack::wait_until("rathole's tunnel to the SSH server", Duration::from_secs(30), || async {
        let probe = [file.display().to_string(), format!("rathole-ssh:{}", dir.join("probe").display())];
        copy(&config, &env, &[&probe[0], &probe[1]]).await.is_ok()
    })
    .await?;
    let mut rows = Vec::new();
    for (workload, up) in [("bulk scp upload, 1 file", true), ("bulk scp download, 1 file", false)] {
        let mut totals: Vec<(Duration, Duration, Vec<Duration>)> =
            targets.iter().map(|t| (Duration::ZERO, Duration::ZERO, vec![Duration::ZERO; t.2.len()])).collect();
        for _ in 0..rounds {
            for (i, (name, host, procs)) in targets.iter().enumerate() {
                let remote = format!("{host}:{}", dir.join(format!("remote-{host}.bin")).display());
                let local = dir.join(format!("down-{host}.bin"));
                let before = crate::cpu::snapshot(procs)?;
                let children = children_cpu();
                let start = Instant::now();
                let (from, to) =
                    if up { (file.display().to_string(), remote) } else { (remote, local.display().to_string()) };
                copy(&config, &env, &[&from, &to]).await.with_context(|| format!("{workload} through {name}"))?;
                totals[i].0 += start.elapsed();
                totals[i].1 += children_cpu().saturating_sub(children);
                let after = crate::cpu::snapshot(procs)?;
                for (j, (b, a)) in before.iter().zip(&after).enumerate() {
                    totals[i].2[j] += a.saturating_sub(*b);
                }
                let copied = if up { dir.join(format!("remote-{host}.bin")) } else { local };
                if std::fs::metadata(&copied)?.len() != size {
                    bail!("{workload} through {name}: {} is not {size} bytes", copied.display());
                }
            }
        }
        let mib = (size / MIB) as f64 * f64::from(rounds);
        for ((name, _, procs), (elapsed, client, cpu)) in targets.iter().zip(totals) {
            let mut cpu_ms_per_mib: Vec<(String, f64)> = vec![("scp + ssh".into(), client.as_secs_f64() * 1e3 / mib)];
            cpu_ms_per_mib.extend(procs.iter().zip(cpu).map(|(p, d)| (p.role.to_owned(), d.as_secs_f64() * 1e3 / mib)));
            rows.push(BulkRow {
                workload,
                target: name,
                mib_per_sec: mib / elapsed.as_secs_f64().max(1e-9),
                cpu_ms_per_mib,
            });
        }
    }
    drop((rathole, server));
    Ok(rows)
}

/// The SSH server as a task of this process; its port.
async fn in_process(key: russh::keys::PrivateKey) -> Result<u16> {
    let (addr, accepting) = listen(key).await?;
    tokio::spawn(accepting);
    Ok(addr.port())
}

/// An OpenSSH configuration with both hosts and their known host keys.
fn ssh_config(
    dir: &Path,
    meridian: &Path,
    url: &str,
    rathole_port: u16,
    public: &str,
    agent_key: &str,
) -> Result<std::path::PathBuf> {
    let known = dir.join("known_hosts");
    std::fs::write(&known, format!("[127.0.0.1]:{rathole_port} {public}\nmeridian.bench.main {agent_key}\n"))?;
    let common = format!(
        "  User bench\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n",
        known.display()
    );
    let config = format!(
        "Host rathole-ssh\n  HostName 127.0.0.1\n  Port {rathole_port}\n{common}\n\
         Host meridian-ssh\n  HostName meridian.bench.main\n  HostKeyAlias meridian.bench.main\n  \
         ProxyCommand {} ssh --stdio --region sydney --url {url} bench.main\n{common}",
        meridian.display()
    );
    let path = dir.join("ssh_config");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// `scp -F CONFIG FROM TO`, bounded; fails with what scp said.
async fn copy(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Result<()> {
    let mut cmd = tokio::process::Command::new("scp");
    cmd.arg("-F").arg(config).arg("-q").args(args).envs(env.iter().copied()).kill_on_drop(true);
    cmd.stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(COPY_DEADLINE, cmd.output()).await.context("scp took too long")??;
    if !out.status.success() {
        bail!("scp {args:?}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// CPU time of this process's finished (and waited for) children: scp, and
/// through it ssh and its `ProxyCommand`.
fn children_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000);
        t(u.user_time()) + t(u.system_time())
    })
}
