//! Health of regions and of their replicas.
//!
//! The coordinator polls each registered replica's `/healthz-report` and stores
//! a [`Status`] per replica. A region's status is the best of its replicas'
//! ([`Status::combine`]): a region is usable while any replica is.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Health of a region or of one replica, as shown by `GET /api/v2/regions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Answered its health report with no errors.
    Ok,
    /// Answered, but with errors (or a non-200 status, or an unreadable report).
    Unhealthy,
    /// Did not answer within the health-check timeout.
    Unreachable,
    /// No replica is registered (never registered, or all deregistered).
    Unregistered,
}

impl Status {
    /// Stable text form, as stored in Postgres and printed by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Unhealthy => "unhealthy",
            Status::Unreachable => "unreachable",
            Status::Unregistered => "unregistered",
        }
    }

    /// Parses the stored text form; unknown text reads as `Unreachable`, the
    /// state that steers no traffic.
    pub fn from_stored(s: &str) -> Self {
        match s {
            "ok" => Status::Ok,
            "unhealthy" => Status::Unhealthy,
            "unregistered" => Status::Unregistered,
            _ => Status::Unreachable,
        }
    }

    /// The region's status given its replicas' statuses: the best one wins,
    /// in the order ok > unhealthy > unreachable; no replica → unregistered.
    pub fn combine(replicas: impl IntoIterator<Item = Status>) -> Status {
        replicas
            .into_iter()
            .min_by_key(|s| match s {
                Status::Ok => 0,
                Status::Unhealthy => 1,
                Status::Unreachable => 2,
                Status::Unregistered => 3,
            })
            .unwrap_or(Status::Unregistered)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of a proxy's `GET /healthz-report`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthReport {
    /// `ok`, or `degraded` when any error is listed.
    pub status: String,
    /// Problems that make this replica unfit to serve (e.g. unreadable TLS material).
    pub errors: Vec<String>,
    /// Problems that leave it serving (e.g. the coordinator is unreachable).
    pub warnings: Vec<String>,
    /// Whether the last attempt to reach the coordinator succeeded.
    pub coordinator_reachable: bool,
    /// When the last registration or heartbeat succeeded.
    pub last_registration_at: Option<chrono::DateTime<chrono::Utc>>,
    pub version: String,
    /// The region's connection log: what waits to be shipped, and what was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_log: Option<ConnectionLogReport>,
}

/// The connection log's state in a replica's health report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnectionLogReport {
    /// App sessions open now (their records are written when they end).
    pub open_app_sessions: u64,
    /// Records written and not yet stored by the coordinator, and their bytes on disk.
    pub buffered: u64,
    pub spilled_bytes: u64,
    /// Records the coordinator stored since this process started.
    pub shipped: u64,
    /// Records lost since this process started (past the disk bound, unwritable,
    /// or a line cut by a kill); never silent: a warning says so too.
    pub dropped: u64,
    /// Sessions a kill of the previous process left open (logged without their counts).
    pub killed_sessions: u64,
    /// Refusals past the recording rate, counted, not recorded.
    pub refusals_suppressed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_prefers_best_replica() {
        use Status::*;
        let cases: &[(&[Status], Status)] = &[
            (&[], Unregistered),
            (&[Ok], Ok),
            (&[Unreachable, Ok], Ok),
            (&[Unreachable, Unhealthy], Unhealthy),
            (&[Unreachable, Unreachable], Unreachable),
        ];
        for (replicas, want) in cases {
            assert_eq!(Status::combine(replicas.iter().copied()), *want, "{replicas:?}");
        }
    }

    #[test]
    fn stored_form_round_trips() {
        for s in [Status::Ok, Status::Unhealthy, Status::Unreachable, Status::Unregistered] {
            assert_eq!(Status::from_stored(s.as_str()), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(Status::from_stored("garbage"), Status::Unreachable);
    }
}
