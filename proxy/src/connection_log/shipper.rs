//! Ships the journal's sealed segments to the coordinator, oldest first, in
//! batches of at most [`MAX_BATCH`]; a segment is deleted once every batch of
//! it was stored. A failed shipment is tried again after a backoff (doubling
//! from [`SHIP_INTERVAL`] to [`MAX_BACKOFF`]) or as soon as the coordinator is
//! back; a batch stored but unanswered is stored once (records carry ids).

use super::ConnectionLog;
use meridian_regions::client::{Client, ClientError};
use meridian_regions::connection_log::{Batch, MAX_BATCH};
use std::sync::Arc;
use std::time::Duration;

/// How often ended sessions are shipped (and idle app sessions ended).
pub const SHIP_INTERVAL: Duration = Duration::from_secs(1);
/// Longest pause between attempts while the coordinator refuses or is away.
const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// Longest wait for one batch to be stored.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Ships until `stop` turns true (then the lifecycle's [`finish`] takes over).
pub async fn run(
    log: Arc<ConnectionLog>,
    coordinator: Client,
    state: Arc<crate::state::ProxyState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = SHIP_INTERVAL;
    loop {
        let wait = tokio::time::sleep(backoff);
        tokio::select! {
            _ = wait => {}
            _ = state.coordinator_back.notified(), if backoff > SHIP_INTERVAL => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        log.end_idle();
        backoff = match ship(&log, &coordinator, BATCH_TIMEOUT).await {
            Ok(()) => SHIP_INTERVAL,
            Err(e) => {
                if backoff == SHIP_INTERVAL {
                    tracing::warn!(buffered = log.counters.buffered.get(), "cannot ship the connection log yet: {e}");
                }
                (backoff * 2).min(MAX_BACKOFF)
            }
        };
    }
}

/// At shutdown: ends what is open and ships everything within `deadline`;
/// what is left stays on disk for the next start.
pub async fn finish(log: &ConnectionLog, coordinator: &Client, deadline: Duration) {
    log.stop();
    match tokio::time::timeout(deadline, ship(log, coordinator, deadline)).await {
        Ok(Ok(())) => tracing::info!("connection log shipped"),
        Ok(Err(e)) => tracing::warn!(kept = log.counters.buffered.get(), "connection log kept on disk: {e}"),
        Err(_) => tracing::warn!(kept = log.counters.buffered.get(), "connection log kept on disk: out of time"),
    }
}

/// Why a shipment stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("cannot read the journal: {0}")]
    Journal(#[from] std::io::Error),
    #[error(transparent)]
    Coordinator(#[from] ClientError),
}

/// Seals the segment being written and ships every sealed one.
pub async fn ship(log: &ConnectionLog, coordinator: &Client, timeout: Duration) -> Result<(), ShipError> {
    let _one_at_a_time = log.shipping.lock().await;
    log.journal.seal();
    for segment in log.journal.sealed()? {
        let records = log.journal.read(&segment)?;
        for chunk in records.chunks(MAX_BATCH) {
            match coordinator.ship_connection_log(&Batch { records: chunk.to_vec() }, timeout).await {
                Ok(stored) => log.counters.shipped.inc_by(stored.stored + stored.duplicates),
                // The coordinator cannot ever store these (a record it finds
                // malformed): lost, counted, and not in the way of the rest.
                Err(ClientError::Api { status, message, .. }) if status.as_u16() == 400 => {
                    tracing::error!(records = chunk.len(), "the coordinator refused connection records: {message}");
                    log.counters.dropped.inc_by(chunk.len() as u64);
                }
                Err(e) => return Err(e.into()),
            }
        }
        log.journal.remove(&segment, records.len() as u64);
    }
    Ok(())
}
