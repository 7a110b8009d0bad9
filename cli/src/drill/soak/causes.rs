//! Which failures a fault explains: each rule names the fault, the requests it
//! reaches (by time, region and the relay they went through) and the causes it
//! allows (what the client saw). A failure outside every rule, or with a cause
//! its rule does not list, is unexplained. Each fault also has a bound on its
//! recovery: a slower recovery fails the run instead of widening the window.

use super::load::{Kind, Outcome, Record};
use super::procs::Sample;
use crate::faults::Scenario;
use std::time::Duration;

/// How long after the agent's relay stops answering it is let go (the
/// keep-alive on the agent link) plus a margin: requests sent before then
/// through a region to that relay may fail.
pub const SILENT_LINK: Duration = Duration::from_secs(6);
/// After recovery, a request already failing may still be in flight.
const MARGIN: Duration = Duration::from_secs(2);
/// A proxy's drain period (`--drain-timeout`, 15 s by default).
const DRAIN: Duration = Duration::from_secs(15);
/// Where the agent's tunnel is is read twice a second: a move is seen up to
/// this late.
const HOLDER_LAG: Duration = Duration::from_secs(1);

/// The longest a fault may take to recover, from its heal until health and
/// every region's traffic are back. A region comes back at the first health
/// probe after the heal (10 s apart by default); the coordinator after its
/// start, its Postgres connection and every region's next registration.
pub fn recovery_bound(scenario: Scenario) -> Duration {
    Duration::from_secs(match scenario {
        Scenario::CutTunnel => 10,
        Scenario::RestartRegion | Scenario::StopPostgres => 15,
        Scenario::PartitionRegion | Scenario::KillRegion | Scenario::KillCoordinator => 30,
    })
}

/// Nothing took the connection (a connect error, also of a WebSocket).
const REFUSED: &[&str] = &["connect"];
/// The connection, or the answer on it, broke after it was accepted.
const CUT: &[&str] = &[
    "reset",
    "body cut short",
    "answer cut short",
    "download cut short",
    "stream cut short",
    "WebSocket closed",
    "WebSocket handshake",
    "HTTP 502: The app closed the connection before answering",
];
/// The path to the agent went away under a request routed to it: the proxy's pages for that.
const NO_PATH: &[&str] = &[
    "HTTP 502: The workspace agent is not connected",
    "HTTP 502: The app is not reachable",
    "HTTP 504: The app did not answer in time",
];
/// No answer at all: a partitioned region's connections go silent.
const SILENT: &[&str] = &["timeout", NO_ANSWER];
/// The cause recorded for a request that got no answer within the timeout.
pub const NO_ANSWER: &str = "no answer";

/// One fault as it happened (times since the soak started).
pub struct FaultRun {
    pub scenario: Scenario,
    pub region: Option<String>,
    /// The region that held the agent's tunnel when the fault came.
    pub agent_region: Option<String>,
    /// Where the agent's tunnel was, as it moved, from the soak's start to
    /// this fault's end: which relay a request went through.
    pub holders: Vec<(Duration, Option<String>)>,
    pub injected: Duration,
    pub inject_done: Duration,
    pub heal_at: Duration,
    pub healed: Duration,
    pub recovered: Option<Duration>,
    /// The processes once it was over.
    pub after: Sample,
}

/// A rule: why the design says the fault fails a request, and what the client may have seen.
type Rule = (&'static str, &'static [&'static [&'static str]]);

impl FaultRun {
    /// Whether recovery took longer than [`recovery_bound`] (or never came).
    pub fn slow(&self) -> bool {
        self.recovered.is_none_or(|r| r.saturating_sub(self.healed) > recovery_bound(self.scenario))
    }

    /// Whether the agent's tunnel was on `region`'s relay when a request
    /// started at `at` (or moved from it within the read's lag).
    fn held_by(&self, region: &str, at: Duration) -> bool {
        let from = at.saturating_sub(HOLDER_LAG);
        let in_effect = self.holders.iter().rev().find(|(t, _)| *t <= from);
        let moved = self.holders.iter().filter(|(t, _)| *t > from && *t <= at);
        in_effect.into_iter().chain(moved).any(|(_, r)| r.as_deref() == Some(region))
    }

    /// The rule of this fault that reaches `r` by time and place, if any.
    fn rule(&self, r: &Record) -> Option<Rule> {
        // Recovery counts up to its bound: a slow one fails the run, it does not explain more.
        let recovered = self.recovered.unwrap_or(self.healed).min(self.healed + recovery_bound(self.scenario));
        let during = r.sent <= recovered + MARGIN && r.done >= self.injected;
        // Open when the fault came (a WebSocket counts from its opening).
        let at_the_fault = r.since <= self.inject_done && r.done >= self.injected;
        let here = self.region.as_deref() == Some(r.region.as_str());
        let primary = meridian_regions::PRIMARY_REGION;
        let through = |region: &str| self.held_by(region, r.since);
        Some(match self.scenario {
            Scenario::KillCoordinator if during && r.region == primary => {
                ("the primary region is the coordinator's process: down until it restarts", &[REFUSED, CUT])
            }
            Scenario::KillCoordinator if at_the_fault && through(primary) => {
                ("in flight through the killed relay that held the agent", &[CUT])
            }
            Scenario::PartitionRegion if during && here => {
                ("the region's users cannot reach it while it is partitioned", &[REFUSED, CUT, SILENT])
            }
            Scenario::KillRegion if during && here => ("the region is down until it restarts", &[REFUSED, CUT]),
            Scenario::PartitionRegion | Scenario::KillRegion
                if r.since <= self.inject_done + SILENT_LINK
                    && r.done >= self.injected
                    && self.region.as_deref().is_some_and(through) =>
            {
                let causes: &'static [&'static [&'static str]] =
                    if self.scenario == Scenario::PartitionRegion { &[CUT, NO_PATH, SILENT] } else { &[CUT, NO_PATH] };
                ("in flight to the agent's relay before its tunnel was let go", causes)
            }
            Scenario::CutTunnel if at_the_fault => ("in flight on the agent's tunnel when it was cut", &[CUT]),
            // A replica stopping gracefully answers what reaches it for its
            // drain period (15 s): a response streamed on a connection kept
            // alive from before can outlive it.
            Scenario::RestartRegion if during && here && r.kind == Kind::Stream && r.done >= self.injected + DRAIN => {
                ("a streamed response on a stopping replica outlived its drain period", &[&["stream cut short"]])
            }
            _ => return None,
        })
    }

    /// Why this fault makes `r` fail as the client saw it, if the design says it does.
    pub fn explains(&self, r: &Record, cause: &str) -> Option<&'static str> {
        let (why, causes) = self.rule(r)?;
        causes.iter().flat_map(|c| c.iter()).any(|c| cause.starts_with(c)).then_some(why)
    }
}

pub enum Class {
    Ok,
    /// (fault index, the design's reason, the client's cause)
    Expected(usize, &'static str, String),
    Unexplained(String),
    Corrupt(String),
    Hung,
}

pub fn classify(r: &Record, faults: &[FaultRun]) -> Class {
    let explained = |cause: &str| faults.iter().enumerate().find_map(|(i, f)| Some((i, f.explains(r, cause)?)));
    match &r.outcome {
        Outcome::Ok => Class::Ok,
        Outcome::Corrupt(what) => Class::Corrupt(what.clone()),
        Outcome::Failed(cause) => match explained(cause) {
            Some((i, why)) => Class::Expected(i, why, cause.clone()),
            None => Class::Unexplained(cause.clone()),
        },
        // Only a partition explains no answer at all.
        Outcome::Hung => match explained(NO_ANSWER) {
            Some((i, why)) => Class::Expected(i, why, NO_ANSWER.into()),
            None => Class::Hung,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    fn record(region: &str, kind: Kind, sent: f64, done: f64, outcome: Outcome) -> Record {
        Record { region: region.into(), kind, sent: s(sent), since: s(sent), done: s(done), outcome, retried: None }
    }

    /// A fault injected at 10 s, healed at 12 s, recovered at 13 s; the agent on frankfurt throughout.
    fn fault(scenario: Scenario, region: Option<&str>) -> FaultRun {
        FaultRun {
            scenario,
            region: region.map(str::to_owned),
            agent_region: Some("frankfurt".into()),
            holders: vec![(s(0.0), Some("frankfurt".into()))],
            injected: s(10.0),
            inject_done: s(10.1),
            heal_at: s(12.0),
            healed: s(12.1),
            recovered: Some(s(13.0)),
            after: Sample::new(),
        }
    }

    fn failed(cause: &str) -> Outcome {
        Outcome::Failed(cause.into())
    }

    #[test]
    fn a_killed_coordinator_explains_only_the_primarys_failures_while_it_is_down() {
        let faults = [fault(Scenario::KillCoordinator, None)];
        let primary = record("primary", Kind::Get, 11.0, 11.0, failed("connect"));
        assert!(matches!(classify(&primary, &faults), Class::Expected(0, ..)));
        let elsewhere = record("sydney", Kind::Get, 11.0, 11.0, failed("connect"));
        assert!(matches!(classify(&elsewhere, &faults), Class::Unexplained(_)));
        let long_after = record("primary", Kind::Get, 30.0, 30.0, failed("connect"));
        assert!(matches!(classify(&long_after, &faults), Class::Unexplained(_)));
    }

    #[test]
    fn a_fault_explains_only_what_the_client_can_see_of_it() {
        // The primary's process is gone: its users' connections are refused or cut, never answered 500 or 403.
        let faults = [fault(Scenario::KillCoordinator, None)];
        for cause in ["HTTP 500", "HTTP 403", "HTTP 502: The workspace agent is not connected to this region."] {
            let r = record("primary", Kind::Get, 11.0, 11.0, failed(cause));
            assert!(matches!(classify(&r, &faults), Class::Unexplained(_)), "{cause}");
        }
        // A cut tunnel cuts what is in flight; it does not make the app answer 404.
        let faults = [fault(Scenario::CutTunnel, None)];
        let r = record("sydney", Kind::Get, 10.0, 10.2, failed("HTTP 404"));
        assert!(matches!(classify(&r, &faults), Class::Unexplained(_)));
        let r = record("sydney", Kind::Get, 10.0, 10.2, failed("reset"));
        assert!(matches!(classify(&r, &faults), Class::Expected(0, ..)));
    }

    #[test]
    fn a_killed_coordinator_explains_what_was_in_flight_elsewhere_only_through_its_relay() {
        let mut f = fault(Scenario::KillCoordinator, None);
        let in_flight = record("sydney", Kind::Stream, 6.0, 10.2, failed("stream cut short"));
        assert!(matches!(classify(&in_flight, &[fault(Scenario::KillCoordinator, None)]), Class::Unexplained(_)));
        // The agent's tunnel was on the primary when the stream started.
        f.holders = vec![(s(0.0), Some("frankfurt".into())), (s(4.0), Some("primary".into()))];
        assert!(matches!(classify(&in_flight, &[f]), Class::Expected(0, ..)));
    }

    #[test]
    fn a_cut_tunnel_explains_what_was_open_at_the_cut_and_nothing_started_after() {
        let faults = [fault(Scenario::CutTunnel, None)];
        let open = record("sydney", Kind::Stream, 8.0, 10.2, failed("stream cut short"));
        assert!(matches!(classify(&open, &faults), Class::Expected(0, ..)));
        // A WebSocket opened before the cut, whose next message finds it closed.
        let mut message = record("sydney", Kind::WebSocket, 10.3, 10.3, failed("WebSocket closed"));
        message.since = s(5.0);
        assert!(matches!(classify(&message, &faults), Class::Expected(0, ..)));
        let after = record("sydney", Kind::Get, 10.5, 10.6, failed("HTTP 502"));
        assert!(matches!(classify(&after, &faults), Class::Unexplained(_)));
    }

    #[test]
    fn no_fault_explains_a_corrupt_answer_and_only_a_partition_explains_no_answer() {
        let faults = [fault(Scenario::PartitionRegion, Some("sydney")), fault(Scenario::RestartRegion, Some("sydney"))];
        let corrupt = record("sydney", Kind::Upload, 11.0, 11.5, Outcome::Corrupt("hash".into()));
        assert!(matches!(classify(&corrupt, &faults), Class::Corrupt(_)));
        let unanswered = record("sydney", Kind::Get, 11.0, 21.0, Outcome::Hung);
        assert!(matches!(classify(&unanswered, &faults), Class::Expected(0, ..)));
        let hung_elsewhere = record("primary", Kind::Get, 11.0, 21.0, Outcome::Hung);
        assert!(matches!(classify(&hung_elsewhere, &faults), Class::Hung));
        // A rolling restart is graceful: it explains nothing.
        let restart = [fault(Scenario::RestartRegion, Some("sydney"))];
        let dropped = record("sydney", Kind::Get, 11.0, 11.0, failed("reset"));
        assert!(matches!(classify(&dropped, &restart), Class::Unexplained(_)));
        // Save a streamed response cut when a stopping replica's drain period ended.
        let mut restart = [fault(Scenario::RestartRegion, Some("sydney"))];
        restart[0].recovered = Some(s(20.0));
        let outlived = record("sydney", Kind::Stream, 18.0, 25.5, failed("stream cut short"));
        assert!(matches!(classify(&outlived, &restart), Class::Expected(0, ..)));
        let cut_early = record("sydney", Kind::Stream, 12.0, 16.0, failed("stream cut short"));
        assert!(matches!(classify(&cut_early, &restart), Class::Unexplained(_)));
    }

    #[test]
    fn a_partitioned_region_explains_failures_elsewhere_only_through_its_relay_until_its_link_is_let_go() {
        let faults = [fault(Scenario::PartitionRegion, Some("frankfurt"))];
        let soon =
            record("sydney", Kind::Get, 12.0, 15.0, failed("HTTP 502: The app is not reachable: is it running?"));
        assert!(matches!(classify(&soon, &faults), Class::Expected(0, ..)));
        let later = record("sydney", Kind::Get, 10.1 + SILENT_LINK.as_secs_f64() + 0.5, 17.5, failed("HTTP 502"));
        assert!(matches!(classify(&later, &faults), Class::Unexplained(_)));
        // The agent had moved to sydney before: sydney's requests went through its own relay.
        let mut moved = fault(Scenario::PartitionRegion, Some("frankfurt"));
        moved.holders.push((s(8.0), Some("sydney".into())));
        assert!(matches!(classify(&soon, &[moved]), Class::Unexplained(_)));
    }

    #[test]
    fn a_slow_recovery_is_reported_and_explains_no_more_than_its_bound() {
        let mut f = fault(Scenario::StopPostgres, None);
        assert!(!f.slow());
        f.recovered = Some(f.healed + recovery_bound(Scenario::StopPostgres) + s(1.0));
        assert!(f.slow());
        f.recovered = None;
        assert!(f.slow());
        // A partition that took 60 s to recover explains its region's failures up to its bound only.
        let mut p = fault(Scenario::PartitionRegion, Some("sydney"));
        p.recovered = Some(s(72.0));
        let bound = 12.1 + recovery_bound(Scenario::PartitionRegion).as_secs_f64();
        let inside = record("sydney", Kind::Get, bound, bound + 0.1, failed("connect"));
        assert!(matches!(classify(&inside, std::slice::from_ref(&p)), Class::Expected(0, ..)));
        let beyond = record("sydney", Kind::Get, bound + 5.0, bound + 5.1, failed("connect"));
        assert!(matches!(classify(&beyond, &[p]), Class::Unexplained(_)));
    }
}
