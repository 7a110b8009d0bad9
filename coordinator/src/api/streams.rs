//! `POST /api/v2/workspaces/{owner}/{workspace}/stream-token`: a token for
//! one shell or TCP stream (`meridian ssh`, `port-forward`, the web
//! terminal), for the workspace's owner only (admins too with
//! `--dangerous-allow-admin-streams`); anyone else gets the 404 an app gives.
//!
//! The token is an app token (see `meridian_regions::stream`) bound to the
//! stream's path and no host, so the client opens it at whichever region it
//! picks, and again at another when that one dies. It lasts as long as an
//! app token (`--app-token-lifetime`); it is checked when a path opens, never
//! while bytes flow, and within the offline grace a region takes it expired
//! while the coordinator is down (a resume during an outage).

use super::auth::CurrentSession;
use super::json::Json;
use super::AppState;
use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, State};
use meridian_regions::api::{Share, StreamTokenRequest, StreamTokenResponse};
use meridian_regions::app_token::{AppClaims, ISSUER};
use meridian_regions::stream::{StreamKind, StreamRequest};

pub async fn token(
    State(state): State<AppState>,
    CurrentSession(caller, session): CurrentSession,
    Path((owner, workspace)): Path<(String, String)>,
    Json(req): Json<StreamTokenRequest>,
) -> ApiResult<axum::Json<StreamTokenResponse>> {
    let kind = StreamKind::parse(&req.target).map_err(|e| ApiError::BadRequest(format!("target: {e}.")))?;
    let hidden = || ApiError::NotFound("No such workspace or agent, or you may not open streams to it.".into());
    let agent = state.store.stream_agent(&owner, &workspace, req.agent.as_deref()).await?.ok_or_else(hidden)?;
    let allowed = agent.owner_id == caller.id || (caller.admin && state.config.allow_admin_streams);
    if !allowed {
        tracing::info!(by = %caller.username, %owner, %workspace, "refused a stream token for another user's workspace");
        return Err(hidden());
    }
    let stream = StreamRequest { user: owner, workspace, agent: agent.name.clone(), kind };
    let now = chrono::Utc::now();
    let lifetime = chrono::Duration::from_std(state.config.app_token_lifetime)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("token lifetime: {e}")))?;
    let claims = AppClaims {
        iss: ISSUER.into(),
        sub: caller.id.to_string(),
        binding: stream.binding(),
        agent_id: agent.id,
        upstream: kind.upstream(),
        share: Share::Owner,
        sandbox: false,
        cors_passthru: false,
        dial: Default::default(),
        iat: now.timestamp(),
        nbf: now.timestamp(),
        exp: (now + lifetime).timestamp(),
        sid: Some(session),
    };
    let token = state.keys.signer.sign(&claims).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(axum::Json(StreamTokenResponse {
        token,
        expires_at: now + lifetime,
        path: stream.path(),
        agent: agent.name,
        host_key: agent.host_key,
    }))
}
