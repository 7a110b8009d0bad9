//! `meridian drill SCENARIO`: rehearse an outage against a running deployment
//! (the demo, or any deployment given commands that break and heal it) while
//! steady synthetic users go through every region, and report how long the
//! system took to notice and to recover, and what the users saw.
//!
//! [`traffic`] sends the requests; [`report`] sums them up. `meridian drill
//! soak` ([`soak`]) runs every fault in turn under mixed traffic, for as long
//! as asked.

mod report;
pub(crate) mod sessions;
mod soak;
mod traffic;

use crate::demo::control::DemoInfo;
use crate::faults::{Action, FaultRequest, Process, Scenario};
use crate::ops::Target;
use anyhow::{bail, Context, Result};
use clap::Args;
use meridian_regions::api::Region;
use meridian_regions::client::{http_client, Client, Credential};
use meridian_regions::token::Secret;
use report::{RegionReport, Report};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What a drill does: one fault, or a soak (every fault in turn, under mixed traffic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drill {
    Fault(Scenario),
    Soak,
}

impl clap::ValueEnum for Drill {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            Drill::Fault(Scenario::KillRegion),
            Drill::Fault(Scenario::PartitionRegion),
            Drill::Fault(Scenario::KillCoordinator),
            Drill::Fault(Scenario::StopPostgres),
            Drill::Fault(Scenario::RestartRegion),
            Drill::Fault(Scenario::CutTunnel),
            Drill::Soak,
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        match self {
            Drill::Fault(s) => s.to_possible_value(),
            Drill::Soak => Some(clap::builder::PossibleValue::new("soak").help(
                "Mixed traffic (GETs, 1 MiB downloads, checked uploads, WebSockets, streamed responses) \
                 for --duration while every fault above but kill-region comes in turn; exits non-zero \
                 if anything was lost, corrupted, hung, failed where no fault explains it, or left open",
            )),
        }
    }
}

#[derive(Args)]
pub struct DrillArgs {
    /// What to break.
    #[arg(value_enum)]
    scenario: Drill,
    /// The region to kill, partition or restart (for a soak: the one to partition).
    #[arg(long)]
    region: Option<String>,
    /// How long the fault is held before healing [default: 10s]; for a soak,
    /// how long it runs [default: 30m].
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Soak: how long each fault is held before healing.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Soak: the region whose replicas are restarted [default: the one with the most replicas].
    #[arg(long)]
    restart_region: Option<String>,
    /// Longest wait for recovery after healing.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Small GETs per second through each region.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rate: u32,
    /// A request without a complete answer after this long counts as hung
    /// [default: 2s; for a soak 10s, past the 5 s in which a silent agent link is let go].
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// The demo's data directory [default: the demo's].
    #[arg(long, env = "MERIDIAN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Not the demo: a shell command that injects the fault (it gets
    /// MERIDIAN_DRILL_SCENARIO and MERIDIAN_DRILL_REGION in its environment).
    #[arg(long, requires_all = ["heal_cmd", "app"])]
    fault_cmd: Option<String>,
    /// Not the demo: a shell command that heals it.
    #[arg(long, requires = "fault_cmd")]
    heal_cmd: Option<String>,
    /// The app to send traffic to, as `{app}--{agent}--{workspace}--{user}` [default: the demo's].
    #[arg(long)]
    app: Option<String>,
    #[command(flatten)]
    target: Target,
}

/// Who breaks and heals things.
pub(crate) enum Faults {
    Demo { url: String, token: Secret },
    Commands { fault: String, heal: String },
}

impl Faults {
    async fn act(&self, action: Action, scenario: Scenario, region: Option<&str>) -> Result<()> {
        match self {
            Faults::Demo { url, token } => {
                let req = FaultRequest { action, scenario, region: region.map(str::to_owned) };
                let resp = reqwest::Client::new()
                    .post(format!("{url}/fault"))
                    .bearer_auth(token.expose())
                    .json(&req)
                    .timeout(Duration::from_secs(90))
                    .send()
                    .await
                    .context("cannot reach the demo's fault controller (is the demo still running?)")?;
                if !resp.status().is_success() {
                    bail!("the demo refused to {action:?} {scenario}: {}", resp.text().await.unwrap_or_default());
                }
                Ok(())
            }
            Faults::Commands { fault, heal } => {
                let cmd = if action == Action::Inject { fault } else { heal };
                let status = tokio::process::Command::new("sh")
                    .args(["-c", cmd])
                    .env("MERIDIAN_DRILL_SCENARIO", scenario.to_string())
                    .env("MERIDIAN_DRILL_REGION", region.unwrap_or_default())
                    .status()
                    .await?;
                if !status.success() {
                    bail!("`{cmd}` failed ({status})");
                }
                Ok(())
            }
        }
    }

    /// The deployment's processes, when it is the demo (which knows them).
    async fn processes(&self) -> Result<Vec<Process>> {
        let Faults::Demo { url, token } = self else { return Ok(Vec::new()) };
        let resp = reqwest::Client::new()
            .get(format!("{url}/processes"))
            .bearer_auth(token.expose())
            .timeout(Duration::from_secs(10))
            .send()
            .await?
            .error_for_status()?;
        Ok(resp.json().await?)
    }
}

/// Everything the drill needs to know before it starts.
pub(crate) struct Setup {
    api: Client,
    session: Secret,
    app: String,
    faults: Faults,
}

async fn setup(args: &mut DrillArgs) -> Result<Setup> {
    let http = http_client(None).map_err(anyhow::Error::msg)?;
    if let (Some(fault), Some(heal)) = (args.fault_cmd.take(), args.heal_cmd.take()) {
        let target = std::mem::take(&mut args.target);
        let (url, session) = target.resolve()?;
        let api = Client::new(&url, Credential::Session(session.clone()), http);
        let app = args.app.clone().context("--app is required with --fault-cmd")?;
        return Ok(Setup { api, session, app, faults: Faults::Commands { fault, heal } });
    }
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => crate::demo::default_dir()?,
    };
    let info = DemoInfo::load(&dir)?;
    let password = std::fs::read_to_string(dir.join("demo-password")).context("cannot read the demo's password")?;
    let anon = Client::new(&info.coordinator_url, Credential::None, http.clone());
    let session = Secret::new(anon.login(&info.username, password.trim()).await?.session_token);
    let api = Client::new(&info.coordinator_url, Credential::Session(session.clone()), http);
    let app = args.app.clone().unwrap_or(info.app);
    Ok(Setup { api, session, app, faults: Faults::Demo { url: info.control_url, token: info.control_token } })
}

pub async fn run(mut args: DrillArgs) -> Result<()> {
    let setup = setup(&mut args).await?;
    let regions = setup.api.regions().await.context("cannot list regions")?.regions;
    let Drill::Fault(scenario) = args.scenario else { return soak(&args, &setup, &regions).await };
    if scenario.needs_region() {
        let name = args.region.as_deref().with_context(|| format!("{scenario} needs --region"))?;
        if !regions.iter().any(|r| r.name == name) || name == meridian_regions::PRIMARY_REGION {
            let names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).filter(|n| *n != "primary").collect();
            bail!("no region {name:?} to {scenario}; regions: {}", names.join(", "));
        }
    }
    let (browser, _) = signed_in_browser(setup.api.base_url(), &setup.session)?;
    let targets = app_urls(&regions, &setup.app);
    for (region, url) in &targets {
        open(&browser, url)
            .await
            .with_context(|| format!("the app does not open through {region} before the drill"))?;
    }
    let watch = Watch::new(&setup.api, &regions, scenario, args.region.as_deref())?;
    // Start from a healthy deployment, or the report would blame this drill for an older fault.
    tokio::time::timeout(args.settle, watch.until(false)).await.map_err(|_| {
        anyhow::anyhow!("the deployment is not healthy before the drill ({} does not hold)", watch.healthy_means())
    })?;
    let report = tokio::select! {
        report = drill(scenario, &args, &setup, &browser, &watch, targets) => report?,
        () = crate::shutdown_signal() => {
            eprintln!("interrupted: healing before exiting");
            setup.faults.act(Action::Heal, scenario, args.region.as_deref()).await?;
            bail!("drill interrupted; the fault was healed");
        }
    };
    let text = if args.json { serde_json::to_string_pretty(&report)? + "\n" } else { report.table() };
    crate::ops::print(&text);
    Ok(())
}

async fn soak(args: &DrillArgs, setup: &Setup, regions: &[Region]) -> Result<()> {
    let plan = soak::Plan {
        duration: args.duration.unwrap_or(Duration::from_secs(30 * 60)),
        hold: args.hold,
        settle: args.settle,
        mix: soak::Mix {
            gets_per_s: args.rate,
            bulk_every: Duration::from_secs(1),
            websockets: 2,
            message_every: Duration::from_millis(250),
            session: Duration::from_secs(10),
            timeout: args.timeout.unwrap_or(Duration::from_secs(10)),
        },
        restart_region: args.restart_region.clone(),
        partition_region: args.region.clone(),
    };
    let (browser, jar) = signed_in_browser(setup.api.base_url(), &setup.session)?;
    let targets = app_urls(regions, &setup.app);
    for (region, url) in &targets {
        open(&browser, url).await.with_context(|| format!("the app does not open through {region} before the soak"))?;
    }
    let report = tokio::select! {
        report = soak::run(&plan, setup, regions, &browser, jar, targets) => report?,
        () = crate::shutdown_signal() => bail!("soak interrupted (a fault in progress may need healing: run its drill)"),
    };
    let text = if args.json { serde_json::to_string_pretty(&report)? + "\n" } else { report.table() };
    crate::ops::print(&text);
    let problems = report.problems();
    if !problems.is_empty() {
        bail!("the soak failed: {}", problems.join("; "));
    }
    Ok(())
}

async fn drill(
    scenario: Scenario,
    args: &DrillArgs,
    setup: &Setup,
    browser: &reqwest::Client,
    watch: &Watch<'_>,
    targets: Vec<(String, String)>,
) -> Result<Report> {
    let probes = start_probes(args.region.clone(), setup).await;
    let epoch = Instant::now();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let streams: Vec<traffic::Stream> = targets
        .into_iter()
        .map(|(region, url)| {
            let timeout = args.timeout.unwrap_or(Duration::from_secs(2));
            traffic::start(region, browser.clone(), url, args.rate, timeout, epoch, stopped.clone())
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await; // a baseline before the fault

    let fault_at = epoch.elapsed();
    let fault_unix = chrono::Utc::now().timestamp_millis();
    let hold = args.duration.unwrap_or(Duration::from_secs(10));
    setup.faults.act(Action::Inject, scenario, args.region.as_deref()).await?;
    let detected = tokio::time::timeout(hold + args.settle, watch.until(true));
    let (detect, ()) = tokio::join!(
        async { detected.await.ok().map(|_| epoch.elapsed().saturating_sub(fault_at)) },
        tokio::time::sleep(hold.saturating_sub(epoch.elapsed().saturating_sub(fault_at))),
    );
    let healed_at = epoch.elapsed();
    let healed_unix = chrono::Utc::now().timestamp_millis();
    setup.faults.act(Action::Heal, scenario, args.region.as_deref()).await?;
    let recovered = tokio::time::timeout(args.settle, async {
        watch.until(false).await;
        while !streams.iter().all(|s| s.healthy_tail(5)) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let recover = recovered.ok().map(|()| epoch.elapsed().saturating_sub(healed_at));

    let _ = stop.send(true);
    let sessions = finish_probes(probes).await;
    let mut per_region = Vec::new();
    for s in streams {
        let (region, samples) = s.finish().await;
        per_region.push(RegionReport::new(region, &samples, fault_at));
    }
    Ok(Report {
        scenario: scenario.to_string(),
        region: args.region.clone(),
        held_ms: healed_at.saturating_sub(fault_at).as_millis() as u64,
        fault_at_unix_ms: fault_unix,
        healed_at_unix_ms: healed_unix,
        detect_ms: detect.map(|d| d.as_millis() as u64),
        detected_by: watch.describe().into(),
        recover_ms: recover.map(|d| d.as_millis() as u64),
        lost: per_region.iter().map(|r| r.lost).sum(),
        hung: per_region.iter().map(|r| r.hung).sum(),
        regions: per_region,
        sessions,
    })
}

/// Ends each probe and judges what it saw.
pub(crate) async fn finish_probes(
    probes: Vec<Result<sessions::Probe, sessions::SessionReport>>,
) -> Vec<sessions::SessionReport> {
    let mut reports = Vec::new();
    for probe in probes {
        reports.push(match probe {
            Ok(p) => p.finish().await,
            Err(report) => report,
        });
    }
    reports
}

/// A shell and (on the demo, whose workspace is this machine) a forwarded TCP
/// stream through the region under fault, running before the fault comes;
/// one that cannot start is reported as such.
pub(crate) async fn start_probes(
    region: Option<String>,
    setup: &Setup,
) -> Vec<Result<sessions::Probe, sessions::SessionReport>> {
    let failed = |kind, e: anyhow::Error| sessions::SessionReport {
        kind,
        first_region: region.clone(),
        received: 0,
        lost: 0,
        doubled_or_reordered: 0,
        longest_stall_ms: 0,
        error: Some(format!("{e:#}")),
    };
    let Some(workspace) = sessions::workspace_of(&setup.app) else { return Vec::new() };
    let target = sessions::Target {
        url: setup.api.base_url().to_owned(),
        session: setup.session.clone(),
        workspace,
        region: region.clone(),
    };
    let mut probes = vec![sessions::ssh(&target).map_err(|e| failed("ssh", e))];
    if matches!(setup.faults, Faults::Demo { .. }) {
        probes.push(sessions::tcp(&target, &std::env::temp_dir()).await.map_err(|e| failed("tcp", e)));
    }
    // Both are flowing before the fault comes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    probes
}

/// How the drill tells that the system noticed the fault, and that it is over.
pub(crate) struct Watch<'a> {
    api: &'a Client,
    http: reqwest::Client,
    regions: &'a [Region],
    scenario: Scenario,
    region: Option<&'a str>,
}

impl<'a> Watch<'a> {
    fn new(api: &'a Client, regions: &'a [Region], scenario: Scenario, region: Option<&'a str>) -> Result<Self> {
        let http = http_client(None).map_err(anyhow::Error::msg)?;
        Ok(Self { api, http, regions, scenario, region })
    }

    fn healthy_means(&self) -> &'static str {
        match self.scenario {
            Scenario::KillRegion | Scenario::PartitionRegion => "the region is healthy",
            Scenario::KillCoordinator => "the API answers and every region reaches the coordinator",
            Scenario::StopPostgres => "the API answers",
            Scenario::RestartRegion => "every replica of the region is ok",
            Scenario::CutTunnel => "the agent is connected",
        }
    }

    fn describe(&self) -> &'static str {
        match self.scenario {
            Scenario::KillRegion | Scenario::PartitionRegion => "the coordinator marks the region unhealthy",
            Scenario::KillCoordinator => "the regions report the coordinator unreachable",
            Scenario::StopPostgres => "the API answers 503",
            Scenario::RestartRegion => "nothing to notice: replicas hand over one at a time",
            Scenario::CutTunnel => "the agent is shown disconnected, or already reattached",
        }
    }

    /// Polls until the system has noticed the fault (`noticed`), or until it
    /// is over (`!noticed`).
    async fn until(&self, noticed: bool) {
        loop {
            let done = if noticed { self.noticed().await } else { self.over().await };
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn noticed(&self) -> bool {
        match self.scenario {
            Scenario::KillRegion | Scenario::PartitionRegion => self.region_healthy().await == Some(false),
            Scenario::StopPostgres => self.api_status().await == Some(503),
            Scenario::KillCoordinator => self.regions_degraded().await > 0,
            // A rolling restart is meant to go unnoticed; a cut tunnel is back within milliseconds.
            Scenario::RestartRegion | Scenario::CutTunnel => true,
        }
    }

    async fn over(&self) -> bool {
        match self.scenario {
            Scenario::KillRegion | Scenario::PartitionRegion => self.region_healthy().await == Some(true),
            Scenario::StopPostgres => self.api_status().await == Some(200),
            Scenario::KillCoordinator => self.api_status().await == Some(200) && self.regions_degraded().await == 0,
            Scenario::RestartRegion => self.replicas_ok().await,
            Scenario::CutTunnel => self.agent_connected().await,
        }
    }

    /// Whether every listed replica of the region is ok.
    async fn replicas_ok(&self) -> bool {
        let Ok(Ok(list)) = tokio::time::timeout(Duration::from_secs(2), self.api.regions()).await else { return false };
        let region = list.regions.iter().find(|r| Some(r.name.as_str()) == self.region);
        region.is_some_and(|r| r.healthy && r.replicas.iter().all(|x| x.status == meridian_regions::health::Status::Ok))
    }

    async fn agent_connected(&self) -> bool {
        let Ok(Ok(list)) = tokio::time::timeout(Duration::from_secs(2), self.api.workspaces(None)).await else {
            return false;
        };
        list.workspaces.iter().flat_map(|w| &w.agents).all(|a| a.connected)
    }

    /// The regions API's status; `None` when it does not answer.
    async fn api_status(&self) -> Option<u16> {
        match tokio::time::timeout(Duration::from_secs(2), self.api.regions()).await {
            Ok(Ok(_)) => Some(200),
            Ok(Err(e)) => e.status().map(|s| s.as_u16()),
            Err(_) => None,
        }
    }

    async fn region_healthy(&self) -> Option<bool> {
        let list = tokio::time::timeout(Duration::from_secs(2), self.api.regions()).await.ok()?.ok()?;
        list.regions.iter().find(|r| Some(r.name.as_str()) == self.region).map(|r| r.healthy)
    }

    /// How many regions say, in their health report, that they cannot reach the coordinator.
    async fn regions_degraded(&self) -> usize {
        let mut degraded = 0;
        for r in self.regions.iter().filter(|r| r.name != meridian_regions::PRIMARY_REGION) {
            let Some(url) = &r.access_url else { continue };
            let report = self.http.get(format!("{url}/healthz-report")).timeout(Duration::from_secs(2)).send().await;
            if let Ok(resp) = report {
                let v = resp.json::<serde_json::Value>().await.unwrap_or_default();
                degraded += usize::from(v["coordinator_reachable"] == false);
            }
        }
        degraded
    }
}

/// The app's URL through every region that serves subdomain apps.
fn app_urls(regions: &[Region], app: &str) -> Vec<(String, String)> {
    regions
        .iter()
        .filter_map(|r| {
            let pattern = r.wildcard_hostname.as_deref().filter(|w| !w.is_empty())?;
            let host = pattern.strip_prefix("*.")?;
            let scheme =
                if r.access_url.as_deref().unwrap_or_default().starts_with("https") { "https" } else { "http" };
            Some((r.name.clone(), format!("{scheme}://{app}.{host}/")))
        })
        .collect()
}

/// A browser-like client signed in with `session` at the coordinator, and its cookies.
fn signed_in_browser(
    coordinator: &str,
    session: &Secret,
) -> Result<(reqwest::Client, std::sync::Arc<reqwest::cookie::Jar>)> {
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let url: reqwest::Url = coordinator.parse()?;
    let https = url.scheme() == "https";
    let name = meridian_regions::headers::cookie_name(meridian_regions::headers::SESSION_COOKIE, https);
    let secure = if https { "; Secure" } else { "" };
    jar.add_cookie_str(&format!("{name}={}; Path=/{secure}", session.expose()), &url);
    let client = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(meridian_regions::resolve::for_reqwest())
        .pool_max_idle_per_host(64)
        // Shorter than a proxy's keep-alive (60 s), as browsers keep theirs:
        // a connection the proxy closes for idleness is never picked for a
        // request at the moment it closes.
        .pool_idle_timeout(Duration::from_secs(30))
        .connector_layer(soak::MarkDials)
        .build()?;
    Ok((client, jar))
}

/// Opens `url` through the login redirects, so the jar holds an app token.
async fn open(browser: &reqwest::Client, url: &str) -> Result<()> {
    let mut url = reqwest::Url::parse(url)?;
    for _ in 0..10 {
        let resp = browser.get(url.clone()).timeout(Duration::from_secs(10)).send().await?;
        match resp.status().as_u16() {
            200 => return Ok(()),
            300..=399 => {
                let location = resp
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .context("redirect without Location")?;
                url = url.join(location)?;
            }
            s => bail!("HTTP {s} from {url}"),
        }
    }
    bail!("too many redirects opening {url}")
}
