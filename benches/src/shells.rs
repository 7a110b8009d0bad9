//! Many idle shells on one agent: `count` SSH sessions through region
//! sydney (each running `cat`, waiting for input), the agent's
//! memory before and after, per shell (the shells' own processes are not
//! the agent's and are not counted), and whether the agent stays
//! responsive: the time to open a new session and run `echo`, before and
//! with the shells open.

use crate::stack::Stack;
use anyhow::{Context, Result};
use meridian_cli::shell::dial::{Dialer, Workspace};
use meridian_regions::client::{Client, Credential};
use meridian_regions::stream::StreamKind;
use russh::ChannelMsg;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Shells {
    pub count: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub per_shell_bytes: f64,
    /// A new session running `echo`, with none open and with `count` open.
    pub echo_idle_ms: f64,
    pub echo_loaded_ms: f64,
    /// How long opening them all took.
    pub open_s: f64,
}

/// Opens `count` idle shells on agent `main` and measures.
pub async fn idle(stack: &Stack, count: usize) -> Result<Shells> {
    let http = meridian_regions::client::http_client(None).map_err(anyhow::Error::msg)?;
    let client = Client::new(stack.api.base(), Credential::Session(stack.api.session().clone()), http);
    let workspace: Workspace = "bench.main".parse().map_err(anyhow::Error::msg)?;
    let dialer = Arc::new(Dialer::new(client, workspace, StreamKind::Ssh, Some("sydney"), None).await?);
    let echo_idle = echo(&dialer).await?;
    let rss_before = crate::memory::rss_kib(stack.agent_pid)?;
    let start = Instant::now();
    let mut open = Vec::with_capacity(count);
    for i in 0..count {
        let (ssh, _carrier) = meridian_cli::shell::client::connect(dialer.clone())
            .await
            .with_context(|| format!("idle shell {i} of {count}"))?;
        let channel = ssh.channel_open_session().await?;
        // `cat`, waiting on its input: an idle session without the machine's
        // login profile (this one's runs pyenv's rehash under a lock, which
        // 1,000 login shells at once queue on for minutes).
        channel.exec(true, "cat").await?;
        open.push((ssh, channel));
    }
    let open_s = start.elapsed().as_secs_f64();
    // Let the shells start and the agent settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = crate::memory::rss_kib(stack.agent_pid)?;
    let echo_loaded = echo(&dialer).await?;
    for (ssh, channel) in open {
        let _ = channel.eof().await;
        let _ = ssh.disconnect(russh::Disconnect::ByApplication, "", "").await;
    }
    Ok(Shells {
        count,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        per_shell_bytes: (rss_after.saturating_sub(rss_before) * 1024) as f64 / count.max(1) as f64,
        echo_idle_ms: echo_idle.as_secs_f64() * 1e3,
        echo_loaded_ms: echo_loaded.as_secs_f64() * 1e3,
        open_s,
    })
}

/// A new session running `echo ok`, from dialing to its output.
async fn echo(dialer: &Arc<Dialer>) -> Result<Duration> {
    let start = Instant::now();
    let (ssh, _carrier) = meridian_cli::shell::client::connect(dialer.clone()).await?;
    let mut channel = ssh.channel_open_session().await?;
    channel.exec(true, "echo ok").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, channel.wait()).await.context("echo took over 30 s")? {
            Some(ChannelMsg::Data { data }) if data.starts_with(b"ok") => break,
            Some(_) => {}
            None => anyhow::bail!("the echo session closed without output"),
        }
    }
    let took = start.elapsed();
    let _ = ssh.disconnect(russh::Disconnect::ByApplication, "", "").await;
    Ok(took)
}

impl Shells {
    pub fn markdown(&self) -> String {
        format!(
            "\n### Idle shells on one agent\n\n- {} idle sessions (each running `cat` on pipes, through sydney), opened in {:.1} s: \
             the agent's RSS {} KiB → {} KiB, **{:.0} bytes per session** (the commands' own processes not counted).\n\
             - A new session running `echo`: {:.1} ms with none open, **{:.1} ms** with {} open.\n",
            self.count,
            self.open_s,
            self.rss_before_kib,
            self.rss_after_kib,
            self.per_shell_bytes,
            self.echo_idle_ms,
            self.echo_loaded_ms,
            self.count
        )
    }
}
