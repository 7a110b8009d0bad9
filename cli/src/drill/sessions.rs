//! What a shell and a forwarded TCP stream saw during a drill, beside the
//! HTTP traffic: a `meridian ssh` session printing numbered lines, and a
//! `meridian port-forward` connection echoing numbered blocks through a
//! service in the workspace (the demo's workspace is this machine), both
//! through the region under fault first (they resume elsewhere when it
//! dies). Each is checked for lost, doubled or reordered data and timed for
//! its longest stall.

use anyhow::{Context, Result};
use serde::Serialize;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// How often each probe sends: a line, a block.
const EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Serialize)]
pub struct SessionReport {
    /// `ssh` or `tcp`.
    pub kind: &'static str,
    /// The region it went through first.
    pub first_region: Option<String>,
    /// Numbered lines or blocks that arrived.
    pub received: u64,
    /// Numbers missing from what arrived, and numbers that came again or out of order.
    pub lost: u64,
    pub doubled_or_reordered: u64,
    /// The longest time between two arrivals.
    pub longest_stall_ms: u64,
    /// Why the probe could not run or ended early.
    pub error: Option<String>,
}

/// A probe under way.
pub struct Probe {
    kind: &'static str,
    first_region: Option<String>,
    child: tokio::process::Child,
    /// Ends the probe's input: the session then ends cleanly (EOF both ways),
    /// so the agent holds nothing for it afterwards.
    end_input: Option<tokio::sync::oneshot::Sender<()>>,
    arrivals: tokio::task::JoinHandle<Result<Vec<(Instant, u64)>>>,
}

/// What the probes need: the coordinator, a session, the workspace
/// (`OWNER/WORKSPACE.AGENT`) and the region to go through first.
pub struct Target {
    pub url: String,
    pub session: meridian_regions::token::Secret,
    pub workspace: String,
    pub region: Option<String>,
}

impl Target {
    /// `meridian SUB --url … [--region …] ARGS…`, signed in with the drill's session.
    fn command(&self, sub: &str, args: &[&str]) -> Result<tokio::process::Command> {
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.arg(sub).arg("--url").arg(&self.url).env("MERIDIAN_SESSION_TOKEN", self.session.expose());
        if let Some(r) = &self.region {
            cmd.args(["--region", r]);
        }
        cmd.args(args).stdin(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
        Ok(cmd)
    }
}

/// `OWNER/WORKSPACE.AGENT` of an app label `{app}--{agent}--{workspace}--{user}`.
pub fn workspace_of(app: &str) -> Option<String> {
    let parts: Vec<&str> = app.split("--").collect();
    let [_, agent, workspace, user] = parts[..] else { return None };
    Some(format!("{user}/{workspace}.{agent}"))
}

/// An ssh session printing a number every [`EVERY`] until its input ends.
pub fn ssh(target: &Target) -> Result<Probe> {
    let script = "(i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); echo $i; sleep 0.02; done) & cat >/dev/null; kill $!";
    let mut cmd = target.command("ssh", &[&target.workspace, "--", script])?;
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().context("cannot start meridian ssh")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let stdin = child.stdin.take().context("no stdin")?;
    let (end_input, ended) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = ended.await;
        drop(stdin);
    });
    let arrivals = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut got = Vec::new();
        while let Some(line) = lines.next_line().await? {
            got.push((Instant::now(), line.trim().parse().unwrap_or(0)));
        }
        Ok(got)
    });
    Ok(Probe { kind: "ssh", first_region: target.region.clone(), child, end_input: Some(end_input), arrivals })
}

/// A port-forward connection to an echo service on this machine, sending a
/// numbered 8-byte block every [`EVERY`] and reading the echoes.
pub async fn tcp(target: &Target, dir: &std::path::Path) -> Result<Probe> {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let echo_port = echo.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let ready = dir.join(format!("drill-forward-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let spec = format!("0:{echo_port}");
    let ready_arg = ready.display().to_string();
    let mut cmd = target.command("port-forward", &[&target.workspace, "--tcp", &spec, "--ready-file", &ready_arg])?;
    let child = cmd.stdout(Stdio::null()).spawn().context("cannot start meridian port-forward")?;
    let start = Instant::now();
    let local = loop {
        if let Some(addr) = std::fs::read(&ready).ok().and_then(|b| {
            let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
            Some(v["forwards"][0]["listen"].as_str()?.to_owned())
        }) {
            break addr;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "port-forward did not listen within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Read once; left behind it would litter the temporary directory.
    let _ = std::fs::remove_file(&ready);
    let tcp = tokio::net::TcpStream::connect(&local).await?;
    let (mut r, mut w) = tcp.into_split();
    let (end_input, mut ended) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        for n in 1u64.. {
            if w.write_all(&n.to_be_bytes()).await.is_err() {
                return;
            }
            tokio::select! {
                _ = &mut ended => break,
                () = tokio::time::sleep(EVERY) => {}
            }
        }
        let _ = w.shutdown().await;
    });
    let arrivals = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut block = [0u8; 8];
        while r.read_exact(&mut block).await.is_ok() {
            got.push((Instant::now(), u64::from_be_bytes(block)));
        }
        Ok(got)
    });
    Ok(Probe { kind: "tcp", first_region: target.region.clone(), child, end_input: Some(end_input), arrivals })
}

impl Probe {
    /// Ends the probe's input, lets the session end (what is in flight
    /// arrives, then the end of stream), and judges what arrived.
    pub async fn finish(mut self) -> SessionReport {
        let early = self.child.try_wait().ok().flatten().map(|s| format!("it exited early ({s})"));
        if let Some(end) = self.end_input.take() {
            let _ = end.send(());
        }
        let arrivals = tokio::time::timeout(Duration::from_secs(15), self.arrivals).await;
        // `meridian ssh` exits once its session ended; `port-forward` runs until stopped.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.kill().await;
        let arrivals = match arrivals {
            Ok(Ok(Ok(a))) => a,
            Ok(Ok(Err(e))) => return self_report(self.kind, self.first_region, Some(format!("{e:#}"))),
            _ => return self_report(self.kind, self.first_region, Some("its reader did not finish".into())),
        };
        let mut report = judge(self.kind, self.first_region, &arrivals);
        report.error = early.or(report.error);
        report
    }
}

fn self_report(kind: &'static str, first_region: Option<String>, error: Option<String>) -> SessionReport {
    SessionReport { kind, first_region, received: 0, lost: 0, doubled_or_reordered: 0, longest_stall_ms: 0, error }
}

/// Lost, doubled or reordered numbers and the longest gap in `arrivals`.
fn judge(kind: &'static str, first_region: Option<String>, arrivals: &[(Instant, u64)]) -> SessionReport {
    let mut report = self_report(kind, first_region, None);
    report.received = arrivals.len() as u64;
    let mut expected = 1;
    for (_, n) in arrivals {
        if *n < expected {
            report.doubled_or_reordered += 1;
        } else {
            report.lost += n - expected;
            expected = n + 1;
        }
    }
    report.longest_stall_ms =
        arrivals.windows(2).map(|w| w[1].0.duration_since(w[0].0).as_millis() as u64).max().unwrap_or(0);
    if arrivals.is_empty() {
        report.error = Some("nothing arrived".into());
    }
    report
}

#[cfg(test)]
mod tests {
    #[test]
    fn workspaces_of_app_labels() {
        assert_eq!(super::workspace_of("code--main--dev--demo").as_deref(), Some("demo/dev.main"));
        assert_eq!(super::workspace_of("code--dev--demo"), None);
    }

    #[test]
    fn gaps_and_repeats_are_counted() {
        let t = std::time::Instant::now();
        let at = |ms: u64, n: u64| (t + std::time::Duration::from_millis(ms), n);
        let r = super::judge("ssh", None, &[at(0, 1), at(20, 2), at(1500, 4), at(1520, 4), at(1540, 3), at(1560, 5)]);
        assert_eq!((r.received, r.lost, r.doubled_or_reordered, r.longest_stall_ms), (6, 1, 2, 1480));
        let clean = super::judge("tcp", None, &[at(0, 1), at(20, 2), at(40, 3)]);
        assert_eq!((clean.lost, clean.doubled_or_reordered, clean.longest_stall_ms), (0, 0, 20));
    }
}
