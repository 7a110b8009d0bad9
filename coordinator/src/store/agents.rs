//! Agents: their tokens, and where their tunnels are attached.

use super::access::{access, access_select, AccessRow};
use super::workspaces::AppRow;
use super::Store;
use crate::error::ApiResult;
use crate::secret;
use meridian_regions::api::{AgentRoute, App, RelayAgents, RelayInfo, RouteUpdate};
use meridian_regions::token::Token;
use std::collections::BTreeMap;
use uuid::Uuid;

/// An agent a stream is asked for.
#[derive(sqlx::FromRow)]
pub struct StreamAgent {
    pub id: Uuid,
    pub name: String,
    pub owner_id: Uuid,
    pub host_key: Option<String>,
}

/// agent, region, replica, the relay URL peers use, connected, route version.
type RouteRow = (Uuid, Option<String>, Option<Uuid>, Option<String>, bool, i64);

/// The route query's head, as a literal for `concat!` (sqlx takes only literal SQL).
macro_rules! route_select {
    () => {
        "SELECT a.id, r.name, a.replica_id, coalesce(p.mesh_address, p.relay_address), a.connected, a.route_version \
         FROM agents a LEFT JOIN regions r ON r.id = a.region_id LEFT JOIN region_replicas p ON p.id = a.replica_id"
    };
}

/// A route as proxies get it; a detached agent has none.
fn route((agent_id, region, replica_id, relay_url, connected, _): RouteRow) -> AgentRoute {
    AgentRoute {
        agent_id,
        region: region.filter(|_| connected),
        replica_id: replica_id.filter(|_| connected),
        relay_url: relay_url.filter(|_| connected),
    }
}

impl Store {
    /// The agent holding `token`, if it is current.
    pub async fn agent_for_token(&self, token: &Token) -> ApiResult<Option<Uuid>> {
        let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT token_hash FROM agents WHERE id = $1")
            .bind(token.id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|(hash,)| secret::secret_matches(token.secret.expose(), &hash).then_some(token.id)))
    }

    /// Records the public half of the agent's SSH host key.
    pub async fn set_agent_host_key(&self, agent_id: Uuid, public_key: &str) -> ApiResult<()> {
        sqlx::query("UPDATE agents SET host_key = $2 WHERE id = $1")
            .bind(agent_id)
            .bind(public_key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The agent a stream into `owner`'s workspace names (`agent` may be
    /// left out when the workspace has one): its id, name, owner and host key.
    pub async fn stream_agent(
        &self,
        owner: &str,
        workspace: &str,
        agent: Option<&str>,
    ) -> ApiResult<Option<StreamAgent>> {
        let rows: Vec<StreamAgent> = sqlx::query_as(
            "SELECT a.id, a.name, w.owner_id, a.host_key FROM agents a \
             JOIN workspaces w ON w.id = a.workspace_id JOIN users u ON u.id = w.owner_id \
             WHERE u.username = $1 AND w.name = $2 AND ($3::text IS NULL OR a.name = $3)",
        )
        .bind(owner)
        .bind(workspace)
        .bind(agent)
        .fetch_all(&self.pool)
        .await?;
        Ok(match <[StreamAgent; 1]>::try_from(rows) {
            Ok([one]) => Some(one),
            Err(_) => None,
        })
    }

    pub async fn agent_apps(&self, agent_id: Uuid) -> ApiResult<Vec<App>> {
        let rows: Vec<AppRow> = sqlx::query_as(
            "SELECT agent_id, slug, port, url, subdomain, share, cors FROM apps WHERE agent_id = $1 ORDER BY slug",
        )
        .bind(agent_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(App::from).collect())
    }

    /// Relays of healthy regions: `preferred` first, then the primary, then by name.
    pub async fn relays(&self, preferred: Option<&str>) -> ApiResult<Vec<RelayInfo>> {
        let rows: Vec<(String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT DISTINCT ON (r.name, p.relay_address) r.name, p.relay_address, p.status_since \
             FROM region_replicas p JOIN regions r ON r.id = p.region_id \
             WHERE p.status = 'ok' AND p.relay_address IS NOT NULL \
             ORDER BY r.name, p.relay_address",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut relays: Vec<RelayInfo> = rows
            .into_iter()
            .map(|(region, url, since)| RelayInfo { region, url, healthy_since: Some(since), attach_token: None })
            .collect();
        relays.sort_by_key(|r| (Some(r.region.as_str()) != preferred, r.region != meridian_regions::PRIMARY_REGION));
        Ok(relays)
    }

    pub async fn connected_agents(&self) -> ApiResult<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM agents WHERE connected").fetch_one(&self.pool).await?)
    }

    /// Records the agent's tunnel at `replica_id` of `region_id` (a route change).
    pub async fn set_agent_attached(&self, agent_id: Uuid, region_id: Uuid, replica_id: Option<Uuid>) -> ApiResult<()> {
        sqlx::query(
            "UPDATE agents SET region_id = $2, replica_id = $3, connected = true, last_connected_at = now() \
             WHERE id = $1",
        )
        .bind(agent_id)
        .bind(region_id)
        .bind(replica_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks the agent offline, unless it has since attached to another relay.
    pub async fn set_agent_detached(&self, agent_id: Uuid, region_id: Uuid, replica_id: Option<Uuid>) -> ApiResult<()> {
        sqlx::query(
            "UPDATE agents SET connected = false \
             WHERE id = $1 AND region_id = $2 AND replica_id IS NOT DISTINCT FROM $3",
        )
        .bind(agent_id)
        .bind(region_id)
        .bind(replica_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every current route, and the version they are current at.
    pub async fn route_snapshot(&self) -> ApiResult<RouteUpdate> {
        // One snapshot for both reads, so no change falls between the rows and the version.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
        let version: i64 = sqlx::query_scalar(
            "SELECT greatest((SELECT coalesce(max(route_version), 0) FROM agents), \
             (SELECT coalesce(max(version), 0) FROM user_access))",
        )
        .fetch_one(&mut *tx)
        .await?;
        let rows: Vec<RouteRow> =
            sqlx::query_as(concat!(route_select!(), " WHERE a.connected")).fetch_all(&mut *tx).await?;
        let refusals: Vec<AccessRow> = sqlx::query_as(concat!(
            access_select!(),
            " WHERE a.suspended_at IS NOT NULL OR EXISTS \
             (SELECT 1 FROM revoked_sessions r WHERE r.user_id = a.user_id AND r.forget_at > now())"
        ))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        // Grouped by relay: a snapshot of every agent is the largest answer the API gives.
        let mut relays: BTreeMap<(String, Option<Uuid>, String), Vec<Uuid>> = BTreeMap::new();
        for (agent_id, region, replica_id, relay_url, _, _) in rows {
            if let (Some(region), Some(relay_url)) = (region, relay_url) {
                relays.entry((region, replica_id, relay_url)).or_default().push(agent_id);
            }
        }
        let relays = relays
            .into_iter()
            .map(|((region, replica_id, relay_url), agents)| RelayAgents { region, replica_id, relay_url, agents })
            .collect();
        let access = refusals.into_iter().map(access).collect();
        Ok(RouteUpdate { version, relays, access, ..Default::default() })
    }

    /// Route and access changes after version `after`, oldest first. Both
    /// from one snapshot: the version answered covers exactly what was read.
    pub async fn route_changes(&self, after: i64) -> ApiResult<RouteUpdate> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
        let rows: Vec<RouteRow> =
            sqlx::query_as(concat!(route_select!(), " WHERE a.route_version > $1 ORDER BY a.route_version"))
                .bind(after)
                .fetch_all(&mut *tx)
                .await?;
        let changed: Vec<AccessRow> =
            sqlx::query_as(concat!(access_select!(), " WHERE a.version > $1 ORDER BY a.version"))
                .bind(after)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let version = rows.last().map_or(after, |r| r.5).max(changed.last().map_or(after, |r| r.2));
        Ok(RouteUpdate {
            version,
            routes: rows.into_iter().map(route).collect(),
            access: changed.into_iter().map(access).collect(),
            ..Default::default()
        })
    }
}
