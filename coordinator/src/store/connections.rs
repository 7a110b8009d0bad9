//! The connection log: sessions regions served or refused (migration
//! `0010_connection_log.sql`). Regions send batches with ids they chose, so a
//! batch sent again is stored once; listing is newest stored first with
//! keyset paging (`before` a `seq`), so a page costs the same at the
//! millionth row as at the first.

use super::Store;
use crate::error::ApiResult;
use chrono::{DateTime, Utc};
use meridian_regions::connection_log::{ConnectionEntry, ConnectionQuery, Ending, Kind, Record, Statuses};
use std::collections::HashMap;
use uuid::Uuid;

/// Most records one page returns.
pub const MAX_PAGE: i64 = 1000;

#[derive(sqlx::FromRow)]
struct Row {
    seq: i64,
    id: Uuid,
    region: String,
    replica_id: Uuid,
    kind: String,
    started_at: DateTime<Utc>,
    ended_at: DateTime<Utc>,
    user_id: Option<Uuid>,
    username: Option<String>,
    owner: String,
    workspace: String,
    agent: Option<String>,
    agent_id: Option<Uuid>,
    target: String,
    client_addr: Option<String>,
    user_agent: Option<String>,
    bytes_up: i64,
    bytes_down: i64,
    requests: i64,
    statuses: serde_json::Value,
    ending: String,
    reason: Option<String>,
}

impl Store {
    /// Stores `records` of `region` (each once, by id): how many were new.
    pub async fn store_connections(&self, region: &str, records: &[Record]) -> ApiResult<u64> {
        if records.is_empty() {
            return Ok(0);
        }
        let mut ids: Vec<Uuid> = records.iter().filter_map(|r| r.user_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let names: HashMap<Uuid, String> = sqlx::query_as("SELECT id, username FROM users WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect();
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO connection_log (id, region, replica_id, kind, started_at, ended_at, user_id, username, \
             owner, workspace, agent, agent_id, target, client_addr, user_agent, bytes_up, bytes_down, requests, \
             statuses, ending, reason) ",
        );
        insert.push_values(records, |mut row, r| {
            let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            row.push_bind(r.id)
                .push_bind(region)
                .push_bind(r.replica_id)
                .push_bind(r.kind.as_str())
                .push_bind(r.started_at)
                .push_bind(r.ended_at)
                .push_bind(r.user_id)
                .push_bind(r.user_id.and_then(|id| names.get(&id).cloned()))
                .push_bind(&r.owner)
                .push_bind(&r.workspace)
                .push_bind(&r.agent)
                .push_bind(r.agent_id)
                .push_bind(&r.target)
                .push_bind(&r.client_addr)
                .push_bind(&r.user_agent)
                .push_bind(count(r.bytes_up))
                .push_bind(count(r.bytes_down))
                .push_bind(count(r.requests))
                .push_bind(serde_json::to_value(r.statuses).unwrap_or_default())
                .push_bind(r.ending.as_str())
                .push_bind(&r.reason);
        });
        insert.push(" ON CONFLICT (id) DO NOTHING");
        Ok(insert.build().execute(&self.pool).await?.rows_affected())
    }

    /// A page of records matching `q`, newest stored first (at most `limit`,
    /// capped at [`MAX_PAGE`]). `q.user` is the username (a member's own, set by the API).
    pub async fn connection_log(&self, q: &ConnectionQuery, limit: i64) -> ApiResult<Vec<ConnectionEntry>> {
        let (owner, workspace) = match q.workspace.as_deref().map(|w| w.split_once('/')) {
            Some(Some((owner, name))) => (Some(owner), Some(name)),
            Some(None) => (None, q.workspace.as_deref()),
            None => (None, None),
        };
        // `refused` lists refusals of every kind; a kind lists its sessions served.
        let refused = q.kind.as_deref().map(|k| k == Ending::Refused.as_str());
        let kind = q.kind.as_deref().filter(|_| refused == Some(false));
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT seq, id, region, replica_id, kind, started_at, ended_at, user_id, username, owner, workspace, \
             agent, agent_id, target, client_addr, user_agent, bytes_up, bytes_down, requests, statuses, ending, \
             reason FROM connection_log \
             WHERE ($1::text IS NULL OR username = $1) \
               AND ($2::text IS NULL OR owner = $2) \
               AND ($3::text IS NULL OR workspace = $3) \
               AND ($4::text IS NULL OR region = $4) \
               AND ($5::text IS NULL OR kind = $5) \
               AND ($6::boolean IS NULL OR (ending = 'refused') = $6) \
               AND ($7::timestamptz IS NULL OR started_at >= $7) \
               AND ($8::timestamptz IS NULL OR started_at < $8) \
               AND ($9::bigint IS NULL OR seq < $9) \
             ORDER BY seq DESC LIMIT $10",
        )
        .bind(&q.user)
        .bind(owner)
        .bind(workspace)
        .bind(&q.region)
        .bind(kind)
        .bind(refused)
        .bind(q.since)
        .bind(q.until)
        .bind(q.before)
        .bind(limit.clamp(1, MAX_PAGE))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().filter_map(entry).collect())
    }

    /// Deletes records that started before `cutoff`, a batch per statement so
    /// no lock is held long; how many went.
    pub async fn prune_connection_log(&self, cutoff: DateTime<Utc>) -> ApiResult<u64> {
        self.prune(
            "DELETE FROM connection_log WHERE seq IN \
             (SELECT seq FROM connection_log WHERE started_at < $1 ORDER BY started_at LIMIT $2)",
            cutoff,
        )
        .await
    }
}

/// A stored row as the API shows it (a row of a kind or ending this release
/// does not know, written by a newer one, is left out).
fn entry(r: Row) -> Option<ConnectionEntry> {
    let word = |s: &str| serde_json::Value::String(s.to_owned());
    let kind: Kind = serde_json::from_value(word(&r.kind)).ok()?;
    let ending: Ending = serde_json::from_value(word(&r.ending)).ok()?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    Some(ConnectionEntry {
        seq: r.seq,
        region: r.region,
        user: r.username,
        record: Record {
            id: r.id,
            kind,
            started_at: r.started_at,
            ended_at: r.ended_at,
            user_id: r.user_id,
            owner: r.owner,
            workspace: r.workspace,
            agent: r.agent,
            agent_id: r.agent_id,
            target: r.target,
            replica_id: r.replica_id,
            client_addr: r.client_addr,
            user_agent: r.user_agent,
            bytes_up: count(r.bytes_up),
            bytes_down: count(r.bytes_down),
            requests: count(r.requests),
            statuses: serde_json::from_value::<Statuses>(r.statuses).unwrap_or_default(),
            ending,
            reason: r.reason,
        },
    })
}
