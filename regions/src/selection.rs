//! Region selection: how far each healthy region is from here, measured the
//! way a browser would (`GET /latency-check` over a warm connection), and
//! which one is best. The coordinator's regions API stays the source of
//! health; this only ranks the regions it calls healthy.

use crate::api::Region;
use std::time::{Duration, Instant};

/// Longest wait for one latency check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Another region replaces the one chosen before only when it is clearly
/// nearer: its median at least this many milliseconds lower (jitter on a
/// quiet path is a millisecond or two)…
pub const SWITCH_GAIN_MS: f64 = 5.0;
/// …and at least this fraction lower (20%: between two far regions a few
/// milliseconds are noise too).
pub const SWITCH_GAIN_RATIO: f64 = 0.2;

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

/// The reachable regions of `pings`, nearest first, except that `previous`
/// (the region chosen last time) stays first while no other is clearly
/// nearer ([`SWITCH_GAIN_MS`] and [`SWITCH_GAIN_RATIO`]): jitter between two
/// near-equal regions never flips the choice from one run to the next.
pub fn nearest_first(mut pings: Vec<Ping>, previous: Option<&str>) -> Vec<Ping> {
    pings.retain(|p| p.latency_ms.is_some() && p.access_url.is_some());
    let ms = |p: &Ping| p.latency_ms.unwrap_or(f64::MAX);
    pings.sort_by(|a, b| ms(a).total_cmp(&ms(b)));
    let kept = previous.and_then(|name| pings.iter().position(|p| p.region == name));
    if let (Some(at), Some(best)) = (kept, pings.first().map(ms)) {
        let current = ms(&pings[at]);
        let clearly_nearer = current - best >= SWITCH_GAIN_MS && best <= current * (1.0 - SWITCH_GAIN_RATIO);
        if !clearly_nearer {
            let kept = pings.remove(at);
            pings.insert(0, kept);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(region: &str, ms: Option<f64>) -> Ping {
        Ping {
            region: region.into(),
            status: "ok".into(),
            access_url: Some(format!("http://{region}.example")),
            latency_ms: ms,
            min_ms: ms,
            error: None,
            best: false,
        }
    }

    /// Medians of regions a, b, c and d (None: unreachable).
    type Medians = [Option<f64>; 4];

    /// (previous choice, medians) → the order.
    #[test]
    fn the_previous_choice_stays_first_until_another_is_clearly_nearer() {
        let cases: &[(Option<&str>, Medians, &str)] = &[
            (None, [Some(30.0), Some(10.0), Some(20.0), None], "b c a"),
            // Jitter: b is 2 ms nearer now; a stays.
            (Some("a"), [Some(12.0), Some(10.0), Some(40.0), None], "a b c"),
            // 5 ms nearer but under 20% of a far region's 100 ms: a stays.
            (Some("a"), [Some(100.0), Some(94.0), Some(300.0), None], "a b c"),
            // 30% and 30 ms nearer: b takes over.
            (Some("a"), [Some(100.0), Some(70.0), Some(300.0), None], "b a c"),
            // 20% but only 2 ms on a near path: a stays.
            (Some("a"), [Some(10.0), Some(8.0), Some(300.0), None], "a b c"),
            // The previous choice is unreachable (or gone): the nearest.
            (Some("d"), [Some(30.0), Some(10.0), Some(20.0), None], "b c a"),
            (Some("zz"), [Some(30.0), Some(10.0), Some(20.0), None], "b c a"),
            // Already the nearest.
            (Some("c"), [Some(30.0), Some(40.0), Some(20.0), None], "c a b"),
        ];
        for (previous, medians, want) in cases {
            let pings = ["a", "b", "c", "d"].iter().zip(medians).map(|(r, ms)| ping(r, *ms)).collect();
            let got: Vec<String> = nearest_first(pings, *previous).into_iter().map(|p| p.region).collect();
            assert_eq!(got.join(" "), *want, "previous {previous:?}, medians {medians:?}");
        }
    }
}
