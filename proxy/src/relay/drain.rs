//! The drain of a stopping replica, for the streams this relay carries for
//! peer relays: each ends once quiet for [`RELAYED_QUIET`], while busy ones
//! run on (the proxy's own requests drain in `crate::lifecycle`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// In the drain, how long a stream carried for a peer relay may be quiet
/// before it is closed (see [`super::Relay::start_draining`]): longer than the gaps
/// of a streamed response or a talking WebSocket, short enough that idle
/// pooled connections do not hold the shutdown.
pub const RELAYED_QUIET: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug)]
pub(super) struct Drain {
    /// Streams open now for peer relays (through this relay's tunnels).
    relayed: Arc<AtomicUsize>,
    /// Turned true when the drain begins: relayed streams then end once quiet.
    draining: tokio::sync::watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Self { relayed: Arc::default(), draining: tokio::sync::watch::channel(false).0 }
    }
}

impl Drain {
    pub fn relayed(&self) -> usize {
        self.relayed.load(Ordering::Relaxed)
    }

    pub fn start(&self) {
        self.draining.send_replace(true);
    }

    /// Turns true when the drain begins.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Counts one relayed stream while the returned guard lives.
    pub fn track(&self) -> Relayed {
        self.relayed.fetch_add(1, Ordering::Relaxed);
        Relayed(self.relayed.clone())
    }
}

/// Counts one stream relayed for a peer while it is open.
pub(super) struct Relayed(Arc<AtomicUsize>);

impl Drop for Relayed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
