//! Route change notifications: every coordinator replica LISTENs on
//! `meridian_routes` (the `agents` trigger NOTIFYs on each attach and detach,
//! see migration 0004), and wakes the proxies waiting in `proxies/me/routes`.
//!
//! A notification missed while the listening connection was down costs
//! nothing: on every reconnect the waiters are woken to re-read, and they
//! read by version, not from the notification's payload.

use sqlx::postgres::{PgListener, PgPool};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const CHANNEL: &str = "meridian_routes";
/// Wait between attempts to (re)connect the listener.
const RETRY: Duration = Duration::from_secs(1);

/// Listens until `stop` is cancelled, bumping `changes` on each notification.
pub async fn listen(pool: PgPool, changes: watch::Sender<u64>, stop: CancellationToken) {
    let wake = || changes.send_modify(|n| *n = n.wrapping_add(1));
    while !stop.is_cancelled() {
        let mut listener = match connect(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for route changes; retrying");
                tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(RETRY) => continue }
            }
        };
        wake();
        loop {
            let next = tokio::select! { _ = stop.cancelled() => return, n = listener.try_recv() => n };
            match next {
                Ok(Some(_)) => wake(),
                // The connection dropped; notifications in between are lost.
                Ok(None) => {
                    wake();
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "route change listener failed; reconnecting");
                    break;
                }
            }
        }
        tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(RETRY) => {} }
    }
}

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
