//! Region selection: how far each healthy region is from here, measured the
//! way a browser would (`GET /latency-check` over a warm connection), and
//! which one is best. The coordinator's regions API stays the source of
//! health; this only ranks the regions it calls healthy.

use crate::api::Region;
use std::time::{Duration, Instant};

/// Longest wait for one latency check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What pinging one region found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ping {
    pub region: String,
    pub status: String,
    pub access_url: Option<String>,
    /// Median round trip of the timed checks, in milliseconds.
    pub latency_ms: Option<f64>,
    pub min_ms: Option<f64>,
    /// Why there is no latency (unhealthy, unreachable from here).
    pub error: Option<String>,
    pub best: bool,
}

/// Pings every healthy region `count` times (after one warm-up request that
/// opens the connection), concurrently, and marks the lowest median best.
pub async fn ping_all(http: &reqwest::Client, regions: &[Region], count: usize) -> Vec<Ping> {
    let pings = regions.iter().map(|r| async move {
        let mut ping = Ping {
            region: r.name.clone(),
            status: r.status.to_string(),
            access_url: r.access_url.clone(),
            latency_ms: None,
            min_ms: None,
            error: None,
            best: false,
        };
        match (&r.access_url, r.healthy) {
            (Some(url), true) => match samples(http, url, count).await {
                Ok(mut times) => {
                    times.sort_by(f64::total_cmp);
                    ping.min_ms = times.first().copied();
                    ping.latency_ms = times.get(times.len() / 2).copied();
                }
                Err(e) => ping.error = Some(e),
            },
            _ => ping.error = Some("not healthy".into()),
        }
        ping
    });
    let mut pings = futures_util::future::join_all(pings).await;
    let best = pings
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.latency_ms.map(|l| (i, l)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i);
    if let Some(i) = best {
        pings[i].best = true;
    }
    pings
}

/// `count` timed round trips to `{access_url}/latency-check`, in milliseconds.
async fn samples(http: &reqwest::Client, access_url: &str, count: usize) -> Result<Vec<f64>, String> {
    let url = format!("{}/latency-check", access_url.trim_end_matches('/'));
    let mut times = Vec::with_capacity(count);
    for i in 0..=count {
        let start = Instant::now();
        let resp = http.get(&url).timeout(CHECK_TIMEOUT).send().await.map_err(|e| format!("{e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        resp.bytes().await.map_err(|e| e.to_string())?;
        if i > 0 {
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(times)
}
