//! App sessions: the requests one user makes to one app from one address,
//! counted into one record that opens at the first request and ends after
//! the idle period without one. The table is looked up per request without
//! allocating (by client address, then a scan of that address's sessions).

use meridian_regions::connection_log::{Ending, Record};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One request's part of its session.
pub struct Request<'a> {
    /// Who (the token's subject) and what (the token's binding): the session's key with `ip`.
    pub subject: &'a str,
    pub binding: &'a str,
    pub ip: IpAddr,
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

struct Session {
    subject: Box<str>,
    binding: Box<str>,
    last: Instant,
    record: Record,
}

#[derive(Default)]
pub struct AppSessions {
    table: Mutex<HashMap<IpAddr, Vec<Session>>>,
}

impl AppSessions {
    /// Counts `req` into its session; when it opens one, `open` makes its
    /// record and the record is returned (to be noted as open).
    pub fn count(&self, req: &Request<'_>, open: impl FnOnce() -> Record) -> Option<Record> {
        let now = Instant::now();
        let mut table = self.lock();
        let sessions = table.entry(req.ip).or_default();
        let found = sessions.iter_mut().find(|s| &*s.subject == req.subject && &*s.binding == req.binding);
        let (session, opened) = match found {
            Some(session) => (session, false),
            None => {
                sessions.push(Session {
                    subject: req.subject.into(),
                    binding: req.binding.into(),
                    last: now,
                    record: open(),
                });
                let last = sessions.len() - 1;
                (&mut sessions[last], true)
            }
        };
        session.last = now;
        let r = &mut session.record;
        r.requests += 1;
        r.bytes_up += req.bytes_up;
        r.bytes_down += req.bytes_down;
        r.statuses.count(req.status);
        opened.then(|| r.clone())
    }

    /// Ends the sessions idle for `idle` (all of them with `idle` zero),
    /// each at its last request, with `ending`.
    pub fn end_idle(&self, idle: Duration, ending: Ending) -> Vec<Record> {
        let (now, wall) = (Instant::now(), chrono::Utc::now());
        let mut ended = Vec::new();
        let mut table = self.lock();
        table.retain(|_, sessions| {
            sessions.retain_mut(|s| {
                let quiet = now.saturating_duration_since(s.last);
                if quiet < idle {
                    return true;
                }
                let mut record = s.record.clone();
                let since = chrono::Duration::from_std(quiet).unwrap_or_default();
                record.ended_at = (wall - since).max(record.started_at);
                record.ending = ending;
                ended.push(record);
                false
            });
            !sessions.is_empty()
        });
        ended
    }

    /// Sessions open now.
    pub fn open(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Vec<Session>>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Refusals are recorded up to a rate (a token bucket), so a flood of
/// forged tokens or guessed names cannot fill the log; the rest are counted.
pub struct RefusalLimit {
    state: Mutex<(f64, Instant)>,
    per_second: f64,
    burst: f64,
}

impl RefusalLimit {
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self { state: Mutex::new((burst, Instant::now())), per_second, burst }
    }

    /// Whether one more refusal may be recorded now.
    pub fn admit(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, at) = *state;
        let tokens = (tokens + now.saturating_duration_since(at).as_secs_f64() * self.per_second).min(self.burst);
        let admitted = tokens >= 1.0;
        *state = (if admitted { tokens - 1.0 } else { tokens }, now);
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_regions::connection_log::{Kind, Statuses};

    fn open() -> Record {
        let now = chrono::Utc::now();
        Record {
            id: uuid::Uuid::new_v4(),
            kind: Kind::App,
            started_at: now,
            ended_at: now,
            user_id: None,
            owner: "alice".into(),
            workspace: "dev".into(),
            agent: None,
            agent_id: None,
            target: "code".into(),
            replica_id: uuid::Uuid::nil(),
            client_addr: None,
            user_agent: None,
            bytes_up: 0,
            bytes_down: 0,
            requests: 0,
            statuses: Statuses::default(),
            ending: Ending::Idle,
            reason: None,
        }
    }

    fn req<'a>(subject: &'a str, binding: &'a str, ip: [u8; 4], status: u16) -> Request<'a> {
        Request { subject, binding, ip: IpAddr::from(ip), status, bytes_up: 10, bytes_down: 100 }
    }

    #[test]
    fn one_session_per_user_app_and_address() {
        let sessions = AppSessions::default();
        let opened: Vec<bool> = [
            req("u1", "code", [127, 0, 0, 1], 200),
            req("u1", "code", [127, 0, 0, 1], 404),
            req("u2", "code", [127, 0, 0, 1], 200),
            req("u1", "docs", [127, 0, 0, 1], 200),
            req("u1", "code", [127, 0, 0, 2], 200),
            req("u1", "code", [127, 0, 0, 1], 302),
        ]
        .iter()
        .map(|r| sessions.count(r, open).is_some())
        .collect();
        assert_eq!(opened, [true, false, true, true, true, false], "a new user, app or address opens a session");
        let ended = sessions.end_idle(Duration::ZERO, Ending::RegionStopped);
        assert_eq!(ended.len(), 4);
        let first = ended.iter().find(|r| r.requests == 3).expect("the session of three requests");
        assert_eq!((first.bytes_up, first.bytes_down), (30, 300));
        assert_eq!(
            (first.statuses.success, first.statuses.redirect, first.statuses.client_error),
            (1, 1, 1),
            "its statuses by class"
        );
        assert!(ended.iter().all(|r| r.ending == Ending::RegionStopped));
        assert_eq!(sessions.open(), 0);
    }

    #[test]
    fn a_session_ends_only_once_idle() {
        let sessions = AppSessions::default();
        sessions.count(&req("u1", "code", [127, 0, 0, 1], 200), open);
        assert!(sessions.end_idle(Duration::from_secs(60), Ending::Idle).is_empty(), "not idle yet");
        assert_eq!(sessions.open(), 1);
    }

    #[test]
    fn refusals_are_recorded_up_to_the_burst_then_at_the_rate() {
        let limit = RefusalLimit::new(0.001, 3.0);
        let admitted: Vec<bool> = (0..5).map(|_| limit.admit()).collect();
        assert_eq!(admitted, [true, true, true, false, false]);
    }
}
