//! Users and their sessions.

use super::audit::{write_audit, AuditRecord};
use super::{is_unique_violation, Store};
use crate::error::{ApiError, ApiResult};
use crate::secret;
use chrono::{DateTime, Utc};
use meridian_regions::api::User;
use meridian_regions::token::Token;
use uuid::Uuid;

/// How long a session lasts after login.
pub const SESSION_LIFETIME: chrono::Duration = chrono::Duration::days(7);

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub username: String,
    pub password_hash: String,
    pub admin: bool,
    pub created_at: DateTime<Utc>,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User { id: r.id, username: r.username, admin: r.admin, created_at: r.created_at }
    }
}

impl Store {
    /// Creates the first user, as admin, only while no user exists, with the
    /// `audit` record made of it. The table lock makes two concurrent
    /// first-user calls create one user.
    pub async fn create_first_user(
        &self,
        username: &str,
        password_hash: &str,
        audit: impl FnOnce(&UserRow) -> AuditRecord + Send,
    ) -> ApiResult<UserRow> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("LOCK TABLE users IN EXCLUSIVE MODE").execute(&mut *tx).await?;
        let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users)").fetch_one(&mut *tx).await?;
        if any {
            return Err(ApiError::Conflict(
                "The first user already exists; sign in and ask an admin to create users.".into(),
            ));
        }
        let row = insert_user(&mut *tx, username, password_hash, true).await?;
        write_audit(&mut *tx, &audit(&row)).await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        admin: bool,
        audit: &AuditRecord,
    ) -> ApiResult<UserRow> {
        let mut tx = self.pool.begin().await?;
        let row = insert_user(&mut *tx, username, password_hash, admin).await?;
        write_audit(&mut *tx, audit).await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn user_by_name(&self, username: &str) -> ApiResult<Option<UserRow>> {
        Ok(sqlx::query_as("SELECT id, username, password_hash, admin, created_at FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Starts a session for `user_id`; the returned token is shown once.
    pub async fn create_session(&self, user_id: Uuid, scope: Scope) -> ApiResult<Token> {
        insert_session(&self.pool, user_id, scope).await
    }

    /// Signs `user_id` in: a user session, with its `audit` record.
    pub async fn sign_in(&self, user_id: Uuid, audit: &AuditRecord) -> ApiResult<Token> {
        let mut tx = self.pool.begin().await?;
        let token = insert_session(&mut *tx, user_id, Scope::User).await?;
        super::access::note_sign_in(&mut *tx, user_id).await?;
        write_audit(&mut *tx, audit).await?;
        tx.commit().await?;
        Ok(token)
    }

    /// An app session for the user of user session `parent`, good for the
    /// one app `binding` names only, ending when `parent` ends (signing out
    /// ends both); `None` if `parent` has ended.
    pub async fn create_app_session(
        &self,
        parent: Uuid,
        binding: Option<&str>,
    ) -> ApiResult<Option<(Token, DateTime<Utc>)>> {
        let (token, hash) = secret::new_token(Uuid::new_v4());
        let expires_at: Option<DateTime<Utc>> = sqlx::query_scalar(
            "INSERT INTO sessions (id, user_id, secret_hash, expires_at, scope, parent_id, binding) \
             SELECT $1, user_id, $2, LEAST(expires_at, $3), 'app', id, $5 FROM sessions \
             WHERE id = $4 AND scope = 'user' AND expires_at > now() \
             RETURNING expires_at",
        )
        .bind(token.id)
        .bind(hash)
        .bind(Utc::now() + SESSION_LIFETIME)
        .bind(parent)
        .bind(binding)
        .fetch_optional(&self.pool)
        .await?;
        Ok(expires_at.map(|at| (token, at)))
    }

    /// The user holding app session `token` if it is live and was signed in
    /// for the app `binding` names (a region holding one app session, having
    /// redeemed the ticket, gets tokens for that app and no other), and the
    /// sign-in session it was signed in under.
    pub async fn app_session_user(&self, token: &Token, binding: &str) -> ApiResult<Option<(UserRow, Option<Uuid>)>> {
        let row: Option<AppSessionJoin> = sqlx::query_as(
            "SELECT s.secret_hash, s.parent_id, u.id, u.username, u.password_hash, u.admin, u.created_at \
             FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id = $1 AND s.expires_at > now() AND s.scope = 'app' AND s.binding = $2",
        )
        .bind(token.id)
        .bind(binding)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|j| {
            secret::secret_matches(token.secret.expose(), &j.secret_hash).then_some((j.user, j.parent_id))
        }))
    }

    /// Ends session `token` (if its secret matches) and every app session it
    /// signed in, with the `audit` record made of whose it was (if any);
    /// whose it was.
    pub async fn end_session(
        &self,
        token: &Token,
        audit: impl FnOnce(&UserRow) -> Option<AuditRecord> + Send,
    ) -> ApiResult<Option<UserRow>> {
        let mut tx = self.pool.begin().await?;
        let row: Option<SessionJoin> = sqlx::query_as(
            "SELECT s.secret_hash, u.id, u.username, u.password_hash, u.admin, u.created_at \
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1",
        )
        .bind(token.id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(j) = row.filter(|j| secret::secret_matches(token.secret.expose(), &j.secret_hash)) else {
            return Ok(None);
        };
        // Children go with it (ON DELETE CASCADE).
        sqlx::query("DELETE FROM sessions WHERE id = $1").bind(token.id).execute(&mut *tx).await?;
        if let Some(record) = audit(&j.user) {
            write_audit(&mut *tx, &record).await?;
        }
        tx.commit().await?;
        Ok(Some(j.user))
    }

    /// The user holding `token`, if it is a live session of `scope`.
    pub async fn session_user(&self, token: &Token, scope: Scope) -> ApiResult<Option<UserRow>> {
        let row: Option<SessionJoin> = sqlx::query_as(
            "SELECT s.secret_hash, u.id, u.username, u.password_hash, u.admin, u.created_at \
             FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id = $1 AND s.expires_at > now() AND s.scope = $2",
        )
        .bind(token.id)
        .bind(scope.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|j| secret::secret_matches(token.secret.expose(), &j.secret_hash).then_some(j.user)))
    }
}

/// What a session may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The API, as the user.
    User,
    /// Only obtaining app tokens through a proxy (the `meridian_app_session` cookie).
    App,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::App => "app",
        }
    }
}

#[derive(sqlx::FromRow)]
struct AppSessionJoin {
    secret_hash: Vec<u8>,
    parent_id: Option<Uuid>,
    #[sqlx(flatten)]
    user: UserRow,
}

#[derive(sqlx::FromRow)]
struct SessionJoin {
    secret_hash: Vec<u8>,
    #[sqlx(flatten)]
    user: UserRow,
}

async fn insert_session<'e>(exec: impl sqlx::PgExecutor<'e>, user_id: Uuid, scope: Scope) -> ApiResult<Token> {
    let (token, hash) = secret::new_token(Uuid::new_v4());
    sqlx::query("INSERT INTO sessions (id, user_id, secret_hash, expires_at, scope) VALUES ($1, $2, $3, $4, $5)")
        .bind(token.id)
        .bind(user_id)
        .bind(hash)
        .bind(Utc::now() + SESSION_LIFETIME)
        .bind(scope.as_str())
        .execute(exec)
        .await?;
    Ok(token)
}

async fn insert_user<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    username: &str,
    password_hash: &str,
    admin: bool,
) -> ApiResult<UserRow> {
    sqlx::query_as("INSERT INTO users (id, username, password_hash, admin) VALUES ($1, $2, $3, $4) RETURNING id, username, password_hash, admin, created_at")
        .bind(Uuid::new_v4())
        .bind(username)
        .bind(password_hash)
        .bind(admin)
        .fetch_one(exec)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                ApiError::Conflict(format!("A user named {username:?} already exists."))
            } else {
                e.into()
            }
        })
}
