//! What agents and relays say about agents: `agents/me/connection-info` (agent
//! token), `proxies/me/agent-attach|agent-detach` (a relay's proxy token), and
//! the route feed proxies follow, `proxies/me/routes`.

use super::auth::{AgentIdentity, ProxyRegion};
use super::json::Json;
use super::AppState;
use crate::error::{ApiError, ApiResult};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use meridian_regions::api::{AgentAttach, AgentAttachResponse, AgentConnectionInfo, AgentDetach, RouteUpdate};
use meridian_regions::token::Token;
use std::time::Duration;

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
        preferred_region: q.region.clone(),
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
    state.store.set_agent_attached(agent_id, region.id, req.replica_id).await?;
    tracing::info!(agent = %agent_id, region = %region.name, "agent attached");
    Ok(axum::Json(AgentAttachResponse { agent_id }))
}

pub async fn detach(
    State(state): State<AppState>,
    ProxyRegion(region): ProxyRegion,
    Json(req): Json<AgentDetach>,
) -> ApiResult<StatusCode> {
    state.store.set_agent_detached(req.agent_id, region.id, req.replica_id).await?;
    tracing::info!(agent = %req.agent_id, region = %region.name, "agent detached");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
pub struct RoutesQuery {
    /// The version the proxy holds; 0 for a full snapshot.
    #[serde(default)]
    after: i64,
    /// How long to wait for a change, in milliseconds (at most [`MAX_ROUTE_WAIT`]).
    #[serde(default)]
    wait_ms: u64,
}

/// Longest a route request is held open waiting for a change.
pub const MAX_ROUTE_WAIT: Duration = Duration::from_secs(25);

/// `GET /api/v2/proxies/me/routes?after=V&wait_ms=W`: answers at once when
/// routes changed after `V`, else when one changes (a NOTIFY from any
/// coordinator replica), else empty after `W`.
pub async fn routes(
    State(state): State<AppState>,
    _caller: ProxyRegion,
    Query(q): Query<RoutesQuery>,
) -> ApiResult<axum::Json<RouteUpdate>> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.wait_ms).min(MAX_ROUTE_WAIT);
    // Subscribed before the first query, so a change between the two still wakes us.
    let mut changed = state.route_changes.subscribe();
    loop {
        let update = state.store.route_changes(q.after.max(0)).await?;
        if q.after <= 0 || !update.routes.is_empty() {
            return Ok(axum::Json(update));
        }
        match tokio::time::timeout_at(deadline, changed.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Ok(axum::Json(RouteUpdate { version: q.after, routes: Vec::new() })),
        }
    }
}
