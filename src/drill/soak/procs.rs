//! What each of the deployment's processes holds: resident memory (and of
//! it, the process's own anonymous memory), open file descriptors and tasks
//! (threads), read from `/proc` for the processes the demo names.

use crate::demo::control::Process;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub pid: u32,
    pub rss_kib: u64,
    /// Anonymous memory (heap, stacks): RSS without the binary's pages, which
    /// the kernel maps in as code runs for the first time and may drop again.
    pub anon_kib: u64,
    pub fds: u64,
    pub tasks: u64,
}

/// One reading of every process, by name.
pub type Sample = BTreeMap<String, Usage>;

pub fn read(processes: &[Process]) -> Sample {
    processes.iter().filter_map(|p| Some((p.name.clone(), usage(p.pid)?))).collect()
}

fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    let count = |dir: &str| std::fs::read_dir(format!("/proc/{pid}/{dir}")).map(|d| d.count() as u64).ok();
    // A process being started (a replica the soak restarts: between exec and
    // its program's first pages) maps no file yet, and reads as a few KiB of
    // memory: no reading of the program it will be.
    if field("RssFile:")? == 0 {
        return None;
    }
    Some(Usage {
        pid,
        rss_kib: field("VmRSS:")?,
        anon_kib: field("RssAnon:")?,
        fds: count("fd")?,
        tasks: count("task")?,
    })
}

/// The processes, or region replicas taken together, holding more
/// descriptors in `now` than in `baseline`. A region's replicas are one
/// count: the agent's tunnel and pooled connections move between them (a
/// rolling restart moves the tunnel to the other replica for good).
pub fn above_baseline(now: &Sample, baseline: &Sample) -> Vec<String> {
    let mut families: BTreeMap<&str, (Vec<&str>, u64, u64)> = BTreeMap::new();
    for (name, u) in now {
        let Some(b) = baseline.get(name) else { continue };
        let family = families.entry(family(name)).or_default();
        family.0.push(name);
        family.1 += u.fds;
        family.2 += b.fds;
    }
    families
        .into_iter()
        .filter(|(_, (_, now, base))| now > base)
        .map(|(family, (names, now, base))| {
            let who = if names.len() > 1 { format!("{family} ({})", names.join(" + ")) } else { family.to_owned() };
            format!("{who}: {now} descriptors idle, {base} at the baseline")
        })
        .collect()
}

/// `proxy-sydney-2` → `proxy-sydney` (the demo names replicas so).
fn family(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(fds: &[(&str, u64)]) -> Sample {
        fds.iter().map(|(n, f)| (n.to_string(), Usage { pid: 1, rss_kib: 1, anon_kib: 1, fds: *f, tasks: 1 })).collect()
    }

    #[test]
    fn a_regions_replicas_count_together_and_other_processes_alone() {
        let baseline = sample(&[("proxy-sydney", 40), ("proxy-sydney-2", 35), ("agent", 20), ("sample-app", 16)]);
        // The agent's tunnel moved from one replica to the other: no leak.
        let moved = sample(&[("proxy-sydney", 39), ("proxy-sydney-2", 36), ("agent", 20), ("sample-app", 16)]);
        assert_eq!(above_baseline(&moved, &baseline), Vec::<String>::new());
        let leaked = sample(&[("proxy-sydney", 40), ("proxy-sydney-2", 36), ("agent", 21), ("sample-app", 16)]);
        assert_eq!(
            above_baseline(&leaked, &baseline),
            [
                "agent: 21 descriptors idle, 20 at the baseline",
                "proxy-sydney (proxy-sydney + proxy-sydney-2): 76 descriptors idle, 75 at the baseline"
            ]
        );
        assert_eq!(family("sample-app"), "sample-app");
    }
}
