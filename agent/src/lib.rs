//! Meridian's workspace agent.
//!
//! It only dials out: it asks the coordinator where to attach, holds one
//! multiplexed tunnel to a region's relay (see `meridian_regions::tunnel`), and
//! for each app connection the relay asks for, connects to the named port on
//! the workspace's loopback — only a declared app's port, or any port ≥ 1024 —
//! and dials a data connection back to the relay to carry it (see
//! `meridian_regions::data`; an HTTP/2 stream over the tunnel when it cannot).
//! When the tunnel drops it reconnects with jittered backoff, to the next
//! relay in the list if its own is gone.
//!
//! Shell and TCP streams (`ssh`, `port-forward`) arrive the same way, with a
//! reserved target: they are resumable sessions (see [`streams`]) whose local
//! side is the agent's own SSH server ([`ssh`]; it listens on no port) or a
//! workspace port.
//!
//! - [`config`]: options. - [`policy`]: which targets a stream may reach.
//! - [`attach`]: dialing a relay and serving the tunnel.
//! - [`streams`]: shell and TCP sessions; [`ssh`]: the SSH server; [`terminal`]: the web
//!   terminal's reconnecting PTYs.

pub mod attach;
pub mod config;
pub mod policy;
pub mod ssh;
pub mod streams;
pub mod terminal;

use config::Config;
use meridian_regions::api::{AgentConnectionInfo, RelayInfo};
use meridian_regions::client::{http_client, Client, ClientError, Credential};
use rand::Rng;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Exit status when the coordinator refuses the agent token (sysexits EX_NOPERM).
pub const EXIT_TOKEN_REFUSED: i32 = 77;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why the agent stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error("the coordinator refused the agent token: {0}")]
    TokenRefused(ClientError),
    #[error("{0}")]
    Setup(String),
}

/// How long to wait for `connection-info` before using the cached answer.
const INFO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the attached agent renews its connection info (and attach token).
const INFO_REFRESH: Duration = Duration::from_secs(600);
/// Shortest time between two fetches of the relay list for a mesh hop that
/// named a relay the agent did not know (see [`attach::Relays`]).
const RELAYS_REFETCH: Duration = Duration::from_secs(5);
/// While away from the preferred region, how often to ask whether it is back.
const FAILBACK_CHECK: Duration = Duration::from_secs(2);

fn relay_urls(info: &AgentConnectionInfo) -> impl Iterator<Item = String> + '_ {
    info.relays.iter().map(|r| r.url.clone())
}

/// Attaches and re-attaches until `shutdown` resolves or the token is refused.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Fatal> {
    let http = http_client(config.ca_cert.as_deref()).map_err(Fatal::Setup)?;
    let client = Client::new(config.coordinator_url.as_str(), Credential::Agent(config.agent_token.clone()), http);
    let tls = meridian_regions::tunnel::TlsClient::new(config.ca_cert.as_deref())
        .map_err(|e| Fatal::Setup(format!("{e:#}")))?;
    let host_key = ssh::host_key::for_config(&config.host_key_file).map_err(Fatal::Setup)?;
    let host_key_line = ssh::host_key::public_line(&host_key);
    let streams = streams::Streams::new(ssh::Server::new(host_key));
    let mut attacher =
        Attacher { client, config, tls, cached: None, backoff: FIRST_BACKOFF, streams, host_key: Some(host_key_line) };
    tokio::select! {
        () = shutdown => Ok(()),
        res = attacher.run() => res,
    }
}

/// The attach loop's state.
struct Attacher {
    client: Client,
    config: Config,
    tls: meridian_regions::tunnel::TlsClient,
    /// The last connection info, used while the coordinator is unreachable.
    cached: Option<AgentConnectionInfo>,
    backoff: Duration,
    streams: streams::Streams,
    /// The SSH host key's public half, until the coordinator has it.
    host_key: Option<String>,
}

impl Attacher {
    /// Attaches to the first relay that takes us, preferred region first;
    /// holds the tunnel until it drops (then moves on, to another region if
    /// need be) or until the preferred region has been healthy for
    /// `--failback-after` (then attaches there before leaving this one).
    async fn run(&mut self) -> Result<(), Fatal> {
        let mut leaving: Option<CancellationToken> = None;
        // A relay that asked us to leave: not dialed in the next round.
        let mut avoid: Option<String> = None;
        loop {
            let Some(info) = self.info().await? else {
                self.pause().await;
                continue;
            };
            let policy = policy::Policy::new(&info.apps);
            let Some((relay, io)) = self.dial_first(&info, avoid.take().as_deref()).await else {
                self.pause().await;
                continue;
            };
            self.backoff = FIRST_BACKOFF;
            let (leave, asked) = (CancellationToken::new(), CancellationToken::new());
            let (relays, updater) = attach::Relays::new(relay_urls(&info));
            let serving = attach::Serving {
                policy,
                relay_url: relay.url.as_str().into(),
                relays,
                tls: self.tls.clone(),
                pipe_idle: self.config.pipe_idle_timeout,
                streams: self.streams.clone(),
            };
            let mut tunnel = tokio::spawn(attach::serve(io, serving, leave.clone(), asked.clone()));
            // Make before break: the old tunnel drains only once the new one is up.
            if let Some(old) = leaving.take() {
                old.cancel();
            }
            let preferred = info.preferred_region.clone();
            let away = preferred.as_ref().is_some_and(|p| *p != relay.region);
            let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + INFO_REFRESH, INFO_REFRESH);
            let mut relays_fetched = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    // Keeps the attach token fresh for an outage to come.
                    _ = refresh.tick() => self.renew(&updater).await,
                    () = async {
                        updater.stale().await;
                        tokio::time::sleep_until(relays_fetched + RELAYS_REFETCH).await;
                    } => {
                        relays_fetched = tokio::time::Instant::now();
                        self.renew(&updater).await;
                    }
                    _ = &mut tunnel => {
                        tracing::warn!(region = %relay.region, "tunnel closed; re-attaching");
                        break;
                    }
                    () = asked.cancelled() => {
                        // Make before break: this tunnel serves until the next one is up.
                        tracing::info!(region = %relay.region, relay = %relay.url, "moving to another relay");
                        avoid = Some(relay.url.clone());
                        leaving = Some(leave);
                        break;
                    }
                    () = tokio::time::sleep(FAILBACK_CHECK), if away => {
                        if self.preferred_is_back(preferred.as_deref()).await {
                            tracing::info!(region = ?preferred, "preferred region is healthy again; moving back");
                            leaving = Some(leave);
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Renews the connection info (and attach token), and adds the relays it
    /// names to the tunnel's list.
    async fn renew(&mut self, relays: &attach::RelaysUpdater) {
        if let Ok(Some(info)) = self.info().await {
            relays.add(relay_urls(&info));
        }
    }

    /// Fresh connection info, or the cached one if the coordinator does not
    /// answer in time; `None` when there is neither.
    async fn info(&mut self) -> Result<Option<AgentConnectionInfo>, Fatal> {
        let ask = self.client.agent_connection_info(self.config.region.as_deref());
        match tokio::time::timeout(INFO_TIMEOUT, ask).await {
            Ok(Ok(info)) => {
                if info.relays.is_empty() {
                    tracing::warn!("no healthy region offers a relay yet; retrying");
                }
                self.publish_host_key().await;
                self.cached = Some(info.clone());
                Ok(Some(info))
            }
            Ok(Err(e)) if matches!(e.status().map(|s| s.as_u16()), Some(401 | 403)) => Err(Fatal::TokenRefused(e)),
            failed => {
                let why = failed.err().map_or_else(|| "timed out".to_owned(), |_| "unreachable".to_owned());
                tracing::warn!(coordinator = why, cached = self.cached.is_some(), "cannot ask where to attach");
                Ok(self.cached.clone())
            }
        }
    }

    /// Gives the coordinator the SSH host key's public half (once it took it,
    /// never again; until then, with every connection info).
    async fn publish_host_key(&mut self) {
        let Some(public_key) = self.host_key.clone() else { return };
        let req = meridian_regions::api::AgentHostKey { public_key };
        match tokio::time::timeout(INFO_TIMEOUT, self.client.agent_host_key(&req)).await {
            Ok(Ok(())) => self.host_key = None,
            failed => tracing::warn!(error = ?failed.map(|r| r.err()), "cannot publish the SSH host key yet"),
        }
    }

    /// Attaches to the first relay of `info` that takes us, skipping `avoid`
    /// (unless it is the only one).
    async fn dial_first(
        &self,
        info: &AgentConnectionInfo,
        avoid: Option<&str>,
    ) -> Option<(RelayInfo, hyper::upgrade::Upgraded)> {
        let others = info.relays.iter().filter(|r| Some(r.url.as_str()) != avoid);
        let order: Vec<&RelayInfo> =
            if others.clone().next().is_some() { others.collect() } else { info.relays.iter().collect() };
        for relay in order {
            match attach::dial(relay, &self.config.agent_token, &self.tls).await {
                Ok(io) => {
                    tracing::info!(region = %relay.region, relay = %relay.url, "attached");
                    return Some((relay.clone(), io));
                }
                Err(e) => tracing::warn!(region = %relay.region, relay = %relay.url, error = %e, "cannot attach"),
            }
        }
        None
    }

    /// Whether a relay of the preferred region has been healthy for `--failback-after`.
    async fn preferred_is_back(&mut self, preferred: Option<&str>) -> bool {
        let Ok(Ok(info)) = tokio::time::timeout(INFO_TIMEOUT, self.client.agent_connection_info(preferred)).await
        else {
            return false;
        };
        let back = info.relays.iter().any(|r| {
            Some(r.region.as_str()) == preferred
                && r.healthy_since.is_some_and(|since| {
                    chrono::Utc::now().signed_duration_since(since).to_std().unwrap_or_default()
                        >= self.config.failback_after
                })
        });
        self.cached = Some(info);
        back
    }

    /// Waits a jittered, growing backoff before the next round.
    async fn pause(&mut self) {
        let wait = self.backoff.mul_f64(rand::rng().random_range(0.5..1.5));
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        tokio::time::sleep(wait).await;
    }
}
