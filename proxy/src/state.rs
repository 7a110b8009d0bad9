//! State shared between the data plane and the registration loop.

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What the registration loop last learned about the coordinator.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub coordinator_reachable: bool,
    pub last_success: Option<DateTime<Utc>>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
}

#[derive(Default)]
pub struct ProxyState {
    registration: Mutex<Registration>,
    /// Fires when a registration succeeds after the coordinator was lost, so
    /// the route feed resumes at once instead of at the end of its backoff.
    pub coordinator_back: tokio::sync::Notify,
    in_flight: AtomicUsize,
    /// The dashboard's origin (the coordinator's, from --login-url): the one
    /// origin `/latency-check` answers CORS and Timing-Allow-Origin for.
    dashboard_origin: std::sync::OnceLock<String>,
    /// `--pipe-idle-timeout`: how long a relayed byte pipe may carry nothing.
    pipe_idle: std::sync::OnceLock<std::time::Duration>,
    /// The connection log (set once at start; absent only in unit tests).
    connection_log: std::sync::OnceLock<Arc<crate::connection_log::ConnectionLog>>,
    /// Set at SIGTERM: `/readyz` answers 503 from then on.
    draining: std::sync::atomic::AtomicBool,
    pub metrics: crate::metrics::Metrics,
    /// Users whose tokens are refused, and the upgraded connections to cut for them.
    pub access: Arc<crate::access::Access>,
}

impl std::fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyState").field("in_flight", &self.in_flight()).finish_non_exhaustive()
    }
}

impl ProxyState {
    pub fn new() -> Arc<Self> {
        let state = Arc::<Self>::default();
        state.metrics.register(Box::new(state.access.cut_total.clone()));
        state
    }

    pub fn registration(&self) -> Registration {
        self.registration.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the coordinator can renew app tokens now: reachable, and its
    /// last answer not an error (a coordinator whose database is down answers 503).
    pub fn coordinator_renews(&self) -> bool {
        let r = self.registration.lock().unwrap_or_else(|e| e.into_inner());
        r.coordinator_reachable && r.last_error.is_none()
    }

    pub fn update_registration(&self, f: impl FnOnce(&mut Registration)) {
        f(&mut self.registration.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The route stream to the coordinator broke at the connection: the
    /// coordinator is gone now, not at the next heartbeat (which may be 15 s
    /// away). The next successful registration says it is back.
    pub fn coordinator_lost(&self, why: &str) {
        self.update_registration(|r| {
            if r.coordinator_reachable {
                tracing::warn!(error = %why, "lost the coordinator; still serving from cached keys and routes");
            }
            r.coordinator_reachable = false;
            r.last_error = Some(format!("the route stream broke: {why}"));
        });
    }

    /// Marks one request in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn set_dashboard_origin(&self, origin: String) {
        let _ = self.dashboard_origin.set(origin);
    }

    pub fn dashboard_origin(&self) -> &str {
        self.dashboard_origin.get().map_or("null", String::as_str)
    }

    pub fn set_pipe_idle(&self, idle: std::time::Duration) {
        let _ = self.pipe_idle.set(idle);
    }

    pub fn pipe_idle(&self) -> std::time::Duration {
        self.pipe_idle.get().copied().unwrap_or(meridian_regions::pipe::DEFAULT_IDLE)
    }

    pub fn set_connection_log(&self, log: Arc<crate::connection_log::ConnectionLog>) {
        let _ = self.connection_log.set(log);
    }

    pub fn connection_log(&self) -> Option<&Arc<crate::connection_log::ConnectionLog>> {
        self.connection_log.get()
    }

    /// Whether shutdown has begun (readiness is false).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// Counts a request as in flight while alive; the drain waits for zero.
#[derive(Debug)]
pub struct InFlight(Arc<ProxyState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
