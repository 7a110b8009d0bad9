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

mod load;
mod procs;
mod summary;

use super::{Setup, Watch};
use crate::demo::control::{Action, Process, Scenario};
use anyhow::{bail, Context, Result};
pub use load::Mix;
use load::{Record, Target};
use meridian_regions::api::Region;
use std::time::{Duration, Instant};
use summary::FaultRun;
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
    let restart = pick_restart(plan, regions, holder.as_deref())?;
    let partition = pick_partition(plan, regions, holder.as_deref())?;
    let epoch = Instant::now();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let targets: Vec<Target> = targets.into_iter().map(|(region, url)| Target { region, url }).collect();
    let (records, mut tasks) = load::start(&targets, browser.clone(), jar, plan.mix, epoch, stopped.clone());
    let holders = watch_agent(setup, epoch, stopped);
    let end = epoch + plan.duration;

    tokio::time::sleep(plan.warm_up()).await;
    let mut samples = vec![(epoch.elapsed(), processes(setup).await)];
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
    let schedule = async {
        for scenario in SCHEDULE.iter().cycle() {
            // Only a fault that can be over before the end: as long as it took
            // the last time, or its hold and a few seconds the first time.
            let took =
                faults.iter().rev().find(|f| f.scenario == *scenario).and_then(|f| Some(f.recovered? - f.injected));
            if Instant::now() + took.unwrap_or(plan.hold + Duration::from_secs(5)) > end {
                break;
            }
            let region = match scenario {
                Scenario::RestartRegion => Some(restart.clone()),
                Scenario::PartitionRegion => Some(partition.clone()),
                _ => None,
            };
            let holder = agent_region(&setup.api).await;
            let injected = epoch.elapsed();
            // Streams last at most a session: one that started on a tunnel the
            // agent has left since is still on it.
            let since = injected.saturating_sub(plan.mix.session + Duration::from_secs(1));
            let mut agent_regions: Vec<String> = {
                let seen = holders.lock().unwrap_or_else(|e| e.into_inner());
                let before = seen.iter().rev().find(|(at, _)| *at <= since).into_iter();
                before.chain(seen.iter().filter(|(at, _)| *at > since)).filter_map(|(_, r)| r.clone()).collect()
            };
            agent_regions.extend(holder.clone());
            agent_regions.sort();
            agent_regions.dedup();
            eprintln!("soak: {:>5.0} s  {scenario} {}", injected.as_secs_f64(), region.as_deref().unwrap_or(""));
            setup.faults.act(Action::Inject, *scenario, region.as_deref()).await?;
            let inject_done = epoch.elapsed();
            tokio::time::sleep(plan.hold).await;
            let heal_at = epoch.elapsed();
            setup.faults.act(Action::Heal, *scenario, region.as_deref()).await?;
            let healed = epoch.elapsed();
            let watch = Watch::new(&setup.api, regions, *scenario, region.as_deref())?;
            let recovered = tokio::time::timeout(plan.settle, async {
                watch.until(false).await;
                while !healthy_tail(&records, &targets, healed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await
            .ok()
            .map(|()| epoch.elapsed());
            // Connections a fault broke are let go within a keep-alive probe or two.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = processes(setup).await;
            samples.push((epoch.elapsed(), after.clone()));
            faults.push(FaultRun {
                scenario: *scenario,
                region,
                agent_region: holder,
                agent_regions,
                injected,
                inject_done,
                heal_at,
                healed,
                recovered,
                after,
            });
            if recovered.is_none() {
                eprintln!("soak: {scenario} did not recover within {:?}; stopping the schedule", plan.settle);
                break;
            }
        }
        tokio::time::sleep_until(end.into()).await;
        anyhow::Ok(())
    };
    tokio::select! {
        done = schedule => done?,
        // The sampler reads until the schedule is over.
        () = sampler => {}
    }
    samples.push((epoch.elapsed(), processes(setup).await));
    let _ = stop.send(true);
    // Each exchange is bounded by the timeout (a WebSocket by its session too).
    let drain = plan.mix.timeout + plan.mix.session + Duration::from_secs(5);
    if tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
        tasks.abort_all();
        bail!("the soak's traffic did not stop within {drain:?}");
    }
    let records = std::mem::take(&mut *records.lock().unwrap_or_else(|e| e.into_inner()));
    let ran = epoch.elapsed();
    let idle = settle_descriptors(setup, &samples[0].1).await;
    Ok(summary::summarize(plan, ran, records, faults, samples, memory, idle))
}

/// How often each process's memory is read.
const MEMORY_EVERY: Duration = Duration::from_secs(5);

/// Longest wait, once traffic has stopped, for every process's descriptors to
/// come down to its baseline: pooled connections close after 60 s idle.
const IDLE_WAIT: Duration = Duration::from_secs(120);

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
    procs::read(&list)
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

fn pick_restart(plan: &Plan, regions: &[Region], agent: Option<&str>) -> Result<String> {
    if let Some(name) = &plan.restart_region {
        return named(regions, name);
    }
    let candidates = user_regions(regions);
    let most = candidates.iter().map(|r| r.replicas.len()).max().context("the deployment has no regions to restart")?;
    let best: Vec<&&Region> = candidates.iter().filter(|r| r.replicas.len() == most).collect();
    let pick = best.iter().find(|r| Some(r.name.as_str()) == agent).or(best.first()).context("no region")?;
    Ok(pick.name.clone())
}

fn pick_partition(plan: &Plan, regions: &[Region], agent: Option<&str>) -> Result<String> {
    if let Some(name) = &plan.partition_region {
        return named(regions, name);
    }
    let candidates = user_regions(regions);
    let pick = candidates.iter().rev().find(|r| Some(r.name.as_str()) != agent).or(candidates.last());
    Ok(pick.context("the deployment has no regions to partition")?.name.clone())
}
