//! How users stand (migration `0011_user_access.sql`): suspension, revoked
//! sessions, last sign-in; the user list and the sessions of one user.
//!
//! A suspension or a revocation ends the user's sessions here and, through
//! the route feed ([`Store::route_snapshot`], [`Store::route_changes`]),
//! tells every region to refuse the tokens it already holds and to cut the
//! connections they opened.

use super::audit::{write_audit, AuditRecord};
use super::Store;
use crate::error::ApiResult;
use chrono::{DateTime, Utc};
use meridian_regions::api::{SessionSummary, UserAccess, UserSummary};
use uuid::Uuid;

/// user, suspended at, version, the revoked sessions still remembered.
pub(super) type AccessRow = (Uuid, Option<DateTime<Utc>>, i64, Vec<Uuid>);

/// The access row's query head, as a literal for `concat!`.
macro_rules! access_select {
    () => {
        "SELECT a.user_id, a.suspended_at, a.version, \
         ARRAY(SELECT r.session_id FROM revoked_sessions r \
               WHERE r.user_id = a.user_id AND r.forget_at > now() ORDER BY r.session_id) \
         FROM user_access a"
    };
}
pub(super) use access_select;

/// What regions get of an access row.
pub(super) fn access((user_id, suspended_at, _, revoked_sessions): AccessRow) -> UserAccess {
    UserAccess { user_id, suspended: suspended_at.is_some(), revoked_sessions }
}

#[derive(sqlx::FromRow)]
struct SummaryRow {
    id: Uuid,
    username: String,
    admin: bool,
    created_at: DateTime<Utc>,
    suspended_at: Option<DateTime<Utc>>,
    last_sign_in_at: Option<DateTime<Utc>>,
    sessions: i64,
    oidc: bool,
}

impl From<SummaryRow> for UserSummary {
    fn from(r: SummaryRow) -> Self {
        UserSummary {
            user: meridian_regions::api::User {
                id: r.id,
                username: r.username,
                admin: r.admin,
                created_at: r.created_at,
            },
            login_type: if r.oidc { "oidc" } else { "password" }.into(),
            status: if r.suspended_at.is_some() { "suspended" } else { "active" }.into(),
            suspended_at: r.suspended_at,
            last_sign_in_at: r.last_sign_in_at,
            sessions: r.sessions,
        }
    }
}

/// The summary query's head, as a literal for `concat!`.
macro_rules! summary_select {
    () => {
        "SELECT u.id, u.username, u.admin, u.created_at, a.suspended_at, a.last_sign_in_at, \
         (SELECT count(*) FROM sessions s WHERE s.user_id = u.id AND s.scope = 'user' AND s.expires_at > now()) \
         AS sessions, \
         EXISTS (SELECT 1 FROM user_identities i WHERE i.user_id = u.id) AS oidc \
         FROM users u LEFT JOIN user_access a ON a.user_id = u.id"
    };
}

impl Store {
    /// Every user, by name.
    pub async fn user_summaries(&self) -> ApiResult<Vec<UserSummary>> {
        let rows: Vec<SummaryRow> =
            sqlx::query_as(concat!(summary_select!(), " ORDER BY u.username")).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// One user, by name.
    pub async fn user_summary(&self, username: &str) -> ApiResult<Option<UserSummary>> {
        let row: Option<SummaryRow> = sqlx::query_as(concat!(summary_select!(), " WHERE u.username = $1"))
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    /// Whether `user_id` is suspended.
    pub async fn is_suspended(&self, user_id: Uuid) -> ApiResult<bool> {
        let suspended: Option<bool> =
            sqlx::query_scalar("SELECT suspended_at IS NOT NULL FROM user_access WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(suspended.unwrap_or(false))
    }

    /// Suspends `user_id` (ending every session of theirs: regions refuse
    /// the tokens they hold and cut what those opened) or reactivates them,
    /// with the `audit` record; whether anything changed.
    pub async fn set_suspended(&self, user_id: Uuid, suspended: bool, audit: &AuditRecord) -> ApiResult<bool> {
        let mut tx = self.pool.begin().await?;
        let changed = if suspended {
            let ended = revoke(&mut tx, user_id, None).await?;
            let row: Option<Uuid> = sqlx::query_scalar(
                "INSERT INTO user_access (user_id, suspended_at) VALUES ($1, now()) \
                 ON CONFLICT (user_id) DO UPDATE SET suspended_at = now() \
                 WHERE user_access.suspended_at IS NULL RETURNING user_id",
            )
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
            row.is_some() || ended > 0
        } else {
            sqlx::query("UPDATE user_access SET suspended_at = NULL WHERE user_id = $1 AND suspended_at IS NOT NULL")
                .bind(user_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0
        };
        if changed {
            write_audit(&mut *tx, audit).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Ends every session of `user_id` (signed out everywhere: regions refuse
    /// the tokens those minted and cut what they opened), with the `audit`
    /// record; how many sign-in sessions ended.
    pub async fn revoke_sessions(&self, user_id: Uuid, audit: &AuditRecord) -> ApiResult<i64> {
        let mut tx = self.pool.begin().await?;
        let ended = revoke(&mut tx, user_id, None).await?;
        write_audit(&mut *tx, audit).await?;
        tx.commit().await?;
        Ok(ended)
    }

    /// Ends one sign-in session of `user_id` and the app sessions under it
    /// (regions refuse the tokens it minted and cut what they opened), with
    /// the `audit` record; whether there was one.
    pub async fn revoke_session(&self, user_id: Uuid, session: Uuid, audit: &AuditRecord) -> ApiResult<bool> {
        let mut tx = self.pool.begin().await?;
        let ended = revoke(&mut tx, user_id, Some(session)).await?;
        if ended > 0 {
            write_audit(&mut *tx, audit).await?;
        }
        tx.commit().await?;
        Ok(ended > 0)
    }

    /// Forgets revoked sessions no token can come from any more.
    pub async fn forget_revoked_sessions(&self) -> ApiResult<u64> {
        let done = sqlx::query("DELETE FROM revoked_sessions WHERE forget_at <= now()").execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    /// The live sign-in sessions of `user_id`, newest first.
    pub async fn sessions_of(&self, user_id: Uuid) -> ApiResult<Vec<SessionSummary>> {
        let rows: Vec<(Uuid, DateTime<Utc>, DateTime<Utc>, i64)> = sqlx::query_as(
            "SELECT s.id, s.created_at, s.expires_at, \
             (SELECT count(*) FROM sessions c WHERE c.parent_id = s.id AND c.expires_at > now()) \
             FROM sessions s WHERE s.user_id = $1 AND s.scope = 'user' AND s.expires_at > now() \
             ORDER BY s.created_at DESC",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, created_at, expires_at, app_sessions)| SessionSummary {
                id,
                created_at,
                expires_at,
                app_sessions,
            })
            .collect())
    }
}

/// Notes a sign-in of `user_id` (in the sign-in's transaction).
pub(super) async fn note_sign_in<'e>(exec: impl sqlx::PgExecutor<'e>, user_id: Uuid) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO user_access (user_id, last_sign_in_at) VALUES ($1, now()) \
         ON CONFLICT (user_id) DO UPDATE SET last_sign_in_at = now()",
    )
    .bind(user_id)
    .execute(exec)
    .await?;
    Ok(())
}

/// Ends `user_id`'s sign-in session `only` (else all of theirs) with the
/// app sessions under them, remembers them as revoked and tells regions
/// (the `user_access` row's change is a route-feed change); how many
/// sign-in sessions ended.
async fn revoke(tx: &mut sqlx::PgConnection, user_id: Uuid, only: Option<Uuid>) -> ApiResult<i64> {
    let ended: Vec<Uuid> = sqlx::query_scalar(
        "WITH ended AS (DELETE FROM sessions WHERE user_id = $1 AND scope = 'user' AND ($2::uuid IS NULL OR id = $2) \
                        RETURNING id, expires_at) \
         INSERT INTO revoked_sessions (session_id, user_id, forget_at) \
         SELECT id, $1, expires_at + interval '1 day' FROM ended \
         ON CONFLICT (session_id) DO NOTHING RETURNING session_id",
    )
    .bind(user_id)
    .bind(only)
    .fetch_all(&mut *tx)
    .await?;
    if only.is_none() {
        // App sessions go with their parents (ON DELETE CASCADE); any left
        // without one (none are made so) go too.
        sqlx::query("DELETE FROM sessions WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
    }
    if !ended.is_empty() {
        sqlx::query(
            "INSERT INTO user_access (user_id, sessions_revoked_at) VALUES ($1, now()) \
             ON CONFLICT (user_id) DO UPDATE SET sessions_revoked_at = now()",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(i64::try_from(ended.len()).unwrap_or(i64::MAX))
}
