//! Keystrokes through the demo's simulated geography: `meridian demo`
//! (its default topology: regions 5, 20 and 60 ms one way from the user,
//! the primary where the user is), then for each region the round trip
//! `regions ping` measures to it and a keystroke's echo through
//! `meridian port-forward --region R` to a TCP echo service in the
//! workspace (one byte out, its echo back). What Meridian adds is the echo
//! less the region's round trip (issue #30's target: at most 1 ms).
//!
//! In the demo's model a stream's bytes go from the region straight to the
//! agent, whose data connection to that region is not delayed, so the
//! network's share of an echo is the user's round trip to the region.

use crate::bulk::{echo, port_forward, service, Forward};
use crate::stack::{spawn, Proc};
use anyhow::{bail, Context, Result};
use meridian_regions::client::{Client, Credential};
use std::path::Path;
use std::time::{Duration, Instant};

/// Keystrokes per region (100: ~12 s through the 120 ms region), and round trips pinged.
const KEYSTROKES: usize = 100;
const PINGS: usize = 20;
/// Longest the demo may take to come up with its agent attached.
const DEMO_READY: Duration = Duration::from_secs(120);

/// One region's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Region {
    pub region: String,
    /// Median round trip of `GET /latency-check` (what `regions ping` shows).
    pub ping_ms: f64,
    pub echo_p50_ms: f64,
    pub echo_p99_ms: f64,
}

/// Starts the demo in a directory of its own and measures every region.
pub async fn keystrokes(meridian: &Path, quick: bool) -> Result<Vec<Region>> {
    let dir = tempfile::Builder::new().prefix("meridian-bench-demo").tempdir()?;
    let d = dir.path();
    // The embedded Postgres runs as an unprivileged user when this is root.
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let args: Vec<String> =
        ["demo", "--port", "0", "--data-dir", &d.join("data").display().to_string()].map(String::from).to_vec();
    let demo = spawn(meridian, &args, d, "demo", &[])?;
    let result = measure(meridian, d, &demo, quick).await;
    drop(demo);
    result
}

async fn measure(meridian: &Path, d: &Path, demo: &Proc, quick: bool) -> Result<Vec<Region>> {
    let data = d.join("data");
    let info = wait_for_demo(&data, demo).await?;
    let password = std::fs::read_to_string(data.join("demo-password"))?;
    let http = meridian_regions::client::http_client(None).map_err(anyhow::Error::msg)?;
    let anon = Client::new(&info.coordinator_url, Credential::None, http.clone());
    let session = anon.login(&info.username, password.trim()).await?.session_token;
    let client = Client::new(
        &info.coordinator_url,
        Credential::Session(meridian_regions::token::Secret::new(&session)),
        http.clone(),
    );
    wait_for_agent(&client).await?;
    let regions = client.regions().await?.regions;
    let pings = meridian_regions::selection::ping_all(&http, &regions, if quick { 3 } else { PINGS }).await;
    let service = service().await?;
    let mut out = Vec::new();
    for ping in pings {
        let Some(ping_ms) = ping.latency_ms else {
            bail!("region {} did not answer pings: {:?}", ping.region, ping.error)
        };
        let how = Forward {
            meridian,
            dir: d,
            url: &info.coordinator_url,
            session: &session,
            workspace: "dev",
            region: &ping.region,
        };
        let (forward, port) = port_forward(&how, service).await?;
        let count = if quick { 10 } else { KEYSTROKES };
        let (p50, p99) = tokio::time::timeout(Duration::from_secs(120), echo(port, count))
            .await
            .with_context(|| format!("keystrokes through {} took too long", ping.region))??;
        drop(forward);
        out.push(Region {
            region: ping.region,
            ping_ms,
            echo_p50_ms: p50.as_secs_f64() * 1e3,
            echo_p99_ms: p99.as_secs_f64() * 1e3,
        });
    }
    Ok(out)
}

/// The demo's description once it wrote one (it does when everything is up).
async fn wait_for_demo(data: &Path, demo: &Proc) -> Result<meridian_cli::demo::control::DemoInfo> {
    let start = Instant::now();
    loop {
        if let Ok(info) = meridian_cli::demo::control::DemoInfo::load(data) {
            return Ok(info);
        }
        if start.elapsed() > DEMO_READY {
            bail!("the demo did not come up within {DEMO_READY:?} (pid {})", demo.pid());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_agent(client: &Client) -> Result<()> {
    crate::stack::wait_until("the demo's agent", DEMO_READY, || async {
        client.workspaces(None).await.is_ok_and(|l| l.workspaces.iter().any(|w| w.agents.iter().any(|a| a.connected)))
    })
    .await
}

/// The rows as Markdown.
pub fn markdown(regions: &[Region]) -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "\n### Keystroke echo through the demo's geography (`meridian demo`, one `port-forward` per region)\n\n\
         | region | round trip (ping p50) ms | echo p50 ms | echo p99 ms | Meridian adds (p50) |\n|---|---|---|---|---|\n",
    );
    for r in regions {
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} ms |",
            r.region,
            r.ping_ms,
            r.echo_p50_ms,
            r.echo_p99_ms,
            r.echo_p50_ms - r.ping_ms
        );
    }
    out
}
