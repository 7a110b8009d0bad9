//! The soak's report for a person: the verdict first, then totals by kind and
//! by minute, each fault with what it failed, each process's memory and
//! descriptors, and the first few of each kind of failure.

use super::procs::Usage;
use super::summary::{Counts, FaultReport, ProcessReport, SoakReport, MEMORY_GROWTH_BOUND_PCT, MEMORY_JUDGED_FROM};
use crate::ops::aligned;

impl SoakReport {
    pub fn table(&self) -> String {
        let t = &self.totals;
        let mut out = format!(
            "soak: {:.0} s (warm-up {:.0} s), {} faults\n  requests {}   ok {}   failed {} (each where the design says)   \
             unexplained {}   lost or corrupt {}   hung {}   resent {} (budget {})\n",
            self.duration_s,
            self.warm_up_s,
            self.faults.len(),
            t.requests,
            t.ok,
            t.failed,
            t.unexplained,
            t.lost_or_corrupt,
            t.hung,
            t.retried,
            self.resend_budget,
        );
        out.push_str(&self.verdict());
        out.push('\n');
        out.push_str(&counts_table("KIND", self.by_kind.iter().map(|(k, c)| (kind_name(k), c))));
        out.push('\n');
        out.push_str(&counts_table("MINUTE", self.by_minute.iter().enumerate().map(|(i, c)| (i.to_string(), c))));
        out.push('\n');
        out.push_str(&faults_table(&self.faults));
        out.push('\n');
        if self.processes.is_empty() {
            out.push_str("(no process figures: the deployment is not the demo)\n");
        } else {
            out.push_str(&processes_table(&self.processes, self.idle_after_s));
        }
        for s in &self.sessions {
            out.push_str(&format!(
                "\n{} session through {}: {} received, {} lost, {} doubled or reordered, longest stall {:.2} s{}",
                s.kind,
                s.first_region.as_deref().unwrap_or("the nearest region"),
                s.received,
                s.lost,
                s.doubled_or_reordered,
                s.longest_stall_ms as f64 / 1000.0,
                s.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default(),
            ));
        }
        if !self.sessions.is_empty() {
            out.push('\n');
        }
        if let Some(log) = &self.connection_log {
            out.push_str(&format!(
                "\nconnection log: {} of the {} WebSockets opened found ({} ended by a kill of their region)\n",
                log.found, log.opened, log.killed
            ));
            for problem in log.problems() {
                out.push_str(&format!("  {problem}\n"));
            }
        }
        for (title, list) in [
            ("faults skipped", &self.skipped),
            ("descriptors left open", &self.leaked_fds),
            ("restarted since the idle baseline (descriptors not compared)", &self.restarted_since_baseline),
            ("unexplained failures", &self.unexplained),
            ("resent after a reused connection closed before any answer", &self.retried),
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

    /// One line when clean, else one line per problem; and whether memory was judged.
    fn verdict(&self) -> String {
        let memory = if self.memory_judged {
            format!("memory judged: anonymous memory may grow at most {MEMORY_GROWTH_BOUND_PCT}%, second half against the quarter before")
        } else {
            format!("memory not judged: runs shorter than {} minutes are too short", MEMORY_JUDGED_FROM.as_secs() / 60)
        };
        match self.problems() {
            p if p.is_empty() => format!("  verdict: clean ({memory})\n"),
            p => {
                format!("  verdict: FAILED ({memory})\n{}", p.iter().map(|l| format!("    {l}\n")).collect::<String>())
            }
        }
    }
}

fn kind_name(k: &super::load::Kind) -> String {
    serde_json::to_value(k).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn counts_table<'a>(first: &str, rows: impl Iterator<Item = (String, &'a Counts)>) -> String {
    let head = [first, "REQUESTS", "OK", "FAILED", "UNEXPLAINED", "LOST/CORRUPT", "HUNG", "RESENT"].map(String::from);
    let mut table = vec![head];
    table.extend(rows.map(|(name, c)| {
        let n =
            [c.requests, c.ok, c.failed, c.unexplained, c.lost_or_corrupt, c.hung, c.retried].map(|n| n.to_string());
        let [a, b, d, e, f, g, h] = n;
        [name, a, b, d, e, f, g, h]
    }));
    aligned(&table)
}

fn faults_table(faults: &[FaultReport]) -> String {
    let head = [
        "AT (s)",
        "FAULT",
        "REGION",
        "HELD",
        "RECOVERED (bound)",
        "FAILED (why: what the client saw)",
        "FDS vs IDLE BASELINE",
    ];
    let mut rows = vec![head.map(String::from)];
    for f in faults {
        let failed: Vec<String> = f.failed.iter().map(|(k, n)| format!("{n} × {k}")).collect();
        let fds: Vec<String> =
            f.fds_vs_baseline.iter().filter(|(_, d)| **d != 0).map(|(p, d)| format!("{p} {d:+}")).collect();
        let bound = f.recover_bound_ms as f64 / 1000.0;
        rows.push([
            format!("{:.0}", f.at_s),
            f.scenario.clone(),
            f.region.clone().unwrap_or_else(|| "-".into()),
            format!("{:.1} s", f.held_ms as f64 / 1000.0),
            f.recover_ms.map_or_else(
                || format!("never ({bound:.0} s)"),
                |ms| format!("{:.1} s ({bound:.0} s)", ms as f64 / 1000.0),
            ),
            if failed.is_empty() { "-".into() } else { failed.join("; ") },
            if fds.is_empty() { "all at baseline".into() } else { fds.join(", ") },
        ]);
    }
    aligned(&rows)
}

fn processes_table(processes: &[ProcessReport], idle_after_s: f64) -> String {
    let idle_head = format!("FDS IDLE (after {idle_after_s:.0} s)");
    let mut rows = vec![[
        "PROCESS",
        "RSS MiB warm-up/round 1/middle/end",
        "GROWTH since round 1",
        "RSS MEDIAN first/last readings (growth)",
        "ANON MEDIAN first/last (growth; second half vs quarter before)",
        "FDS warm-up/middle/end",
        idle_head.as_str(),
        "TASKS",
    ]
    .map(String::from)];
    let series = |usages: &[Option<Usage>], f: &dyn Fn(&Usage) -> String| {
        usages.iter().map(|u| u.as_ref().map_or_else(|| "-".into(), f)).collect::<Vec<_>>().join(" / ")
    };
    for p in processes {
        let restarts = if p.restarts > 0 { format!(", restarted {}×", p.restarts) } else { String::new() };
        rows.push([
            p.name.clone(),
            series(&[p.start, p.after_first_round, p.middle, p.end], &|u| format!("{:.1}", u.rss_kib as f64 / 1024.0)),
            p.rss_growth_pct.map_or_else(|| "-".into(), |g| format!("{g:+.1}%")),
            match (p.rss_median_first_mib, p.rss_median_last_mib, p.rss_median_growth_pct) {
                (Some(f), Some(l), Some(g)) => format!("{f:.1} / {l:.1} of {} ({g:+.1}%{restarts})", p.rss_window),
                _ => "-".into(),
            },
            match (p.anon_median_first_mib, p.anon_median_last_mib, p.anon_second_half_growth_pct) {
                (Some(f), Some(l), Some(h)) => format!(
                    "{f:.1} / {l:.1} ({:+.1}%; second half {h:+.1}%)",
                    p.anon_median_growth_pct.unwrap_or_default()
                ),
                _ => "-".into(),
            },
            series(&[p.start, p.middle, p.end], &|u| u.fds.to_string()),
            p.idle_fds.map_or_else(|| "-".into(), |f| f.to_string()),
            series(&[p.start, p.middle, p.end], &|u| u.tasks.to_string()),
        ]);
    }
    aligned(&rows)
}
