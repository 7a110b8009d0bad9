//! `/api/v2/regions...`: list (any signed-in user), create, delete and
//! regenerate-token (admins).

use super::audit::{self, Source};
use super::auth::{Admin, CurrentUser};
use super::json::Json;
use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::store::RegionWithReplicas;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use meridian_regions::api::{
    CreateRegion, CreateRegionResponse, PatchRegion, RegenerateTokenResponse, Region, RegionList,
};
use meridian_regions::health::Status;
use meridian_regions::name::Name;
use meridian_regions::PRIMARY_REGION;

/// Longest display name accepted.
const MAX_DISPLAY_NAME: usize = 64;

pub async fn list(State(state): State<AppState>, _user: CurrentUser) -> ApiResult<axum::Json<RegionList>> {
    Ok(axum::Json(RegionList { regions: region_list(&state).await? }))
}

/// Every region in API form, the primary first.
pub async fn region_list(state: &AppState) -> ApiResult<Vec<Region>> {
    let rows = state.store.regions().await?;
    Ok(rows.into_iter().map(|r| to_api(state, r)).collect())
}

pub async fn create(
    State(state): State<AppState>,
    Admin(admin): Admin,
    source: Source,
    Json(req): Json<CreateRegion>,
) -> ApiResult<(StatusCode, axum::Json<CreateRegionResponse>)> {
    let name = Name::parse(&req.name).map_err(|e| ApiError::BadRequest(format!("Invalid region name: {e}.")))?;
    if name.as_str() == PRIMARY_REGION {
        return Err(ApiError::Conflict("\"primary\" is the coordinator's own region.".into()));
    }
    let display = req.display_name.unwrap_or_else(|| name.to_string());
    check_display_name(&display)?;
    super::hosts::validate(&req.hosts)?;
    let reserved = state.config.wildcard_access_url.as_deref();
    let created = audit::change(Some(&admin), "region.create", "region", name.as_str(), &source);
    let audit = |row: &_| created.with_changes(diff(None, row));
    let (row, token) = state.store.create_region(name.as_str(), &display, &req.hosts, reserved, audit).await?;
    tracing::info!(region = %row.name, by = %admin.username, "region created");
    let region = to_api(&state, RegionWithReplicas { region: row, replicas: Vec::new(), wildcard_hostname: None });
    let body = CreateRegionResponse { region, proxy_token: token.encode().expose().to_owned() };
    Ok((StatusCode::CREATED, axum::Json(body)))
}

/// `PATCH /api/v2/regions/{name}`: the display name, or the hostnames the
/// region's proxies may register (the only way to change them once pinned).
pub async fn update(
    State(state): State<AppState>,
    Admin(admin): Admin,
    source: Source,
    Path(name): Path<String>,
    Json(req): Json<PatchRegion>,
) -> ApiResult<axum::Json<Region>> {
    if let Some(display) = &req.display_name {
        check_display_name(display)?;
    }
    super::hosts::validate(&req.hosts)?;
    let reserved = state.config.wildcard_access_url.as_deref();
    let before = state.store.regions().await?.into_iter().find(|r| r.region.name == name).map(|r| r.region);
    let changed = audit::change(Some(&admin), "region.update", "region", &name, &source);
    let audit = |row: &_| changed.with_changes(diff(before.as_ref(), row));
    let row = state.store.update_region(&name, req.display_name.as_deref(), &req.hosts, reserved, audit).await?;
    tracing::info!(region = %name, by = %admin.username, hosts = ?req.hosts, "region changed");
    let region = region_list(&state).await?.into_iter().find(|r| r.id == row.id);
    region.map(axum::Json).ok_or_else(|| ApiError::NotFound(format!("No region named {name:?}.")))
}

/// `{"field": [before, after]}` for the fields of a region that differ.
fn diff(before: Option<&crate::store::RegionRow>, after: &crate::store::RegionRow) -> serde_json::Value {
    let fields = |r: Option<&crate::store::RegionRow>| {
        [
            ("display_name", r.map(|r| r.display_name.clone())),
            ("access_url", r.and_then(|r| r.access_url.clone())),
            ("wildcard_hostname", r.and_then(|r| r.wildcard_hostname.clone())),
        ]
    };
    let changed = fields(before).into_iter().zip(fields(Some(after))).filter(|((_, b), (_, a))| b != a);
    serde_json::Value::Object(changed.map(|((k, b), (_, a))| (k.to_owned(), serde_json::json!([b, a]))).collect())
}

fn check_display_name(display: &str) -> ApiResult<()> {
    if display.trim().is_empty() || display.chars().count() > MAX_DISPLAY_NAME || display.chars().any(char::is_control)
    {
        return Err(ApiError::BadRequest(format!(
            "Invalid display name: 1 to {MAX_DISPLAY_NAME} printable characters."
        )));
    }
    Ok(())
}

pub async fn delete(
    State(state): State<AppState>,
    Admin(admin): Admin,
    source: Source,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let deleted = audit::change(Some(&admin), "region.delete", "region", &name, &source);
    state.store.delete_region(&name, &deleted).await?;
    tracing::info!(region = %name, by = %admin.username, "region deleted");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn regenerate_token(
    State(state): State<AppState>,
    Admin(admin): Admin,
    source: Source,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<RegenerateTokenResponse>> {
    // The token itself never goes into the log: only that it changed.
    let regenerated = audit::change(Some(&admin), "region.regenerate_token", "region", &name, &source);
    let token = state.store.regenerate_token(&name, &regenerated).await?;
    tracing::info!(region = %name, by = %admin.username, "proxy token regenerated");
    Ok(axum::Json(RegenerateTokenResponse { proxy_token: token.encode().expose().to_owned() }))
}

/// The API form of a region. The primary is the coordinator answering this
/// request, so it is `ok` by construction; other regions take the best of
/// their replicas' health, and the freshest replica's URLs.
fn to_api(state: &AppState, r: RegionWithReplicas) -> Region {
    let primary = r.region.name == PRIMARY_REGION;
    let freshest = r.replicas.first();
    let status = if primary { Status::Ok } else { Status::combine(r.replicas.iter().map(|x| x.status)) };
    let access_url = if primary {
        Some(state.config.access_url.to_string().trim_end_matches('/').to_owned())
    } else {
        freshest.map(|x| x.access_url.clone())
    };
    Region {
        id: r.region.id,
        name: r.region.name,
        display_name: r.region.display_name,
        status,
        healthy: status == Status::Ok,
        path_app_url: access_url.clone(),
        access_url,
        wildcard_hostname: if primary { state.config.wildcard_access_url.clone() } else { r.wildcard_hostname },
        version: if primary { Some(meridian_regions::VERSION.into()) } else { freshest.map(|x| x.version.clone()) },
        last_heartbeat_at: if primary { Some(chrono::Utc::now()) } else { freshest.map(|x| x.last_heartbeat_at) },
        links: best_links(&r.replicas),
        replicas: r.replicas,
    }
}

/// Per other region, the shortest round trip a healthy replica's relay measured.
fn best_links(replicas: &[meridian_regions::api::Replica]) -> Vec<meridian_regions::api::LinkRtt> {
    let mut best: std::collections::BTreeMap<&str, u32> = std::collections::BTreeMap::new();
    for link in replicas.iter().filter(|r| r.status == Status::Ok).flat_map(|r| &r.link_rtts) {
        let e = best.entry(link.region.as_str()).or_insert(link.rtt_ms);
        *e = (*e).min(link.rtt_ms);
    }
    best.into_iter()
        .map(|(region, rtt_ms)| meridian_regions::api::LinkRtt { region: region.to_owned(), rtt_ms })
        .collect()
}
