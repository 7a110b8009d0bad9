//! The connection log's wire types: what a region records per session (an
//! app visited, a WebSocket, a forwarded TCP connection, an SSH or terminal
//! session, a refusal), how it ships them to the coordinator, and how the
//! log is read back (`GET /api/v2/connection-log`).
//!
//! A record is written once, when its session ends; its `id` is chosen by the
//! region, so a batch sent again after a lost answer is stored once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What kind of session a record is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Requests to one app (or port) by one user from one address, until idle.
    App,
    /// One WebSocket to an app.
    WebSocket,
    /// One forwarded TCP connection (`meridian port-forward`).
    Tcp,
    /// One SSH session (`meridian ssh`, an IDE's `ProxyCommand`).
    Ssh,
    /// One web terminal (the dashboard's Terminal page).
    Terminal,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::App, Kind::WebSocket, Kind::Tcp, Kind::Ssh, Kind::Terminal];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::App => "app",
            Kind::WebSocket => "websocket",
            Kind::Tcp => "tcp",
            Kind::Ssh => "ssh",
            Kind::Terminal => "terminal",
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// An app session with no request for the idle period.
    Idle,
    /// A stream or WebSocket closed by either end without an error.
    Closed,
    /// The client went away mid-exchange (reset, aborted read or write).
    ClientGone,
    /// The agent or the app went away mid-exchange, or could not be reached.
    AgentGone,
    /// The app did not answer in time.
    Timeout,
    /// Refused before reaching the app: `reason` says why.
    Refused,
    /// Open when its region stopped gracefully.
    RegionStopped,
    /// Open when its region was killed: found at the region's next start,
    /// without its counts (see the README's "Connection log").
    RegionKilled,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Idle => "idle",
            Ending::Closed => "closed",
            Ending::ClientGone => "client_gone",
            Ending::AgentGone => "agent_gone",
            Ending::Timeout => "timeout",
            Ending::Refused => "refused",
            Ending::RegionStopped => "region_stopped",
            Ending::RegionKilled => "region_killed",
        }
    }
}

/// Responses of an app session by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statuses {
    #[serde(rename = "1xx", default)]
    pub informational: u64,
    #[serde(rename = "2xx", default)]
    pub success: u64,
    #[serde(rename = "3xx", default)]
    pub redirect: u64,
    #[serde(rename = "4xx", default)]
    pub client_error: u64,
    #[serde(rename = "5xx", default)]
    pub server_error: u64,
}

impl Statuses {
    pub fn count(&mut self, status: u16) {
        match status / 100 {
            1 => self.informational += 1,
            2 => self.success += 1,
            3 => self.redirect += 1,
            4 => self.client_error += 1,
            _ => self.server_error += 1,
        }
    }
}

/// One session, as its region saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Chosen by the region: a batch sent twice is stored once.
    pub id: Uuid,
    pub kind: Kind,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// Who: the user's id, none when anonymous (a public app) or refused unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    /// Whose workspace, which one, which agent (by name as addressed, and by id once authorized).
    pub owner: String,
    pub workspace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<Uuid>,
    /// The app's slug, the port (`8080`), `ssh` or `terminal`.
    pub target: String,
    /// The replica of the region that served it (the region is the shipper's).
    pub replica_id: Uuid,
    /// The client's address and user agent, as the region saw them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Body bytes from the client to the app, and back (a stream's or WebSocket's every byte).
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Requests of an app session (1 for the others).
    pub requests: u64,
    #[serde(default)]
    pub statuses: Statuses,
    pub ending: Ending,
    /// Why it was refused, or what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /api/v2/proxies/me/connection-log` (proxy token): records of the
/// calling region, at most [`MAX_BATCH`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    pub records: Vec<Record>,
}

/// Most records one batch may carry: a record is under 2 KiB (names are
/// short, a user agent is cut to 256 characters), so a batch stays under the
/// coordinator's 2 MiB limit for it.
pub const MAX_BATCH: usize = 500;

/// The answer to a [`Batch`]: how many were new, how many already stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub stored: u64,
    pub duplicates: u64,
}

/// `GET /api/v2/connection-log` filters (all optional). `kind` is a [`Kind`]
/// (sessions served) or `refused` (refusals, of any kind); without it, both.
/// `before` pages back (the `next` of the previous page).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `owner/name`, or a name alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// One stored record, with what the coordinator knows beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionEntry {
    /// The page key: records are listed in the order they were stored, newest first.
    pub seq: i64,
    /// The region that served it.
    pub region: String,
    /// The user's name (none for an anonymous visitor or an unknown one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(flatten)]
    pub record: Record,
}

/// A page of the connection log, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionLog {
    pub entries: Vec<ConnectionEntry>,
    /// Pass as `before` for the next (older) page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_count_by_class() {
        let mut s = Statuses::default();
        for status in [101, 200, 204, 302, 404, 403, 502, 599] {
            s.count(status);
        }
        assert_eq!(
            s,
            Statuses { informational: 1, success: 2, redirect: 1, client_error: 2, server_error: 2 },
            "each status in its class"
        );
        let json = serde_json::to_value(s).expect("serializes");
        assert_eq!(json["4xx"], 2, "classes are named as people write them: {json}");
    }

    #[test]
    fn names_on_the_wire_are_the_documented_ones() {
        for kind in Kind::ALL {
            assert_eq!(serde_json::to_value(kind).expect("serializes"), kind.as_str());
        }
        for ending in [Ending::Idle, Ending::ClientGone, Ending::RegionKilled] {
            assert_eq!(serde_json::to_value(ending).expect("serializes"), ending.as_str());
        }
    }
}
