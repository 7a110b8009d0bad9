//! Driving `wrk` and reading its report.

use anyhow::{bail, Context, Result};
use std::time::Duration;

/// One wrk run's figures.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Figures {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Failed requests: socket errors and non-2xx answers.
    pub errors: u64,
}

/// What wrk sends, and how hard.
#[derive(Debug, Clone)]
pub struct Load {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub connections: u32,
    pub duration: Duration,
}

pub async fn run(load: &Load) -> Result<Figures> {
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.args(["-t1", "--latency", "--timeout", "5s"])
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs().max(1)));
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

/// Reads `Requests/sec`, the 50% and 99% latency lines and the error lines.
pub fn parse(text: &str) -> Option<Figures> {
    let mut f = Figures::default();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => f.requests_per_sec = v.parse().ok()?,
            ["50%", v] => f.p50_ms = millis(v)?,
            ["99%", v] => f.p99_ms = millis(v)?,
            ["Non-2xx", "or", "3xx", "responses:", n] => f.errors += n.parse::<u64>().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                f.errors += rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum::<u64>();
            }
            _ => {}
        }
    }
    (f.requests_per_sec > 0.0).then_some(f)
}

/// `812.00us`, `1.20ms`, `2.01s` → milliseconds.
fn millis(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrk_report() {
        let text = "Running 1s test @ http://127.0.0.1:8080/\n  1 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   611.53us  120.00us   3.01ms   90.00%\n  Latency Distribution\n     50%  598.00us\n     75%  650.00us\n     90%  700.00us\n     99%    1.20ms\n  51234 requests in 1.00s, 10.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  51234.56\nTransfer/sec:     10.00MB\n";
        let f = parse(text).unwrap();
        assert_eq!((f.requests_per_sec, f.p50_ms, f.p99_ms, f.errors), (51234.56, 0.598, 1.2, 7));
        assert!(parse("nothing").is_none());
    }
}
