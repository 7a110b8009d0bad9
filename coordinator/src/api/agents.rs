//! What agents and relays say about agents: `agents/me/connection-info` (agent
//! token) and `proxies/me/agent-attach|agent-detach` (a relay's proxy token).

use super::auth::{AgentIdentity, ProxyRegion};
use super::json::Json;
use super::AppState;
use crate::error::{ApiError, ApiResult};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use meridian_regions::api::{
    AgentAttach, AgentAttachResponse, AgentConnectionInfo, AgentDetach, VerifyPeer, VerifyPeerResponse,
};
use meridian_regions::token::Token;

#[derive(serde::Deserialize)]
pub struct InfoQuery {
    /// The region the agent would rather attach to.
    region: Option<String>,
}

pub async fn connection_info(
    State(state): State<AppState>,
    AgentIdentity(agent_id): AgentIdentity,
    Query(q): Query<InfoQuery>,
) -> ApiResult<axum::Json<AgentConnectionInfo>> {
    Ok(axum::Json(AgentConnectionInfo {
        agent_id,
        apps: state.store.agent_apps(agent_id).await?,
        relays: state.store.relays(q.region.as_deref()).await?,
    }))
}

pub async fn attach(
    State(state): State<AppState>,
    ProxyRegion(region): ProxyRegion,
    Json(req): Json<AgentAttach>,
) -> ApiResult<axum::Json<AgentAttachResponse>> {
    let refused =
        || ApiError::Unauthorized("The agent token is invalid: its workspace was deleted, or it is mistyped.".into());
    let token = Token::parse(&req.agent_token).map_err(|_| refused())?;
    let agent_id = state.store.agent_for_token(&token).await?.ok_or_else(refused)?;
    state.store.set_agent_attached(agent_id, region.id).await?;
    tracing::info!(agent = %agent_id, region = %region.name, "agent attached");
    Ok(axum::Json(AgentAttachResponse { agent_id }))
}

pub async fn detach(
    State(state): State<AppState>,
    ProxyRegion(region): ProxyRegion,
    Json(req): Json<AgentDetach>,
) -> ApiResult<StatusCode> {
    state.store.set_agent_detached(req.agent_id, region.id).await?;
    tracing::info!(agent = %req.agent_id, region = %region.name, "agent detached");
    Ok(StatusCode::NO_CONTENT)
}

/// A relay asks whether a peer's proxy token is current, before linking.
pub async fn verify_peer(
    State(state): State<AppState>,
    _caller: ProxyRegion,
    Json(req): Json<VerifyPeer>,
) -> ApiResult<axum::Json<VerifyPeerResponse>> {
    let refused = || ApiError::Unauthorized("The peer's proxy token is not valid.".into());
    let token = Token::parse(&req.proxy_token).map_err(|_| refused())?;
    let region = state.store.region_for_token(&token).await?.ok_or_else(refused)?;
    Ok(axum::Json(VerifyPeerResponse { region: region.name }))
}
