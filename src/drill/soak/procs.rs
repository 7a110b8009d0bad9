//! What each of the deployment's processes holds: resident memory, open file
//! descriptors and tasks (threads), read from `/proc` for the processes the
//! demo names.

use crate::demo::control::Process;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub pid: u32,
    pub rss_kib: u64,
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
    Some(Usage { pid, rss_kib: field("VmRSS:")?, fds: count("fd")?, tasks: count("task")? })
}
