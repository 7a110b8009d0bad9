//! Bulk TCP to a workspace port, one connection at a time, each way: a
//! service in the workspace takes (or sends) a number of MiB, reached
//! directly, through rathole forwarding that port (the reference: rathole is
//! made for raw TCP), and through `meridian port-forward` (client → region
//! → agent, as a resumable session). Rounds interleave the targets; each
//! row states MiB/s and the CPU milliseconds per MiB of every process on
//! its path (the service runs in this process and is not counted).

use crate::cpu::Process;
use crate::stack::{free_port, spawn, Proc, Stack};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1 << 20;
/// What each transfer carries: 256 MiB (4 MiB in a quick run).
const SIZE_MIB: u64 = 256;
const QUICK_MIB: u64 = 4;
/// Longest a transfer may take.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(120);

/// One row: a direction through one target, over all rounds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BulkRow {
    pub workload: &'static str,
    pub target: &'static str,
    pub mib_per_sec: f64,
    /// CPU milliseconds per MiB of each process on the path, by role.
    pub cpu_ms_per_mib: Vec<(String, f64)>,
}

struct BulkTarget {
    name: &'static str,
    port: u16,
    procs: Vec<Process>,
}

/// The workspace's service: `U` then bytes until EOF → it answers the count
/// (8 bytes); `D` and a count (8 bytes) → it sends that many bytes and
/// closes; `E` → it echoes every byte (a keystroke's round trip).
pub(crate) async fn service() -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                let mut op = [0u8; 1];
                if r.read_exact(&mut op).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 256 << 10];
                if op[0] == b'E' {
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    return;
                }
                if op[0] == b'U' {
                    let mut total = 0u64;
                    while let Ok(n @ 1..) = r.read(&mut buf).await {
                        total += n as u64;
                    }
                    let _ = w.write_all(&total.to_be_bytes()).await;
                } else {
                    let mut len = [0u8; 8];
                    if r.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut left = u64::from_be_bytes(len);
                    while left > 0 {
                        let n = left.min(buf.len() as u64) as usize;
                        if w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                }
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(port)
}

/// Sends `bytes` to the service through `port`; fails unless all arrived.
async fn upload(port: u16, bytes: u64) -> Result<()> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let (mut r, mut w) = tcp.into_split();
    w.write_all(b"U").await?;
    let chunk = vec![0x5au8; 256 << 10];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    w.shutdown().await?;
    let mut got = [0u8; 8];
    r.read_exact(&mut got).await.context("no count from the service")?;
    if u64::from_be_bytes(got) != bytes {
        bail!("the service received {} of {bytes} bytes", u64::from_be_bytes(got));
    }
    Ok(())
}

/// Receives `bytes` from the service through `port`; fails unless all came.
async fn download(port: u16, bytes: u64) -> Result<()> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let (mut r, mut w) = tcp.into_split();
    w.write_all(b"D").await?;
    w.write_all(&bytes.to_be_bytes()).await?;
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    while let n @ 1.. = r.read(&mut buf).await? {
        total += n as u64;
    }
    if total != bytes {
        bail!("received {total} of {bytes} bytes");
    }
    Ok(())
}

/// Keystrokes: one byte at a time through `port`, each waiting for its echo
/// (`count` of them, after one untimed); the median and 99th percentile round trip.
pub(crate) async fn echo(port: u16, count: usize) -> Result<(Duration, Duration)> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(b"E").await?;
    let mut byte = [0u8; 1];
    // One round trip untimed: the first waits for the path to open (a
    // session through a region, a tunnel's connection), not a keystroke.
    tcp.write_all(b"w").await?;
    tcp.read_exact(&mut byte).await?;
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let start = Instant::now();
        tcp.write_all(&[(i % 251) as u8]).await?;
        tcp.read_exact(&mut byte).await?;
        if byte[0] != (i % 251) as u8 {
            bail!("echo {i} came back as {}", byte[0]);
        }
        times.push(start.elapsed());
    }
    times.sort();
    Ok((times[times.len() / 2], times[times.len() * 99 / 100]))
}

/// Echo round trips per target: (target, median, p99), interleaved over `rounds`.
pub async fn keystrokes(
    ports: &[(&'static str, u16)],
    rounds: u32,
    count: usize,
) -> Result<Vec<(&'static str, Duration, Duration)>> {
    let mut all: Vec<(Vec<Duration>, Vec<Duration>)> = vec![(Vec::new(), Vec::new()); ports.len()];
    for _ in 0..rounds {
        for (i, (name, port)) in ports.iter().enumerate() {
            let (p50, p99) = tokio::time::timeout(TRANSFER_DEADLINE, echo(*port, count))
                .await
                .with_context(|| format!("keystrokes through {name} took too long"))??;
            all[i].0.push(p50);
            all[i].1.push(p99);
        }
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    Ok(ports.iter().zip(all).map(|((name, _), (p50, p99))| (*name, median(p50), median(p99))).collect())
}

/// Runs the bulk rows against `stack`'s agent on sydney.
pub async fn run(stack: &Stack, meridian: &Path, rounds: u32, quick: bool) -> Result<Bulk> {
    let size = if quick { QUICK_MIB } else { SIZE_MIB } * MIB;
    let service_port = service().await?;
    let dir = stack.log_dir();
    let p = |role: &'static str, pid: u32| Process { role, pid };
    // rathole forwarding the service's port (its own pair, one worker thread
    // each), its configuration in a directory of its own: rathole reloads a
    // configuration file that changes, so writing over the stack's would
    // move the stack's rathole onto this service (and this row onto it).
    let rathole_dir = dir.join("bulk-rathole");
    std::fs::create_dir_all(&rathole_dir)?;
    let rathole_port = free_port()?;
    let rathole =
        crate::rathole::start(&crate::stack::rathole_bin(), &rathole_dir, free_port()?, rathole_port, service_port)?;
    // `meridian port-forward` through sydney, where agent `main` is attached.
    let session = stack.api.session().expose().to_owned();
    let how =
        Forward { meridian, dir, url: stack.api.base(), session: &session, workspace: "bench.main", region: "sydney" };
    let (forward, forward_port) = port_forward(&how, service_port).await?;
    let targets = [
        BulkTarget { name: "direct", port: service_port, procs: vec![] },
        BulkTarget {
            name: "rathole",
            port: rathole_port,
            procs: vec![p("rathole server", rathole.server.pid()), p("rathole client", rathole.client.pid())],
        },
        BulkTarget {
            name: "meridian port-forward",
            port: forward_port,
            procs: vec![p("port-forward", forward.pid()), p("proxy", stack.sydney_pid), p("agent", stack.agent_pid)],
        },
    ];
    // rathole's tunnel comes up after its client dials in: wait for one transfer.
    crate::stack::wait_until("rathole's tunnel", Duration::from_secs(30), || async {
        tokio::time::timeout(Duration::from_secs(5), upload(rathole_port, 1)).await.is_ok_and(|r| r.is_ok())
    })
    .await?;
    let mut rows = Vec::new();
    for (workload, up) in [("bulk TCP upload, 1 connection", true), ("bulk TCP download, 1 connection", false)] {
        let mut totals: Vec<(Duration, Vec<Duration>)> =
            targets.iter().map(|t| (Duration::ZERO, vec![Duration::ZERO; t.procs.len()])).collect();
        for _ in 0..rounds {
            for (i, t) in targets.iter().enumerate() {
                let before = crate::cpu::snapshot(&t.procs)?;
                let start = Instant::now();
                let transfer = async {
                    if up {
                        upload(t.port, size).await
                    } else {
                        download(t.port, size).await
                    }
                };
                tokio::time::timeout(TRANSFER_DEADLINE, transfer)
                    .await
                    .with_context(|| format!("{workload} through {} took over {TRANSFER_DEADLINE:?}", t.name))?
                    .with_context(|| format!("{workload} through {}", t.name))?;
                totals[i].0 += start.elapsed();
                let after = crate::cpu::snapshot(&t.procs)?;
                for (j, (b, a)) in before.iter().zip(&after).enumerate() {
                    totals[i].1[j] += a.saturating_sub(*b);
                }
            }
        }
        let mib = (size / MIB) as f64 * f64::from(rounds);
        for (t, (elapsed, cpu)) in targets.iter().zip(totals) {
            let cpu_ms_per_mib =
                t.procs.iter().zip(cpu).map(|(p, d)| (p.role.to_owned(), d.as_secs_f64() * 1e3 / mib)).collect();
            rows.push(BulkRow {
                workload,
                target: t.name,
                mib_per_sec: mib / elapsed.as_secs_f64().max(1e-9),
                cpu_ms_per_mib,
            });
        }
    }
    let count = if quick { 100 } else { 2000 };
    let ports: Vec<(&'static str, u16)> = targets.iter().map(|t| (t.name, t.port)).collect();
    let echoes = keystrokes(&ports, rounds, count)
        .await?
        .into_iter()
        .map(|(target, p50, p99)| Echo { target, p50_ms: p50.as_secs_f64() * 1e3, p99_ms: p99.as_secs_f64() * 1e3 })
        .collect();
    drop((rathole, forward));
    Ok(Bulk { rows, echoes })
}

/// The bulk rows and the keystroke round trips.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Bulk {
    pub rows: Vec<BulkRow>,
    pub echoes: Vec<Echo>,
}

/// A keystroke's round trip (one byte out, its echo back) through a target.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Echo {
    pub target: &'static str,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// How to run `meridian port-forward`: through which coordinator, as whom,
/// into which workspace, through which region.
pub(crate) struct Forward<'a> {
    pub meridian: &'a Path,
    pub dir: &'a Path,
    pub url: &'a str,
    pub session: &'a str,
    pub workspace: &'a str,
    pub region: &'a str,
}

/// `meridian port-forward WORKSPACE --tcp 0:PORT --region REGION`; its
/// process and the local port it listens on.
pub(crate) async fn port_forward(how: &Forward<'_>, port: u16) -> Result<(Proc, u16)> {
    let name = format!("port-forward-{}", how.region);
    let ready = how.dir.join(format!("{name}.json"));
    let args: Vec<String> = [
        "port-forward",
        how.workspace,
        "--region",
        how.region,
        "--tcp",
        &format!("0:{port}"),
        "--url",
        how.url,
        "--ready-file",
        &ready.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let proc = spawn(how.meridian, &args, how.dir, &name, &[("MERIDIAN_SESSION_TOKEN", how.session)])?;
    let start = Instant::now();
    loop {
        if let Ok(bytes) = std::fs::read(&ready) {
            let v: serde_json::Value = serde_json::from_slice(&bytes)?;
            let listen = v["forwards"][0]["listen"].as_str().context("no forward in the ready file")?;
            let port: u16 = listen.rsplit_once(':').context("bad address")?.1.parse()?;
            return Ok((proc, port));
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("port-forward did not listen within 60 s; see {}", how.dir.join(format!("{name}.log")).display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The rows as a Markdown table, with each target's ratio to rathole's, and
/// the keystroke round trips with what each adds to a direct connection's.
pub fn markdown(bulk: &Bulk) -> String {
    use std::fmt::Write;
    let rows = &bulk.rows;
    let mut out = String::new();
    if !bulk.echoes.is_empty() {
        let direct = bulk.echoes.iter().find(|e| e.target == "direct").map_or(0.0, |e| e.p50_ms);
        let _ = writeln!(out, "\n### Keystroke echo (1 byte and back), 1 connection\n\n| target | p50 ms | p99 ms | added to direct (p50) |\n|---|---|---|---|");
        for e in &bulk.echoes {
            let _ = writeln!(out, "| {} | {:.3} | {:.3} | {:.3} ms |", e.target, e.p50_ms, e.p99_ms, e.p50_ms - direct);
        }
    }
    let mut workloads: Vec<&str> = rows.iter().map(|r| r.workload).collect();
    workloads.dedup();
    for w in workloads {
        let rows: Vec<&BulkRow> = rows.iter().filter(|r| r.workload == w).collect();
        let rathole = rows.iter().find(|r| r.target == "rathole").map(|r| r.mib_per_sec);
        let _ = writeln!(out, "\n### {w}\n\n| target | MiB/s | vs rathole | CPU ms per MiB |\n|---|---|---|---|");
        for r in rows {
            let ratio = match rathole {
                Some(base) if r.target != "rathole" && base > 0.0 => format!("{:.2}x", r.mib_per_sec / base),
                _ => "-".into(),
            };
            let cpu: Vec<String> = r.cpu_ms_per_mib.iter().map(|(p, ms)| format!("{p} {ms:.2}")).collect();
            let total: f64 = r.cpu_ms_per_mib.iter().map(|(_, ms)| ms).sum();
            let cpu =
                if cpu.is_empty() { "-".to_owned() } else { format!("{} (**{total:.2}** in all)", cpu.join(", ")) };
            let _ = writeln!(out, "| {} | {:.0} | {ratio} | {cpu} |", r.target, r.mib_per_sec);
        }
    }
    out
}
