//! The drill's report: per region what users saw, and how long the system
//! took to notice and to recover.

use super::traffic::{Outcome, Sample};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub region: Option<String>,
    /// How long the fault was held.
    pub held_ms: u64,
    /// Unix time (ms) of the fault and of the heal.
    pub fault_at_unix_ms: i64,
    pub healed_at_unix_ms: i64,
    /// From the fault to the system noticing it (see `detected_by`); `None` if it never did.
    pub detect_ms: Option<u64>,
    pub detected_by: String,
    /// From the heal until health and every region's traffic were back; `None` if not within the settle time.
    pub recover_ms: Option<u64>,
    pub regions: Vec<RegionReport>,
    pub lost: u64,
    pub hung: u64,
    /// A shell and a forwarded TCP stream through the region under fault.
    pub sessions: Vec<super::sessions::SessionReport>,
}

#[derive(Debug, Serialize)]
pub struct RegionReport {
    pub region: String,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub hung: u64,
    pub lost: u64,
    /// First and last failed request, in ms after the fault (negative: before it).
    pub failing_from_ms: Option<i64>,
    pub failing_until_ms: Option<i64>,
    /// Failures by kind, e.g. `{"HTTP 502": 12, "connect": 3}`.
    pub failures: BTreeMap<String, u64>,
}

impl RegionReport {
    pub fn new(region: String, samples: &[Sample], fault_at: Duration) -> Self {
        let mut r = RegionReport {
            region,
            requests: samples.len() as u64,
            ok: 0,
            errors: 0,
            hung: 0,
            lost: 0,
            failing_from_ms: None,
            failing_until_ms: None,
            failures: BTreeMap::new(),
        };
        for s in samples {
            let kind = match &s.outcome {
                Outcome::Ok => {
                    r.ok += 1;
                    continue;
                }
                Outcome::Error(e) => {
                    r.errors += 1;
                    e.clone()
                }
                Outcome::Hung => {
                    r.hung += 1;
                    "hung".to_owned()
                }
                Outcome::Lost => {
                    r.lost += 1;
                    "lost".to_owned()
                }
            };
            *r.failures.entry(kind).or_default() += 1;
            let at = s.sent.as_millis() as i64 - fault_at.as_millis() as i64;
            r.failing_from_ms.get_or_insert(at);
            r.failing_until_ms = Some(at);
        }
        r
    }
}

impl Report {
    /// The report for a person: a summary, then one row per region.
    pub fn table(&self) -> String {
        let ms = |v: Option<u64>| v.map_or_else(|| "never".to_owned(), |v| format!("{:.1} s", v as f64 / 1000.0));
        let target = self.region.as_deref().map(|r| format!(" {r}")).unwrap_or_default();
        let mut out = format!(
            "drill {}{target}: fault held {:.1} s\n  detected after  {} ({})\n  recovered after {} (after healing)\n  lost requests   {}   hung requests {}\n\n",
            self.scenario,
            self.held_ms as f64 / 1000.0,
            ms(self.detect_ms),
            self.detected_by,
            ms(self.recover_ms),
            self.lost,
            self.hung,
        );
        let mut rows = vec![
            ["REGION", "REQUESTS", "OK", "ERRORS", "HUNG", "FAILING (s after fault)", "FAILURES"].map(String::from)
        ];
        for r in &self.regions {
            let window = match (r.failing_from_ms, r.failing_until_ms) {
                (Some(a), Some(b)) => format!("{:.1} .. {:.1}", a as f64 / 1000.0, b as f64 / 1000.0),
                _ => "-".to_owned(),
            };
            let kinds: Vec<String> = r.failures.iter().map(|(k, n)| format!("{k} x{n}")).collect();
            rows.push([
                r.region.clone(),
                r.requests.to_string(),
                r.ok.to_string(),
                r.errors.to_string(),
                r.hung.to_string(),
                window,
                if kinds.is_empty() { "-".into() } else { kinds.join(", ") },
            ]);
        }
        out.push_str(&crate::ops::aligned(&rows));
        if !self.sessions.is_empty() {
            let mut rows =
                vec![["SESSION", "FIRST REGION", "RECEIVED", "LOST", "DOUBLED", "LONGEST STALL", "ERROR"]
                    .map(String::from)];
            for s in &self.sessions {
                rows.push([
                    s.kind.to_owned(),
                    s.first_region.clone().unwrap_or_else(|| "nearest".into()),
                    s.received.to_string(),
                    s.lost.to_string(),
                    s.doubled_or_reordered.to_string(),
                    format!("{:.2} s", s.longest_stall_ms as f64 / 1000.0),
                    s.error.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            out.push('\n');
            out.push_str(&crate::ops::aligned(&rows));
        }
        out
    }
}
