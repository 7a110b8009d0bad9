//! The region's half of the connection log: one record per session (an app
//! visited until idle, a WebSocket, a TCP, SSH or terminal stream, a refusal),
//! kept on disk ([`journal`]) and shipped to the coordinator ([`shipper`]).
//!
//! Per request the cost is a table lookup under a lock ([`sessions`]); a
//! file is written only when a session opens or ends, never per request.

pub mod journal;
pub mod sessions;
pub mod shipper;

use journal::Journal;
use meridian_regions::app_token::AppClaims;
use meridian_regions::app_url::{AppRequest, AppTarget};
use meridian_regions::connection_log::{Ending, Kind, Record, Statuses};
use prometheus::{IntCounter, IntGauge};
use sessions::{AppSessions, RefusalLimit, Request};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Refusals recorded per second at most (with a burst of [`REFUSAL_BURST`]);
/// past it they are counted in `meridian_connection_log_refusals_suppressed_total`.
const REFUSALS_PER_SECOND: f64 = 10.0;
const REFUSAL_BURST: f64 = 100.0;

/// The connection log's metrics (per process, so per region replica).
#[derive(Clone)]
pub struct Counters {
    /// Records the coordinator stored.
    pub shipped: IntCounter,
    /// Records written and not yet stored, and their bytes on disk.
    pub buffered: IntGauge,
    pub spilled_bytes: IntGauge,
    /// Records lost: past the disk bound, unwritable, or cut by a kill mid-write.
    pub dropped: IntCounter,
    /// Sessions a kill left open: logged at the next start without their counts.
    pub killed: IntCounter,
    /// Refusals past the rate, not recorded.
    pub refusals_suppressed: IntCounter,
}

impl Counters {
    pub fn new() -> Self {
        let counter =
            |name: &str, help: &str| IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let gauge =
            |name: &str, help: &str| IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("static metric: {e}"));
        Self {
            shipped: counter("meridian_connection_log_shipped_total", "Connection records the coordinator stored"),
            buffered: gauge("meridian_connection_log_buffered_records", "Connection records kept, not yet shipped"),
            spilled_bytes: gauge("meridian_connection_log_spilled_bytes", "Bytes of kept records on disk"),
            dropped: counter(
                "meridian_connection_log_dropped_total",
                "Connection records lost: past the disk bound, unwritable, or cut mid-write by a kill",
            ),
            killed: counter(
                "meridian_connection_log_killed_sessions_total",
                "Sessions open when the proxy was killed, logged at its next start without their counts",
            ),
            refusals_suppressed: counter(
                "meridian_connection_log_refusals_suppressed_total",
                "Refusals past the recording rate, counted but not recorded",
            ),
        }
    }

    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.shipped.clone()),
            Box::new(self.buffered.clone()),
            Box::new(self.spilled_bytes.clone()),
            Box::new(self.dropped.clone()),
            Box::new(self.killed.clone()),
            Box::new(self.refusals_suppressed.clone()),
        ]
    }
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

pub struct ConnectionLog {
    journal: Journal,
    sessions: AppSessions,
    refusals: RefusalLimit,
    pub counters: Counters,
    replica_id: Uuid,
    /// An app session ends after this long without a request.
    pub idle: Duration,
    /// One shipment at a time (the periodic one and the last one at shutdown).
    shipping: tokio::sync::Mutex<()>,
}

/// Who reached what, from where, as a request shows it.
pub struct Seen<'a> {
    pub req: &'a AppRequest,
    /// A stream (`ssh`, `terminal`, `tcp:<port>`), not an app.
    pub stream: bool,
    pub claims: Option<&'a AppClaims>,
    pub client: Option<IpAddr>,
    pub user_agent: Option<&'a str>,
}

/// A stream or WebSocket between its start and its end.
pub struct OpenStream(Record);

impl ConnectionLog {
    /// The log of replica `replica_id`, kept in `dir` within `max_disk` bytes.
    pub fn open(dir: &Path, max_disk: u64, idle: Duration, replica_id: Uuid) -> std::io::Result<Arc<Self>> {
        let counters = Counters::new();
        Ok(Arc::new(Self {
            journal: Journal::open(dir, max_disk, counters.clone())?,
            sessions: AppSessions::default(),
            refusals: RefusalLimit::new(REFUSALS_PER_SECOND, REFUSAL_BURST),
            counters,
            replica_id,
            idle,
            shipping: tokio::sync::Mutex::new(()),
        }))
    }

    /// Counts an app request (not an upgrade) into its session.
    pub fn app_request(&self, seen: &Seen<'_>, status: u16, bytes_up: u64, bytes_down: u64) {
        let Some(claims) = seen.claims else { return };
        let ip = seen.client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let req = Request { subject: &claims.sub, binding: &claims.binding, ip, status, bytes_up, bytes_down };
        if let Some(opened) = self.sessions.count(&req, || self.record(seen, Kind::App)) {
            self.journal.open_session(&opened);
        }
    }

    /// A WebSocket or stream begins: noted as open until [`ConnectionLog::stream_ended`].
    pub fn stream_opened(&self, seen: &Seen<'_>) -> OpenStream {
        let kind = if seen.stream { stream_kind(seen.req).0 } else { Kind::WebSocket };
        let record = self.record(seen, kind);
        self.journal.open_session(&record);
        OpenStream(record)
    }

    /// It ended: its record is written.
    pub fn stream_ended(&self, open: OpenStream, (status, bytes_up, bytes_down): (u16, u64, u64), ending: Ending) {
        let mut record = open.0;
        record.ended_at = chrono::Utc::now();
        record.statuses.count(status);
        (record.bytes_up, record.bytes_down, record.ending) = (bytes_up, bytes_down, ending);
        if status != 101 && ending == Ending::Closed {
            // Answered without switching protocols: the app or agent said no.
            record.ending = Ending::AgentGone;
            record.reason = Some(format!("answered {status}, not 101"));
        }
        self.journal.close(&record);
    }

    /// A request refused before it reached the app (within the refusal rate).
    pub fn refused(&self, seen: &Seen<'_>, upgrade: bool, reason: &str) {
        if !self.refusals.admit() {
            self.counters.refusals_suppressed.inc();
            return;
        }
        let kind = match (seen.stream, upgrade) {
            (true, _) => stream_kind(seen.req).0,
            (false, true) => Kind::WebSocket,
            (false, false) => Kind::App,
        };
        let mut record = self.record(seen, kind);
        (record.requests, record.ending, record.reason) = (1, Ending::Refused, Some(reason.to_owned()));
        self.journal.append(&record);
    }

    /// Ends the app sessions idle for the idle period.
    pub fn end_idle(&self) {
        for record in self.sessions.end_idle(self.idle, Ending::Idle) {
            self.journal.close(&record);
        }
    }

    /// At shutdown, once drained: every session still open ends now.
    pub fn stop(&self) {
        for record in self.sessions.end_idle(Duration::ZERO, Ending::RegionStopped) {
            self.journal.close(&record);
        }
        if let Err(e) = self.journal.end_open(Ending::RegionStopped) {
            tracing::warn!("cannot end the sessions still open: {e}");
        }
    }

    /// What `/healthz-report` says of the log.
    pub fn report(&self) -> meridian_regions::health::ConnectionLogReport {
        let c = &self.counters;
        meridian_regions::health::ConnectionLogReport {
            open_app_sessions: self.sessions.open() as u64,
            buffered: c.buffered.get().max(0) as u64,
            spilled_bytes: c.spilled_bytes.get().max(0) as u64,
            shipped: c.shipped.get(),
            dropped: c.dropped.get(),
            killed_sessions: c.killed.get(),
            refusals_suppressed: c.refusals_suppressed.get(),
        }
    }

    fn record(&self, seen: &Seen<'_>, kind: Kind) -> Record {
        let now = chrono::Utc::now();
        let target = if seen.stream { stream_kind(seen.req).1 } else { app_target(&seen.req.target) };
        Record {
            id: Uuid::new_v4(),
            kind,
            started_at: now,
            ended_at: now,
            user_id: seen.claims.and_then(|c| c.sub.parse().ok()),
            owner: seen.req.user.clone(),
            workspace: seen.req.workspace.clone(),
            agent: seen.req.agent.clone(),
            agent_id: seen.claims.map(|c| c.agent_id),
            target,
            replica_id: self.replica_id,
            client_addr: seen.client.map(|ip| ip.to_string()),
            user_agent: seen.user_agent.map(|ua| ua.chars().take(256).collect()),
            bytes_up: 0,
            bytes_down: 0,
            requests: u64::from(kind != Kind::App),
            statuses: Statuses::default(),
            ending: Ending::Closed,
            reason: None,
        }
    }
}

/// A stream's kind and target from its route (`ssh`, `terminal`, `tcp:<port>`).
fn stream_kind(req: &AppRequest) -> (Kind, String) {
    let name = match &req.target {
        AppTarget::Slug(s) => s.as_str(),
        AppTarget::Port { .. } => "",
    };
    match name {
        "ssh" => (Kind::Ssh, "ssh".into()),
        "terminal" => (Kind::Terminal, "terminal".into()),
        other => (Kind::Tcp, other.strip_prefix("tcp:").unwrap_or(other).to_owned()),
    }
}

/// An app's slug, or its port (`8443s` when the app speaks TLS).
fn app_target(target: &AppTarget) -> String {
    match target {
        AppTarget::Slug(slug) => slug.clone(),
        AppTarget::Port { port, https: false } => port.to_string(),
        AppTarget::Port { port, https: true } => format!("{port}s"),
    }
}
