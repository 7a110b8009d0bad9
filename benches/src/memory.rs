//! A proxy's resident memory with many idle keep-alive connections.

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Memory {
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub per_connection_bytes: f64,
}

/// Resident set size of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// Opens `n` connections to `port`, each served one request (so each is an
/// established HTTP keep-alive connection), holds them idle, and measures.
pub async fn idle_connections(pid: u32, port: u16, n: usize) -> Result<Memory> {
    raise_fd_limit(n as u64 + 1024)?;
    let before = rss_kib(pid)?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n").await?;
        let mut buf = [0u8; 512];
        let read = s.read(&mut buf).await?;
        anyhow::ensure!(read > 0 && buf.starts_with(b"HTTP/1.1 200"), "the proxy did not answer /healthz");
        conns.push(s);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = rss_kib(pid)?;
    drop(conns);
    Ok(Memory {
        connections: n,
        rss_before_kib: before,
        rss_after_kib: after,
        per_connection_bytes: (after.saturating_sub(before) * 1024) as f64 / n as f64,
    })
}

pub fn raise_fd_limit(want: u64) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < want {
        anyhow::ensure!(hard >= want, "need {want} open files, the hard limit is {hard}");
        setrlimit(Resource::RLIMIT_NOFILE, want.max(soft), hard)?;
    }
    Ok(())
}
