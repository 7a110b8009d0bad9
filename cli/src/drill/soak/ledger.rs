//! The soak's check of the connection log: every WebSocket the soak opened
//! (answered 101) must appear in the log exactly once, through the region it
//! went through, with bytes each way within the app's framing of what was
//! sent and echoed. Each WebSocket names itself in its `User-Agent`, which
//! the region records, so the match is one to one.

use meridian_regions::client::Client;
use meridian_regions::connection_log::{ConnectionEntry, ConnectionQuery, Ending};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `User-Agent` prefix of the soak's WebSockets.
pub const AGENT_PREFIX: &str = "meridian-soak/ws/";
/// Longest wait, once traffic has stopped, for every record to arrive (a
/// region's records reach the coordinator within a second or two, and a
/// restarted one's at its next start).
const ARRIVAL: Duration = Duration::from_secs(60);
/// WebSocket framing per message: a client's frame adds 2 bytes of header
/// and 4 of mask (payloads under 126 bytes), a server's 2; a close frame
/// each way adds as much again, with a 2-byte code.
const CLIENT_FRAME: u64 = 6;
const SERVER_FRAME: u64 = 2;
const CLOSE: u64 = 8;

/// One WebSocket the soak opened: what it sent and had echoed.
#[derive(Debug, Clone, Default)]
pub struct Socket {
    /// Its `User-Agent`, [`AGENT_PREFIX`] and `<region>/<slot>/<n>`.
    pub agent: String,
    pub region: String,
    pub sent: u64,
    pub sent_bytes: u64,
    pub echoed: u64,
    pub echoed_bytes: u64,
}

pub type Sockets = Arc<Mutex<Vec<Socket>>>;

/// What the log held of the soak's WebSockets.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LedgerReport {
    /// WebSockets the soak opened, and records of them found.
    pub opened: u64,
    pub found: u64,
    /// Of those, ended by a kill of their region (logged without their bytes).
    pub killed: u64,
    /// Up to 20 each, by `User-Agent`.
    pub missing: Vec<String>,
    pub doubled: Vec<String>,
    pub wrong_region: Vec<String>,
    pub bytes_outside_framing: Vec<String>,
    /// Why the log could not be read, if it could not.
    pub error: Option<String>,
}

impl LedgerReport {
    /// What fails the soak, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (list, what) in [
            (&self.missing, "missing from the connection log"),
            (&self.doubled, "in the connection log twice"),
            (&self.wrong_region, "logged under another region"),
            (&self.bytes_outside_framing, "logged with bytes outside the app's framing"),
        ] {
            if !list.is_empty() {
                out.push(format!("WebSockets {what}: {}", list.join(", ")));
            }
        }
        out.extend(self.error.iter().map(|e| format!("the connection log could not be read: {e}")));
        out
    }
}

/// Waits (bounded) until every socket's record is in the log since `since`, then compares.
pub async fn check(api: &Client, since: chrono::DateTime<chrono::Utc>, sockets: Vec<Socket>) -> LedgerReport {
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let records = match read(api, since).await {
            Ok(records) => records,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("reading the connection log: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return LedgerReport { opened: sockets.len() as u64, error: Some(e), ..Default::default() },
        };
        let report = compare(&sockets, &records);
        if report.missing.is_empty() || Instant::now() >= deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn read(api: &Client, since: chrono::DateTime<chrono::Utc>) -> Result<Vec<ConnectionEntry>, String> {
    let mut query =
        ConnectionQuery { kind: Some("websocket".into()), since: Some(since), limit: Some(1000), ..Default::default() };
    let mut all = Vec::new();
    loop {
        let page = api.connection_log(&query).await.map_err(|e| e.to_string())?;
        all.extend(page.entries);
        match page.next {
            Some(next) => query.before = Some(next),
            None => return Ok(all),
        }
    }
}

fn compare(sockets: &[Socket], records: &[ConnectionEntry]) -> LedgerReport {
    let mut by_agent: BTreeMap<&str, Vec<&ConnectionEntry>> = BTreeMap::new();
    for r in records {
        if let Some(agent) = r.record.user_agent.as_deref().filter(|a| a.starts_with(AGENT_PREFIX)) {
            by_agent.entry(agent).or_default().push(r);
        }
    }
    let mut report = LedgerReport { opened: sockets.len() as u64, ..Default::default() };
    let note = |list: &mut Vec<String>, line: String| {
        if list.len() < 20 {
            list.push(line);
        }
    };
    for s in sockets {
        let found = by_agent.get(s.agent.as_str()).map(Vec::as_slice).unwrap_or_default();
        let Some(r) = found.first() else {
            note(&mut report.missing, s.agent.clone());
            continue;
        };
        report.found += 1;
        if found.len() > 1 {
            note(&mut report.doubled, format!("{} ({} records)", s.agent, found.len()));
        }
        if r.region != s.region {
            note(&mut report.wrong_region, format!("{} through {} logged as {}", s.agent, s.region, r.region));
        }
        if r.record.ending == Ending::RegionKilled {
            report.killed += 1;
        } else if let Some(why) = outside_framing(s, &r.record) {
            note(&mut report.bytes_outside_framing, format!("{}: {why}", s.agent));
        }
    }
    report
}

/// Whether a record's bytes fit what the socket sent and had echoed: at
/// least what came back (it went up first), at most what was sent, each
/// with its framing.
fn outside_framing(s: &Socket, r: &meridian_regions::connection_log::Record) -> Option<String> {
    let up = s.echoed_bytes..=s.sent_bytes + CLIENT_FRAME * s.sent + CLOSE;
    let down = s.echoed_bytes..=s.sent_bytes + SERVER_FRAME * s.sent + CLOSE;
    (!up.contains(&r.bytes_up) || !down.contains(&r.bytes_down)).then(|| {
        format!(
            "up {} (allowed {up:?}), down {} (allowed {down:?}), {} messages sent, {} echoed",
            r.bytes_up, r.bytes_down, s.sent, s.echoed
        )
    })
}
