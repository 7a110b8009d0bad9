//! The audit log: `GET /api/v2/audit-log` (admins), and how handlers make
//! the records of their changes ([`change`]), which the store writes in the
//! change's own transaction. A failed sign-in changes nothing: its record
//! is written on its own ([`record`]); one that cannot be is logged and
//! counted in `meridian_audit_write_failures_total`.

use super::auth::{client_addr, Admin};
use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::store::{AuditRecord, UserRow, MAX_AUDIT_PAGE};
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use meridian_regions::api::{AuditLog, AuditQuery};
use std::sync::atomic::{AtomicU64, Ordering};

/// Records per page when the caller names no `limit`.
const DEFAULT_PAGE: i64 = 100;

/// Audit records that could not be written, since this process started.
pub static WRITE_FAILURES: AtomicU64 = AtomicU64::new(0);

pub async fn list(
    State(state): State<AppState>,
    Admin(_): Admin,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<AuditLog>> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(format!("Invalid audit-log query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be 1 to {MAX_AUDIT_PAGE}.")));
    }
    let entries = state.store.audit_log(&q, limit).await?;
    let next = if entries.len() as i64 == limit { entries.last().map(|e| e.id) } else { None };
    Ok(axum::Json(AuditLog { entries, next }))
}

/// Where a request came from, for the record ([`client_addr`]).
pub struct Source(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Source(client_addr(parts).to_string()))
    }
}

/// A change by `actor` (None: nobody signed in, as for a failed sign-in,
/// whose `tried` name is kept) to `target` of `kind`.
pub fn change(
    actor: Option<&UserRow>,
    action: &'static str,
    kind: &'static str,
    target: impl Into<String>,
    source: &Source,
) -> AuditRecord {
    AuditRecord {
        actor_id: actor.map(|u| u.id),
        actor: actor.map(|u| u.username.clone()),
        action,
        target_kind: kind,
        target: target.into(),
        source: Some(source.0.clone()),
        changes: serde_json::json!({}),
    }
}

/// Writes the record of something that changed nothing (a failed sign-in).
pub async fn record(state: &AppState, record: AuditRecord) {
    if let Err(e) = state.store.append_audit(&record).await {
        WRITE_FAILURES.fetch_add(1, Ordering::Relaxed);
        tracing::error!(action = record.action, target = %record.target, "cannot write an audit record: {e}");
    }
}
