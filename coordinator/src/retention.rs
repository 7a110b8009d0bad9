//! Retention of the audit and connection logs (`--log-retention`, default 90
//! days): once at start and then hourly, records older than that are deleted
//! in batches (`Store::prune_audit_log`, `Store::prune_connection_log`), so no
//! statement holds a lock for long. Every
//! coordinator replica runs it; deleting what another just deleted is harmless.
//! Revoked sessions no token can still come from are forgotten on the same beat.

use crate::store::Store;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often old records are looked for.
const EVERY: Duration = Duration::from_secs(3600);

pub async fn run(store: Store, keep: Duration, stop: CancellationToken) {
    loop {
        let cutoff = chrono::Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        match store.prune_audit_log(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "audit records past the retention period deleted"),
            Err(e) => tracing::warn!("cannot enforce the audit log's retention: {e}"),
        }
        match store.prune_connection_log(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "connection records past the retention period deleted"),
            Err(e) => tracing::warn!("cannot enforce the connection log's retention: {e}"),
        }
        if let Err(e) = store.forget_revoked_sessions().await {
            tracing::warn!("cannot forget revoked sessions past their tokens' lifetime: {e}");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}
