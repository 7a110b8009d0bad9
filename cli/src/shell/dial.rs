//! How a client reaches a workspace's shell or port: through the nearest
//! healthy region (the lowest median round trip `regions ping` measures;
//! the last run's choice kept until another is clearly nearer; `--region`
//! first), with a stream token from the coordinator, as a
//! resumable session (`meridian_regions::resume`) that moves to the next
//! region when its own dies.

use anyhow::{bail, Context, Result};
use meridian_regions::api::StreamTokenResponse;
use meridian_regions::client::Client;
use meridian_regions::resume::{self, Endpoint, RECEIVED_HEADER, SESSION_HEADER};
use meridian_regions::stream::{StreamKind, TOKEN_HEADER, UPGRADE_PROTOCOL};
use meridian_regions::tunnel::{dial_upgrade_with, TlsClient};
use std::sync::Mutex;
use std::time::Duration;

/// Pings per region when choosing (after one warm-up).
const PINGS: usize = 3;
/// A token this close to expiry is renewed before a path opens with it.
const RENEW_BEFORE: chrono::Duration = chrono::Duration::seconds(30);
/// How long a session keeps trying regions for a new path before giving up
/// (the agent keeps it for `RESUME_WINDOW`, 5 minutes).
const RESUME_FOR: Duration = Duration::from_secs(120);
/// Pause between two rounds over every region.
const ROUND_PAUSE: Duration = Duration::from_millis(250);

/// `[OWNER/]WORKSPACE[.AGENT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub owner: Option<String>,
    pub name: String,
    pub agent: Option<String>,
}

impl std::str::FromStr for Workspace {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (owner, rest) = match s.split_once('/') {
            Some((o, r)) => (Some(o.to_owned()), r),
            None => (None, s),
        };
        let (name, agent) = match rest.split_once('.') {
            Some((w, a)) => (w.to_owned(), Some(a.to_owned())),
            None => (rest.to_owned(), None),
        };
        let names = [Some(name.as_str()), owner.as_deref(), agent.as_deref()];
        if names.into_iter().flatten().any(|n| meridian_regions::name::Name::parse(n).is_err()) {
            return Err(format!("{s:?}: expected [OWNER/]WORKSPACE[.AGENT], each a name"));
        }
        Ok(Self { owner, name, agent })
    }
}

/// Opens paths for one stream: the token, the regions in order of
/// preference, and the region in use.
pub struct Dialer {
    client: Client,
    owner: String,
    workspace: Workspace,
    kind: StreamKind,
    tls: TlsClient,
    /// (name, access URL), best first.
    regions: Vec<(String, String)>,
    token: Mutex<StreamTokenResponse>,
}

impl Dialer {
    /// Fetches a token (which checks the caller may open the stream) and
    /// orders the healthy regions by measured latency, `first` in front.
    pub async fn new(
        client: Client,
        workspace: Workspace,
        kind: StreamKind,
        first: Option<&str>,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<Self> {
        let owner = match &workspace.owner {
            Some(o) => o.clone(),
            None => client.me().await.context("cannot ask the coordinator who you are")?.username,
        };
        let token = fetch_token(&client, &owner, &workspace, kind).await?;
        let regions = client.regions().await.context("cannot list the regions")?.regions;
        let http = meridian_regions::client::http_client(ca_cert).map_err(anyhow::Error::msg)?;
        let pings = meridian_regions::selection::ping_all(&http, &regions, PINGS).await;
        // Without --region, the region chosen last time stays first until
        // another is clearly nearer (jitter never flips the choice).
        let previous = if first.is_none() { crate::session::last_region(client.base_url()) } else { None };
        let mut ordered: Vec<(String, String)> = meridian_regions::selection::nearest_first(pings, previous.as_deref())
            .into_iter()
            .map(|p| (p.region, p.access_url.unwrap_or_default()))
            .collect();
        if let Some(first) = first {
            let Some(at) = ordered.iter().position(|(name, _)| name == first) else {
                bail!("region {first:?} is not a healthy region reachable from here");
            };
            let chosen = ordered.remove(at);
            ordered.insert(0, chosen);
        }
        if ordered.is_empty() {
            bail!("no healthy region is reachable from here");
        }
        if first.is_none() {
            crate::session::remember_region(client.base_url(), &ordered[0].0);
        }
        let tls = TlsClient::new(ca_cert)?;
        Ok(Self { client, owner, workspace, kind, tls, regions: ordered, token: Mutex::new(token) })
    }

    /// The agent's published SSH host key.
    pub fn host_key(&self) -> Option<String> {
        self.lock().host_key.clone()
    }

    /// The agent's name.
    pub fn agent(&self) -> String {
        self.lock().agent.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StreamTokenResponse> {
        self.token.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A current token: renewed when close to expiry, kept as it is while
    /// the coordinator cannot renew it (a region takes it within its
    /// offline grace then).
    async fn current_token(&self, force: bool) -> StreamTokenResponse {
        let held = self.lock().clone();
        if !force && held.expires_at - chrono::Utc::now() > RENEW_BEFORE {
            return held;
        }
        match fetch_token(&self.client, &self.owner, &self.workspace, self.kind).await {
            Ok(fresh) => {
                *self.lock() = fresh.clone();
                fresh
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot renew the stream token; using the one held");
                held
            }
        }
    }

    /// Opens a path for session `id` (which received `received` bytes)
    /// through the first region that takes it, starting after `after` (the
    /// region whose path just died, tried last). A refusal that no other
    /// region would answer differently ends the session.
    pub async fn open(&self, id: &str, received: u64, after: Option<&str>) -> Result<(Opened, String), OpenError> {
        let start = after.and_then(|a| self.regions.iter().position(|(n, _)| n == a)).map_or(0, |i| i + 1);
        let order = self.regions[start..].iter().chain(&self.regions[..start]);
        let mut last = None;
        for (name, url) in order {
            match self.open_at(url, id, received).await {
                Ok(opened) => return Ok((opened, name.clone())),
                Err(Refused::Final(e)) => return Err(OpenError::Refused(format!("{name}: {e:#}"))),
                Err(Refused::Elsewhere(e)) => {
                    tracing::debug!(region = %name, error = %e, "cannot open a path; trying the next region");
                    last = Some(format!("{name}: {e}"));
                }
            }
        }
        Err(OpenError::Unreachable(last.unwrap_or_default()))
    }

    async fn open_at(&self, url: &str, id: &str, received: u64) -> Result<Opened, Refused> {
        let mut renewed = false;
        loop {
            let token = self.current_token(renewed).await;
            let received = received.to_string();
            let headers = [(TOKEN_HEADER, token.token.as_str()), (SESSION_HEADER, id), (RECEIVED_HEADER, &received)];
            match dial_upgrade_with(url, &token.path, UPGRADE_PROTOCOL, &headers, &self.tls).await {
                Ok((path, headers)) => {
                    let peer = headers.get(RECEIVED_HEADER).and_then(|v| v.to_str().ok()?.parse().ok());
                    let peer_received = peer.ok_or_else(|| {
                        Refused::Elsewhere(anyhow::anyhow!("the agent did not say what it received (an older agent?)"))
                    })?;
                    return Ok(Opened { path, peer_received });
                }
                // Expired: a new token, once.
                Err(e) if e.status == Some(401) && !renewed => renewed = true,
                Err(e) => return Err(refusal(e)),
            }
        }
    }
}

/// Why no path opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Refused where no other region would answer differently (not
    /// allowed, no such workspace, the session is gone): the session ends.
    #[error("{0}")]
    Refused(String),
    /// No region could be reached, or reach the agent: worth trying again.
    #[error("no region opened the stream ({0})")]
    Unreachable(String),
}

/// An opened path and how much the agent received.
pub struct Opened {
    pub path: hyper::upgrade::Upgraded,
    pub peer_received: u64,
}

enum Refused {
    /// Another region may open it (this one is down, partitioned, or cannot reach the agent).
    Elsewhere(anyhow::Error),
    /// None will: not allowed, no such workspace, the session is gone.
    Final(anyhow::Error),
}

fn refusal(e: meridian_regions::tunnel::UpgradeError) -> Refused {
    match e.status {
        Some(401 | 403 | 404 | 409 | 410 | 400) => Refused::Final(anyhow::anyhow!("{}", e.message)),
        _ => Refused::Elsewhere(e.into()),
    }
}

async fn fetch_token(client: &Client, owner: &str, ws: &Workspace, kind: StreamKind) -> Result<StreamTokenResponse> {
    let req = meridian_regions::api::StreamTokenRequest { agent: ws.agent.clone(), target: kind.to_string() };
    client.stream_token(owner, &ws.name, &req).await.map_err(|e| anyhow::anyhow!("{e}"))
}

/// Carries `local` through the workspace as one session, resuming through
/// another region whenever its path dies, until both sides are done.
pub async fn run_session<R, W>(dialer: &Dialer, local_r: R, local_w: W) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let id = resume::new_session_id();
    let mut endpoint = Endpoint::with_timing(local_r, local_w, resume::Timing::CLIENT);
    let mut lost_at: Option<(String, tokio::time::Instant)> = None;
    loop {
        let after = lost_at.as_ref().map(|(r, _)| r.as_str());
        let opened = match dialer.open(&id, endpoint.received(), after).await {
            Ok(o) => o,
            // No region reached the agent: keep trying while the agent keeps the session.
            Err(OpenError::Unreachable(_)) if lost_at.as_ref().is_some_and(|(_, t)| t.elapsed() < RESUME_FOR) => {
                tokio::time::sleep(ROUND_PAUSE).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let (Opened { path, peer_received }, region) = opened;
        if let Some((from, since)) = lost_at.take() {
            tracing::info!(%from, to = %region, stalled_ms = since.elapsed().as_millis() as u64, "resumed the session");
        }
        let run = endpoint.run(hyper_util::rt::TokioIo::new(path), peer_received, std::future::pending());
        match run.await.map_err(|e| anyhow::anyhow!("the session broke: {e}"))? {
            resume::Outcome::Finished => return Ok(()),
            resume::Outcome::Lost(why) => {
                tracing::info!(%region, why, "the path died; resuming through another region");
                lost_at = Some((region, tokio::time::Instant::now()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Workspace;

    #[test]
    fn workspace_names() {
        let w = |o: Option<&str>, n: &str, a: Option<&str>| Workspace {
            owner: o.map(Into::into),
            name: n.into(),
            agent: a.map(Into::into),
        };
        assert_eq!("dev".parse(), Ok(w(None, "dev", None)));
        assert_eq!("dev.main".parse(), Ok(w(None, "dev", Some("main"))));
        assert_eq!("alice/dev.main".parse(), Ok(w(Some("alice"), "dev", Some("main"))));
        for bad in ["", "a/b/c", "dev.", "d_v", "alice/", "dev.main.x"] {
            assert!(bad.parse::<Workspace>().is_err(), "{bad}");
        }
    }
}
