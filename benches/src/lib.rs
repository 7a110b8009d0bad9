//! Meridian's load benchmark: the same load generator (`wrk`, and a
//! WebSocket echo client) against a direct connection to the app, nginx in
//! front of it, and Meridian, interleaved round by round (A B C A B C) so
//! drift on the machine hits all alike; ratios come from the same run.
//!
//! - [`stack`]: starts everything; [`nginx`]: its config; [`api`]: coordinator calls.
//! - [`wrk`]: running wrk and reading its report; [`ws`]: WebSocket round trips.
//! - [`memory`]: a proxy's memory with many idle connections.
//! - [`bulk`]: bulk TCP to a workspace port: direct, rathole, `meridian port-forward`.
//! - [`scp`]: scp each way to the workspace's SSH server: through rathole, through `meridian ssh --stdio`.
//! - [`audit`]: audit-log and connection-log pages at a million records each, per filter.
//! - [`geography`]: keystrokes through `meridian demo`'s simulated geography, region by region.
//! - [`shells`]: many idle shells on one agent: its memory per shell, and whether it stays responsive.
//! - [`control_plane`]: the coordinator with 1,000 replicas and 10,000 agents, simulated.
//! - [`mesh_search`]: part of it: what searching a 100-relay mesh for a moved agent costs.

pub mod api;
pub mod audit;
pub mod bare;
pub mod bare_proxy;
pub mod bulk;
pub mod control_plane;
pub mod cpu;
pub mod geography;
pub mod memory;
pub mod mesh_search;
pub mod nginx;
pub mod rathole;
pub mod scp;
pub mod shells;
pub mod stack;
pub mod wrk;
pub mod ws;

use anyhow::{bail, Result};
use stack::{Stack, Target};
use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;
use wrk::Figures;

pub struct Options {
    /// One short round per row: proves the harness works, measures nothing.
    pub quick: bool,
    /// Only the workloads whose name contains this (e.g. `small GET`); the
    /// idle-connection memory rows are measured either way.
    pub only: Option<String>,
    /// The `meridian` binary to benchmark (a release build for real figures).
    pub meridian: PathBuf,
    /// A binary serving bare pingora (`meridian-bench` itself, see [`bare`]):
    /// the floor row. Without it the row is left out.
    pub bare_pingora: Option<PathBuf>,
}

/// One row: a workload through one target, over all rounds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub workload: &'static str,
    pub target: &'static str,
    #[serde(flatten)]
    pub figures: Figures,
    /// CPU microseconds per request of each process on the path, by role.
    pub cpu_us_per_request: Vec<(String, f64)>,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub rounds: u32,
    pub seconds_per_round: u64,
    pub rows: Vec<Row>,
    /// Meridian's proxy with idle connections.
    pub memory: memory::Memory,
    /// Bare pingora with as many (the floor), if it ran.
    pub bare_memory: Option<memory::Memory>,
    /// Bulk TCP to a workspace port and keystroke round trips (see [`bulk`]).
    pub bulk: bulk::Bulk,
    /// Idle shells on one agent (see [`shells`]).
    pub shells: Option<shells::Shells>,
    /// Keystrokes through the demo's geography (see [`geography`]).
    pub geography: Option<Vec<geography::Region>>,
    /// Audit-log and connection-log pages at a million records each (see [`audit`]).
    pub audit: Option<Vec<audit::Page>>,
}

/// The rows Meridian is compared with (the ratio columns); every other row
/// gets its ratios to them.
const REFERENCES: [&str; 3] = ["direct", "nginx", "nginx+rathole"];

const MIB: usize = 1024 * 1024;

pub async fn run(opts: &Options) -> Result<Report> {
    let (rounds, secs, idle) = if opts.quick { (1, 1, 200) } else { (3, 10, 10_000) };
    memory::raise_fd_limit(idle as u64 + 4096)?;
    let mut stack = Stack::start(&opts.meridian, opts.bare_pingora.as_deref()).await?;
    let script = wrk::script(stack.log_dir())?;
    let duration = Duration::from_secs(secs);
    let with = |t: &Target, extra: &[(&str, &str)]| {
        let mut t = t.clone();
        t.headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        t
    };
    let size = MIB.to_string();
    // Each workload's targets: the references, Meridian, then the floor rows.
    let floors = stack.floors.clone();
    let published = |f: &crate::stack::Floors, tls: bool| -> Vec<Target> {
        f.published.iter().map(|(plain, secure)| if tls { secure.clone() } else { plain.clone() }).collect()
    };
    let plain_floors: Vec<Target> =
        floors.iter().flat_map(|f| [f.bare.clone(), f.hop.clone()].into_iter().chain(published(f, false))).collect();
    let tls_floors: Vec<Target> = floors
        .iter()
        .flat_map(|f| [f.bare_tls.clone(), f.hop_tls.clone()].into_iter().chain(published(f, true)))
        .collect();
    let plain: Vec<Target> = [&stack.direct, &stack.nginx, &stack.rathole, &stack.meridian]
        .into_iter()
        .cloned()
        .chain(plain_floors)
        .collect();
    let tls: Vec<Target> =
        [&stack.direct_tls, &stack.nginx_tls, &stack.nginx_tls12, &stack.rathole_tls, &stack.meridian_tls]
            .into_iter()
            .cloned()
            .chain(tls_floors)
            .collect();
    let workloads: Vec<(&'static str, u32, Vec<Target>)> = vec![
        (
            "small GET, keep-alive, 32 connections",
            32,
            plain.iter().cloned().chain([stack.meridian_unlogged.clone(), stack.rathole_forwarding.clone()]).collect(),
        ),
        (
            "1 MiB downloads, 8 connections",
            8,
            plain.iter().map(|t| with(t, &[("x-sample-body-bytes", &size)])).collect(),
        ),
        (
            "new TLS connection per request, 8 connections",
            8,
            tls.iter().map(|t| with(t, &[("Connection", "close")])).collect(),
        ),
        (
            "cross-region hop, 32 connections",
            32,
            vec![stack.direct.clone(), stack.meridian.clone(), stack.meridian_hop.clone()],
        ),
    ];
    let wanted = |name: &str| opts.only.as_deref().is_none_or(|only| name.contains(only));
    let mut rows = Vec::new();
    for (workload, connections, targets) in workloads.iter().filter(|w| wanted(w.0)) {
        let mut runs = vec![Vec::new(); targets.len()];
        for _ in 0..rounds {
            for (i, t) in targets.iter().enumerate() {
                let t = stack.fresh(t).await?;
                let load =
                    wrk::Load { url: t.url.clone(), headers: t.headers.clone(), connections: *connections, duration };
                runs[i].push(measured(&t, wrk::run(&load, &script)).await?);
            }
        }
        rows.extend(targets.iter().zip(runs).map(|(t, runs)| row(workload, t, &runs)));
    }
    let ws_name = "WebSocket echo round trips, 1 connection";
    // Plus the least one and two processes on the path cost (the hop, two hops).
    let process_floors = floors.iter().flat_map(|f| [f.hop_alone.clone(), f.two_hops.clone()]);
    let ws_targets = if wanted(ws_name) { plain.into_iter().chain(process_floors).collect() } else { Vec::new() };
    let mut runs = vec![Vec::new(); ws_targets.len()];
    for _ in 0..rounds {
        for (i, t) in ws_targets.iter().enumerate() {
            let t = stack.fresh(t).await?;
            runs[i].push(measured(&t, ws::echo(&t, duration)).await?);
        }
    }
    rows.extend(ws_targets.iter().zip(runs).map(|(t, runs)| row(ws_name, t, &runs)));
    let mut bulk = if wanted("bulk TCP") {
        bulk::run(&stack, &opts.meridian, rounds, opts.quick).await?
    } else {
        bulk::Bulk::default()
    };
    if wanted("bulk scp") {
        bulk.rows.extend(scp::run(&stack, &opts.meridian, opts.bare_pingora.as_deref(), rounds, opts.quick).await?);
    }
    let mut log_pages = Vec::new();
    if wanted("audit log pages") {
        log_pages.extend(audit::pages(&stack, opts.quick).await?);
    }
    if wanted("connection log pages") {
        log_pages.extend(audit::connection_pages(&stack, opts.quick).await?);
    }
    let audit = (!log_pages.is_empty()).then_some(log_pages);
    let geography = if wanted("keystroke echo through the demo") {
        Some(geography::keystrokes(&opts.meridian, opts.quick).await?)
    } else {
        None
    };
    let shells = if wanted("idle shells") {
        Some(shells::idle(&stack, if opts.quick { 20 } else { 1000 }).await?)
    } else {
        None
    };
    let memory = memory::idle_connections(stack.sydney_pid, stack.sydney_port, idle).await?;
    let bare_memory = match &floors {
        Some(f) => Some(memory::idle_connections(f.bare_pid, f.bare_port, idle).await?),
        None => None,
    };
    // Every process on a row's path does work for each request: one that used
    // no CPU time did not serve the row (something else answered on its port).
    // A quick round is too short for that to tell (CPU time comes in 10 ms ticks).
    for r in rows.iter().filter(|r| r.figures.requests > 0 && !opts.quick) {
        if let Some((role, _)) = r.cpu_us_per_request.iter().find(|(_, us)| *us == 0.0) {
            bail!("{} through {}: the {role} used no CPU time, so it did not serve them", r.workload, r.target);
        }
    }
    let failed: u64 = rows.iter().map(|r| r.figures.errors).sum();
    let report = Report { rounds, seconds_per_round: secs, rows, memory, bare_memory, bulk, shells, geography, audit };
    if failed > 0 {
        let logs = stack.keep_logs()?;
        println!("{}", report.markdown());
        let mut why = String::new();
        for r in report.rows.iter().filter(|r| r.figures.errors > 0) {
            let _ = write!(why, "\n  {} through {}: {:?}", r.workload, r.target, r.figures.causes);
        }
        bail!("{failed} failed requests (every process's log is kept in {}):{why}", logs.display());
    }
    Ok(report)
}

/// One round of `load` with the CPU time of every process on `t`'s path.
async fn measured(t: &Target, load: impl std::future::Future<Output = Result<Figures>>) -> Result<Measured> {
    let before = cpu::snapshot(&t.procs)?;
    let figures = load.await?;
    let after = cpu::snapshot(&t.procs)?;
    let cpu = t.procs.iter().zip(before.iter().zip(&after)).map(|(_, (b, a))| a.saturating_sub(*b)).collect();
    Ok(Measured { figures, cpu })
}

#[derive(Debug, Clone)]
struct Measured {
    figures: Figures,
    cpu: Vec<Duration>,
}

fn row(workload: &'static str, t: &Target, runs: &[Measured]) -> Row {
    let figures = wrk::merge(&runs.iter().map(|m| m.figures.clone()).collect::<Vec<_>>());
    let requests = figures.requests.max(1) as f64;
    let cpu_us_per_request = t
        .procs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let total: Duration = runs.iter().map(|m| m.cpu[i]).sum();
            (p.role.to_owned(), total.as_secs_f64() * 1e6 / requests)
        })
        .collect();
    Row { workload, target: t.name, figures, cpu_us_per_request }
}

/// Starts the stack, prints how to load each target, waits for Ctrl-C.
pub async fn hold(meridian: &std::path::Path, bare: Option<&std::path::Path>) -> Result<()> {
    let stack = Stack::start(meridian, bare).await?;
    print_commands(&stack).await?;
    println!(
        "sydney proxy pid {}, its agent pid {}; logs in {}; SIGHUP prints the Meridian rows again with fresh \
         tokens (they live 5 minutes; an expired one sends every request to the coordinator); Ctrl-C or SIGTERM stops",
        stack.sydney_pid,
        stack.agent_pid,
        stack.log_dir().display()
    );
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut hup) = (signal(SignalKind::terminate())?, signal(SignalKind::hangup())?);
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => return Ok(r?),
            _ = term.recv() => return Ok(()),
            _ = hup.recv() => {
                for t in [&stack.meridian, &stack.meridian_hop, &stack.meridian_tls] {
                    print_command(&stack.fresh(t).await?);
                }
            }
        }
    }
}

/// Every target's `wrk` command, the Meridian ones with a fresh token.
async fn print_commands(stack: &Stack) -> Result<()> {
    let targets = [
        &stack.direct,
        &stack.nginx,
        &stack.rathole,
        &stack.rathole_forwarding,
        &stack.nginx_tls,
        &stack.nginx_tls12,
        &stack.meridian,
        &stack.meridian_hop,
        &stack.meridian_tls,
    ];
    let floors = stack.floors.iter().flat_map(|f| {
        [&f.bare, &f.hop, &f.bare_tls, &f.hop_tls, &f.hop_alone, &f.two_hops]
            .into_iter()
            .chain(f.published.iter().flat_map(|(p, t)| [p, t]))
    });
    for t in targets.into_iter().chain(floors) {
        print_command(&stack.fresh(t).await?);
    }
    Ok(())
}

fn print_command(t: &Target) {
    let headers: String = t.headers.iter().map(|(k, v)| format!(" -H '{k}: {v}'")).collect();
    println!("{}: wrk -t1 -c32 -d10s --latency{headers} {}", t.name, t.url);
}

impl Report {
    /// Markdown: one table per workload, with Meridian's ratios to the others
    /// and each process's CPU time per request.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "{} round(s) of {} s per row, interleaved; percentiles of the merged rounds.\n",
            self.rounds, self.seconds_per_round
        );
        let mut workloads: Vec<&str> = self.rows.iter().map(|r| r.workload).collect();
        workloads.dedup();
        for w in workloads {
            let rows: Vec<&Row> = self.rows.iter().filter(|r| r.workload == w).collect();
            let _ = writeln!(
                out,
                "\n### {w}\n\n| target | requests/s | p50 ms | p99 ms | failed | vs nginx+rathole | vs nginx | vs direct | CPU µs per request |\n|---|---|---|---|---|---|---|---|---|"
            );
            let rps = |name: &str| rows.iter().find(|r| r.target == name).map(|r| r.figures.requests_per_sec);
            for r in &rows {
                let ratio = |other: Option<f64>| match other {
                    Some(o) if !REFERENCES.contains(&r.target) && o > 0.0 => {
                        format!("{:.2}x", r.figures.requests_per_sec / o)
                    }
                    _ => "-".into(),
                };
                let mb = if w.starts_with("1 MiB") {
                    format!(" ({:.0} MiB/s)", r.figures.requests_per_sec)
                } else {
                    String::new()
                };
                let cpu: Vec<String> = r.cpu_us_per_request.iter().map(|(p, us)| format!("{p} {us:.1}")).collect();
                let total: f64 = r.cpu_us_per_request.iter().map(|(_, us)| us).sum();
                let _ = writeln!(
                    out,
                    "| {} | {:.0}{mb} | {:.2} | {:.2} | {} | {} | {} | {} | {} (**{total:.1}** in all) |",
                    r.target,
                    r.figures.requests_per_sec,
                    r.figures.p50_ms,
                    r.figures.p99_ms,
                    r.figures.errors,
                    ratio(rps("nginx+rathole")),
                    ratio(rps("nginx")),
                    ratio(rps("direct")),
                    cpu.join(", "),
                );
            }
        }
        out.push_str(&bulk::markdown(&self.bulk));
        if let Some(s) = &self.shells {
            out.push_str(&s.markdown());
        }
        if let Some(g) = &self.geography {
            out.push_str(&geography::markdown(g));
        }
        if let Some(a) = &self.audit {
            out.push_str(&audit::markdown(a));
        }
        let _ = writeln!(out, "\n### Idle keep-alive connections\n");
        for (who, m) in [("Meridian's proxy", Some(&self.memory)), ("bare pingora", self.bare_memory.as_ref())] {
            let Some(m) = m else { continue };
            let _ = writeln!(
                out,
                "- {who}: {} connections, RSS {} KiB → {} KiB, **{:.0} bytes per connection**.",
                m.connections, m.rss_before_kib, m.rss_after_kib, m.per_connection_bytes
            );
        }
        out
    }
}
