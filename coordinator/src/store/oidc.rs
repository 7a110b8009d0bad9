//! OpenID Connect: sign-ins under way (`oidc_flows`) and the users linked to
//! the provider (`user_identities`), migration `0012_oidc.sql`.

use super::audit::{write_audit, AuditRecord};
use super::users::UserRow;
use super::{is_unique_violation, Store};
use crate::error::{ApiError, ApiResult};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// What a user linked to the provider has instead of a password hash: no
/// PHC string, so no password ever matches it.
pub const NO_PASSWORD: &str = "!oidc";

/// A sign-in under way, as its callback takes it.
pub struct StoredFlow {
    pub nonce: String,
    pub verifier_sealed: Vec<u8>,
    pub redirect: String,
    pub expired: bool,
}

impl Store {
    /// Keeps a sign-in under way until `expires_at`; sign-ins abandoned long
    /// ago go at the same time.
    pub async fn save_oidc_flow(
        &self,
        state_hash: &[u8],
        nonce: &str,
        verifier_sealed: &[u8],
        redirect: &str,
        expires_at: DateTime<Utc>,
    ) -> ApiResult<()> {
        sqlx::query("DELETE FROM oidc_flows WHERE expires_at < now() - interval '1 hour'").execute(&self.pool).await?;
        sqlx::query(
            "INSERT INTO oidc_flows (state_hash, nonce, verifier_sealed, redirect, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(state_hash)
        .bind(nonce)
        .bind(verifier_sealed)
        .bind(redirect)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes the sign-in under way with this state (once: a second callback
    /// with the same state finds nothing).
    pub async fn take_oidc_flow(&self, state_hash: &[u8]) -> ApiResult<Option<StoredFlow>> {
        let row: Option<(String, Vec<u8>, String, bool)> = sqlx::query_as(
            "DELETE FROM oidc_flows WHERE state_hash = $1 \
             RETURNING nonce, verifier_sealed, redirect, expires_at < now()",
        )
        .bind(state_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(nonce, verifier_sealed, redirect, expired)| StoredFlow {
            nonce,
            verifier_sealed,
            redirect,
            expired,
        }))
    }

    async fn user_by_id(&self, user_id: Uuid) -> ApiResult<Option<UserRow>> {
        Ok(sqlx::query_as("SELECT id, username, password_hash, admin, created_at FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The user linked to the provider's `subject` at `issuer`.
    pub async fn user_by_identity(&self, issuer: &str, subject: &str) -> ApiResult<Option<UserRow>> {
        Ok(sqlx::query_as(
            "SELECT u.id, u.username, u.password_hash, u.admin, u.created_at \
             FROM user_identities i JOIN users u ON u.id = i.user_id WHERE i.issuer = $1 AND i.subject = $2",
        )
        .bind(issuer)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Creates a user linked to the provider (no password), with its `audit` record.
    pub async fn create_oidc_user(
        &self,
        username: &str,
        admin: bool,
        issuer: &str,
        subject: &str,
        audit: &AuditRecord,
    ) -> ApiResult<UserRow> {
        let mut tx = self.pool.begin().await?;
        let row: UserRow = sqlx::query_as(
            "INSERT INTO users (id, username, password_hash, admin) VALUES ($1, $2, $3, $4) \
             RETURNING id, username, password_hash, admin, created_at",
        )
        .bind(Uuid::new_v4())
        .bind(username)
        .bind(NO_PASSWORD)
        .bind(admin)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                ApiError::Conflict(format!(
                    "A user named {username:?} already exists and is not linked to this identity provider; \
                     an admin can rename or remove them."
                ))
            } else {
                e.into()
            }
        })?;
        sqlx::query("INSERT INTO user_identities (user_id, issuer, subject) VALUES ($1, $2, $3)")
            .bind(row.id)
            .bind(issuer)
            .bind(subject)
            .execute(&mut *tx)
            .await?;
        write_audit(&mut *tx, audit).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Makes `user_id` an admin or a member, with its `audit` record.
    pub async fn set_admin(&self, user_id: Uuid, admin: bool, audit: &AuditRecord) -> ApiResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE users SET admin = $2 WHERE id = $1").bind(user_id).bind(admin).execute(&mut *tx).await?;
        write_audit(&mut *tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// Keeps a code for `meridian login` until `expires_at` (old ones go).
    pub async fn save_cli_code(
        &self,
        code_hash: &[u8],
        user_id: Uuid,
        challenge: &str,
        expires_at: DateTime<Utc>,
    ) -> ApiResult<()> {
        sqlx::query("DELETE FROM cli_auth_codes WHERE expires_at < now() - interval '1 hour'")
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO cli_auth_codes (code_hash, user_id, challenge, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(code_hash)
            .bind(user_id)
            .bind(challenge)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes a code (once): its user, its PKCE challenge, whether it expired.
    pub async fn take_cli_code(&self, code_hash: &[u8]) -> ApiResult<Option<(UserRow, String, bool)>> {
        let row: Option<(String, bool, Uuid)> = sqlx::query_as(
            "DELETE FROM cli_auth_codes WHERE code_hash = $1 RETURNING challenge, expires_at < now(), user_id",
        )
        .bind(code_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some((challenge, expired, user_id)) = row else { return Ok(None) };
        let user = self.user_by_id(user_id).await?;
        Ok(user.map(|u| (u, challenge, expired)))
    }
}

impl Store {
    /// Keeps `user_id`'s (sealed) refresh token, to be used from now on.
    pub async fn save_refresh(&self, user_id: Uuid, sealed: &[u8]) -> ApiResult<()> {
        sqlx::query(
            "INSERT INTO oidc_refresh (user_id, refresh_sealed, checked_at) VALUES ($1, $2, now()) \
             ON CONFLICT (user_id) DO UPDATE SET refresh_sealed = $2, checked_at = now()",
        )
        .bind(user_id)
        .bind(sealed)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Claims the refresh token most overdue for a check (not checked for
    /// `every`, its user not suspended): marked checked now, so no other
    /// coordinator replica uses it meanwhile (a provider that rotates refresh
    /// tokens would take a second use for a stolen token).
    pub async fn claim_due_refresh(&self, every: std::time::Duration) -> ApiResult<Option<(UserRow, Vec<u8>)>> {
        let every = chrono::Duration::from_std(every).unwrap_or(chrono::Duration::MAX);
        let claimed: Option<(Uuid, Vec<u8>)> = sqlx::query_as(
            "UPDATE oidc_refresh SET checked_at = now() WHERE user_id = ( \
                 SELECT r.user_id FROM oidc_refresh r \
                 WHERE r.checked_at < $1 AND NOT EXISTS \
                     (SELECT 1 FROM user_access a WHERE a.user_id = r.user_id AND a.suspended_at IS NOT NULL) \
                 ORDER BY r.checked_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING user_id, refresh_sealed",
        )
        .bind(Utc::now() - every)
        .fetch_optional(&self.pool)
        .await?;
        let Some((user_id, sealed)) = claimed else { return Ok(None) };
        let user = self.user_by_id(user_id).await?;
        Ok(user.map(|u| (u, sealed)))
    }

    /// Forgets `user_id`'s refresh token (the provider refused it).
    pub async fn forget_refresh(&self, user_id: Uuid) -> ApiResult<()> {
        sqlx::query("DELETE FROM oidc_refresh WHERE user_id = $1").bind(user_id).execute(&self.pool).await?;
        Ok(())
    }
}
