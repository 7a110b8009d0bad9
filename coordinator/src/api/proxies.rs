//! `/api/v2/proxies/me/...`: what a regional proxy replica calls with its token.

use super::auth::ProxyRegion;
use super::json::Json;
use super::regions::region_list;
use super::AppState;
use crate::error::{ApiError, ApiResult};
use axum::extract::State;
use axum::http::StatusCode;
use meridian_regions::api::{DeregisterProxy, RegionHosts, RegisterProxy, RegisterProxyResponse};

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

/// A registration's addresses, by the grammar admins' hostnames follow
/// ([`super::hosts::validate`]): an access URL with a host, a wildcard
/// pattern of plain labels (no trailing dot, no markup), and relay and mesh
/// addresses that are http(s) URLs with a host.
fn validate(req: &RegisterProxy) -> ApiResult<()> {
    let lengths = [Some(&req.access_url), Some(&req.wildcard_hostname), req.relay_address.as_ref()];
    if lengths.into_iter().chain([req.mesh_address.as_ref()]).flatten().any(|s| s.len() > MAX_URL) {
        return Err(ApiError::BadRequest("An address in the registration is too long.".into()));
    }
    let hosts = RegionHosts {
        access_url: Some(req.access_url.clone()),
        wildcard_hostname: Some(req.wildcard_hostname.clone()),
    };
    super::hosts::validate(&hosts)?;
    for (name, address) in [("relay_address", &req.relay_address), ("mesh_address", &req.mesh_address)] {
        let Some(address) = address else { continue };
        let url =
            url::Url::parse(address).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if url.is_none() {
            return Err(ApiError::BadRequest(format!(
                "{name} must be an http or https URL with a host, not {address:?}."
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(access_url: &str, wildcard: &str, relay: Option<&str>) -> RegisterProxy {
        RegisterProxy {
            replica_id: uuid::Uuid::new_v4(),
            access_url: access_url.into(),
            wildcard_hostname: wildcard.into(),
            relay_address: relay.map(Into::into),
            mesh_address: None,
            version: "test".into(),
            link_rtts: Vec::new(),
        }
    }

    #[test]
    fn registrations_follow_the_admins_grammar() {
        let ok = [
            registration("http://sydney.localhost:7081", "*.sydney.localhost:7081", Some("http://127.0.0.1:7091")),
            registration("https://sydney.example.com", "", Some("https://relay.sydney.example.com")),
        ];
        for r in ok {
            assert!(validate(&r).is_ok(), "{r:?}");
        }
        let bad = [
            registration("http://x.localhost:1", "*.FRANKFURT.localhost.:7902", None),
            registration("http://x.localhost:1", "*.<script>alert(1)</script>.localhost", None),
            registration("http://x.localhost:1", "*.a.localhost:0", None),
            registration("http://x.localhost:1", "sydney.localhost", None),
            registration("javascript:alert(1)", "", None),
            registration("http://x.localhost:1", "", Some("javascript:alert(1)")),
            registration("http://x.localhost:1", "", Some("file:///etc/passwd")),
            registration("http://x.localhost:1", "", Some("not a url")),
        ];
        for r in bad {
            assert!(matches!(validate(&r), Err(ApiError::BadRequest(_))), "{r:?}");
        }
        let mut mesh = registration("http://x.localhost:1", "", None);
        mesh.mesh_address = Some("gopher://127.0.0.1:1".into());
        assert!(validate(&mesh).is_err());
    }
}
