//! The region health checker.
//!
//! Every `--proxy-health-interval` it polls each registered replica's
//! `/healthz-report` (timeout: the interval, at most 5 s) and stores the
//! result in Postgres, where every coordinator replica reads it. Replicas that
//! registered just now are polled at once, not one interval later.

use crate::store::{ReplicaCheck, Store};
use meridian_regions::health::{HealthReport, Status};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Longest wait for one replica's report.
const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Checker {
    pub store: Store,
    pub http: reqwest::Client,
    pub interval: Duration,
    pub replica_expiry: Duration,
}

impl Checker {
    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, mut check_now: mpsc::UnboundedReceiver<Uuid>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => self.check_all().await,
                Some(id) = check_now.recv() => self.check_one(id).await,
            }
        }
    }

    async fn check_all(&self) {
        let replicas = match self.store.replicas_to_check().await {
            Ok(r) => r,
            Err(e) => return tracing::warn!(error = %e, "health check skipped: cannot list replicas"),
        };
        let mut checks = JoinSet::new();
        for replica in replicas {
            let (http, timeout) = (self.http.clone(), self.timeout());
            checks.spawn(async move { (replica.id, check(&http, &replica, timeout).await) });
        }
        while let Some(done) = checks.join_next().await {
            if let Ok((id, (status, error))) = done {
                self.record(id, status, error).await;
            }
        }
        if let Err(e) = self.store.prune_stale_replicas(self.replica_expiry).await {
            tracing::warn!(error = %e, "cannot prune stale replicas");
        }
    }

    async fn check_one(&self, id: Uuid) {
        let Ok(replicas) = self.store.replicas_to_check().await else {
            return;
        };
        if let Some(replica) = replicas.into_iter().find(|r| r.id == id) {
            let (status, error) = check(&self.http, &replica, self.timeout()).await;
            self.record(id, status, error).await;
        }
    }

    async fn record(&self, id: Uuid, status: Status, error: Option<String>) {
        if let Err(e) = self.store.record_health(id, status, error.as_deref()).await {
            tracing::warn!(replica = %id, error = %e, "cannot store health");
        }
    }

    fn timeout(&self) -> Duration {
        self.interval.min(MAX_CHECK_TIMEOUT)
    }
}

/// Polls one replica: no answer → unreachable; an error status, an unreadable
/// report or a report listing errors → unhealthy; else ok.
pub async fn check(http: &reqwest::Client, replica: &ReplicaCheck, timeout: Duration) -> (Status, Option<String>) {
    let url = format!("{}/healthz-report", replica.access_url.trim_end_matches('/'));
    let resp = match http.get(&url).timeout(timeout).send().await {
        Ok(r) => r,
        Err(e) => {
            return (Status::Unreachable, Some(format!("GET {url}: {}", meridian_regions::client::error_chain(&e))))
        }
    };
    let code = resp.status();
    if !code.is_success() {
        return (Status::Unhealthy, Some(format!("GET {url}: HTTP {code}")));
    }
    match resp.json::<HealthReport>().await {
        Ok(report) if report.errors.is_empty() => (Status::Ok, None),
        Ok(report) => (Status::Unhealthy, Some(report.errors.join("; "))),
        Err(e) => (Status::Unhealthy, Some(format!("unreadable health report: {e}"))),
    }
}
