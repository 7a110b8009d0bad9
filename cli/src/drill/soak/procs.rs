//! What each of the deployment's processes holds: resident memory (and of
//! it, the process's own anonymous memory), open file descriptors and tasks
//! (threads), read from `/proc` for the processes the demo names.

use crate::faults::Process;
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
    /// Mesh links the process holds (a proxy's, from its `/metrics`): each
    /// a connection that lasts as long as both relays do, whose number
    /// follows which peers this relay has needed, not a leak.
    #[serde(default)]
    pub links: u64,
}

/// One reading of every process, by name.
pub type Sample = BTreeMap<String, Usage>;

pub async fn read(processes: &[Process]) -> Sample {
    let mut sample = Sample::new();
    for p in processes {
        let Some(mut u) = usage(p.pid) else { continue };
        if let Some(url) = &p.metrics_url {
            u.links = mesh_links(url).await.unwrap_or(0);
        }
        sample.insert(p.name.clone(), u);
    }
    sample
}

/// A proxy's `meridian_relay_mesh_links` gauge.
async fn mesh_links(url: &str) -> Option<u64> {
    let text = reqwest::Client::new()
        .get(format!("{url}/metrics"))
        .timeout(std::time::Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|l| l.strip_prefix("meridian_relay_mesh_links ")?.trim().parse().ok())
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
        links: 0,
    })
}

/// The processes, or region replicas taken together, holding more
/// descriptors in `now` than in `baseline`, beside their mesh links (see
/// [`Usage::links`]). A region's replicas are one count: the agent's tunnel
/// and pooled connections move between them (a rolling restart moves the
/// tunnel to the other replica for good). A process started again since the
/// baseline (a new pid) is not compared: its connection pools and links are
/// those of a new process, and it has not lived the whole run (see [`restarted`]).
pub fn above_baseline(now: &Sample, baseline: &Sample) -> Vec<String> {
    #[derive(Default)]
    struct Family<'a> {
        names: Vec<&'a str>,
        now: (u64, u64),
        base: (u64, u64),
    }
    let mut families: BTreeMap<&str, Family> = BTreeMap::new();
    for (name, u) in now {
        let Some(b) = baseline.get(name).filter(|b| b.pid == u.pid) else { continue };
        let family = families.entry(family(name)).or_default();
        family.names.push(name);
        family.now = (family.now.0 + u.fds, family.now.1 + u.links);
        family.base = (family.base.0 + b.fds, family.base.1 + b.links);
    }
    let beside = |(fds, links): (u64, u64)| fds.saturating_sub(links);
    families
        .into_iter()
        .filter(|(_, f)| beside(f.now) > beside(f.base))
        .map(|(family, f)| {
            let who = if f.names.len() > 1 { format!("{family} ({})", f.names.join(" + ")) } else { family.to_owned() };
            let links = |(_, l): (u64, u64)| if l > 0 { format!(" ({l} of them mesh links)") } else { String::new() };
            format!(
                "{who}: {} descriptors idle{}, {} at the baseline{}",
                f.now.0,
                links(f.now),
                f.base.0,
                links(f.base)
            )
        })
        .collect()
}

/// The processes started again since the baseline, which [`above_baseline`] leaves out.
pub fn restarted(now: &Sample, baseline: &Sample) -> Vec<String> {
    now.iter().filter(|(name, u)| baseline.get(*name).is_some_and(|b| b.pid != u.pid)).map(|(n, _)| n.clone()).collect()
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
        let usage = |fds| Usage { pid: 1, rss_kib: 1, anon_kib: 1, fds, tasks: 1, links: 0 };
        fds.iter().map(|(n, f)| (n.to_string(), usage(*f))).collect()
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
        // Two more mesh links (a peer it needed during a fault): no leak; one more descriptor beside them is.
        let mut linked = moved.clone();
        linked.get_mut("proxy-sydney").unwrap().fds += 2;
        linked.get_mut("proxy-sydney").unwrap().links += 2;
        assert_eq!(above_baseline(&linked, &baseline), Vec::<String>::new());
        linked.get_mut("proxy-sydney").unwrap().fds += 1;
        assert_eq!(
            above_baseline(&linked, &baseline),
            ["proxy-sydney (proxy-sydney + proxy-sydney-2): 78 descriptors idle (2 of them mesh links), 75 at the baseline"]
        );
        // A process started again is a new process: not held to the old one's baseline, and named.
        let mut restarted_agent = moved.clone();
        *restarted_agent.get_mut("agent").unwrap() = Usage { pid: 2, fds: 25, ..baseline["agent"] };
        assert_eq!(above_baseline(&restarted_agent, &baseline), Vec::<String>::new());
        assert_eq!(restarted(&restarted_agent, &baseline), ["agent"]);
    }
}
