//! The registration loop: register at start, re-register (heartbeat) on the
//! interval the coordinator returns, deregister on shutdown.
//!
//! Losing the coordinator never stops the proxy: it retries with jittered
//! exponential backoff and reports itself degraded meanwhile. A refused token
//! (401/403) or a refused registration (other 4xx) is fatal: one line naming
//! the problem, then exit non-zero, since retrying cannot fix it.

use crate::config::Config;
use crate::state::ProxyState;
use meridian_regions::api::{DeregisterProxy, RegisterProxy};
use meridian_regions::client::{Client, ClientError};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

/// Exit status when the coordinator refuses the proxy token (sysexits EX_NOPERM).
pub const EXIT_TOKEN_REFUSED: i32 = 77;
/// Exit status when the coordinator refuses the registration itself (EX_CONFIG).
pub const EXIT_REGISTRATION_REFUSED: i32 = 78;

/// Heartbeat interval used until the coordinator names one.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Why registration cannot go on.
#[derive(Debug)]
pub struct Fatal {
    pub exit_code: i32,
    pub message: String,
}

pub struct Registrar {
    pub client: Client,
    pub request: RegisterProxy,
    pub state: Arc<ProxyState>,
    /// Receives the token-verification keys from each registration.
    pub auth: Arc<crate::auth::Auth>,
    /// Receives the mesh secret and the current relays from each registration.
    pub relay: Arc<crate::relay::Relay>,
}

impl Registrar {
    pub fn new(
        config: &Config,
        state: Arc<ProxyState>,
        client: Client,
        auth: Arc<crate::auth::Auth>,
        relay: Arc<crate::relay::Relay>,
        relay_address: String,
        mesh_address: String,
    ) -> Self {
        let request = RegisterProxy {
            replica_id: config.replica_id,
            access_url: config.access_url.as_str().trim_end_matches('/').to_owned(),
            wildcard_hostname: config.wildcard_access_url.clone().unwrap_or_default(),
            mesh_address: Some(mesh_address).filter(|m| *m != relay_address),
            relay_address: Some(relay_address),
            version: meridian_regions::VERSION.into(),
            link_rtts: Vec::new(),
        };
        Self { client, request, state, auth, relay }
    }

    /// Heartbeats until a fatal answer (returned) or until `stop` fires
    /// (returns `None`). `stop` is only looked at between calls: a heartbeat
    /// cancelled mid-flight could reach the coordinator after the
    /// deregistration and bring the replica back.
    pub async fn run(&self, stop: &mut tokio::sync::watch::Receiver<bool>) -> Option<Fatal> {
        let mut interval = DEFAULT_INTERVAL;
        let mut backoff = FIRST_BACKOFF;
        while !*stop.borrow() {
            let request = RegisterProxy { link_rtts: self.relay.mesh.round_trips(), ..self.request.clone() };
            let wait = match self.client.register(&request).await {
                Ok(resp) => {
                    let first = self.state.registration().last_success.is_none();
                    interval = Duration::from_millis(resp.heartbeat_interval_ms)
                        .clamp(Duration::from_millis(100), Duration::from_secs(3600));
                    backoff = FIRST_BACKOFF;
                    self.auth.set_keys(&resp.keys);
                    self.relay.mesh.set_secret(resp.mesh_secret.clone());
                    self.relay.set_region(&resp.region_name);
                    self.relay.record_offline_attachments().await;
                    let peers = resp.regions.iter().flat_map(|r| {
                        r.replicas.iter().filter_map(|x| Some((x.mesh_address.clone()?, r.name.clone())))
                    });
                    self.relay.mesh.set_peers(peers.collect());
                    // Round trips to the other regions, for the next heartbeat (in the background).
                    let (mesh, own) = (self.relay.mesh.clone(), resp.region_name.clone());
                    tokio::spawn(async move { mesh.measure(&own).await });
                    let mut back = false;
                    self.state.update_registration(|r| {
                        if first || !r.coordinator_reachable {
                            tracing::info!(region = %resp.region_name, "registered with the coordinator");
                        }
                        back = !r.coordinator_reachable;
                        r.coordinator_reachable = true;
                        r.last_success = Some(chrono::Utc::now());
                        r.last_error = None;
                    });
                    if back {
                        self.state.coordinator_back.notify_waiters();
                    }
                    interval
                }
                Err(e) if e.is_retryable() => {
                    self.note_failure(&e);
                    let wait = jitter(backoff);
                    backoff = (backoff * 2).min(interval);
                    wait
                }
                Err(e) => return Some(fatal(e)),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        None
    }

    fn note_failure(&self, e: &ClientError) {
        let message = e.to_string();
        self.state.update_registration(|r| {
            if r.coordinator_reachable || r.last_error.is_none() {
                tracing::warn!(error = %message, "cannot reach the coordinator; still serving, retrying");
            }
            r.coordinator_reachable = matches!(e, ClientError::Api { .. });
            r.last_error = Some(message);
        });
    }

    /// Tells the coordinator this replica is going away (best effort, bounded).
    pub async fn deregister(&self) {
        let req = DeregisterProxy { replica_id: self.request.replica_id };
        match tokio::time::timeout(Duration::from_secs(5), self.client.deregister(&req)).await {
            Ok(Ok(())) => tracing::info!("deregistered from the coordinator"),
            Ok(Err(e)) => tracing::warn!(error = %e, "deregistration failed"),
            Err(_) => tracing::warn!("deregistration timed out"),
        }
    }
}

fn fatal(e: ClientError) -> Fatal {
    let status = e.status().map(|s| s.as_u16());
    match status {
        Some(401) | Some(403) => {
            Fatal { exit_code: EXIT_TOKEN_REFUSED, message: format!("the coordinator refused the proxy token: {e}") }
        }
        _ => Fatal {
            exit_code: EXIT_REGISTRATION_REFUSED,
            message: format!("the coordinator refused the registration: {e}"),
        },
    }
}

/// `d` scaled by a random factor in [0.75, 1.25), so replicas that lost the
/// coordinator together do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.75..1.25))
}
