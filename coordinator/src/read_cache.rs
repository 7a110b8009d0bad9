//! Reads that every proxy replica makes at about the same moment, computed
//! once and shared: a thousand replicas whose route long polls wake on the
//! same change ask the same question, and so do their heartbeats for the
//! region map. Concurrent callers of one key wait for one query (moka's
//! `try_get_with`), and its answer stands for a short while.
//!
//! Route answers are keyed by the route-change counter
//! ([`crate::routes`]), so a change is never hidden behind a cached answer:
//! the next caller after a change asks the database again. An answer
//! computed a little later than its key still carries its own `version`,
//! from which the caller follows on, so nothing is skipped.

use crate::error::{ApiError, ApiResult};
use meridian_regions::api::{Region, RouteUpdate};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A route answer, serialized once for every caller that gets it.
#[derive(Debug, Clone)]
pub struct RoutesJson {
    /// Whether it carries no route (a long poll then waits for a change).
    pub empty: bool,
    pub json: bytes::Bytes,
}

impl RoutesJson {
    fn of(update: &RouteUpdate) -> ApiResult<Self> {
        let json = serde_json::to_vec(update).map_err(|e| ApiError::Internal(e.into()))?;
        Ok(Self { empty: update.is_empty(), json: json.into() })
    }
}

impl axum::response::IntoResponse for RoutesJson {
    fn into_response(self) -> axum::response::Response {
        ([(axum::http::header::CONTENT_TYPE, "application/json")], self.json).into_response()
    }
}

/// How long a route answer stands (a change makes a new key sooner).
const ROUTES_TTL: Duration = Duration::from_secs(2);
/// How long the region map answers heartbeats: health changes and new
/// replicas reach proxies at most this much later.
const REGIONS_TTL: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct ReadCache {
    snapshots: moka::future::Cache<u64, RoutesJson>,
    changes: moka::future::Cache<(i64, u64), RoutesJson>,
    regions: moka::future::Cache<(), Arc<Vec<Region>>>,
}

fn cache<K, V>(capacity: u64, ttl: Duration) -> moka::future::Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    moka::future::Cache::builder().max_capacity(capacity).time_to_live(ttl).build()
}

impl Default for ReadCache {
    fn default() -> Self {
        Self { snapshots: cache(64, ROUTES_TTL), changes: cache(64, ROUTES_TTL), regions: cache(1, REGIONS_TTL) }
    }
}

impl ReadCache {
    /// The route snapshot as of route-change counter `counter`.
    pub async fn snapshot<F>(&self, counter: u64, read: F) -> ApiResult<RoutesJson>
    where
        F: Future<Output = ApiResult<RouteUpdate>>,
    {
        let answer = async { RoutesJson::of(&read.await?) };
        self.snapshots.try_get_with(counter, answer).await.map_err(ApiError::Shared)
    }

    /// Route changes after `after`, as of counter `counter`.
    pub async fn changes<F>(&self, after: i64, counter: u64, read: F) -> ApiResult<RoutesJson>
    where
        F: Future<Output = ApiResult<RouteUpdate>>,
    {
        let answer = async { RoutesJson::of(&read.await?) };
        self.changes.try_get_with((after, counter), answer).await.map_err(ApiError::Shared)
    }

    /// Forgets the cached region map: a new replica is in it at once, for
    /// itself and for every replica that registers after it.
    pub fn regions_changed(&self) {
        self.regions.invalidate_all();
    }

    /// The region map for heartbeats.
    pub async fn regions<F>(&self, read: F) -> ApiResult<Arc<Vec<Region>>>
    where
        F: Future<Output = ApiResult<Vec<Region>>>,
    {
        self.regions.try_get_with((), async { read.await.map(Arc::new) }).await.map_err(ApiError::Shared)
    }
}
