//! Workspaces, their agents and apps.

use super::audit::{write_audit, AuditRecord};
use super::{is_unique_violation, Store};
use crate::error::{ApiError, ApiResult};
use crate::secret;
use chrono::{DateTime, Utc};
use meridian_regions::api::{Agent, AgentSpec, App, Cors, Share, Workspace};
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct WorkspaceRow {
    id: Uuid,
    name: String,
    owner: String,
    created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct AgentRow {
    id: Uuid,
    workspace_id: Uuid,
    name: String,
    connected: bool,
    region: Option<String>,
    last_connected_at: Option<DateTime<Utc>>,
    host_key: Option<String>,
}

#[derive(sqlx::FromRow)]
pub(super) struct AppRow {
    agent_id: Uuid,
    slug: String,
    port: Option<i32>,
    url: Option<String>,
    subdomain: bool,
    share: String,
    cors: String,
}

impl From<AppRow> for App {
    fn from(r: AppRow) -> Self {
        App {
            slug: r.slug,
            port: r.port.and_then(|p| u16::try_from(p).ok()),
            url: r.url,
            subdomain: r.subdomain,
            share: Share::from_stored(&r.share),
            cors: Cors::from_stored(&r.cors),
        }
    }
}

impl Store {
    /// Creates a workspace with its agents and apps in one transaction;
    /// returns its id and each agent's token (shown once).
    pub async fn create_workspace(
        &self,
        owner_id: Uuid,
        name: &str,
        agents: &[AgentSpec],
        audit: &AuditRecord,
    ) -> ApiResult<(Uuid, BTreeMap<String, String>)> {
        let mut tx = self.pool.begin().await?;
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO workspaces (id, owner_id, name) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(owner_id)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    ApiError::Conflict(format!("A workspace named {name:?} already exists for this owner."))
                } else {
                    e.into()
                }
            })?;
        let mut tokens = BTreeMap::new();
        for agent in agents {
            let (token, hash) = secret::new_token(Uuid::new_v4());
            sqlx::query("INSERT INTO agents (id, workspace_id, name, token_hash) VALUES ($1, $2, $3, $4)")
                .bind(token.id)
                .bind(id)
                .bind(&agent.name)
                .bind(hash)
                .execute(&mut *tx)
                .await?;
            for app in &agent.apps {
                sqlx::query(
                    "INSERT INTO apps (id, agent_id, slug, port, url, subdomain, share, cors) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(Uuid::new_v4())
                .bind(token.id)
                .bind(&app.slug)
                .bind(app.port.map(i32::from))
                .bind(&app.url)
                .bind(app.subdomain)
                .bind(app.share.as_str())
                .bind(app.cors.as_str())
                .execute(&mut *tx)
                .await?;
            }
            tokens.insert(agent.name.clone(), token.encode().expose().to_owned());
        }
        write_audit(&mut *tx, audit).await?;
        tx.commit().await?;
        Ok((id, tokens))
    }

    /// Workspaces with their agents and apps, oldest first; all of them when
    /// `owner` is `None`, else that user's.
    pub async fn workspaces(&self, owner: Option<Uuid>) -> ApiResult<Vec<Workspace>> {
        self.workspaces_where(owner, None).await
    }

    /// One workspace with its agents and apps.
    pub async fn workspace(&self, id: Uuid) -> ApiResult<Option<Workspace>> {
        Ok(self.workspaces_where(None, Some(id)).await?.pop())
    }

    async fn workspaces_where(&self, owner: Option<Uuid>, id: Option<Uuid>) -> ApiResult<Vec<Workspace>> {
        let workspaces: Vec<WorkspaceRow> = sqlx::query_as(
            "SELECT w.id, w.name, u.username AS owner, w.created_at FROM workspaces w \
             JOIN users u ON u.id = w.owner_id WHERE ($1::uuid IS NULL OR w.owner_id = $1) \
             AND ($2::uuid IS NULL OR w.id = $2) ORDER BY w.created_at, w.name",
        )
        .bind(owner)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let ids: Vec<Uuid> = workspaces.iter().map(|w| w.id).collect();
        let agents: Vec<AgentRow> = sqlx::query_as(
            "SELECT a.id, a.workspace_id, a.name, a.connected, r.name AS region, a.last_connected_at, a.host_key \
             FROM agents a LEFT JOIN regions r ON r.id = a.region_id \
             WHERE a.workspace_id = ANY($1) ORDER BY a.name",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let agent_ids: Vec<Uuid> = agents.iter().map(|a| a.id).collect();
        let apps: Vec<AppRow> = sqlx::query_as(
            "SELECT agent_id, slug, port, url, subdomain, share, cors FROM apps WHERE agent_id = ANY($1) ORDER BY slug",
        )
        .bind(&agent_ids)
        .fetch_all(&self.pool)
        .await?;
        let mut apps_by_agent: BTreeMap<Uuid, Vec<App>> = BTreeMap::new();
        for app in apps {
            apps_by_agent.entry(app.agent_id).or_default().push(app.into());
        }
        let mut agents_by_ws: BTreeMap<Uuid, Vec<Agent>> = BTreeMap::new();
        for a in agents {
            agents_by_ws.entry(a.workspace_id).or_default().push(Agent {
                apps: apps_by_agent.remove(&a.id).unwrap_or_default(),
                id: a.id,
                name: a.name,
                connected: a.connected,
                region: a.region.filter(|_| a.connected),
                last_connected_at: a.last_connected_at,
                host_key: a.host_key,
            });
        }
        Ok(workspaces
            .into_iter()
            .map(|w| Workspace {
                agents: agents_by_ws.remove(&w.id).unwrap_or_default(),
                id: w.id,
                name: w.name,
                owner: w.owner,
                created_at: w.created_at,
            })
            .collect())
    }

    /// Deletes `owner`'s workspace `name` with its agents and apps, with its `audit` record.
    pub async fn delete_workspace(&self, owner_id: Uuid, name: &str, audit: &AuditRecord) -> ApiResult<()> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM workspaces WHERE owner_id = $1 AND name = $2")
            .bind(owner_id)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(ApiError::NotFound(format!("No workspace named {name:?}.")));
        }
        write_audit(&mut *tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }
}
