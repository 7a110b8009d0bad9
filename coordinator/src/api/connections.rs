//! The connection log: `POST /api/v2/proxies/me/connection-log` (a region's
//! proxy stores its records) and `GET /api/v2/connection-log` (admins read
//! everyone's; members their own).

use super::auth::{CurrentUser, ProxyRegion};
use super::json::Json;
use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::store::MAX_CONNECTION_PAGE;
use axum::extract::{Query, State};
use meridian_regions::connection_log::{Batch, ConnectionLog, ConnectionQuery, Kind, Stored, MAX_BATCH};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Records per page when the caller names no `limit`.
const DEFAULT_PAGE: i64 = 100;
/// The largest batch body: [`MAX_BATCH`] records of at most ~4 KiB each (a
/// user agent of 256 characters, each escaped to six bytes, is 1.5 KiB).
pub const MAX_BATCH_BODY: usize = 2 << 20;
/// Longest text a record may carry in one field (names are far shorter; a
/// user agent is cut to 256 characters by the region).
const MAX_FIELD: usize = 2048;

/// Records stored and duplicates refused, per region, since this process started.
pub static STORED: Mutex<BTreeMap<String, (u64, u64)>> = Mutex::new(BTreeMap::new());

pub async fn ingest(
    State(state): State<AppState>,
    ProxyRegion(region): ProxyRegion,
    Json(batch): Json<Batch>,
) -> ApiResult<axum::Json<Stored>> {
    if batch.records.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!("A batch carries at most {MAX_BATCH} records.")));
    }
    if let Some(r) = batch.records.iter().find(|r| too_long(r)) {
        return Err(ApiError::BadRequest(format!("Record {} has a field over {MAX_FIELD} bytes.", r.id)));
    }
    let stored = state.store.store_connections(&region.name, &batch.records).await?;
    let duplicates = batch.records.len() as u64 - stored;
    {
        let mut counts = STORED.lock().unwrap_or_else(|e| e.into_inner());
        let entry = counts.entry(region.name.clone()).or_default();
        (entry.0, entry.1) = (entry.0 + stored, entry.1 + duplicates);
    }
    Ok(axum::Json(Stored { stored, duplicates }))
}

fn too_long(r: &meridian_regions::connection_log::Record) -> bool {
    let texts = [Some(&r.owner), Some(&r.workspace), r.agent.as_ref(), Some(&r.target), r.client_addr.as_ref()];
    let free = [r.user_agent.as_ref(), r.reason.as_ref()];
    texts.iter().chain(free.iter()).flatten().any(|t| t.len() > MAX_FIELD)
}

pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    query: Result<Query<ConnectionQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<ConnectionLog>> {
    let Query(mut q) =
        query.map_err(|e| ApiError::BadRequest(format!("Invalid connection-log query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_CONNECTION_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be 1 to {MAX_CONNECTION_PAGE}.")));
    }
    if let Some(kind) = &q.kind {
        let known = Kind::ALL.iter().any(|k| k.as_str() == kind) || kind == "refused";
        if !known {
            return Err(ApiError::BadRequest(format!(
                "kind {kind:?} is none of app, websocket, tcp, ssh, terminal, refused."
            )));
        }
    }
    if !user.admin {
        // A member reads their own sessions, and nobody else's.
        match &q.user {
            Some(other) if *other != user.username => {
                return Err(ApiError::Forbidden("Members see their own connections only.".into()))
            }
            _ => q.user = Some(user.username.clone()),
        }
    }
    let entries = state.store.connection_log(&q, limit).await?;
    let next = if entries.len() as i64 == limit { entries.last().map(|e| e.seq) } else { None };
    Ok(axum::Json(ConnectionLog { entries, next }))
}
