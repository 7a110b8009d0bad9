//! The audit log: who changed what through the API, and when (migration
//! `0009_audit_log.sql`). A change's record is written in the change's own
//! transaction ([`write_audit`], called by the store method that makes the
//! change): a change is never stored without its record, whatever dies in
//! between. Listing is newest first with keyset paging (`before` an id), so
//! a page costs the same at the millionth row as at the first.

use super::Store;
use crate::error::ApiResult;
use chrono::{DateTime, Utc};
use meridian_regions::api::{AuditEntry, AuditQuery};
use uuid::Uuid;

/// Most records one page returns.
pub const MAX_PAGE: i64 = 1000;
/// Records deleted per statement when enforcing retention (short locks).
const PRUNE_BATCH: i64 = 10_000;

/// A state change to record.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub actor_id: Option<Uuid>,
    pub actor: Option<String>,
    pub action: &'static str,
    pub target_kind: &'static str,
    pub target: String,
    pub source: Option<String>,
    /// `{"field": [before, after]}`; never a secret.
    pub changes: serde_json::Value,
}

impl AuditRecord {
    /// The same record with the fields that changed.
    pub fn with_changes(self, changes: serde_json::Value) -> Self {
        Self { changes, ..self }
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    at: DateTime<Utc>,
    actor: Option<String>,
    action: String,
    target_kind: String,
    target: String,
    source: Option<String>,
    changes: serde_json::Value,
}

/// Writes `r` with `exec`: the transaction of the change it describes.
pub(super) async fn write_audit<'e>(exec: impl sqlx::PgExecutor<'e>, r: &AuditRecord) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO audit_log (actor_id, actor, action, target_kind, target, source, changes) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(r.actor_id)
    .bind(&r.actor)
    .bind(r.action)
    .bind(r.target_kind)
    .bind(&r.target)
    .bind(&r.source)
    .bind(&r.changes)
    .execute(exec)
    .await?;
    Ok(())
}

impl Store {
    /// Writes a record of something that changed nothing (a failed sign-in).
    pub async fn append_audit(&self, r: &AuditRecord) -> ApiResult<()> {
        write_audit(&self.pool, r).await
    }

    /// A page of records matching `q`, newest first (at most `limit`, capped at [`MAX_PAGE`]).
    pub async fn audit_log(&self, q: &AuditQuery, limit: i64) -> ApiResult<Vec<AuditEntry>> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, at, actor, action, target_kind, target, source, changes FROM audit_log \
             WHERE ($1::text IS NULL OR actor = $1) \
               AND ($2::text IS NULL OR action = $2 OR action LIKE $2 || '.%') \
               AND ($3::text IS NULL OR target = $3) \
               AND ($4::timestamptz IS NULL OR at >= $4) \
               AND ($5::timestamptz IS NULL OR at < $5) \
               AND ($6::bigint IS NULL OR id < $6) \
             ORDER BY id DESC LIMIT $7",
        )
        .bind(&q.user)
        .bind(&q.action)
        .bind(&q.target)
        .bind(q.since)
        .bind(q.until)
        .bind(q.before)
        .bind(limit.clamp(1, MAX_PAGE))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AuditEntry {
                id: r.id,
                at: r.at,
                actor: r.actor,
                action: r.action,
                target_kind: r.target_kind,
                target: r.target,
                source: r.source,
                changes: r.changes,
            })
            .collect())
    }

    /// Deletes records older than `cutoff`, a batch per statement so no lock
    /// is held long; how many went.
    pub async fn prune_audit_log(&self, cutoff: DateTime<Utc>) -> ApiResult<u64> {
        self.prune(
            "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at < $1 ORDER BY at LIMIT $2)",
            cutoff,
        )
        .await
    }

    /// Runs `delete` (records older than `$1`, at most `$2` of them) until
    /// it deletes fewer than a batch: no statement holds a lock for long.
    pub(super) async fn prune(&self, delete: &'static str, cutoff: DateTime<Utc>) -> ApiResult<u64> {
        let mut total = 0;
        loop {
            let deleted = sqlx::query(delete).bind(cutoff).bind(PRUNE_BATCH).execute(&self.pool).await?.rows_affected();
            total += deleted;
            if deleted < PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}
