//! Meridian's workspace agent.
//!
//! It only dials out: it asks the coordinator where to attach, holds one
//! multiplexed tunnel to a region's relay (see `meridian_regions::tunnel`), and
//! serves each stream the relay opens by connecting to the named port on the
//! workspace's loopback — only a declared app's port, or any port ≥ 1024.
//! When the tunnel drops it reconnects with jittered backoff, to the next
//! relay in the list if its own is gone.
//!
//! - [`config`]: options. - [`policy`]: which targets a stream may reach.
//! - [`attach`]: dialing a relay and serving the tunnel.
//! - [`sample_app`]: a small app for the demo and the tests.

pub mod attach;
pub mod config;
pub mod policy;
pub mod sample_app;

use config::Config;
use meridian_regions::client::{http_client, Client, ClientError, Credential};
use rand::Rng;
use std::time::Duration;

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

/// Attaches and re-attaches until `shutdown` resolves or the token is refused.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Fatal> {
    let http = http_client(config.ca_cert.as_deref()).map_err(Fatal::Setup)?;
    let client = Client::new(config.coordinator_url.as_str(), Credential::Agent(config.agent_token.clone()), http);
    let tls = meridian_regions::tunnel::TlsClient::new(config.ca_cert.as_deref())
        .map_err(|e| Fatal::Setup(format!("{e:#}")))?;
    tokio::pin!(shutdown);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let attempt = attach_once(&client, &config, &tls, &mut backoff);
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            res = attempt => res?,
        }
        let wait = backoff.mul_f64(rand::rng().random_range(0.5..1.5));
        backoff = (backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One round: learn the relays, attach to the first that takes us, serve until
/// the tunnel ends. Returns `Ok` to be retried, `Err` only for a fatal answer.
async fn attach_once(
    client: &Client,
    config: &Config,
    tls: &meridian_regions::tunnel::TlsClient,
    backoff: &mut Duration,
) -> Result<(), Fatal> {
    let info = match client.agent_connection_info(config.region.as_deref()).await {
        Ok(info) => info,
        Err(e) if matches!(e.status().map(|s| s.as_u16()), Some(401 | 403)) => return Err(Fatal::TokenRefused(e)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot reach the coordinator; retrying");
            return Ok(());
        }
    };
    if info.relays.is_empty() {
        tracing::warn!("no healthy region offers a relay yet; retrying");
    }
    let policy = policy::Policy::new(&info.apps);
    for relay in &info.relays {
        match attach::dial(&relay.url, &config.agent_token, tls).await {
            Ok(io) => {
                tracing::info!(region = %relay.region, relay = %relay.url, "attached");
                *backoff = FIRST_BACKOFF;
                attach::serve(io, policy.clone()).await;
                tracing::warn!(region = %relay.region, "tunnel closed; re-attaching");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(region = %relay.region, relay = %relay.url, error = %e, "cannot attach")
            }
        }
    }
    Ok(())
}
