//! Driving `wrk` and reading its report.
//!
//! wrk counts only answers of 400 and up as errors, so a row answering
//! `303` (to a login page) would look perfect: a small Lua script counts
//! every answer but a 2xx as failed, and prints the latency distribution as
//! 1,000 quantiles so that rounds can be merged (see [`merge`]).

use anyhow::{bail, Context, Result};
use std::time::Duration;

/// One run's (or several merged runs') figures.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Figures {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Failed requests: socket errors, timeouts and answers other than 2xx.
    pub errors: u64,
    /// Failed requests by cause.
    pub causes: std::collections::BTreeMap<String, u64>,
    /// Requests (or round trips) completed.
    pub requests: u64,
    /// The latency distribution as 1,000 quantiles (0.1 % apart), in ms.
    #[serde(skip)]
    pub quantiles_ms: Vec<f64>,
}

/// What wrk sends, and how hard.
#[derive(Debug, Clone)]
pub struct Load {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub connections: u32,
    pub duration: Duration,
}

const SCRIPT: &str = r#"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status < 200 or status > 299 then bad = bad + 1 end
end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("bad") end
  io.write(string.format("meridian-requests: %d %d\n", summary.requests, n))
  local q = {}
  for i = 1, 1000 do q[#q + 1] = string.format("%d", latency:percentile(i / 10)) end
  io.write("meridian-quantiles-us: " .. table.concat(q, " ") .. "\n")
end
"#;

/// Writes the status-counting script next to the benchmark's other files.
pub fn script(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let path = dir.join("count-status.lua");
    std::fs::write(&path, SCRIPT)?;
    Ok(path)
}

pub async fn run(load: &Load, script: &std::path::Path) -> Result<Figures> {
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.args(["-t1", "--latency", "--timeout", "5s"])
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs().max(1)))
        .arg("-s")
        .arg(script);
    for (k, v) in &load.headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    let out = cmd.arg(&load.url).output().await.context("cannot run wrk (install it: apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed on {}: {text}{}", load.url, String::from_utf8_lossy(&out.stderr));
    }
    parse(&text).with_context(|| format!("unreadable wrk report for {}:\n{text}", load.url))
}

/// Reads `Requests/sec`, the script's request, failure and quantile lines,
/// and the socket error line.
pub fn parse(text: &str) -> Option<Figures> {
    let mut f = Figures::default();
    let mut counted = false;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => f.requests_per_sec = v.parse().ok()?,
            ["meridian-requests:", n, bad] => {
                f.requests = n.parse().ok()?;
                let bad = bad.parse::<u64>().ok()?;
                f.errors += bad;
                if bad > 0 {
                    f.causes.insert("answer other than 2xx".into(), bad);
                }
                counted = true;
            }
            ["meridian-quantiles-us:", q @ ..] => {
                f.quantiles_ms =
                    q.iter().map(|v| v.parse::<f64>().map(|us| us / 1000.0)).collect::<Result<_, _>>().ok()?;
            }
            ["Socket", "errors:", rest @ ..] => {
                for pair in rest.chunks(2) {
                    if let [kind, n] = pair {
                        let n: u64 = n.trim_end_matches(',').parse().ok()?;
                        f.errors += n;
                        if n > 0 {
                            f.causes.insert(format!("socket {kind}"), n);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let at = |q: f64| f.quantiles_ms.get(((f.quantiles_ms.len() as f64 * q) as usize).saturating_sub(1)).copied();
    (f.p50_ms, f.p99_ms) = (at(0.5)?, at(0.99)?);
    (counted && f.requests_per_sec > 0.0).then_some(f)
}

/// Several rounds as one: requests/s averaged, failures and requests summed,
/// and percentiles read from the merged distribution (each round's quantiles
/// weighted by its requests), never averaged.
pub fn merge(runs: &[Figures]) -> Figures {
    let n = runs.len().max(1) as f64;
    let mut weighted: Vec<(f64, f64)> = runs
        .iter()
        .flat_map(|r| {
            let w = r.requests as f64 / r.quantiles_ms.len().max(1) as f64;
            r.quantiles_ms.iter().map(move |q| (*q, w))
        })
        .collect();
    weighted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = weighted.iter().map(|(_, w)| w).sum();
    let at = |q: f64| {
        let mut seen = 0.0;
        weighted
            .iter()
            .find(|(_, w)| {
                seen += w;
                seen >= total * q
            })
            .map_or(0.0, |(v, _)| *v)
    };
    Figures {
        requests_per_sec: runs.iter().map(|f| f.requests_per_sec).sum::<f64>() / n,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        errors: runs.iter().map(|f| f.errors).sum(),
        causes: runs.iter().flat_map(|f| &f.causes).fold(Default::default(), |mut all, (k, v)| {
            *all.entry(k.clone()).or_default() += v;
            all
        }),
        requests: runs.iter().map(|f| f.requests).sum(),
        quantiles_ms: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(requests: u64, bad: u64, step_us: u64) -> String {
        let q: Vec<String> = (1..=1000).map(|i| (i * step_us).to_string()).collect();
        format!(
            "Running 1s test @ http://127.0.0.1:8080/\n  1 threads and 32 connections\n  51234 requests in 1.00s, 10.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  51234.56\nTransfer/sec:     10.00MB\nmeridian-requests: {requests} {bad}\nmeridian-quantiles-us: {}\n",
            q.join(" ")
        )
    }

    #[test]
    fn reads_a_wrk_report_with_every_non_2xx_counted() {
        let f = parse(&report(51234, 9, 1)).unwrap();
        // 9 answers that were not 2xx (3xx included) plus 3 socket errors.
        assert_eq!((f.requests_per_sec, f.errors, f.requests), (51234.56, 12, 51234));
        let causes: Vec<(&str, u64)> = f.causes.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(causes, [("answer other than 2xx", 9), ("socket read", 2), ("socket timeout", 1)]);
        assert_eq!((f.p50_ms, f.p99_ms), (0.5, 0.99));
        assert!(parse("nothing").is_none());
        assert!(parse("Requests/sec:  1.0\n").is_none(), "a report without the script's counts is refused");
    }

    #[test]
    fn percentiles_come_from_the_merged_distribution() {
        // A fast round with many requests and a slow one with few: the merged
        // p50 is the fast round's, not the mean of the two p50s.
        let fast = parse(&report(90_000, 0, 1)).unwrap();
        let slow = parse(&report(10_000, 1, 10)).unwrap();
        let m = merge(&[fast, slow]);
        assert_eq!((m.requests, m.errors), (100_000, 7));
        assert!((m.p50_ms - 0.55).abs() < 0.01, "p50 {}", m.p50_ms);
        assert!(m.p99_ms > 5.0, "p99 {}", m.p99_ms);
    }
}
