//! Regions, their proxy tokens, and the replicas that heartbeat for them.

use super::audit::{write_audit, AuditRecord};
use super::{is_unique_violation, Store};
use crate::error::{ApiError, ApiResult};
use crate::secret;
use chrono::{DateTime, Utc};
use meridian_regions::api::{LinkRtt, RegionHosts, RegisterProxy, Replica};
use meridian_regions::app_url::wildcard_base;
use meridian_regions::health::Status;
use meridian_regions::token::Token;
use meridian_regions::PRIMARY_REGION;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RegionRow {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub created_at: DateTime<Utc>,
    /// The region's hostnames as an admin set them or its first registration
    /// pinned them (`None`: not pinned yet; see [`RegionHosts`]).
    pub access_url: Option<String>,
    pub wildcard_hostname: Option<String>,
}

/// The columns of a [`RegionRow`] (a macro, so queries stay literal strings).
macro_rules! region_columns {
    () => {
        "id, name, display_name, created_at, access_url, wildcard_hostname"
    };
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct ReplicaRow {
    id: Uuid,
    region_id: Uuid,
    access_url: String,
    wildcard_hostname: String,
    relay_address: Option<String>,
    mesh_address: Option<String>,
    version: String,
    status: String,
    error: Option<String>,
    last_heartbeat_at: DateTime<Utc>,
    link_rtts: Option<sqlx::types::Json<Vec<LinkRtt>>>,
}

#[derive(sqlx::FromRow)]
struct TokenJoin {
    token_hash: Option<Vec<u8>>,
    #[sqlx(flatten)]
    region: RegionRow,
}

/// A replica the health checker should poll.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReplicaCheck {
    pub id: Uuid,
    pub access_url: String,
}

/// A region with its replicas, as the API lists it.
#[derive(Debug, Clone)]
pub struct RegionWithReplicas {
    pub region: RegionRow,
    pub replicas: Vec<Replica>,
    /// The most recently heard-from replica's wildcard hostname.
    pub wildcard_hostname: Option<String>,
}

impl From<ReplicaRow> for Replica {
    fn from(r: ReplicaRow) -> Self {
        Replica {
            id: r.id,
            access_url: r.access_url,
            mesh_address: r.mesh_address.or_else(|| r.relay_address.clone()),
            relay_address: r.relay_address,
            version: r.version,
            status: Status::from_stored(&r.status),
            error: r.error,
            last_heartbeat_at: r.last_heartbeat_at,
            link_rtts: r.link_rtts.map(|j| j.0).unwrap_or_default(),
        }
    }
}

impl Store {
    /// Every region with its replicas, the primary first, then by name.
    pub async fn regions(&self) -> ApiResult<Vec<RegionWithReplicas>> {
        let regions: Vec<RegionRow> =
            sqlx::query_as(concat!("SELECT ", region_columns!(), " FROM regions ORDER BY (name = $1) DESC, name"))
                .bind(PRIMARY_REGION)
                .fetch_all(&self.pool)
                .await?;
        // Columns by name, never `*`: a column a later release adds must not
        // change this statement's result type (see migrations/README.md).
        let replicas: Vec<ReplicaRow> = sqlx::query_as(
            "SELECT r.id, r.region_id, r.access_url, r.wildcard_hostname, r.relay_address, r.mesh_address, \
               r.version, r.status, r.error, r.last_heartbeat_at, l.link_rtts \
             FROM region_replicas r LEFT JOIN replica_link_rtts l ON l.replica_id = r.id \
             ORDER BY r.last_heartbeat_at DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(regions
            .into_iter()
            .map(|region| {
                let mine: Vec<&ReplicaRow> = replicas.iter().filter(|r| r.region_id == region.id).collect();
                RegionWithReplicas {
                    wildcard_hostname: mine.first().map(|r| r.wildcard_hostname.clone()),
                    replicas: mine.into_iter().cloned().map(Replica::from).collect(),
                    region,
                }
            })
            .collect())
    }

    /// Creates a region and its first proxy token, with the hostnames an
    /// admin gave (checked by [`Store::claim_hosts`] in the same transaction).
    pub async fn create_region(
        &self,
        name: &str,
        display_name: &str,
        hosts: &RegionHosts,
        reserved_wildcard: Option<&str>,
        audit: impl FnOnce(&RegionRow) -> AuditRecord + Send,
    ) -> ApiResult<(RegionRow, Token)> {
        let (token, hash) = secret::new_token(Uuid::new_v4());
        let mut tx = self.pool.begin().await?;
        lock_hosts(&mut tx).await?;
        check_wildcard_free(&mut tx, token.id, hosts.wildcard_hostname.as_deref(), reserved_wildcard).await?;
        let row = sqlx::query_as(concat!(
            "INSERT INTO regions (id, name, display_name, token_hash, access_url, wildcard_hostname) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
            region_columns!()
        ))
        .bind(token.id)
        .bind(name)
        .bind(display_name)
        .bind(hash)
        .bind(&hosts.access_url)
        .bind(&hosts.wildcard_hostname)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                ApiError::Conflict(format!("A region named {name:?} already exists."))
            } else {
                e.into()
            }
        })?;
        write_audit(&mut *tx, &audit(&row)).await?;
        tx.commit().await?;
        Ok((row, token))
    }

    /// Changes a region's display name and hostnames (an admin's call).
    pub async fn update_region(
        &self,
        name: &str,
        display_name: Option<&str>,
        hosts: &RegionHosts,
        reserved_wildcard: Option<&str>,
        audit: impl FnOnce(&RegionRow) -> AuditRecord + Send,
    ) -> ApiResult<RegionRow> {
        refuse_primary(name)?;
        let mut tx = self.pool.begin().await?;
        lock_hosts(&mut tx).await?;
        let id: Uuid = sqlx::query_scalar("SELECT id FROM regions WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| not_found(name))?;
        check_wildcard_free(&mut tx, id, hosts.wildcard_hostname.as_deref(), reserved_wildcard).await?;
        let row = sqlx::query_as(concat!(
            "UPDATE regions SET display_name = COALESCE($2, display_name), \
             access_url = COALESCE($3, access_url), wildcard_hostname = COALESCE($4, wildcard_hostname) \
             WHERE id = $1 RETURNING ",
            region_columns!()
        ))
        .bind(id)
        .bind(display_name)
        .bind(&hosts.access_url)
        .bind(&hosts.wildcard_hostname)
        .fetch_one(&mut *tx)
        .await?;
        write_audit(&mut *tx, &audit(&row)).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// The region's hostnames after pinning any that were not set yet to
    /// `wanted` (a replica's registration): trust on first use, unless an
    /// admin set them. A wildcard host another region (or the primary)
    /// serves is never pinned.
    pub async fn claim_hosts(
        &self,
        region: &RegionRow,
        wanted: &RegionHosts,
        reserved_wildcard: Option<&str>,
    ) -> ApiResult<RegionHosts> {
        if region.access_url.is_some() && region.wildcard_hostname.is_some() {
            return Ok(RegionHosts {
                access_url: region.access_url.clone(),
                wildcard_hostname: region.wildcard_hostname.clone(),
            });
        }
        let mut tx = self.pool.begin().await?;
        lock_hosts(&mut tx).await?;
        if region.wildcard_hostname.is_none() {
            check_wildcard_free(&mut tx, region.id, wanted.wildcard_hostname.as_deref(), reserved_wildcard).await?;
        }
        let (access_url, wildcard_hostname): (Option<String>, Option<String>) = sqlx::query_as(
            "UPDATE regions SET access_url = COALESCE(access_url, $2), \
             wildcard_hostname = COALESCE(wildcard_hostname, $3) WHERE id = $1 \
             RETURNING access_url, wildcard_hostname",
        )
        .bind(region.id)
        .bind(&wanted.access_url)
        .bind(&wanted.wildcard_hostname)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        if region.access_url.is_none() || region.wildcard_hostname.is_none() {
            tracing::info!(region = %region.name, ?access_url, ?wildcard_hostname, "region hostnames pinned");
        }
        Ok(RegionHosts { access_url, wildcard_hostname })
    }

    /// Deletes a region, its token and its replicas, with its `audit` record.
    /// The primary cannot be deleted.
    pub async fn delete_region(&self, name: &str, audit: &AuditRecord) -> ApiResult<()> {
        refuse_primary(name)?;
        let mut tx = self.pool.begin().await?;
        let deleted =
            sqlx::query("DELETE FROM regions WHERE name = $1").bind(name).execute(&mut *tx).await?.rows_affected();
        if deleted == 0 {
            return Err(not_found(name));
        }
        write_audit(&mut *tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces a region's token, with its `audit` record; the old one stops working at once.
    pub async fn regenerate_token(&self, name: &str, audit: &AuditRecord) -> ApiResult<Token> {
        refuse_primary(name)?;
        let mut tx = self.pool.begin().await?;
        let id: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM regions WHERE name = $1").bind(name).fetch_optional(&mut *tx).await?;
        let id = id.ok_or_else(|| not_found(name))?;
        let (token, hash) = secret::new_token(id);
        sqlx::query("UPDATE regions SET token_hash = $2 WHERE id = $1").bind(id).bind(hash).execute(&mut *tx).await?;
        write_audit(&mut *tx, audit).await?;
        tx.commit().await?;
        Ok(token)
    }

    /// The region a proxy token belongs to, if the token is current.
    pub async fn region_for_token(&self, token: &Token) -> ApiResult<Option<RegionRow>> {
        let row: Option<TokenJoin> =
            sqlx::query_as(concat!("SELECT token_hash, ", region_columns!(), " FROM regions WHERE id = $1"))
                .bind(token.id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|r| {
            // The primary has no token hash, so no token ever matches it.
            let hash = r.token_hash?;
            secret::secret_matches(token.secret.expose(), &hash).then_some(r.region)
        }))
    }

    pub async fn region_by_id(&self, id: Uuid) -> ApiResult<Option<RegionRow>> {
        Ok(sqlx::query_as(concat!("SELECT ", region_columns!(), " FROM regions WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Records a replica's heartbeat. Returns true when the replica is new or
    /// was not `ok` (e.g. it restarted), so the caller can check its health at
    /// once instead of one interval later.
    pub async fn upsert_replica(&self, region_id: Uuid, req: &RegisterProxy) -> ApiResult<bool> {
        let inserted: bool = sqlx::query_scalar(
            "INSERT INTO region_replicas \
               (id, region_id, access_url, wildcard_hostname, relay_address, version, status, error, mesh_address) \
             VALUES ($1, $2, $3, $4, $5, $6, 'unreachable', 'not checked yet', $7) \
             ON CONFLICT (id) DO UPDATE SET \
               access_url = EXCLUDED.access_url, wildcard_hostname = EXCLUDED.wildcard_hostname, \
               relay_address = EXCLUDED.relay_address, version = EXCLUDED.version, \
               mesh_address = EXCLUDED.mesh_address, \
               last_heartbeat_at = now() \
             WHERE region_replicas.region_id = EXCLUDED.region_id \
             RETURNING (xmax = 0 OR status <> 'ok')",
        )
        .bind(req.replica_id)
        .bind(region_id)
        .bind(&req.access_url)
        .bind(&req.wildcard_hostname)
        .bind(&req.relay_address)
        .bind(&req.version)
        .bind(&req.mesh_address)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| ApiError::Conflict("That replica id belongs to another region.".into()))?;
        sqlx::query(
            "INSERT INTO replica_link_rtts (replica_id, link_rtts) VALUES ($1, $2) \
             ON CONFLICT (replica_id) DO UPDATE SET link_rtts = EXCLUDED.link_rtts, measured_at = now()",
        )
        .bind(req.replica_id)
        .bind(sqlx::types::Json(&req.link_rtts))
        .execute(&self.pool)
        .await?;
        Ok(inserted)
    }

    pub async fn delete_replica(&self, region_id: Uuid, replica_id: Uuid) -> ApiResult<()> {
        sqlx::query("DELETE FROM region_replicas WHERE id = $1 AND region_id = $2")
            .bind(replica_id)
            .bind(region_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn replicas_to_check(&self) -> ApiResult<Vec<ReplicaCheck>> {
        Ok(sqlx::query_as("SELECT id, access_url FROM region_replicas").fetch_all(&self.pool).await?)
    }

    pub async fn record_health(&self, replica_id: Uuid, status: Status, error: Option<&str>) -> ApiResult<()> {
        sqlx::query(
            "UPDATE region_replicas SET status = $2, error = $3, checked_at = now(), \
             status_since = CASE WHEN status = $2 THEN status_since ELSE now() END WHERE id = $1",
        )
        .bind(replica_id)
        .bind(status.as_str())
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets replicas silent for longer than `expiry` whose region has a
    /// newer replica: a restarted proxy gets a new replica id, and its old row
    /// should not linger. The last replica of a region is kept, so a dead
    /// region shows as `unreachable`, never silently as `unregistered`.
    pub async fn prune_stale_replicas(&self, expiry: std::time::Duration) -> ApiResult<u64> {
        let expiry = chrono::Duration::from_std(expiry).map_err(|e| ApiError::Internal(e.into()))?;
        Ok(sqlx::query(
            "DELETE FROM region_replicas r WHERE r.last_heartbeat_at < now() - $1::interval \
             AND EXISTS (SELECT 1 FROM region_replicas n WHERE n.region_id = r.region_id \
                         AND n.last_heartbeat_at > r.last_heartbeat_at)",
        )
        .bind(expiry)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

/// Serializes changes of region hostnames, so two regions cannot pin the
/// same wildcard host at once. Taken only when hostnames change.
async fn lock_hosts(tx: &mut sqlx::PgConnection) -> ApiResult<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(7285002)").execute(tx).await?;
    Ok(())
}

/// Refuses a wildcard whose host another region (than `region_id`), or the
/// primary's `reserved` wildcard, already serves: app hosts name one region.
async fn check_wildcard_free(
    tx: &mut sqlx::PgConnection,
    region_id: Uuid,
    wildcard: Option<&str>,
    reserved: Option<&str>,
) -> ApiResult<()> {
    let Some(base) = wildcard.and_then(wildcard_base) else { return Ok(()) };
    let taken: Vec<(String, String)> =
        sqlx::query_as("SELECT name, wildcard_hostname FROM regions WHERE id <> $1 AND wildcard_hostname IS NOT NULL")
            .bind(region_id)
            .fetch_all(tx)
            .await?;
    let others = taken.iter().map(|(n, w)| (n.as_str(), w.as_str())).chain(reserved.map(|w| (PRIMARY_REGION, w)));
    for (name, other) in others {
        if wildcard_base(other).as_deref() == Some(base.as_str()) {
            return Err(ApiError::Conflict(format!("Region {name:?} already serves apps under *.{base}.")));
        }
    }
    Ok(())
}

fn refuse_primary(name: &str) -> ApiResult<()> {
    if name == PRIMARY_REGION {
        return Err(ApiError::BadRequest(
            "The primary region is the coordinator itself; it has no token and cannot be deleted.".into(),
        ));
    }
    Ok(())
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("No region named {name:?}."))
}
