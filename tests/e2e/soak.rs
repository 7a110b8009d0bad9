//! `meridian drill soak` against a running `meridian demo` of two regions of
//! two replicas each: a minute of mixed traffic through every fault of the
//! schedule, and nothing lost, corrupted, hung, failed without a cause, or
//! left open.

use crate::support::*;
use serde_json::Value;
use std::time::Duration;

const SCHEDULE: [&str; 5] = ["restart-region", "cut-tunnel", "kill-coordinator", "stop-postgres", "partition-region"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_soak_through_every_fault_loses_nothing_and_leaks_nothing() {
    let dir = tempdir();
    let topology = dir.path().join("topology.toml");
    std::fs::write(
        &topology,
        "[[region]]\nname = \"sydney\"\nlatency = \"60ms\"\n[[region]]\nname = \"frankfurt\"\nlatency = \"20ms\"\n\
         [agent]\nregion = \"frankfurt\"\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let args: Vec<String> = ["--replicas", "2", "--proxy-health-interval", "1s", "--topology"]
        .iter()
        .map(|a| a.to_string())
        .chain([topology.display().to_string(), "--data-dir".into(), state.display().to_string()])
        .collect();
    let mut demo = Demo::start(dir.path(), &args).await;

    let soak = tokio::process::Command::new(BIN)
        .args(["drill", "soak", "--duration", "60s", "--hold", "2s", "--settle", "30s", "--json", "--data-dir"])
        .arg(&state)
        .env_remove("MERIDIAN_URL")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    // 60 s of soak, a fault that may run past it, and twice up to 120 s for
    // connections to close (after warm-up, for the idle baseline, and at the end).
    let out = tokio::time::timeout(Duration::from_secs(480), soak).await.expect("the soak did not end").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the soak printed no report ({e}): {stdout}\n{stderr}"));
    let totals = &report["totals"];
    eprintln!("soak totals: {totals}; resend budget {}", report["resend_budget"]);
    for f in report["faults"].as_array().unwrap() {
        eprintln!(
            "  {} recovered in {} ms (bound {} ms): {}",
            f["scenario"], f["recover_ms"], f["recover_bound_ms"], f["failed"]
        );
    }
    for field in ["lost_or_corrupt", "hung", "unexplained"] {
        assert_eq!(totals[field], 0, "{field}: {report:#}");
    }
    // Nothing left open: no descriptor above its idle baseline in any process
    // no fault restarted (an app pipe that outlived its traffic was one, until
    // pooled tunnel streams got ids of their own).
    assert_eq!(report["leaked_fds"], serde_json::json!([]), "left open: {report:#}");
    assert_eq!(report["slow_recoveries"], serde_json::json!([]), "{report:#}");
    // The descriptor check covered the processes no fault restarts.
    let restarted = report["restarted_since_baseline"].as_array().unwrap();
    for name in ["agent", "sample-app", "proxy-sydney", "proxy-sydney-2"] {
        assert!(!restarted.iter().any(|r| r == name), "{name} restarted: {restarted:?}");
    }
    assert!(totals["retried"].as_u64() <= report["resend_budget"].as_u64(), "{report:#}");
    assert_eq!(report["skipped"], serde_json::json!([]), "two replicas: every fault runs");
    assert!(out.status.success(), "the soak exited {:?}: {stderr}", out.status);
    // A shell and a forwarded TCP stream held through every fault: nothing lost
    // or doubled, never stalled past 3 s (the soak's exit status says so too).
    let sessions = report["sessions"].as_array().expect("sessions in the report");
    assert_eq!(sessions.len(), 2, "{report:#}");
    for s in sessions {
        assert!(s["error"].is_null() && s["received"].as_u64() > Some(1000), "{s}");
        assert_eq!((&s["lost"], &s["doubled_or_reordered"]), (&0.into(), &0.into()), "{s}");
        assert!(s["longest_stall_ms"].as_u64() <= Some(3000), "{s}");
    }

    // Every WebSocket the soak opened is in the connection log once, through
    // its region, with its bytes within the app's framing.
    let log = &report["connection_log"];
    for field in ["missing", "doubled", "wrong_region", "bytes_outside_framing"] {
        assert_eq!(log[field], serde_json::json!([]), "{field}: {log:#}");
    }
    assert!(log["opened"].as_u64() >= Some(10) && log["found"] == log["opened"], "{log:#}");
    eprintln!("connection log: {log}");

    let ran: Vec<&str> = report["faults"].as_array().unwrap().iter().map(|f| f["scenario"].as_str().unwrap()).collect();
    for scenario in SCHEDULE {
        assert!(ran.contains(&scenario), "{scenario} did not run: {ran:?}");
    }
    for f in report["faults"].as_array().unwrap() {
        assert!(f["recover_ms"].is_u64(), "{} did not recover: {f:#}", f["scenario"]);
    }
    // Every kind of traffic went through, through every region.
    for kind in ["get", "download", "upload", "web-socket", "stream"] {
        let c = &report["by_kind"][kind];
        assert!(c["ok"].as_u64().unwrap() >= 10, "too few {kind}: {c}");
    }
    // Postgres going away fails nothing; the coordinator's death fails only the primary's users.
    let failed = |scenario: &str| -> u64 {
        let f = report["faults"].as_array().unwrap().iter().filter(|f| f["scenario"] == scenario);
        f.flat_map(|f| f["failed"].as_object().unwrap().values().map(|n| n.as_u64().unwrap())).sum()
    };
    assert_eq!(failed("stop-postgres"), 0, "a Postgres outage failed requests: {report:#}");
    // A rolling restart fails nothing but, rarely, a streamed response that a
    // stopping replica's drain period cut short.
    let restarts = report["faults"].as_array().unwrap().iter().filter(|f| f["scenario"] == "restart-region");
    for r in restarts {
        let why: Vec<&String> = r["failed"].as_object().unwrap().keys().collect();
        assert!(why.iter().all(|w| w.starts_with("a streamed response on a stopping replica")), "{r:#}");
    }
    // The coordinator's death fails the primary's own users, and, when its
    // relay held the agent then (a tunnel cut can move it there), what was in
    // flight to the agent through it from any region.
    let kills = report["faults"].as_array().unwrap().iter().filter(|f| f["scenario"] == "kill-coordinator");
    for kill in kills {
        let held_agent = kill["agent_region"] == "primary";
        let explained = |why: &String| {
            why.starts_with("the primary region")
                || (held_agent && why.starts_with("in flight through the killed relay that held the agent"))
        };
        assert!(kill["failed"].as_object().unwrap().keys().all(explained), "{kill:#}");
    }
    // Each process of the demo was measured, and none held more descriptors once idle.
    let names: Vec<&str> =
        report["processes"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for name in ["coordinator", "proxy-sydney", "proxy-sydney-2", "proxy-frankfurt", "proxy-frankfurt-2", "agent"] {
        assert!(names.contains(&name), "{name} not measured: {names:?}");
    }
    // Memory is read every 5 s from warm-up (5 s) on, RSS and the anonymous part of it.
    for p in report["processes"].as_array().unwrap() {
        let (rss, anon) = (p["rss_mib"].as_array().unwrap(), p["anon_mib"].as_array().unwrap());
        assert!(rss.len() >= 8 && anon.len() == rss.len(), "{}: {} memory readings in a minute", p["name"], rss.len());
        for (r, a) in rss.iter().zip(anon) {
            let (r, a) = (r[1].as_f64().unwrap(), a[1].as_f64().unwrap());
            assert!(a > 0.0 && a < r, "{}: anonymous {a} MiB of RSS {r} MiB", p["name"]);
        }
    }

    demo.proc.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(demo.proc.wait_exit(Duration::from_secs(60)).await.success());
}
