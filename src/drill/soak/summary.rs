//! The soak's report: every failure matched to the fault that the design says
//! causes it (or counted as unexplained), totals per kind and per minute, and
//! each process's memory, descriptors and tasks at the start (after warm-up),
//! the middle and the end.

use super::load::{Kind, Outcome, Record};
use super::procs::{Sample, Usage};
use super::Plan;
use crate::demo::control::Scenario;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long after the agent's relay stops answering it is let go (the
/// keep-alive on the agent link) plus a margin: requests sent before then
/// through a region to that relay may fail.
const SILENT_LINK: Duration = Duration::from_secs(6);
/// After recovery, a request already failing may still be in flight.
const MARGIN: Duration = Duration::from_secs(2);
/// A proxy's drain period (`--drain-timeout`, 15 s by default).
const DRAIN: Duration = Duration::from_secs(15);

/// One fault as it happened (times since the soak started).
pub struct FaultRun {
    pub scenario: Scenario,
    pub region: Option<String>,
    /// The region that held the agent's tunnel when the fault came.
    pub agent_region: Option<String>,
    /// Every region that held one of its tunnels shortly before (a tunnel the
    /// agent left carries the streams it had until they end), and then.
    pub agent_regions: Vec<String>,
    pub injected: Duration,
    pub inject_done: Duration,
    pub heal_at: Duration,
    pub healed: Duration,
    pub recovered: Option<Duration>,
    /// The processes once it was over.
    pub after: Sample,
}

impl FaultRun {
    /// Why this fault makes `r` fail, if the design says it does.
    fn explains(&self, r: &Record) -> Option<&'static str> {
        let end = self.recovered.unwrap_or(self.healed) + MARGIN;
        let during = r.sent <= end && r.done >= self.injected;
        // Open when the fault came (a WebSocket counts from its opening).
        let at_the_fault = r.since <= self.inject_done && r.done >= self.injected;
        let here = self.region.as_deref() == Some(r.region.as_str());
        let held_agent = self.region.as_ref().is_some_and(|r| self.agent_regions.contains(r));
        let primary_held_agent = self.agent_regions.iter().any(|r| r == meridian_regions::PRIMARY_REGION);
        match self.scenario {
            Scenario::KillCoordinator if during && r.region == meridian_regions::PRIMARY_REGION => {
                Some("the primary region is the coordinator's process: down until it restarts")
            }
            Scenario::KillCoordinator if at_the_fault && primary_held_agent => {
                Some("in flight through the killed relay that held the agent")
            }
            Scenario::PartitionRegion if during && here => {
                Some("the region's users cannot reach it while it is partitioned")
            }
            Scenario::KillRegion if during && here => Some("the region is down until it restarts"),
            Scenario::PartitionRegion | Scenario::KillRegion
                if held_agent && r.since <= self.inject_done + SILENT_LINK && r.done >= self.injected =>
            {
                Some("in flight to the agent's relay before its tunnel was let go")
            }
            Scenario::CutTunnel if at_the_fault => Some("in flight on the agent's tunnel when it was cut"),
            // A replica stopping gracefully answers what reaches it for its
            // drain period (15 s): a response streamed on a connection kept
            // alive from before can outlive it.
            Scenario::RestartRegion if during && here && r.kind == Kind::Stream && r.done >= self.injected + DRAIN => {
                Some("a streamed response on a stopping replica outlived its drain period")
            }
            _ => None,
        }
    }
}

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

enum Class {
    Ok,
    /// (fault index, the design's reason, the client's cause)
    Expected(usize, &'static str, String),
    Unexplained(String),
    Corrupt(String),
    Hung,
}

fn classify(r: &Record, faults: &[FaultRun]) -> Class {
    let explained = || faults.iter().enumerate().find_map(|(i, f)| Some((i, f.explains(r)?)));
    match &r.outcome {
        Outcome::Ok => Class::Ok,
        Outcome::Corrupt(what) => Class::Corrupt(what.clone()),
        Outcome::Failed(cause) => match explained() {
            Some((i, why)) => Class::Expected(i, why, cause.clone()),
            None => Class::Unexplained(cause.clone()),
        },
        // A request to a partitioned region gets no answer: that is the partition, not a hang.
        Outcome::Hung => match explained() {
            Some((i, why)) if faults[i].scenario == Scenario::PartitionRegion => {
                Class::Expected(i, why, "no answer".into())
            }
            _ => Class::Hung,
        },
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
    /// The requests it failed, by the design's reason and the client's cause.
    pub failed: BTreeMap<String, u64>,
    /// Each process's open descriptors once it was over, minus its baseline (after warm-up).
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
    /// to their baseline (or the wait gave up).
    pub idle_after_s: f64,
    /// Processes (a region's replicas together) holding more descriptors,
    /// once idle, than at the baseline.
    pub leaked_fds: Vec<String>,
    /// Up to 20 of each, with their region and time.
    pub unexplained: Vec<String>,
    /// What the first attempt of a resent request saw.
    pub retried: Vec<String>,
    pub lost_or_corrupt: Vec<String>,
    pub hung: Vec<String>,
    pub processes: Vec<ProcessReport>,
}

impl SoakReport {
    /// Whether the soak saw nothing lost, corrupted, hung, failed without a
    /// cause, or left open.
    pub fn clean(&self) -> bool {
        self.totals.lost_or_corrupt == 0
            && self.totals.hung == 0
            && self.totals.unexplained == 0
            && self.leaked_fds.is_empty()
    }
}

pub fn summarize(
    plan: &Plan,
    ran: Duration,
    mut records: Vec<Record>,
    faults: Vec<FaultRun>,
    samples: Vec<(Duration, Sample)>,
    memory: Vec<(Duration, Sample)>,
    (idle_after, idle): (Duration, Sample),
) -> SoakReport {
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
    let baseline = samples.first().map(|(_, s)| s.clone()).unwrap_or_default();
    let faults = faults
        .into_iter()
        .zip(per_fault)
        .map(|(f, failed)| FaultReport {
            scenario: f.scenario.to_string(),
            region: f.region.clone(),
            agent_region: f.agent_region.clone(),
            at_s: f.injected.as_secs_f64(),
            held_ms: f.heal_at.saturating_sub(f.injected).as_millis() as u64,
            recover_ms: f.recovered.map(|r| r.saturating_sub(f.healed).as_millis() as u64),
            failed,
            fds_vs_baseline: f
                .after
                .iter()
                .filter_map(|(name, u)| Some((name.clone(), u.fds as i64 - baseline.get(name)?.fds as i64)))
                .collect(),
        })
        .collect();
    // Samples: after warm-up, then one after each fault, then at the end.
    let first_round = samples.get(super::SCHEDULE.len());
    let processes = processes(&samples, &memory, first_round, ran, &idle);
    let leaked_fds =
        samples.first().map_or_else(Vec::new, |(_, baseline)| super::procs::above_baseline(&idle, baseline));
    SoakReport {
        duration_s: ran.as_secs_f64(),
        warm_up_s: plan.warm_up().as_secs_f64(),
        totals,
        by_kind,
        by_minute,
        faults,
        unexplained,
        retried,
        lost_or_corrupt: corrupt,
        hung,
        idle_after_s: idle_after.as_secs_f64(),
        leaked_fds,
        processes,
    }
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

impl SoakReport {
    /// The report for a person.
    pub fn table(&self) -> String {
        let mut out = format!(
            "soak: {:.0} s (warm-up {:.0} s), {} faults\n  requests {}   ok {}   failed {} (each where the design says)   unexplained {}   lost or corrupt {}   hung {}   resent {}\n\n",
            self.duration_s,
            self.warm_up_s,
            self.faults.len(),
            self.totals.requests,
            self.totals.ok,
            self.totals.failed,
            self.totals.unexplained,
            self.totals.lost_or_corrupt,
            self.totals.hung,
            self.totals.retried,
        );
        let counts_row = |name: String, c: &Counts| {
            [
                name,
                c.requests.to_string(),
                c.ok.to_string(),
                c.failed.to_string(),
                c.unexplained.to_string(),
                c.lost_or_corrupt.to_string(),
                c.hung.to_string(),
                c.retried.to_string(),
            ]
        };
        let head = ["", "REQUESTS", "OK", "FAILED", "UNEXPLAINED", "LOST/CORRUPT", "HUNG", "RESENT"].map(String::from);
        let mut rows = vec![{
            let mut h = head.clone();
            h[0] = "KIND".into();
            h
        }];
        rows.extend(self.by_kind.iter().map(|(k, c)| {
            counts_row(serde_json::to_value(k).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(), c)
        }));
        out.push_str(&columns(&rows));
        out.push('\n');
        let mut rows = vec![{
            let mut h = head;
            h[0] = "MINUTE".into();
            h
        }];
        rows.extend(self.by_minute.iter().enumerate().map(|(i, c)| counts_row(i.to_string(), c)));
        out.push_str(&columns(&rows));
        out.push('\n');
        let mut rows = vec![[
            "AT (s)",
            "FAULT",
            "REGION",
            "HELD",
            "RECOVERED",
            "FAILED (why: what the client saw)",
            "FDS vs BASELINE",
        ]
        .map(String::from)];
        for f in &self.faults {
            let failed: Vec<String> = f.failed.iter().map(|(k, n)| format!("{n} × {k}")).collect();
            let fds: Vec<String> =
                f.fds_vs_baseline.iter().filter(|(_, d)| **d != 0).map(|(p, d)| format!("{p} {d:+}")).collect();
            rows.push([
                format!("{:.0}", f.at_s),
                f.scenario.clone(),
                f.region.clone().unwrap_or_else(|| "-".into()),
                format!("{:.1} s", f.held_ms as f64 / 1000.0),
                f.recover_ms.map_or_else(|| "never".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
                if failed.is_empty() { "-".into() } else { failed.join("; ") },
                if fds.is_empty() { "all at baseline".into() } else { fds.join(", ") },
            ]);
        }
        out.push_str(&columns(&rows));
        out.push('\n');
        let idle_head = format!("FDS IDLE (after {:.0} s)", self.idle_after_s);
        let mut rows = vec![[
            "PROCESS",
            "RSS MiB warm-up/round 1/middle/end",
            "GROWTH since round 1",
            "RSS MEDIAN first/last readings (growth)",
            "ANON MEDIAN first/last (growth)",
            "FDS warm-up/middle/end",
            idle_head.as_str(),
            "TASKS",
        ]
        .map(String::from)];
        let series = |usages: &[Option<Usage>], f: &dyn Fn(&Usage) -> String| {
            usages.iter().map(|u| u.as_ref().map_or_else(|| "-".into(), f)).collect::<Vec<_>>().join(" / ")
        };
        for p in &self.processes {
            rows.push([
                p.name.clone(),
                series(&[p.start, p.after_first_round, p.middle, p.end], &|u| {
                    format!("{:.1}", u.rss_kib as f64 / 1024.0)
                }),
                p.rss_growth_pct.map_or_else(|| "-".into(), |g| format!("{g:+.1}%")),
                match (p.rss_median_first_mib, p.rss_median_last_mib, p.rss_median_growth_pct) {
                    (Some(f), Some(l), Some(g)) => {
                        let restarts =
                            if p.restarts > 0 { format!(", restarted {}×", p.restarts) } else { String::new() };
                        format!("{f:.1} / {l:.1} of {} ({g:+.1}%{restarts})", p.rss_window)
                    }
                    _ => "-".into(),
                },
                match (p.anon_median_first_mib, p.anon_median_last_mib, p.anon_median_growth_pct) {
                    (Some(f), Some(l), Some(g)) => format!("{f:.1} / {l:.1} ({g:+.1}%)"),
                    _ => "-".into(),
                },
                series(&[p.start, p.middle, p.end], &|u| u.fds.to_string()),
                p.idle_fds.map_or_else(|| "-".into(), |f| f.to_string()),
                series(&[p.start, p.middle, p.end], &|u| u.tasks.to_string()),
            ]);
        }
        if self.processes.is_empty() {
            out.push_str("(no process figures: the deployment is not the demo)\n");
        } else {
            out.push_str(&columns(&rows));
        }
        for (title, list) in [
            ("descriptors left open", &self.leaked_fds),
            ("unexplained failures", &self.unexplained),
            ("resent after the connection closed before any answer", &self.retried),
            ("lost or corrupt", &self.lost_or_corrupt),
            ("hung", &self.hung),
        ] {
            if !list.is_empty() {
                out.push_str(&format!("\n{title} (first {}):\n", list.len()));
                for l in list {
                    out.push_str(&format!("  {l}\n"));
                }
            }
        }
        out
    }
}

/// Rows as left-aligned columns.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
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

    /// A fault injected at 10 s, healed at 12 s, recovered at 13 s; the agent on frankfurt.
    fn fault(scenario: Scenario, region: Option<&str>) -> FaultRun {
        FaultRun {
            scenario,
            region: region.map(str::to_owned),
            agent_region: Some("frankfurt".into()),
            agent_regions: vec!["frankfurt".into()],
            injected: s(10.0),
            inject_done: s(10.1),
            heal_at: s(12.0),
            healed: s(12.1),
            recovered: Some(s(13.0)),
            after: Sample::new(),
        }
    }

    #[test]
    fn rss_medians_see_a_leak_through_noise_that_single_readings_cannot() {
        // 60 readings 30 s apart: `flat` swings ±15% around 50 MiB, `leaky`
        // swings as much while climbing 20%; `restarted` gets a new pid midway.
        let noise = |i: usize| [1.0, 1.15, 0.9, 1.05, 0.85, 1.1][i % 6];
        let samples: Vec<(Duration, Sample)> = (0..60)
            .map(|i| {
                let kib = |mib: f64| (mib * 1024.0) as u64;
                let usage = |pid, mib| Usage { pid, rss_kib: kib(mib), anon_kib: kib(mib / 2.0), fds: 10, tasks: 3 };
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
        let usage = |mib: f64| Usage { pid: 1, rss_kib: kib(mib), anon_kib: kib(mib / 2.0), fds: 10, tasks: 3 };
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
    fn a_killed_coordinator_explains_what_was_in_flight_elsewhere_when_the_agent_had_just_been_on_the_primary() {
        let mut f = fault(Scenario::KillCoordinator, None);
        let in_flight = record("sydney", Kind::Stream, 6.0, 10.2, failed("stream cut short"));
        assert!(matches!(classify(&in_flight, &[fault(Scenario::KillCoordinator, None)]), Class::Unexplained(_)));
        // It had moved back to frankfurt; the stream was still on its tunnel to the primary.
        f.agent_regions = vec!["primary".into(), "frankfurt".into()];
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
        let dropped = record("sydney", Kind::Get, 11.0, 11.0, failed("connection closed"));
        assert!(matches!(classify(&dropped, &restart), Class::Unexplained(_)));
        // Save a streamed response cut when a stopping replica's drain period ended.
        let mut restart = [fault(Scenario::RestartRegion, Some("sydney"))];
        restart[0].recovered = Some(s(40.0));
        let outlived = record("sydney", Kind::Stream, 18.0, 25.5, failed("stream cut short"));
        assert!(matches!(classify(&outlived, &restart), Class::Expected(0, ..)));
        let cut_early = record("sydney", Kind::Stream, 12.0, 16.0, failed("stream cut short"));
        assert!(matches!(classify(&cut_early, &restart), Class::Unexplained(_)));
    }

    #[test]
    fn a_partitioned_region_holding_the_agent_explains_failures_elsewhere_until_its_link_is_let_go() {
        let faults = [fault(Scenario::PartitionRegion, Some("frankfurt"))];
        let soon = record("sydney", Kind::Get, 12.0, 15.0, failed("HTTP 502"));
        assert!(matches!(classify(&soon, &faults), Class::Expected(0, ..)));
        let later = record("sydney", Kind::Get, 10.1 + SILENT_LINK.as_secs_f64() + 0.5, 17.5, failed("HTTP 502"));
        assert!(matches!(classify(&later, &faults), Class::Unexplained(_)));
    }
}
