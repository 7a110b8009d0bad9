//! `meridian drill` against a running `meridian demo`: every scenario runs,
//! and its report agrees with what this test saw on its own, through its own
//! requests and its own polling of the API and the regions' health reports.

use crate::support::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the test saw at one moment (unix ms).
#[derive(Debug, Clone)]
struct Seen {
    at: i64,
    /// The regions API's status, or 0 when it did not answer.
    api: u16,
    sydney_healthy: Option<bool>,
    frankfurt_healthy: Option<bool>,
    /// Whether frankfurt's proxy says it reaches the coordinator.
    frankfurt_reaches_coordinator: Option<bool>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Polls every 100 ms until dropped.
fn observe(api: Api, frankfurt: String) -> (Arc<Mutex<Vec<Seen>>>, tokio::task::JoinHandle<()>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
        loop {
            let at = now_ms();
            let regions = http
                .get(format!("{}/api/v2/regions", api.base()))
                .header("Meridian-Session-Token", api.token())
                .send()
                .await;
            let (status, body) = match regions {
                Ok(r) => (r.status().as_u16(), r.json::<Value>().await.unwrap_or_default()),
                Err(_) => (0, Value::Null),
            };
            let healthy = |name: &str| {
                let regions = body["regions"].as_array()?;
                regions.iter().find(|r| r["name"] == name)?["healthy"].as_bool()
            };
            let (sydney_healthy, frankfurt_healthy) = (healthy("sydney"), healthy("frankfurt"));
            let report = http.get(format!("{frankfurt}/healthz-report")).send().await;
            let reaches = match report {
                Ok(r) => r.json::<Value>().await.ok().and_then(|v| v["coordinator_reachable"].as_bool()),
                Err(_) => None,
            };
            out.lock().unwrap().push(Seen {
                at,
                api: status,
                sydney_healthy,
                frankfurt_healthy,
                frankfurt_reaches_coordinator: reaches,
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (seen, task)
}

/// The first moment after `from` at which `cond` held.
fn first(seen: &[Seen], from: i64, cond: impl Fn(&Seen) -> bool) -> Option<i64> {
    seen.iter().find(|s| s.at >= from && cond(s)).map(|s| s.at)
}

/// Runs one drill and returns its JSON report.
fn drill(data_dir: &std::path::Path, args: &[&str]) -> Value {
    let mut cmd = Command::new(BIN);
    cmd.arg("drill").args(args).args(["--duration", "3s", "--rate", "10", "--settle", "30s", "--json", "--data-dir"]);
    cmd.arg(data_dir).env_remove("MERIDIAN_URL").stdin(Stdio::null());
    // 3 s of fault, up to 30 s to settle, and the drill's own setup.
    let out = output_within(&mut cmd, Duration::from_secs(90), &format!("meridian drill {args:?}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "drill {args:?} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("drill printed no JSON ({e}): {stdout}"))
}

/// `meridian demo` with regions sydney and frankfurt (a few ms away) and its
/// agent on `agent_region`: the temporary directory, the demo's data
/// directory, and the demo.
async fn demo_with_agent_on(agent_region: &str) -> (tempfile::TempDir, std::path::PathBuf, Demo) {
    let dir = tempdir();
    let topology = dir.path().join("topology.toml");
    std::fs::write(
        &topology,
        format!(
            "[[region]]\nname = \"sydney\"\nlatency = \"5ms\"\n[[region]]\nname = \"frankfurt\"\n\
             latency = \"2ms\"\n[agent]\nregion = \"{agent_region}\"\n"
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let args = ["--proxy-health-interval", "1s", "--topology", &topology.display().to_string(), "--data-dir"];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.push(state.display().to_string());
    let demo = Demo::start(dir.path(), &args).await;
    (dir, state, demo)
}

/// Failures the report counts for `region` (errors, hung and lost).
fn failures(report: &Value, region: &str) -> u64 {
    let r = report["regions"].as_array().unwrap().iter().find(|r| r["region"] == region).expect("region in report");
    ["errors", "hung", "lost"].iter().map(|k| r[k].as_u64().unwrap()).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_drill_scenario_reports_what_a_bystander_sees() {
    let (_dir, state, mut demo) = demo_with_agent_on("frankfurt").await;
    let port = demo.port;
    let coordinator = format!("http://127.0.0.1:{port}");
    let password = std::fs::read_to_string(state.join("demo-password")).unwrap();
    let api = Api::login(&coordinator, "demo", password.trim()).await;
    let (sydney_port, frankfurt_port) = (demo.port_of("sydney"), demo.port_of("frankfurt"));
    let frankfurt = format!("http://127.0.0.1:{frankfurt_port}");

    // The bystander: its own signed-in users in every region, and its own polling.
    let mut targets = Vec::new();
    for (region, host) in [
        ("primary", format!("localhost:{port}")),
        ("sydney", format!("sydney.localhost:{sydney_port}")),
        ("frankfurt", format!("frankfurt.localhost:{frankfurt_port}")),
    ] {
        let client = browser();
        browser_login(&client, &coordinator, "demo", password.trim()).await;
        let url = format!("http://code--main--dev--demo.{host}/");
        let (hops, resp) = follow(&client, &url).await;
        assert_eq!(resp.status(), 200, "{region}: {hops:?}");
        targets.push((region.to_owned(), client, url));
    }
    let (seen, observer) = observe(Api::with_token(&coordinator, api.token()), frankfurt);

    // Each scenario: (arguments, regions whose users must see failures, what the bystander calls "noticed").
    type Noticed = fn(&Seen) -> bool;
    // The last is the README's own example: the agent's region dies, and only
    // that region's own users see failures (the agent moves within the 2 s
    // a request waits for its route, so no request elsewhere fails).
    let scenarios: [(&[&str], &[&str], Noticed); 5] = [
        (&["kill-region", "--region", "sydney"], &["sydney"], |s| s.sydney_healthy == Some(false)),
        (&["partition-region", "--region", "sydney"], &["sydney"], |s| s.sydney_healthy == Some(false)),
        (&["kill-coordinator"], &["primary"], |s| s.frankfurt_reaches_coordinator == Some(false)),
        (&["stop-postgres"], &[], |s| s.api == 503),
        (&["kill-region", "--region", "frankfurt"], &["frankfurt"], |s| s.frankfurt_healthy == Some(false)),
    ];
    for (args, failing, noticed) in scenarios {
        let traffic = Traffic::start_with_timeout(targets.clone(), Duration::from_millis(100), Duration::from_secs(2));
        let started = Instant::now();
        let report = tokio::task::spawn_blocking({
            let state = state.clone();
            move || drill(&state, args)
        })
        .await
        .unwrap();
        let stats = traffic.stop().await;
        eprintln!("{args:?} took {:?}: {report}", started.elapsed());

        let fault_at = report["fault_at_unix_ms"].as_i64().unwrap();
        let detect = report["detect_ms"].as_i64().expect("the drill saw the fault noticed");
        assert!(report["recover_ms"].as_i64().is_some(), "the drill saw recovery: {report}");
        let seen_at = first(&seen.lock().unwrap(), fault_at, noticed).expect("the bystander saw the fault noticed");
        let gap = (fault_at + detect - seen_at).abs();
        assert!(
            gap <= 750,
            "{args:?}: drill says noticed after {detect} ms, bystander after {} ms",
            seen_at - fault_at
        );

        for (region, s) in &stats {
            let expected = failing.contains(&region.as_str());
            assert_eq!(failures(&report, region) > 0, expected, "{args:?}: the drill's count for {region}: {report}");
            assert_eq!(!s.failed.is_empty(), expected, "{args:?}: the bystander in {region}: {:?}", s.failed);
        }
        assert_eq!(report["lost"], 0, "{report}");
        // A shell and a forwarded TCP stream through the region under fault
        // (the nearest one otherwise) resume elsewhere: nothing lost or
        // doubled, stalled 3 s at most.
        let sessions = report["sessions"].as_array().expect("sessions in the report");
        assert_eq!(sessions.len(), 2, "{report}");
        for session in sessions {
            assert!(session["error"].is_null() && session["received"].as_u64() > Some(50), "{args:?}: {session}");
            assert_eq!(
                (&session["lost"], &session["doubled_or_reordered"]),
                (&0.into(), &0.into()),
                "{args:?}: {session}"
            );
            assert!(session["longest_stall_ms"].as_u64() <= Some(3000), "{args:?}: {session}");
        }
    }
    observer.abort();
    demo.proc.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(demo.proc.wait_exit(Duration::from_secs(60)).await.success());
}

/// The common case the drill must cover: the demo's agent sits on the
/// primary (the coordinator's own relay). Killing the coordinator moves the
/// agent, and signed-in users in every other region see no failed request.
#[tokio::test(flavor = "multi_thread")]
async fn kill_coordinator_with_the_agent_on_the_primary_fails_no_request_in_the_regions() {
    let (_dir, state, mut demo) = demo_with_agent_on("primary").await;
    let password = std::fs::read_to_string(state.join("demo-password")).unwrap();
    let coordinator = format!("http://127.0.0.1:{}", demo.port);
    let api = Api::login(&coordinator, "demo", password.trim()).await;
    api.wait_agent_on("dev", "primary").await;

    let report = tokio::task::spawn_blocking({
        let state = state.clone();
        move || drill(&state, &["kill-coordinator"])
    })
    .await
    .unwrap();
    eprintln!("{report}");
    for region in ["sydney", "frankfurt"] {
        assert_eq!(failures(&report, region), 0, "{region}: {report}");
    }
    assert!(failures(&report, "primary") > 0, "the primary's own users lost their region: {report}");
    assert_eq!(report["lost"], 0, "{report}");
    demo.proc.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(demo.proc.wait_exit(Duration::from_secs(60)).await.success());
}
