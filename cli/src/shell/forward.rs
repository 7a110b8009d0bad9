//! `meridian port-forward`: listens on loopback ports and carries each
//! connection to a port on the workspace's loopback, each as its own
//! session through the nearest region (one that survives its region's death).

use super::dial::{run_session, Dialer, Workspace};
use anyhow::{bail, Context, Result};
use meridian_regions::client::Client;
use meridian_regions::stream::StreamKind;
use std::path::PathBuf;
use std::sync::Arc;

/// Most ports one `--tcp` range may name.
const MAX_RANGE: usize = 1024;

/// `LOCAL[:REMOTE]`, each a port or a range `A-B` of the same length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// (local, remote) pairs.
    pub pairs: Vec<(u16, u16)>,
}

fn range(s: &str) -> Result<Vec<u16>, String> {
    let port = |p: &str| p.parse::<u16>().map_err(|_| format!("{p:?} is not a port"));
    match s.split_once('-') {
        None => Ok(vec![port(s)?]),
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b || usize::from(b - a) >= MAX_RANGE {
                return Err(format!("{s:?}: a range goes up, by at most {MAX_RANGE} ports"));
            }
            Ok((a..=b).collect())
        }
    }
}

impl std::str::FromStr for Spec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (local, remote) = match s.split_once(':') {
            Some((l, r)) => (range(l)?, range(r)?),
            None => {
                let ports = range(s)?;
                (ports.clone(), ports)
            }
        };
        if local.len() != remote.len() {
            return Err(format!("{s:?}: the local and remote ranges differ in length"));
        }
        if remote.contains(&0) {
            return Err(format!("{s:?}: the remote port must be from 1 to 65535"));
        }
        Ok(Spec { pairs: local.into_iter().zip(remote).collect() })
    }
}

/// Listens on every local port of `specs` until `shutdown`.
pub async fn run(
    client: Client,
    workspace: Workspace,
    specs: &[Spec],
    region: Option<String>,
    ca_cert: Option<PathBuf>,
    ready_file: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let mut listening = Vec::new();
    let mut bound = Vec::new();
    for (local, remote) in specs.iter().flat_map(|s| s.pairs.iter().copied()) {
        let kind = StreamKind::Tcp(remote);
        let dialer =
            Dialer::new(client.clone(), workspace.clone(), kind, region.as_deref(), ca_cert.as_deref()).await?;
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, local))
            .await
            .with_context(|| format!("cannot listen on 127.0.0.1:{local}"))?;
        let addr = listener.local_addr()?;
        eprintln!("Forwarding {addr} -> port {remote} in {} (agent {})", workspace.name, dialer.agent());
        bound.push(serde_json::json!({ "listen": addr.to_string(), "remote_port": remote }));
        listening.push(tokio::spawn(serve(listener, Arc::new(dialer))));
    }
    if listening.is_empty() {
        bail!("no port to forward");
    }
    if let Some(path) = ready_file {
        let ready = serde_json::json!({ "pid": std::process::id(), "forwards": bound });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&ready)?)?;
        std::fs::rename(&tmp, &path)?;
    }
    shutdown.await;
    for l in listening {
        l.abort();
    }
    Ok(())
}

/// Carries every connection `listener` accepts as its own session.
async fn serve(listener: tokio::net::TcpListener, dialer: Arc<Dialer>) {
    while let Ok((tcp, peer)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let dialer = dialer.clone();
        tokio::spawn(async move {
            let (r, w) = tcp.into_split();
            if let Err(e) = run_session(&dialer, r, w).await {
                eprintln!("meridian: a forwarded connection from {peer} failed: {e:#}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Spec;

    #[test]
    fn specs() {
        let pairs = |s: &str| s.parse::<Spec>().map(|s| s.pairs);
        assert_eq!(pairs("5432"), Ok(vec![(5432, 5432)]));
        assert_eq!(pairs("15432:5432"), Ok(vec![(15432, 5432)]));
        assert_eq!(pairs("0:5432"), Ok(vec![(0, 5432)]));
        assert_eq!(pairs("8000-8002"), Ok(vec![(8000, 8000), (8001, 8001), (8002, 8002)]));
        assert_eq!(pairs("9000-9001:8000-8001"), Ok(vec![(9000, 8000), (9001, 8001)]));
        for bad in ["", "x", "5432:", "1:0", "8002-8000", "9000-9002:8000-8001", "70000", "1-2000"] {
            assert!(pairs(bad).is_err(), "{bad}");
        }
    }
}
