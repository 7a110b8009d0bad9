//! Meridian's load benchmark: the same load generator (`wrk`, and a
//! WebSocket echo client) against a direct connection to the app, nginx in
//! front of it, and Meridian, interleaved round by round (A B C A B C) so
//! drift on the machine hits all alike; ratios come from the same run.
//!
//! - [`stack`]: starts everything; [`nginx`]: its config; [`api`]: coordinator calls.
//! - [`wrk`]: running wrk and reading its report; [`ws`]: WebSocket round trips.
//! - [`memory`]: a proxy's memory with many idle connections.
//! - [`control_plane`]: the coordinator with 1,000 replicas and 10,000 agents, simulated.
//! - [`mesh_search`]: part of it: what searching a 100-relay mesh for a moved agent costs.

pub mod api;
pub mod control_plane;
pub mod memory;
pub mod mesh_search;
pub mod nginx;
pub mod stack;
pub mod wrk;
pub mod ws;

use anyhow::{ensure, Result};
use stack::{Stack, Target};
use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;
use wrk::Figures;

pub struct Options {
    /// One short round per row: proves the harness works, measures nothing.
    pub quick: bool,
    /// The `meridian` binary to benchmark (a release build for real figures).
    pub meridian: PathBuf,
}

/// One row: a workload through one target, averaged over the rounds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub workload: &'static str,
    pub target: &'static str,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub rounds: u32,
    pub seconds_per_round: u64,
    pub rows: Vec<Row>,
    pub memory: memory::Memory,
}

const MIB: usize = 1024 * 1024;

pub async fn run(opts: &Options) -> Result<Report> {
    let (rounds, secs, idle) = if opts.quick { (1, 1, 200) } else { (3, 10, 10_000) };
    memory::raise_fd_limit(idle as u64 + 4096)?;
    let stack = Stack::start(&opts.meridian).await?;
    let duration = Duration::from_secs(secs);
    let with = |t: &Target, extra: &[(&str, &str)]| {
        let mut t = t.clone();
        t.headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        t
    };
    let size = MIB.to_string();
    let workloads: Vec<(&'static str, u32, Vec<Target>)> = vec![
        (
            "small GET, keep-alive, 32 connections",
            32,
            vec![stack.direct.clone(), stack.nginx.clone(), stack.meridian.clone()],
        ),
        (
            "1 MiB downloads, 8 connections",
            8,
            [&stack.direct, &stack.nginx, &stack.meridian]
                .iter()
                .map(|t| with(t, &[("x-sample-body-bytes", &size)]))
                .collect(),
        ),
        (
            "new TLS connection per request, 8 connections",
            8,
            [&stack.direct_tls, &stack.nginx_tls, &stack.meridian_tls]
                .iter()
                .map(|t| with(t, &[("Connection", "close")]))
                .collect(),
        ),
        (
            "cross-region hop, 32 connections",
            32,
            vec![stack.direct.clone(), stack.meridian.clone(), stack.meridian_hop.clone()],
        ),
    ];
    let mut rows = Vec::new();
    for (workload, connections, targets) in &workloads {
        let mut sums = vec![Vec::new(); targets.len()];
        for _ in 0..rounds {
            for (i, t) in targets.iter().enumerate() {
                let t = stack.fresh(t).await?;
                let load =
                    wrk::Load { url: t.url.clone(), headers: t.headers.clone(), connections: *connections, duration };
                sums[i].push(wrk::run(&load).await?);
            }
        }
        rows.extend(targets.iter().zip(sums).map(|(t, runs)| Row { workload, target: t.name, figures: mean(&runs) }));
    }
    let ws_targets = [stack.direct.clone(), stack.nginx.clone(), stack.meridian.clone()];
    let mut sums = vec![Vec::new(); ws_targets.len()];
    for _ in 0..rounds {
        for (i, t) in ws_targets.iter().enumerate() {
            sums[i].push(ws::echo(&stack.fresh(t).await?, duration).await?);
        }
    }
    let ws_name = "WebSocket echo round trips, 1 connection";
    rows.extend(ws_targets.iter().zip(sums).map(|(t, runs)| Row {
        workload: ws_name,
        target: t.name,
        figures: mean(&runs),
    }));
    let memory = memory::idle_connections(stack.sydney_pid, stack.sydney_port, idle).await?;
    // Failed requests are reported, not fatal, except in --quick (a check of the harness).
    if opts.quick {
        for r in &rows {
            let (w, t, n, log) = (r.workload, r.target, r.figures.errors, stack.log_dir().display());
            ensure!(n == 0, "{w} through {t}: {n} failed requests (logs in {log})");
        }
    }
    Ok(Report { rounds, seconds_per_round: secs, rows, memory })
}

/// Starts the stack, prints how to load each target, waits for Ctrl-C.
pub async fn hold(meridian: &std::path::Path) -> Result<()> {
    let stack = Stack::start(meridian).await?;
    for t in [&stack.direct, &stack.nginx, &stack.meridian, &stack.meridian_hop, &stack.meridian_tls] {
        let headers: String = t.headers.iter().map(|(k, v)| format!(" -H '{k}: {v}'")).collect();
        println!("{}: wrk -t1 -c32 -d10s --latency{headers} {}", t.name, t.url);
    }
    println!("sydney proxy pid {}; logs in {}; Ctrl-C or SIGTERM stops", stack.sydney_pid, stack.log_dir().display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// Requests/s and percentiles averaged over rounds; errors summed.
fn mean(runs: &[Figures]) -> Figures {
    let n = runs.len().max(1) as f64;
    Figures {
        requests_per_sec: runs.iter().map(|f| f.requests_per_sec).sum::<f64>() / n,
        p50_ms: runs.iter().map(|f| f.p50_ms).sum::<f64>() / n,
        p99_ms: runs.iter().map(|f| f.p99_ms).sum::<f64>() / n,
        errors: runs.iter().map(|f| f.errors).sum(),
    }
}

impl Report {
    /// Markdown: one table per workload, with Meridian's ratios to the others.
    pub fn markdown(&self) -> String {
        let mut out = format!("{} round(s) of {} s per row, interleaved.\n", self.rounds, self.seconds_per_round);
        let mut workloads: Vec<&str> = self.rows.iter().map(|r| r.workload).collect();
        workloads.dedup();
        for w in workloads {
            let rows: Vec<&Row> = self.rows.iter().filter(|r| r.workload == w).collect();
            let _ = writeln!(out, "\n### {w}\n\n| target | requests/s | p50 ms | p99 ms | failed | requests/s vs nginx | vs direct |\n|---|---|---|---|---|---|---|");
            let rps = |name: &str| rows.iter().find(|r| r.target == name).map(|r| r.figures.requests_per_sec);
            for r in &rows {
                let ratio = |other: Option<f64>| match other {
                    Some(o) if r.target.starts_with("meridian") && o > 0.0 => {
                        format!("{:.2}x", r.figures.requests_per_sec / o)
                    }
                    _ => "-".into(),
                };
                let mb = if w.starts_with("1 MiB") {
                    format!(" ({:.0} MiB/s)", r.figures.requests_per_sec)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "| {} | {:.0}{mb} | {:.2} | {:.2} | {} | {} | {} |",
                    r.target,
                    r.figures.requests_per_sec,
                    r.figures.p50_ms,
                    r.figures.p99_ms,
                    r.figures.errors,
                    ratio(rps("nginx")),
                    ratio(rps("direct"))
                );
            }
        }
        let m = &self.memory;
        let _ = writeln!(
            out,
            "\n### Idle keep-alive connections\n\n{} connections: proxy RSS {} KiB → {} KiB, {:.0} bytes per connection.",
            m.connections, m.rss_before_kib, m.rss_after_kib, m.per_connection_bytes
        );
        out
    }
}
