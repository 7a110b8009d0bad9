//! What agents and relays say about agents: `agents/me/connection-info` (agent
//! token), `proxies/me/agent-attach|agent-detach` (a relay's proxy token), and
//! the route feed proxies follow, `proxies/me/routes`.

use super::auth::{AgentIdentity, ProxyRegion};
use super::json::Json;
use super::AppState;
use crate::error::{ApiError, ApiResult};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use meridian_regions::api::{
    AgentAttach, AgentAttachResponse, AgentConnectionInfo, AgentDetach, AgentHostKey, RouteUpdate,
};
use meridian_regions::app_token::{AttachClaims, ATTACH_AUDIENCE, ISSUER};
use meridian_regions::token::{Secret, Token};

/// How long an attach token opens its region's relays: two hours, renewed
/// every ten minutes (the agent's `INFO_REFRESH`), so an agent that must move
/// during a coordinator outage of up to two hours is still admitted offline.
/// Short, since it is presented to relays (the agent token never is).
const ATTACH_TOKEN_LIFETIME: chrono::Duration = chrono::Duration::hours(2);
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
    let now = chrono::Utc::now();
    let mut relays = state.store.relays(q.region.as_deref()).await?;
    // One token per region, for that region's relays alone.
    let mut signed: std::collections::HashMap<String, Secret> = std::collections::HashMap::new();
    for relay in &mut relays {
        if !signed.contains_key(&relay.region) {
            let claims = AttachClaims {
                iss: ISSUER.into(),
                aud: ATTACH_AUDIENCE.into(),
                agent_id,
                region: Some(relay.region.clone()),
                iat: now.timestamp(),
                exp: (now + ATTACH_TOKEN_LIFETIME).timestamp(),
            };
            let token = state.keys.signer.sign_attach(&claims).map_err(|e| ApiError::Internal(e.into()))?;
            signed.insert(relay.region.clone(), Secret::new(token));
        }
        relay.attach_token = signed.get(&relay.region).cloned();
    }
    Ok(axum::Json(AgentConnectionInfo {
        attach_token: None,
        agent_id,
        preferred_region: q.region.clone(),
        apps: state.store.agent_apps(agent_id).await?,
        relays,
    }))
}

/// `POST /api/v2/agents/me/host-key`: the agent's SSH host key, public half
/// (OpenSSH's one-line form; Ed25519 only).
pub async fn host_key(
    State(state): State<AppState>,
    AgentIdentity(agent_id): AgentIdentity,
    Json(req): Json<AgentHostKey>,
) -> ApiResult<StatusCode> {
    let key = req.public_key.trim();
    let parts: Vec<&str> = key.split(' ').collect();
    let well_formed = matches!(parts[..], ["ssh-ed25519", b64] | ["ssh-ed25519", b64, _]
        if !b64.is_empty() && b64.len() <= 128 && b64.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
    if !well_formed {
        return Err(ApiError::BadRequest("public_key must be an OpenSSH ssh-ed25519 public key line.".into()));
    }
    let line = parts[..2].join(" ");
    state.store.set_agent_host_key(agent_id, &line).await?;
    tracing::info!(agent = %agent_id, "agent published its SSH host key");
    Ok(StatusCode::NO_CONTENT)
}

/// A relay records an agent it admitted: with the attach token the agent
/// presented, which must be for the calling region (a region that received
/// one cannot move the agent's route anywhere else), or, from relays of
/// earlier releases, with the agent's own token.
pub async fn attach(
    State(state): State<AppState>,
    ProxyRegion(region): ProxyRegion,
    Json(req): Json<AgentAttach>,
) -> ApiResult<axum::Json<AgentAttachResponse>> {
    let refused =
        || ApiError::Unauthorized("The agent token is invalid: its workspace was deleted, or it is mistyped.".into());
    let agent_id = match (&req.attach_token, req.agent_token.is_empty()) {
        (Some(attach), true) => state.keys.verifier.verify_attach_for(attach, &region.name).map_err(|_| {
            ApiError::Unauthorized(format!(
                "The attach token is invalid, expired, or not for region {:?}'s relays.",
                region.name
            ))
        })?,
        _ => {
            let token = Token::parse(&req.agent_token).map_err(|_| refused())?;
            state.store.agent_for_token(&token).await?.ok_or_else(refused)?
        }
    };
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
    /// The version the proxy holds; without it, a full snapshot.
    after: Option<i64>,
    /// How long to wait for a change, in milliseconds (at most [`MAX_ROUTE_WAIT`]).
    #[serde(default)]
    wait_ms: u64,
}

/// Longest a route request is held open waiting for a change.
pub const MAX_ROUTE_WAIT: Duration = Duration::from_secs(25);

/// `GET /api/v2/proxies/me/routes?after=V&wait_ms=W`: answers at once when
/// routes changed after `V`, else when one changes (a NOTIFY from any
/// coordinator replica), else empty after `W`. Without `after`: every
/// current route and the version to follow from.
pub async fn routes(
    State(state): State<AppState>,
    _caller: ProxyRegion,
    Query(q): Query<RoutesQuery>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.wait_ms).min(MAX_ROUTE_WAIT);
    // Subscribed before the first query, so a change between the two still wakes us.
    let mut changed = state.route_changes.subscribe();
    let Some(after) = q.after else {
        let counter = *changed.borrow_and_update();
        return Ok(state.reads.snapshot(counter, state.store.route_snapshot()).await?.into_response());
    };
    loop {
        let counter = *changed.borrow_and_update();
        let update = state.reads.changes(after, counter, state.store.route_changes(after)).await?;
        if !update.empty {
            return Ok(update.into_response());
        }
        match tokio::time::timeout_at(deadline, changed.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Ok(axum::Json(RouteUpdate { version: after, ..Default::default() }).into_response()),
        }
    }
}
