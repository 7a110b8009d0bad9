//! CPU time per process, from `/proc/<pid>/stat` (user + system, all threads),
//! with its child processes' (nginx's master forks the worker that serves).

use anyhow::{Context, Result};
use std::time::Duration;

/// A process on a target's path, by its role in the row ("proxy", "agent", ...).
#[derive(Debug, Clone)]
pub struct Process {
    pub role: &'static str,
    pub pid: u32,
}

/// CPU time `pid` and its child processes have used so far.
pub fn used(pid: u32) -> Result<Duration> {
    let mut total = own(pid)?;
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        total += own(child).unwrap_or_default();
    }
    Ok(total)
}

fn own(pid: u32) -> Result<Duration> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid} is gone"))?;
    // Fields after the command name (which may hold spaces): state is the first, utime the 12th, stime the 13th.
    let after = stat.rsplit_once(')').context("unreadable /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 =
        fields.get(11).context("no utime")?.parse::<u64>()? + fields.get(12).context("no stime")?.parse::<u64>()?;
    Ok(Duration::from_secs_f64(ticks as f64 / ticks_per_second()))
}

fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Every process's CPU time now, to subtract from a later [`snapshot`].
pub fn snapshot(procs: &[Process]) -> Result<Vec<Duration>> {
    procs.iter().map(|p| used(p.pid)).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let start = super::used(std::process::id()).unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_millis(300);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(super::used(std::process::id()).unwrap() > start, "300 ms of spinning used no CPU time");
    }
}
