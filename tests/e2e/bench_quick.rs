//! The load benchmark's `--quick` mode: every workload runs through every
//! target without a failed request. It proves the harness works; the
//! figures of a debug build mean nothing and nothing is asserted about them.

use crate::support::BIN;

#[tokio::test(flavor = "multi_thread")]
async fn the_benchmark_harness_runs_every_workload() {
    // The bare-pingora row needs the meridian-bench binary, which the test suite does not build.
    let opts = meridian_bench::Options { quick: true, only: None, meridian: BIN.into(), bare_pingora: None };
    let report = meridian_bench::run(&opts).await.expect("the quick benchmark runs");
    let count = |target: &str| report.rows.iter().filter(|r| r.target == target).count();
    assert_eq!((count("direct"), count("nginx"), count("meridian")), (5, 4, 4), "{:?}", report.rows);
    assert_eq!((count("meridian-tls"), count("meridian-hop"), count("nginx+rathole")), (1, 1, 4));
    // The reference rows: nginx at TLS 1.2 only (new TLS connections), and
    // nginx+rathole sent Meridian's request (small GET); the stack checked
    // before any load that each does what it says.
    assert_eq!((count("nginx, TLS 1.2 only"), count("nginx+rathole, Meridian's request")), (1, 1));
    // Every row names the CPU time per request of each process on its path.
    for r in &report.rows {
        let roles: Vec<&str> = r.cpu_us_per_request.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(roles.last(), Some(&"app"), "{} through {}: {roles:?}", r.workload, r.target);
        if r.target == "nginx+rathole" {
            assert_eq!(roles, ["nginx", "rathole server", "rathole client", "app"]);
        }
    }
    assert!(report.rows.iter().all(|r| r.figures.requests_per_sec > 0.0 && r.figures.p99_ms >= r.figures.p50_ms));
    assert!(report.memory.rss_after_kib > 0 && report.memory.connections == 200);
    assert!(report.markdown().contains("| meridian |"));
    // Bulk TCP and scp, each way, through rathole and Meridian (TCP: direct too).
    let bulk = |workload: &str| report.bulk.rows.iter().filter(|r| r.workload.starts_with(workload)).count();
    assert_eq!((bulk("bulk TCP upload"), bulk("bulk TCP download")), (3, 3), "{:?}", report.bulk.rows);
    assert_eq!((bulk("bulk scp upload"), bulk("bulk scp download")), (2, 2), "{:?}", report.bulk.rows);
    assert!(report.bulk.rows.iter().all(|r| r.mib_per_sec > 0.0));
    // Keystrokes through each of the demo's regions, the primary too.
    let geography = report.geography.as_ref().expect("the geography rows ran");
    let mut regions: Vec<&str> = geography.iter().map(|r| r.region.as_str()).collect();
    regions.sort();
    assert_eq!(regions, ["frankfurt", "primary", "sydney", "virginia"]);
    assert!(geography.iter().all(|r| r.echo_p50_ms > 0.0 && r.ping_ms > 0.0), "{geography:?}");
    // Audit-log and connection-log pages, one per filter, over the records the bench wrote.
    let audit = report.audit.as_ref().expect("the audit rows ran");
    let per_log = |log: &str| audit.iter().filter(|p| p.log == log).count();
    assert_eq!((per_log("audit-log"), per_log("connection-log")), (6, 7), "{audit:?}");
    assert!(audit.iter().all(|p| p.records == 10_000 && p.p50_ms > 0.0), "{audit:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_control_plane_simulation_runs() {
    let scale = meridian_bench::control_plane::Scale {
        regions: 3,
        replicas: 9,
        agents: 30,
        window: std::time::Duration::from_secs(2),
        records_per_sec: 30,
    };
    let report = meridian_bench::control_plane::simulate(BIN.as_ref(), scale).await.expect("the simulation runs");
    assert_eq!((report.regions, report.replicas, report.agents), (3, 9, 30));
    assert!(report.coordinator_rss_kib > 0 && report.postgres_transactions_per_sec > 0.0, "{report:?}");
    assert_eq!(report.failed_calls, 0, "{:?}", report.failures);
    // The regions' connection records: every one acknowledged is stored.
    let log = &report.connection_log;
    assert!(log.shipped > 0 && log.lost == 0 && log.stored == log.shipped, "{log:?}");
    // The mesh search: a thousand requests for a moved agent, one search.
    let search = &report.mesh_search;
    assert_eq!((search.relays, search.searches), (3, 1), "{search:?}");
    assert!(search.probes >= 1 && search.probes <= 3 && search.nowhere_probes == 3, "{search:?}");
}
