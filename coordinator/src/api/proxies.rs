//! `/api/v2/proxies/me/...`: what a regional proxy replica calls with its token.

use super::auth::ProxyRegion;
use super::json::Json;
use super::regions::region_list;
use super::AppState;
use crate::error::{ApiError, ApiResult};
use axum::extract::State;
use axum::http::StatusCode;
use meridian_regions::api::{DeregisterProxy, RegisterProxy, RegisterProxyResponse};

/// Longest URL or hostname a replica may register.
const MAX_URL: usize = 2048;

/// `POST /api/v2/proxies/me/register`: an idempotent heartbeat.
pub async fn register(
    State(state): State<AppState>,
    ProxyRegion(region): ProxyRegion,
    Json(req): Json<RegisterProxy>,
) -> ApiResult<axum::Json<RegisterProxyResponse>> {
    validate(&req)?;
    super::hosts::check_registration(&state, &region, &req).await?;
    let check_now = state.store.upsert_replica(region.id, &req).await?;
    if check_now {
        state.reads.regions_changed();
        tracing::info!(region = %region.name, replica = %req.replica_id, url = %req.access_url, "replica registered");
        // The checker may be gone during shutdown; the next interval covers it then.
        let _ = state.check_now.send(req.replica_id);
    }
    let regions = state.reads.regions(region_list(&state)).await?;
    let regions = Vec::clone(&regions);
    let sibling_replicas = regions
        .iter()
        .find(|r| r.id == region.id)
        .map(|r| r.replicas.iter().filter(|x| x.id != req.replica_id).cloned().collect())
        .unwrap_or_default();
    Ok(axum::Json(RegisterProxyResponse {
        region_id: region.id,
        region_name: region.name,
        heartbeat_interval_ms: state.config.heartbeat_interval.as_millis() as u64,
        regions,
        sibling_replicas,
        keys: state.keys.public.clone(),
        mesh_secret: state.keys.mesh_secret.clone(),
    }))
}

/// `POST /api/v2/proxies/me/deregister`: the replica is shutting down.
pub async fn deregister(
    State(state): State<AppState>,
    ProxyRegion(region): ProxyRegion,
    Json(req): Json<DeregisterProxy>,
) -> ApiResult<StatusCode> {
    state.store.delete_replica(region.id, req.replica_id).await?;
    state.reads.regions_changed();
    tracing::info!(region = %region.name, replica = %req.replica_id, "replica deregistered");
    Ok(StatusCode::NO_CONTENT)
}

fn validate(req: &RegisterProxy) -> ApiResult<()> {
    let url =
        url::Url::parse(&req.access_url).map_err(|e| ApiError::BadRequest(format!("access_url is not a URL: {e}.")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ApiError::BadRequest("access_url must be an http or https URL with a host.".into()));
    }
    if req.access_url.len() > MAX_URL || req.wildcard_hostname.len() > MAX_URL {
        return Err(ApiError::BadRequest("access_url or wildcard_hostname is too long.".into()));
    }
    if !req.wildcard_hostname.is_empty() && !req.wildcard_hostname.starts_with("*.") {
        return Err(ApiError::BadRequest(
            "wildcard_hostname must look like *.example.com (optionally with :port).".into(),
        ));
    }
    Ok(())
}
