//! App access: one-time login tickets, and resolving an app request to the
//! agent and address that serve it.

use super::Store;
use crate::error::ApiResult;
use crate::secret;
use chrono::Utc;
use meridian_regions::api::{Cors, Share};
use meridian_regions::app_url::{AppRequest, AppTarget};
use meridian_regions::token::Token;
use uuid::Uuid;

/// How long a login ticket may wait to be redeemed.
pub const TICKET_LIFETIME: chrono::Duration = chrono::Duration::seconds(60);

/// The app an [`AppRequest`] names.
#[derive(Debug, Clone)]
pub struct ResolvedApp {
    pub owner_id: Uuid,
    pub agent_id: Uuid,
    /// The app's address inside the workspace, e.g. `http://127.0.0.1:8080`.
    pub upstream: String,
    pub share: Share,
    /// Whether it is served on a subdomain (else on a path).
    pub subdomain: bool,
    pub cors: Cors,
}

/// A used-up ticket: whose, the session that minted it, its host, and the
/// one app it was minted for (the token binding; `None` for a ticket an
/// older release minted, which then signs in to no app).
#[derive(Debug, Clone)]
pub struct Redeemed {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub host: String,
    pub binding: Option<String>,
}

/// A ticket as it is used up.
#[derive(sqlx::FromRow)]
struct TicketRow {
    secret_hash: Vec<u8>,
    redirect_host: String,
    session_id: Option<Uuid>,
    user_id: Uuid,
    binding: Option<String>,
}

#[derive(sqlx::FromRow)]
struct AgentMatch {
    owner_id: Uuid,
    agent_id: Uuid,
}

#[derive(sqlx::FromRow)]
struct AppMatch {
    port: Option<i32>,
    url: Option<String>,
    share: String,
    subdomain: bool,
    cors: String,
}

impl Store {
    /// A ticket for `user_id` (signed in with session `session_id`) to bring
    /// back to `redirect_host`, for the app `binding` names; shown once.
    pub async fn create_ticket(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        redirect_host: &str,
        binding: &str,
    ) -> ApiResult<Token> {
        let (token, hash) = secret::new_token(Uuid::new_v4());
        sqlx::query(
            "INSERT INTO app_tickets (id, secret_hash, user_id, redirect_host, expires_at, session_id, binding) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(token.id)
        .bind(hash)
        .bind(user_id)
        .bind(redirect_host)
        .bind(Utc::now() + TICKET_LIFETIME)
        .bind(session_id)
        .bind(binding)
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// Uses up a ticket, once, at `host` only. `None` when it is unknown,
    /// expired, already used, minted for another host, its secret is wrong,
    /// or the session that minted it has ended. A ticket presented at the
    /// wrong host is used up all the same: it has leaked.
    pub async fn redeem_ticket(&self, token: &Token, host: &str) -> ApiResult<Option<Redeemed>> {
        let row: Option<TicketRow> = sqlx::query_as(
            "UPDATE app_tickets SET used_at = now() \
             WHERE id = $1 AND used_at IS NULL AND expires_at > now() \
             RETURNING secret_hash, redirect_host, session_id, user_id, binding",
        )
        .bind(token.id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(t) = row else { return Ok(None) };
        let genuine = secret::secret_matches(token.secret.expose(), &t.secret_hash);
        Ok(match t.session_id {
            Some(session_id) if genuine && t.redirect_host.eq_ignore_ascii_case(host) => {
                Some(Redeemed { user_id: t.user_id, session_id, host: t.redirect_host, binding: t.binding })
            }
            _ => None,
        })
    }

    /// The app `req` names, if it exists. Without an agent name the
    /// workspace must have exactly one agent. Port URLs reach any port of the
    /// agent and are for the owner only.
    pub async fn resolve_app(&self, req: &AppRequest) -> ApiResult<Option<ResolvedApp>> {
        let agents: Vec<AgentMatch> = sqlx::query_as(
            "SELECT w.owner_id, a.id AS agent_id FROM agents a \
             JOIN workspaces w ON w.id = a.workspace_id JOIN users u ON u.id = w.owner_id \
             WHERE u.username = $1 AND w.name = $2 AND ($3::text IS NULL OR a.name = $3)",
        )
        .bind(&req.user)
        .bind(&req.workspace)
        .bind(&req.agent)
        .fetch_all(&self.pool)
        .await?;
        let [agent] = &agents[..] else {
            return Ok(None);
        };
        let slug = match &req.target {
            AppTarget::Port { port, https } => {
                let scheme = if *https { "https" } else { "http" };
                return Ok(Some(ResolvedApp {
                    owner_id: agent.owner_id,
                    agent_id: agent.agent_id,
                    upstream: format!("{scheme}://127.0.0.1:{port}"),
                    share: Share::Owner,
                    subdomain: true,
                    cors: Cors::Default,
                }));
            }
            AppTarget::Slug(slug) => slug,
        };
        let app: Option<AppMatch> =
            sqlx::query_as("SELECT port, url, share, subdomain, cors FROM apps WHERE agent_id = $1 AND slug = $2")
                .bind(agent.agent_id)
                .bind(slug)
                .fetch_optional(&self.pool)
                .await?;
        Ok(app.map(|a| ResolvedApp {
            owner_id: agent.owner_id,
            agent_id: agent.agent_id,
            upstream: match (a.port, a.url) {
                (Some(port), _) => format!("http://127.0.0.1:{port}"),
                (None, Some(url)) => url.trim_end_matches('/').to_owned(),
                (None, None) => String::new(),
            },
            share: Share::from_stored(&a.share),
            subdomain: a.subdomain,
            cors: Cors::from_stored(&a.cors),
        }))
    }
}
