//! `meridian drill soak`: mixed traffic through every region for a long
//! time while faults come one after another (a rolling restart of a region's
//! replicas, the agent's tunnels cut, the coordinator killed and started,
//! Postgres stopped and started, a region partitioned and healed), then a
//! report per minute and in all: what failed and why, each failure matched to
//! the fault the design says causes it; what was lost, corrupted or hung
//! (must be nothing); and each process's memory, descriptors and tasks.
//!
//! [`load`] sends and checks the traffic, [`procs`] reads the processes,
//! [`summary`] sums it up.

mod causes;
mod ledger;
mod load;
mod procs;
mod summary;
mod table;

use super::{Setup, Watch};
use crate::faults::{Action, Process, Scenario};
use anyhow::{bail, Context, Result};
use causes::FaultRun;
pub use load::{MarkDials, Mix};
use load::{Record, Target};
use meridian_regions::api::Region;
use std::time::{Duration, Instant};
pub use summary::SoakReport;

/// The faults of a soak, in the order they come (then again from the first).
pub(super) const SCHEDULE: [Scenario; 5] = [
    Scenario::RestartRegion,
    Scenario::CutTunnel,
    Scenario::KillCoordinator,
    Scenario::StopPostgres,
    Scenario::PartitionRegion,
];

/// How the soak runs.
pub struct Plan {
    pub duration: Duration,
    /// How long each fault is held before it is healed.
    pub hold: Duration,
    /// Longest wait for recovery after a heal.
    pub settle: Duration,
    pub mix: Mix,
    /// The region to restart (default: the one with the most replicas, the agent's first).
    pub restart_region: Option<String>,
    /// The region to partition (default: the last that does not hold the agent).
    pub partition_region: Option<String>,
}

impl Plan {
    /// Traffic before the first fault, whose end is the baseline for memory and descriptors.
    fn warm_up(&self) -> Duration {
        (self.duration / 12).clamp(Duration::from_secs(5), Duration::from_secs(120))
    }
}

pub async fn run(
    plan: &Plan,
    setup: &Setup,
    regions: &[Region],
    browser: &reqwest::Client,
    jar: std::sync::Arc<reqwest::cookie::Jar>,
    targets: Vec<(String, String)>,
) -> Result<SoakReport> {
    let holder = agent_region(&setup.api).await;
    let (schedule, skipped) = schedule(plan, regions, holder.as_deref())?;
    for line in &skipped {
        eprintln!("soak: skipping {line}");
    }
    let epoch = Instant::now();
    let targets: Vec<Target> = targets.into_iter().map(|(region, url)| Target { region, url }).collect();
    let traffic = || {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (records, sockets, tasks) = load::start(&targets, browser.clone(), jar.clone(), plan.mix, epoch, stopped);
        (stop, records, sockets, tasks)
    };

    // Warm-up traffic opens every link and pool; once its connections have
    // closed, the descriptors are the idle baseline the end is held to.
    let (stop, warm_records, _, tasks) = traffic();
    tokio::time::sleep(plan.warm_up()).await;
    let mut samples = vec![(epoch.elapsed(), processes(setup).await)];
    stop_traffic(plan, stop, tasks).await?;
    eprintln!("soak: {:>5.0} s  warm-up over; waiting for its connections to close", epoch.elapsed().as_secs_f64());
    let idle_baseline = idle_reading(setup).await;

    // The connection log is checked for the WebSockets opened from here on.
    let logged_since = chrono::Utc::now();
    let (stop, records, sockets, tasks) = traffic();
    // A shell and a forwarded TCP stream through the partitioned region, all along.
    let probes = super::start_probes(plan.partition_region.clone(), setup).await;
    let (holders_stop, holders_stopped) = tokio::sync::watch::channel(false);
    let holders = watch_agent(setup, epoch, holders_stopped);
    let end = Instant::now() + plan.duration;
    let mut faults: Vec<FaultRun> = Vec::new();
    // Memory is read every few seconds besides after each fault: enough
    // readings for medians that a moment's traffic does not sway.
    let mut memory: Vec<(Duration, procs::Sample)> = Vec::new();
    let sampler = async {
        loop {
            memory.push((epoch.elapsed(), processes(setup).await));
            tokio::time::sleep(MEMORY_EVERY).await;
        }
    };
    let faults_in_turn = async {
        for (scenario, region) in schedule.iter().cycle() {
            // Only a fault that can be over before the end: as long as it took
            // the last time, or its hold and a few seconds the first time.
            let took =
                faults.iter().rev().find(|f| f.scenario == *scenario).and_then(|f| Some(f.recovered? - f.injected));
            if Instant::now() + took.unwrap_or(plan.hold + Duration::from_secs(5)) > end {
                break;
            }
            let run = Fault { scenario: *scenario, region: region.clone(), setup, regions, plan, epoch };
            let f = run.inject_and_heal(&records, &targets, &holders).await?;
            samples.push((epoch.elapsed(), f.after.clone()));
            let recovered = f.recovered.is_some();
            faults.push(f);
            if !recovered {
                eprintln!("soak: {scenario} did not recover within {:?}; stopping the schedule", plan.settle);
                break;
            }
        }
        tokio::time::sleep_until(end.into()).await;
        anyhow::Ok(())
    };
    tokio::select! {
        done = faults_in_turn => done?,
        // The sampler reads until the schedule is over.
        () = sampler => {}
    }
    let sessions = super::finish_probes(probes).await;
    samples.push((epoch.elapsed(), processes(setup).await));
    stop_traffic(plan, stop, tasks).await?;
    let _ = holders_stop.send(true);
    let mut all = take(&warm_records);
    all.extend(take(&records));
    let seen = summary::Observed {
        ran: epoch.elapsed(),
        records: all,
        faults,
        samples,
        memory,
        idle: settle_descriptors(setup, &idle_baseline).await,
        idle_baseline,
        skipped,
    };
    let mut report = summary::summarize(plan, seen);
    report.sessions = sessions;
    let sockets = std::mem::take(&mut *sockets.lock().unwrap_or_else(|e| e.into_inner()));
    report.connection_log = Some(ledger::check(&setup.api, logged_since, sockets).await);
    Ok(report)
}

/// One fault of the schedule, injected, held, healed and watched until it is over.
struct Fault<'a> {
    scenario: Scenario,
    region: Option<String>,
    setup: &'a Setup,
    regions: &'a [Region],
    plan: &'a Plan,
    epoch: Instant,
}

impl Fault<'_> {
    async fn inject_and_heal(
        &self,
        records: &load::Records,
        targets: &[Target],
        holders: &Holders,
    ) -> Result<FaultRun> {
        let (setup, scenario, region) = (self.setup, self.scenario, self.region.as_deref());
        let holder = agent_region(&setup.api).await;
        let injected = self.epoch.elapsed();
        eprintln!("soak: {:>5.0} s  {scenario} {}", injected.as_secs_f64(), region.unwrap_or(""));
        setup.faults.act(Action::Inject, scenario, region).await?;
        let inject_done = self.epoch.elapsed();
        tokio::time::sleep(self.plan.hold).await;
        let heal_at = self.epoch.elapsed();
        setup.faults.act(Action::Heal, scenario, region).await?;
        let healed = self.epoch.elapsed();
        let watch = Watch::new(&setup.api, self.regions, scenario, region)?;
        let recovered = tokio::time::timeout(self.plan.settle, async {
            watch.until(false).await;
            while !healthy_tail(records, targets, healed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .ok()
        .map(|()| self.epoch.elapsed());
        // Connections a fault broke are let go within a keep-alive probe or two.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let holders = holders.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(FaultRun {
            scenario,
            region: self.region.clone(),
            agent_region: holder,
            holders,
            injected,
            inject_done,
            heal_at,
            healed,
            recovered,
            after: processes(setup).await,
        })
    }
}

/// Stops the traffic and waits for what is in flight (each exchange is
/// bounded by the timeout, a WebSocket by its session too).
async fn stop_traffic(
    plan: &Plan,
    stop: tokio::sync::watch::Sender<bool>,
    mut tasks: tokio::task::JoinSet<()>,
) -> Result<()> {
    let _ = stop.send(true);
    let drain = plan.mix.timeout + plan.mix.session + Duration::from_secs(5);
    if tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
        tasks.abort_all();
        bail!("the soak's traffic did not stop within {drain:?}");
    }
    Ok(())
}

fn take(records: &load::Records) -> Vec<Record> {
    std::mem::take(&mut *records.lock().unwrap_or_else(|e| e.into_inner()))
}

/// How often each process's memory is read.
const MEMORY_EVERY: Duration = Duration::from_secs(5);

/// Longest wait, once traffic has stopped, for every process's descriptors to
/// come down to its baseline: pooled connections close after 60 s idle.
const IDLE_WAIT: Duration = Duration::from_secs(120);

/// Pooled app connections close after this long idle (the proxy's pool).
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Once traffic has stopped: the processes once the connections it opened
/// have closed (the pools' idle time, then until two readings a second
/// apart agree, at most [`IDLE_WAIT`]).
async fn idle_reading(setup: &Setup) -> procs::Sample {
    let start = Instant::now();
    tokio::time::sleep(POOL_IDLE + Duration::from_secs(2)).await;
    let mut last = processes(setup).await;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = processes(setup).await;
        let fds = |s: &procs::Sample| s.iter().map(|(n, u)| (n.clone(), u.fds)).collect::<Vec<_>>();
        if fds(&now) == fds(&last) || start.elapsed() >= IDLE_WAIT {
            return now;
        }
        last = now;
    }
}

/// Once traffic has stopped: waits (at most [`IDLE_WAIT`]) until no process
/// (a region's replicas together) holds more descriptors than at the baseline, and returns the last reading
/// with how long it took. A process still above it then is holding what the
/// soak's traffic and faults left behind.
async fn settle_descriptors(setup: &Setup, baseline: &procs::Sample) -> (Duration, procs::Sample) {
    let start = Instant::now();
    loop {
        let now = processes(setup).await;
        if procs::above_baseline(&now, baseline).is_empty() || start.elapsed() >= IDLE_WAIT {
            return (start.elapsed(), now);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether every region's last GETs since `since` succeeded.
fn healthy_tail(records: &load::Records, targets: &[Target], since: Duration) -> bool {
    let records = records.lock().unwrap_or_else(|e| e.into_inner());
    targets.iter().all(|t| {
        let mut recent: Vec<&Record> =
            records.iter().filter(|r| r.region == t.region && r.kind == load::Kind::Get && r.sent >= since).collect();
        recent.sort_by_key(|r| r.sent);
        recent.len() >= 5 && recent.iter().rev().take(5).all(|r| r.outcome == load::Outcome::Ok)
    })
}

/// The processes' usage, when the deployment is the demo (it names its processes).
async fn processes(setup: &Setup) -> procs::Sample {
    let list: Vec<Process> = setup.faults.processes().await.unwrap_or_default();
    procs::read(&list).await
}

/// When the agent's tunnel moved, and to which region (since the soak began).
type Holders = std::sync::Arc<std::sync::Mutex<Vec<(Duration, Option<String>)>>>;

/// Where the agent's tunnel is, as it changes (checked twice a second) until `stop`.
fn watch_agent(setup: &Setup, epoch: Instant, mut stop: tokio::sync::watch::Receiver<bool>) -> Holders {
    let seen: Holders = std::sync::Arc::default();
    let (api, out) = (setup.api.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let now = agent_region(&api).await;
            {
                let mut seen = out.lock().unwrap_or_else(|e| e.into_inner());
                if seen.last().is_none_or(|(_, last)| *last != now) {
                    seen.push((epoch.elapsed(), now));
                }
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    });
    seen
}

/// The region whose relay holds the (first) agent's tunnel now.
async fn agent_region(api: &meridian_regions::client::Client) -> Option<String> {
    let list = tokio::time::timeout(Duration::from_secs(2), api.workspaces(None)).await.ok()?.ok()?;
    list.workspaces.iter().flat_map(|w| &w.agents).find_map(|a| a.region.clone())
}

fn user_regions(regions: &[Region]) -> Vec<&Region> {
    regions.iter().filter(|r| r.name != meridian_regions::PRIMARY_REGION).collect()
}

fn named(regions: &[Region], name: &str) -> Result<String> {
    let names: Vec<&str> = user_regions(regions).iter().map(|r| r.name.as_str()).collect();
    if !names.contains(&name) {
        bail!("no region {name:?} to use in the soak; regions: {}", names.join(", "));
    }
    Ok(name.to_owned())
}

/// Faults in the order they come, each with its region.
type Schedule = Vec<(Scenario, Option<String>)>;

/// The faults in the order they come, each with its region, and the ones
/// left out with why. A rolling restart needs a second replica: restarting a
/// region's only one is an outage, which the soak would read as failures no
/// fault explains. The demo's default is one replica per region.
fn schedule(plan: &Plan, regions: &[Region], agent: Option<&str>) -> Result<(Schedule, Vec<String>)> {
    let restart = pick_restart(plan, regions, agent)?;
    let partition = pick_partition(plan, regions, agent)?;
    let mut skipped = Vec::new();
    let mut faults = Vec::new();
    for scenario in SCHEDULE {
        let region = match scenario {
            Scenario::RestartRegion => match &restart {
                Ok(r) => Some(r.clone()),
                Err(why) => {
                    skipped.push(format!("{scenario}: {why}"));
                    continue;
                }
            },
            Scenario::PartitionRegion => Some(partition.clone()),
            _ => None,
        };
        faults.push((scenario, region));
    }
    Ok((faults, skipped))
}

/// The region whose replicas a rolling restart restarts, or why there is none.
fn pick_restart(plan: &Plan, regions: &[Region], agent: Option<&str>) -> Result<Result<String, String>> {
    let replicas = |name: &str| regions.iter().find(|r| r.name == name).map_or(0, |r| r.replicas.len());
    let second =
        "restarting a region's only replica is an outage, not a rolling restart (start the demo with --replicas 2)";
    if let Some(name) = &plan.restart_region {
        let name = named(regions, name)?;
        if replicas(&name) < 2 {
            bail!("--restart-region {name}: {name} has one replica; {second}");
        }
        return Ok(Ok(name));
    }
    let candidates = user_regions(regions);
    let most = candidates.iter().map(|r| r.replicas.len()).max().context("the deployment has no regions to restart")?;
    if most < 2 {
        return Ok(Err(format!("no region has a second replica; {second}")));
    }
    let best: Vec<&&Region> = candidates.iter().filter(|r| r.replicas.len() == most).collect();
    let pick = best.iter().find(|r| Some(r.name.as_str()) == agent).or(best.first()).context("no region")?;
    Ok(Ok(pick.name.clone()))
}

fn pick_partition(plan: &Plan, regions: &[Region], agent: Option<&str>) -> Result<String> {
    if let Some(name) = &plan.partition_region {
        return named(regions, name);
    }
    let candidates = user_regions(regions);
    let pick = candidates.iter().rev().find(|r| Some(r.name.as_str()) != agent).or(candidates.last());
    Ok(pick.context("the deployment has no regions to partition")?.name.clone())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The primary and sydney and frankfurt, with `replicas` replicas each.
    fn regions(replicas: usize) -> Vec<Region> {
        let replica = |i: usize| {
            serde_json::json!({"id": uuid::Uuid::new_v4(), "access_url": format!("http://127.0.0.1:{}", 9000 + i),
                "relay_address": null, "version": "0", "status": "ok", "error": null,
                "last_heartbeat_at": "2026-01-01T00:00:00Z"})
        };
        let region = |name: &str, n: usize| {
            serde_json::json!({"id": uuid::Uuid::new_v4(), "name": name, "display_name": name, "status": "ok",
                "healthy": true, "access_url": null, "wildcard_hostname": null, "path_app_url": null,
                "version": null, "last_heartbeat_at": null, "replicas": (0..n).map(replica).collect::<Vec<_>>()})
        };
        let all = [region("primary", 1), region("sydney", replicas), region("frankfurt", replicas)];
        serde_json::from_value(serde_json::Value::Array(all.to_vec())).unwrap()
    }

    pub(super) fn plan(restart_region: Option<&str>) -> Plan {
        Plan {
            duration: Duration::from_secs(60),
            hold: Duration::from_secs(2),
            settle: Duration::from_secs(30),
            mix: Mix {
                gets_per_s: 1,
                bulk_every: Duration::from_secs(1),
                websockets: 1,
                message_every: Duration::from_secs(1),
                session: Duration::from_secs(10),
                timeout: Duration::from_secs(10),
            },
            restart_region: restart_region.map(str::to_owned),
            partition_region: None,
        }
    }

    #[test]
    fn a_rolling_restart_needs_a_second_replica_and_says_so() {
        let (faults, skipped) = schedule(&plan(None), &regions(2), Some("frankfurt")).unwrap();
        assert_eq!(faults[0], (Scenario::RestartRegion, Some("frankfurt".to_owned())));
        assert!(skipped.is_empty(), "{skipped:?}");
        // One replica per region (the demo's default): restarting it is an outage, left out with one line.
        let (faults, skipped) = schedule(&plan(None), &regions(1), Some("frankfurt")).unwrap();
        assert!(faults.iter().all(|(s, _)| *s != Scenario::RestartRegion), "{faults:?}");
        assert_eq!(faults.len(), SCHEDULE.len() - 1);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("second replica") && skipped[0].contains("--replicas 2"), "{skipped:?}");
        // Asked for by name, it is refused, naming the region.
        let err = schedule(&plan(Some("sydney")), &regions(1), Some("frankfurt")).unwrap_err().to_string();
        assert!(err.contains("sydney has one replica"), "{err}");
    }
}
