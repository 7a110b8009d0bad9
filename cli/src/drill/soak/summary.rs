//! The soak's report: every failure matched to the fault that the design says
//! causes it (or counted as unexplained), totals per kind and per minute, and
//! each process's memory, descriptors and tasks at the start (after warm-up),
//! the middle and the end.

use super::causes::{classify, Class, FaultRun};
use super::load::{Kind, Record};
use super::procs::{Sample, Usage};
use super::Plan;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Default, Clone, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub ok: u64,
    /// Failed where the design says they fail (see the faults' causes).
    pub failed: u64,
    /// Failed where no fault explains it.
    pub unexplained: u64,
    /// An answer for another request, or a body that is not what was sent or asked for.
    pub lost_or_corrupt: u64,
    pub hung: u64,
    /// Sent twice because a kept-alive connection closed before any answer
    /// (counted once above, by how the second attempt ended).
    pub retried: u64,
}

impl Counts {
    fn add(&mut self, class: &Class, retried: bool) {
        self.requests += 1;
        self.retried += u64::from(retried);
        match class {
            Class::Ok => self.ok += 1,
            Class::Expected(..) => self.failed += 1,
            Class::Unexplained(_) => self.unexplained += 1,
            Class::Corrupt(_) => self.lost_or_corrupt += 1,
            Class::Hung => self.hung += 1,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct FaultReport {
    pub scenario: String,
    pub region: Option<String>,
    pub agent_region: Option<String>,
    /// Seconds after the soak started.
    pub at_s: f64,
    /// From the inject to the heal (a rolling restart's inject is the restart itself).
    pub held_ms: u64,
    /// From the heal until health and every region's traffic were back; `None` if not within the settle time.
    pub recover_ms: Option<u64>,
    /// The longest recovery the design allows this fault (see `causes::recovery_bound`).
    pub recover_bound_ms: u64,
    /// The requests it failed, by the design's reason and the client's cause.
    pub failed: BTreeMap<String, u64>,
    /// Each process's open descriptors once it was over (under traffic), minus its idle baseline.
    pub fds_vs_baseline: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize)]
pub struct ProcessReport {
    pub name: String,
    /// After warm-up, before any fault (the baseline for descriptors), in the
    /// middle, and at the end (under traffic).
    pub start: Option<Usage>,
    /// Once every fault of the schedule has come once: connection pools have
    /// grown to what the faults' bursts need (the baseline for memory).
    pub after_first_round: Option<Usage>,
    pub middle: Option<Usage>,
    pub end: Option<Usage>,
    /// End RSS against RSS after the first round, in percent (positive: grew).
    pub rss_growth_pct: Option<f64>,
    /// RSS under traffic moves ±15% between two readings seconds apart (what
    /// is in flight at that moment), so one reading against another cannot
    /// show a 10% leak: the median of the first `rss_window` readings (one
    /// every few seconds) after the first round of faults and of the last
    /// `rss_window`, and the growth between them.
    pub rss_window: usize,
    pub rss_median_first_mib: Option<f64>,
    pub rss_median_last_mib: Option<f64>,
    pub rss_median_growth_pct: Option<f64>,
    /// The same for anonymous memory (RSS without the binary's pages).
    pub anon_median_first_mib: Option<f64>,
    pub anon_median_last_mib: Option<f64>,
    pub anon_median_growth_pct: Option<f64>,
    /// Of the readings from the first round on: anonymous memory's median
    /// over the second quarter and over the second half, and the growth from
    /// one to the other: what the verdict judges (see [`MEMORY_GROWTH_BOUND_PCT`]).
    pub anon_second_quarter_mib: Option<f64>,
    pub anon_second_half_mib: Option<f64>,
    pub anon_second_half_growth_pct: Option<f64>,
    /// Times the process was started again during the soak (a new pid).
    pub restarts: usize,
    /// Every memory reading: seconds since the soak started, RSS in MiB.
    pub rss_mib: Vec<(f64, f64)>,
    /// Every memory reading: seconds since the soak started, anonymous memory in MiB.
    pub anon_mib: Vec<(f64, f64)>,
    /// Open descriptors once traffic stopped and idle connections closed
    /// (see `idle_after_s`): more than at the start is a leak.
    pub idle_fds: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub duration_s: f64,
    pub warm_up_s: f64,
    pub totals: Counts,
    pub by_kind: BTreeMap<Kind, Counts>,
    pub by_minute: Vec<Counts>,
    pub faults: Vec<FaultReport>,
    /// How long after traffic stopped every process's descriptors were back
    /// to their idle baseline (or the wait gave up).
    pub idle_after_s: f64,
    /// Processes (a region's replicas together) holding more descriptors,
    /// once idle, than at the idle baseline (taken after warm-up, once the
    /// warm-up's connections had closed).
    pub leaked_fds: Vec<String>,
    /// Processes started again since the idle baseline (by a fault), which
    /// the descriptor check leaves out.
    pub restarted_since_baseline: Vec<String>,
    /// Up to 20 of each, with their region and time.
    pub unexplained: Vec<String>,
    /// What the first attempt of a resent request saw.
    pub retried: Vec<String>,
    /// The most resends the run may have (see [`resend_budget`]).
    pub resend_budget: u64,
    /// Faults that recovered slower than their bound, or not at all.
    pub slow_recoveries: Vec<String>,
    /// Whether the run was long enough for memory to be judged (see [`MEMORY_JUDGED_FROM`]).
    pub memory_judged: bool,
    /// Processes whose memory grew past [`MEMORY_GROWTH_BOUND_PCT`] (judged runs only).
    pub memory_grew: Vec<String>,
    /// Faults of the schedule that did not run, and why.
    pub skipped: Vec<String>,
    /// A shell and a forwarded TCP stream held through the whole run.
    pub sessions: Vec<crate::drill::sessions::SessionReport>,
    /// The connection log against the WebSockets the run opened (after warm-up).
    pub connection_log: Option<super::ledger::LedgerReport>,
    pub lost_or_corrupt: Vec<String>,
    pub hung: Vec<String>,
    pub processes: Vec<ProcessReport>,
}

/// Resends allowed (a request sent again after its reused connection closed
/// before any answer): 1 in 200 requests, and at least 5. Graceful restarts
/// close kept-alive connections, and a request can leave just as one closes;
/// more than that means connections close under requests.
pub fn resend_budget(requests: u64) -> u64 {
    (requests / 200).max(5)
}

/// Memory is judged only in runs this long (the drill's default): an
/// allocator keeps what the first rounds of faults made it take (a
/// partitioned region's queued requests all come in at once) and settles
/// over the first quarter of an hour or so, which a shorter run cannot tell
/// from a leak. Soaks of 10 and 30 minutes here: growth from the first
/// readings after round one to the last of 9–23% in the shorter runs (and
/// −10% in the same run for a twin replica); in the longer, the second half
/// between −6% and +3% of the quarter before it.
pub const MEMORY_JUDGED_FROM: Duration = Duration::from_secs(30 * 60);
/// The most a process's anonymous memory may grow in a judged run: median
/// of the readings in the second half (from the first round of faults on)
/// against the median of those in the quarter before it. A leak keeps
/// growing there (one of 13% or more over the run fails); what the allocator
/// kept from the first rounds does not, and medians over a quarter of an
/// hour do not depend on which fault is under way at the end.
pub const MEMORY_GROWTH_BOUND_PCT: f64 = 5.0;

impl SoakReport {
    /// Everything that fails the run, one line each: nothing lost, corrupted,
    /// hung, failed without a cause, resent past the budget, recovered
    /// slower than its bound, left open, or (in long runs) grown.
    pub fn problems(&self) -> Vec<String> {
        let t = &self.totals;
        let counted = [
            (t.lost_or_corrupt, "lost or corrupted"),
            (t.hung, "hung"),
            (t.unexplained, "failed where no fault explains it"),
        ];
        let mut out: Vec<String> =
            counted.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")).collect();
        if t.retried > self.resend_budget {
            out.push(format!("{} resent, over the budget of {}", t.retried, self.resend_budget));
        }
        out.extend(self.slow_recoveries.iter().cloned());
        out.extend(self.leaked_fds.iter().map(|l| format!("left open: {l}")));
        out.extend(self.memory_grew.iter().cloned());
        out.extend(self.sessions.iter().filter_map(session_problem));
        out.extend(self.connection_log.iter().flat_map(super::ledger::LedgerReport::problems));
        out
    }
}

/// The longest a shell or forwarded stream may stall (#30's bound: a
/// partition is noticed in 2 s, and a new path opens at once).
pub const SESSION_STALL_BOUND_MS: u64 = 3000;

/// What is wrong with what a session saw, if anything.
fn session_problem(s: &crate::drill::sessions::SessionReport) -> Option<String> {
    let kind = s.kind;
    if let Some(e) = &s.error {
        return Some(format!("the {kind} session: {e}"));
    }
    if s.lost > 0 || s.doubled_or_reordered > 0 {
        return Some(format!("the {kind} session lost {} and doubled or reordered {}", s.lost, s.doubled_or_reordered));
    }
    (s.longest_stall_ms > SESSION_STALL_BOUND_MS)
        .then(|| format!("the {kind} session stalled {} ms (bound {SESSION_STALL_BOUND_MS})", s.longest_stall_ms))
}

/// Everything the soak saw, for [`summarize`].
pub struct Observed {
    pub ran: Duration,
    pub records: Vec<Record>,
    pub faults: Vec<FaultRun>,
    /// Readings after warm-up (under traffic), after each fault, and at the end.
    pub samples: Vec<(Duration, Sample)>,
    /// Memory readings every few seconds.
    pub memory: Vec<(Duration, Sample)>,
    /// The reading once the warm-up's connections had closed.
    pub idle_baseline: Sample,
    /// The reading once the run's connections had closed, and how long that took.
    pub idle: (Duration, Sample),
    pub skipped: Vec<String>,
}

pub fn summarize(plan: &Plan, seen: Observed) -> SoakReport {
    let Observed { ran, mut records, faults, samples, memory, idle_baseline, idle: (idle_after, idle), skipped } = seen;
    records.sort_by_key(|r| r.sent);
    let mut totals = Counts::default();
    let mut by_kind: BTreeMap<Kind, Counts> = BTreeMap::new();
    let mut by_minute: Vec<Counts> = Vec::new();
    let mut per_fault: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); faults.len()];
    let (mut unexplained, mut corrupt, mut hung, mut retried) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in &records {
        let class = classify(r, &faults);
        let resent = r.retried.is_some();
        totals.add(&class, resent);
        by_kind.entry(r.kind).or_default().add(&class, resent);
        let minute = (r.sent.as_secs() / 60) as usize;
        if by_minute.len() <= minute {
            by_minute.resize(minute + 1, Counts::default());
        }
        by_minute[minute].add(&class, resent);
        let at = |what: &str| format!("{:.1} s {} {:?}: {what}", r.sent.as_secs_f64(), r.region, r.kind);
        if let Some(first) = r.retried.as_deref().filter(|_| retried.len() < 20) {
            retried.push(at(first));
        }
        match &class {
            Class::Expected(i, why, cause) => *per_fault[*i].entry(format!("{why} ({cause})")).or_default() += 1,
            Class::Unexplained(cause) if unexplained.len() < 20 => unexplained.push(at(cause)),
            Class::Corrupt(what) if corrupt.len() < 20 => corrupt.push(at(what)),
            Class::Hung if hung.len() < 20 => hung.push(at("no answer within the timeout")),
            _ => {}
        }
    }
    let slow_recoveries = faults.iter().filter(|f| f.slow()).map(slow).collect();
    let faults: Vec<FaultReport> =
        faults.into_iter().zip(per_fault).map(|(f, failed)| fault_report(f, failed, &idle_baseline)).collect();
    // Samples: after warm-up, then one after each fault, then at the end.
    let first_round = samples.get(super::SCHEDULE.len());
    let processes = processes(&samples, &memory, first_round, ran, &idle);
    let memory_judged = ran >= MEMORY_JUDGED_FROM;
    let memory_grew = if memory_judged { grew(&processes) } else { Vec::new() };
    SoakReport {
        duration_s: ran.as_secs_f64(),
        warm_up_s: plan.warm_up().as_secs_f64(),
        resend_budget: resend_budget(totals.requests),
        totals,
        by_kind,
        by_minute,
        faults,
        unexplained,
        retried,
        slow_recoveries,
        memory_judged,
        memory_grew,
        skipped,
        lost_or_corrupt: corrupt,
        hung,
        idle_after_s: idle_after.as_secs_f64(),
        leaked_fds: super::procs::above_baseline(&idle, &idle_baseline),
        restarted_since_baseline: super::procs::restarted(&idle, &idle_baseline),
        processes,
        sessions: Vec::new(),
        connection_log: None,
    }
}

fn slow(f: &FaultRun) -> String {
    let bound = super::causes::recovery_bound(f.scenario).as_secs_f64();
    match f.recovered {
        Some(r) => {
            format!("{} recovered in {:.1} s, over its bound of {bound:.0} s", f.scenario, (r - f.healed).as_secs_f64())
        }
        None => format!("{} did not recover (bound {bound:.0} s)", f.scenario),
    }
}

fn fault_report(f: FaultRun, failed: BTreeMap<String, u64>, baseline: &Sample) -> FaultReport {
    FaultReport {
        scenario: f.scenario.to_string(),
        region: f.region.clone(),
        agent_region: f.agent_region.clone(),
        at_s: f.injected.as_secs_f64(),
        held_ms: f.heal_at.saturating_sub(f.injected).as_millis() as u64,
        recover_ms: f.recovered.map(|r| r.saturating_sub(f.healed).as_millis() as u64),
        recover_bound_ms: super::causes::recovery_bound(f.scenario).as_millis() as u64,
        failed,
        fds_vs_baseline: f
            .after
            .iter()
            .filter_map(|(name, u)| Some((name.clone(), u.fds as i64 - baseline.get(name)?.fds as i64)))
            .collect(),
    }
}

/// Processes that ran the whole soak (restarted ones' medians mix two
/// processes) and whose anonymous memory grew past the bound.
fn grew(processes: &[ProcessReport]) -> Vec<String> {
    processes
        .iter()
        .filter(|p| p.restarts == 0)
        .filter_map(|p| {
            let g = p.anon_second_half_growth_pct.filter(|g| *g > MEMORY_GROWTH_BOUND_PCT)?;
            Some(format!(
                "{}: anonymous memory grew {g:.1}% in the run's second half (against the quarter before), over the bound of {MEMORY_GROWTH_BOUND_PCT}%",
                p.name
            ))
        })
        .collect()
}

fn processes(
    samples: &[(Duration, Sample)],
    memory: &[(Duration, Sample)],
    first_round: Option<&(Duration, Sample)>,
    ran: Duration,
    idle: &Sample,
) -> Vec<ProcessReport> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else { return Vec::new() };
    let middle = samples.iter().min_by_key(|(at, _)| at.abs_diff(ran / 2)).unwrap_or(first);
    let memory = if memory.is_empty() { samples } else { memory };
    // The medians compare readings from the memory baseline on: once the first
    // round of faults has grown connection pools and buffers to its bursts.
    let baseline_s = first_round.map_or(0.0, |(at, _)| at.as_secs_f64());
    let first_round = first_round.map(|(_, s)| s);
    first
        .1
        .keys()
        .map(|name| {
            let (start, mid, end) =
                (first.1.get(name).copied(), middle.1.get(name).copied(), last.1.get(name).copied());
            let after_first_round = first_round.and_then(|s| s.get(name).copied());
            let rss_growth_pct = match (after_first_round.or(start), end) {
                (Some(s), Some(e)) if s.rss_kib > 0 => Some((e.rss_kib as f64 / s.rss_kib as f64 - 1.0) * 100.0),
                _ => None,
            };
            let idle_fds = idle.get(name).map(|u| u.fds);
            let mine: Vec<(Duration, Usage)> = memory.iter().filter_map(|(at, s)| Some((*at, *s.get(name)?))).collect();
            let restarts = mine.windows(2).filter(|w| w[0].1.pid != w[1].1.pid).count();
            let mib = |kib: fn(&Usage) -> u64| -> Vec<(f64, f64)> {
                mine.iter().map(|(at, u)| (at.as_secs_f64(), kib(u) as f64 / 1024.0)).collect()
            };
            let (rss, anon) = (mib(|u| u.rss_kib), mib(|u| u.anon_kib));
            let from = rss.partition_point(|(at, _)| *at < baseline_s);
            let rss_window = rss_window(rss.len() - from);
            let (rss_first, rss_last, rss_growth) = medians(&rss[from..], rss_window);
            let (anon_first, anon_last, anon_growth) = medians(&anon[from..], rss_window);
            let (quarter, half, second_half) = second_half(&anon[from..]);
            ProcessReport {
                name: name.clone(),
                start,
                after_first_round,
                middle: mid,
                end,
                rss_growth_pct,
                rss_window,
                rss_median_first_mib: rss_first,
                rss_median_last_mib: rss_last,
                rss_median_growth_pct: rss_growth,
                anon_median_first_mib: anon_first,
                anon_median_last_mib: anon_last,
                anon_median_growth_pct: anon_growth,
                anon_second_quarter_mib: quarter,
                anon_second_half_mib: half,
                anon_second_half_growth_pct: second_half,
                restarts,
                rss_mib: rss,
                anon_mib: anon,
                idle_fds,
            }
        })
        .collect()
}

/// The medians of the first and last `window` readings, and the growth from one to the other in percent.
fn medians(series: &[(f64, f64)], window: usize) -> (Option<f64>, Option<f64>, Option<f64>) {
    let values: Vec<f64> = series.iter().map(|(_, v)| *v).collect();
    let (first, last) = (median(&values[..window]), median(&values[values.len() - window..]));
    let growth = match (first, last) {
        (Some(f), Some(l)) if f > 0.0 => Some((l / f - 1.0) * 100.0),
        _ => None,
    };
    (first, last, growth)
}

/// The medians of `series` over its second quarter and its second half, and
/// the growth in percent from the one to the other.
fn second_half(series: &[(f64, f64)]) -> (Option<f64>, Option<f64>, Option<f64>) {
    let values: Vec<f64> = series.iter().map(|(_, v)| *v).collect();
    let n = values.len();
    let (quarter, half) = (median(&values[n / 4..n / 2]), median(&values[n / 2..]));
    let growth = match (quarter, half) {
        (Some(q), Some(h)) if q > 0.0 => Some((h / q - 1.0) * 100.0),
        _ => None,
    };
    (quarter, half, growth)
}

/// Readings in each of the windows whose medians are compared: a sixth of
/// them (five minutes of a 30-minute soak), at least six.
fn rss_window(samples: usize) -> usize {
    (samples / 6).max(super::SCHEDULE.len() + 1).min(samples)
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_session_that_lost_doubled_stalled_or_failed_is_a_problem() {
        let ok = crate::drill::sessions::SessionReport {
            kind: "ssh",
            first_region: None,
            received: 3000,
            lost: 0,
            doubled_or_reordered: 0,
            longest_stall_ms: 2100,
            error: None,
        };
        assert_eq!(super::session_problem(&ok), None);
        let bad = [
            crate::drill::sessions::SessionReport { lost: 1, ..ok.clone() },
            crate::drill::sessions::SessionReport { doubled_or_reordered: 2, ..ok.clone() },
            crate::drill::sessions::SessionReport { longest_stall_ms: 3001, ..ok.clone() },
            crate::drill::sessions::SessionReport { error: Some("nothing arrived".into()), ..ok.clone() },
        ];
        for b in bad {
            assert!(super::session_problem(&b).is_some(), "{b:?}");
        }
    }

    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn rss_medians_see_a_leak_through_noise_that_single_readings_cannot() {
        // 60 readings 30 s apart: `flat` swings ±15% around 50 MiB, `leaky`
        // swings as much while climbing 20%; `restarted` gets a new pid midway.
        let noise = |i: usize| [1.0, 1.15, 0.9, 1.05, 0.85, 1.1][i % 6];
        let samples: Vec<(Duration, Sample)> = (0..60)
            .map(|i| {
                let kib = |mib: f64| (mib * 1024.0) as u64;
                let usage =
                    |pid, mib| Usage { pid, rss_kib: kib(mib), anon_kib: kib(mib / 2.0), fds: 10, tasks: 3, links: 0 };
                let sample = Sample::from([
                    ("flat".to_owned(), usage(1, 50.0 * noise(i))),
                    ("leaky".to_owned(), usage(2, 50.0 * (1.0 + 0.2 * i as f64 / 59.0) * noise(i))),
                    ("restarted".to_owned(), usage(if i < 30 { 3 } else { 4 }, 40.0)),
                ]);
                (s(30.0 * i as f64), sample)
            })
            .collect();
        let report = processes(&samples, &[], None, s(1800.0), &Sample::new());
        let by = |name: &str| report.iter().find(|p| p.name == name).unwrap();
        let (flat, leaky) = (by("flat"), by("leaky"));
        assert_eq!(flat.rss_window, 10);
        assert!(flat.rss_median_growth_pct.unwrap().abs() < 3.0, "{:?}", flat.rss_median_growth_pct);
        assert!(leaky.rss_median_growth_pct.unwrap() > 12.0, "{:?}", leaky.rss_median_growth_pct);
        assert!(flat.anon_median_growth_pct.unwrap().abs() < 3.0, "{:?}", flat.anon_median_growth_pct);
        assert!(leaky.anon_median_growth_pct.unwrap() > 12.0, "{:?}", leaky.anon_median_growth_pct);
        assert!((flat.anon_median_first_mib.unwrap() * 2.0 - flat.rss_median_first_mib.unwrap()).abs() < 0.01);
        // One reading against another: the flat process looks as if it had grown 10%.
        assert!((flat.rss_growth_pct.unwrap() - 10.0).abs() < 0.1, "{:?}", flat.rss_growth_pct);
        assert_eq!((flat.restarts, by("restarted").restarts), (0, 1));
        assert_eq!(flat.rss_mib.len(), 60);
        let (at, mib) = flat.rss_mib[1];
        assert!(at == 30.0 && (mib - 57.5).abs() < 0.01, "{:?}", flat.rss_mib[1]);
    }

    /// Memory steps up in the first round of faults (a partitioned region's
    /// queued requests come in at once and pools grow to them), then stays:
    /// from the memory baseline on, nothing grows; a climb after it does.
    #[test]
    fn memory_medians_start_at_the_baseline_after_the_first_round() {
        let kib = |mib: f64| (mib * 1024.0) as u64;
        let usage =
            |mib: f64| Usage { pid: 1, rss_kib: kib(mib), anon_kib: kib(mib / 2.0), fds: 10, tasks: 3, links: 0 };
        // A reading every 5 s for 30 minutes; the first round is over at 200 s.
        let readings = |mib: &dyn Fn(f64) -> f64| -> Vec<(Duration, Sample)> {
            (0..360)
                .map(|i| {
                    let at = 5.0 * i as f64;
                    (s(at), Sample::from([("p".to_owned(), usage(mib(at)))]))
                })
                .collect()
        };
        let stepped = readings(&|at| if at < 175.0 { 20.0 } else { 24.0 });
        let climbing = readings(&|at| if at < 175.0 { 20.0 } else { 24.0 + 6.0 * at / 1800.0 });
        let faults = vec![(s(0.0), Sample::from([("p".to_owned(), usage(20.0))])); 6];
        let round = (s(200.0), Sample::new());
        let growth = |memory: &[(Duration, Sample)], first_round| {
            let p = &processes(&faults, memory, first_round, s(1800.0), &Sample::new())[..];
            p.first().map(|p| (p.rss_median_growth_pct.unwrap(), p.anon_median_growth_pct.unwrap()))
        };
        let (rss, anon) = growth(&stepped, Some(&round)).unwrap();
        assert!(rss.abs() < 0.1 && anon.abs() < 0.1, "{rss} {anon}");
        // Counted from warm-up, the step reads as growth.
        assert!(growth(&stepped, None).unwrap().0 > 15.0);
        let (rss, _) = growth(&climbing, Some(&round)).unwrap();
        assert!(rss > 12.0, "{rss}");
        // What the verdict judges: the second half. A step that stays is no
        // growth there; a climb still is.
        let second_half = |memory: &[(Duration, Sample)]| {
            let p = &processes(&faults, memory, Some(&round), s(1800.0), &Sample::new())[..];
            p.first().and_then(|p| p.anon_second_half_growth_pct).unwrap()
        };
        assert!(second_half(&stepped).abs() < 0.1, "{}", second_half(&stepped));
        let settling = readings(&|at| 20.0 + 6.0 * (1.0 - (-at / 300.0).exp()));
        assert!(second_half(&settling) < 2.0, "an allocator settling: {}", second_half(&settling));
        let leaking = readings(&|at| if at < 175.0 { 20.0 } else { 24.0 + 12.0 * at / 1800.0 });
        assert!(second_half(&leaking) > MEMORY_GROWTH_BOUND_PCT, "{}", second_half(&leaking));
    }

    #[test]
    fn resends_past_the_budget_a_slow_recovery_an_fd_above_the_idle_baseline_and_grown_memory_each_fail_the_run() {
        use super::super::causes::recovery_bound;
        use super::super::load::Outcome;
        use crate::faults::Scenario;
        let record = |i: u64, retried: bool| Record {
            region: "sydney".into(),
            kind: Kind::Get,
            sent: s(i as f64 / 100.0),
            since: s(i as f64 / 100.0),
            done: s(i as f64 / 100.0 + 0.01),
            outcome: Outcome::Ok,
            retried: retried.then(|| "connection closed before message completed".into()),
        };
        let usage = |fds, anon_mib: f64| Usage {
            pid: 1,
            rss_kib: 100 << 10,
            anon_kib: (anon_mib * 1024.0) as u64,
            fds,
            tasks: 3,
            links: 0,
        };
        let plan = super::super::tests::plan(None);
        // 2,000 requests (a budget of 10), `resent` of them resent; a fault
        // that recovered in `recovery`; the agent at `idle_fds` descriptors
        // once idle against 20 at the baseline; memory growing by `grow` over 30 minutes.
        let seen = |resent: u64, recovery: Duration, idle_fds: u64, grow: f64| Observed {
            ran: s(1800.0),
            records: (0..2000).map(|i| record(i, i < resent)).collect(),
            faults: vec![FaultRun {
                scenario: Scenario::StopPostgres,
                region: None,
                agent_region: None,
                holders: Vec::new(),
                injected: s(10.0),
                inject_done: s(10.1),
                heal_at: s(12.0),
                healed: s(12.0),
                recovered: Some(s(12.0) + recovery),
                after: Sample::new(),
            }],
            samples: vec![(s(5.0), Sample::from([("agent".to_owned(), usage(20, 10.0))]))],
            memory: (0..360)
                .map(|i| {
                    (
                        s(5.0 * i as f64),
                        Sample::from([("agent".to_owned(), usage(20, 10.0 * (1.0 + grow * i as f64 / 359.0)))]),
                    )
                })
                .collect(),
            idle_baseline: Sample::from([("agent".to_owned(), usage(20, 10.0))]),
            idle: (s(1.0), Sample::from([("agent".to_owned(), usage(idle_fds, 10.0))])),
            skipped: Vec::new(),
        };
        let fine = Duration::from_secs(3);
        let clean = summarize(&plan, seen(10, fine, 20, 0.02));
        assert!(clean.problems().is_empty(), "{:?}", clean.problems());
        assert!(clean.memory_judged);
        let problems = |seen| summarize(&plan, seen).problems().join("; ");
        assert!(problems(seen(11, fine, 20, 0.0)).contains("11 resent, over the budget of 10"));
        let slow = recovery_bound(Scenario::StopPostgres) + Duration::from_secs(1);
        assert!(problems(seen(0, slow, 20, 0.0)).contains("stop-postgres recovered in 16.0 s, over its bound of 15 s"));
        assert!(problems(seen(0, fine, 21, 0.0)).contains("agent: 21 descriptors idle, 20 at the baseline"));
        assert!(problems(seen(0, fine, 20, 0.3)).contains("agent: anonymous memory grew"));
    }
}
