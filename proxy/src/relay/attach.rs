//! Admitting an agent's tunnel.
//!
//! An agent presents the attach token its connection info holds for this
//! relay's region (never its agent token, which lives as long as the
//! workspace). The relay checks it with the coordinator's keys (signature,
//! audience, expiry, and this region), then has the coordinator record the
//! attachment with that same token, which the coordinator checks against the
//! calling region: a region that received an agent's token cannot replay it
//! at another region's relay, nor move the agent's route anywhere but to
//! itself. While the coordinator cannot be reached, the token alone admits
//! the agent and the attachment is recorded once it is back.
//!
//! Agents of earlier releases send their agent token; it is still checked
//! with the coordinator as before (one release, for rolling upgrades), but
//! admits nobody while the coordinator is unreachable.

use super::Relay;
use hyper::{HeaderMap, StatusCode};
use meridian_regions::api::AgentAttach;
use meridian_regions::client::ClientError;
use meridian_regions::headers::{AGENT_ATTACH_TOKEN, AGENT_TOKEN};
use uuid::Uuid;

/// Why an agent was not admitted: the status and message it is answered with.
pub(super) struct Refused(pub StatusCode, pub &'static str);

impl Relay {
    /// The agent a tunnel request (its headers) may attach, or why not.
    pub(super) async fn admit_agent(&self, headers: &HeaderMap) -> Result<Uuid, Refused> {
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        match (header(AGENT_ATTACH_TOKEN), header(AGENT_TOKEN)) {
            (Some(attach), None) => self.admit_by_attach_token(attach).await,
            (_, Some(agent_token)) => self.admit_by_agent_token(agent_token).await,
            (None, None) => Err(Refused(StatusCode::UNAUTHORIZED, "No attach token.")),
        }
    }

    async fn admit_by_attach_token(&self, attach: String) -> Result<Uuid, Refused> {
        let Some(region) = self.agents.region.get() else {
            return Err(Refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "This relay has not registered yet; try again shortly.",
            ));
        };
        let Some(agent_id) = self.auth.verify_attach_for(&attach, region) else {
            return Err(Refused(
                StatusCode::UNAUTHORIZED,
                "The attach token is invalid, expired, or for another region's relays.",
            ));
        };
        let ask = AgentAttach {
            agent_token: String::new(),
            attach_token: Some(attach),
            replica_id: Some(self.agents.replica_id),
        };
        match self.agents.coordinator.agent_attach(&ask).await {
            Ok(_) => Ok(agent_id),
            Err(ClientError::Api { status, .. }) if status.is_client_error() => {
                Err(Refused(StatusCode::UNAUTHORIZED, "The coordinator refused the attach token."))
            }
            Err(e) => {
                tracing::warn!(agent = %agent_id, error = %e, "coordinator unreachable; admitted the agent by its attach token");
                let token = ask.attach_token.unwrap_or_default();
                self.agents.unrecorded.lock().unwrap_or_else(|e| e.into_inner()).insert(agent_id, token);
                Ok(agent_id)
            }
        }
    }

    /// An agent of an earlier release: its agent token, checked by the
    /// coordinator. (Its attach token, if it sends one, names no region and
    /// admits it nowhere: while the coordinator is unreachable it waits.)
    async fn admit_by_agent_token(&self, agent_token: String) -> Result<Uuid, Refused> {
        let ask = AgentAttach { agent_token, attach_token: None, replica_id: Some(self.agents.replica_id) };
        match self.agents.coordinator.agent_attach(&ask).await {
            Ok(r) => Ok(r.agent_id),
            Err(ClientError::Api { status, .. }) if status.is_client_error() => {
                Err(Refused(StatusCode::UNAUTHORIZED, "The agent token is invalid."))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check an agent token with the coordinator");
                Err(Refused(StatusCode::SERVICE_UNAVAILABLE, "The coordinator is unreachable; try again shortly."))
            }
        }
    }
}
