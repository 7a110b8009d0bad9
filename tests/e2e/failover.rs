//! The relay mesh and the failure table of ARCHITECTURE.md: requests cross the
//! mesh to agents attached anywhere, and outages of a region, the coordinator
//! or Postgres are survived by users who already hold a token. Latency and
//! partitions come from user-space links (`meridian_netsim`).

use crate::support::*;
use meridian_netsim::Mode;
use nix::sys::signal::Signal;
use serde_json::json;
use std::time::{Duration, Instant};

/// The health interval of these deployments (also the heartbeat interval).
const INTERVAL: Duration = Duration::from_secs(1);

/// A coordinator and one workspace whose app `code` is the sample app; regions come per test.
async fn mesh() -> Mesh {
    Mesh::builder().workspace(|app| json!([{"slug": "code", "port": app}])).start().await
}

/// Median time of `n` GETs of `url`, each of which must succeed.
async fn median_latency(client: &reqwest::Client, url: &str, n: usize) -> Duration {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let resp = client.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
        times.push(start.elapsed());
    }
    times.sort();
    times[n / 2]
}

/// Waits until `url` answers 200: a readiness probe for a test's setup,
/// never after a fault (it would hide the failures before the first 200).
async fn ready(client: &reqwest::Client, url: &str) {
    wait_for(Duration::from_secs(5), &format!("{url} to answer 200"), || async {
        client.get(url).send().await.ok().filter(|r| r.status() == 200)
    })
    .await;
}

/// `n` requests in a row, each answered 200 at once.
async fn serves(client: &reqwest::Client, url: &str, n: usize) {
    for i in 0..n {
        let resp = client.get(url).send().await.unwrap_or_else(|e| panic!("{url}: request {i}: {e}"));
        assert_eq!(resp.status(), 200, "{url}: request {i}");
        resp.bytes().await.unwrap();
    }
}

async fn last_registration(proxy: &Proxy) -> Option<String> {
    proxy.report().await.unwrap()["last_registration_at"].as_str().map(str::to_owned)
}

fn assert_no_failures(stats: &[(String, TrafficStats)]) {
    for (name, s) in stats {
        assert!(s.ok > 0, "no traffic went through {name}");
        assert!(s.failed.is_empty(), "{name}: {} ok, failures: {:?}", s.ok, s.failed);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_crosses_one_mesh_hop_to_an_agent_attached_elsewhere() {
    let m = mesh().await;
    // Sydney is 50 ms (one way) from the agent, which sits next to frankfurt:
    // the agent dials sydney's relay for sydney's app connections (a data
    // connection straight to the region that asks), and sydney's relay links
    // to frankfurt's to ask for one.
    let far = || async {
        let hop = pending_link().await;
        hop.set_latency(Duration::from_millis(50));
        let url = format!("http://{}", hop.addr());
        (hop, url)
    };
    let (sydney_hop, sydney_relay) = far().await;
    let sydney = m.region("sydney", &["--relay-url", &sydney_relay]).await;
    sydney_hop.set_upstreams(vec![sydney.relay()]);
    let (hop, mesh_url) = far().await;
    let frankfurt = m.region("frankfurt", &["--mesh-url", &mesh_url]).await;
    hop.set_upstreams(vec![frankfurt.relay()]);
    let _agent = m.agent(&["--region", "frankfurt"]);
    m.admin.wait_agent_on("dev", "frankfurt").await;

    let (via_sydney, sydney_url) = m.user_of("sydney", &sydney).await;
    let (in_frankfurt, frankfurt_url) = m.user_of("frankfurt", &frankfurt).await;
    median_latency(&via_sydney, &sydney_url, 3).await; // warm: link and pooled stream
    let crossing = median_latency(&via_sydney, &sydney_url, 9).await;
    let local = median_latency(&in_frankfurt, &frankfurt_url, 9).await;
    let added = crossing.saturating_sub(local);
    eprintln!("through sydney {crossing:?}, in frankfurt {local:?}: the hop adds {added:?}");
    // One round trip between sydney and the agent is 2 × 50 ms.
    assert!(added >= Duration::from_millis(90), "the request did not cross the distance: {added:?}");
    assert!(added < Duration::from_millis(200), "more than one hop: {added:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_region_is_detected_and_its_agents_move_and_come_back() {
    let m = mesh().await;
    let sydney = m.region("sydney", &[]).await;
    let mut frankfurt = m.region("frankfurt", &[]).await;
    let _agent = m.agent(&["--region", "frankfurt", "--failback-after", "3s"]);
    m.admin.wait_agent_on("dev", "frankfurt").await;
    let (user, url) = m.user_of("sydney", &sydney).await;
    ready(&user, &url).await;
    serves(&user, &url, 3).await;

    // Users in sydney, one GET every 20 ms, through the agent's region dying:
    // none fails (the README: agents re-attach "within about a second", and a
    // request waits up to 2 s for its agent's new route), and none waits much
    // longer than the move takes. Each needs a new app connection (`?close`):
    // a pooled one, dialed by the agent to sydney directly, would outlive
    // frankfurt and need no route at all.
    let users = vec![("sydney".into(), user.clone(), format!("{url}?close"))];
    let traffic = Traffic::start(users, Duration::from_millis(20));
    serves(&user, &url, 1).await;
    frankfurt.proc.signal(Signal::SIGKILL);
    let (detect, reattach) = tokio::join!(
        m.admin.wait_status("frankfurt", "unreachable", 2 * INTERVAL + Duration::from_millis(500)),
        m.admin.wait_agent_within("dev", "primary", Duration::from_secs(5)),
    );
    eprintln!("killed region: unreachable after {detect:?}, agent re-attached after {reattach:?}");
    serves(&user, &url, 10).await;
    let stats = traffic.stop().await;
    let (_, sydney_users) = &stats[0];
    eprintln!("through sydney: {} served, slowest {:?}", sydney_users.ok, sydney_users.slowest_ok);
    assert_no_failures(&stats);
    assert!(reattach < Duration::from_secs(2), "the agent took {reattach:?} to re-attach (about a second)");
    assert!(sydney_users.slowest_ok < Duration::from_secs(2), "a request waited {:?}", sydney_users.slowest_ok);

    // Frankfurt returns: the agent waits out --failback-after, then moves
    // back, make-before-break, under the same traffic: nothing fails.
    let users = vec![("sydney".into(), user.clone(), format!("{url}?close"))];
    let traffic = Traffic::start(users, Duration::from_millis(20));
    frankfurt.restart().await;
    m.admin.wait_status("frankfurt", "ok", Duration::from_secs(5)).await;
    let back = m.admin.wait_agent_within("dev", "frankfurt", Duration::from_secs(15)).await;
    eprintln!("agent back on frankfurt {back:?} after it was healthy");
    assert!(back >= Duration::from_millis(2500), "moved back before the region was healthy for 3 s: {back:?}");
    serves(&user, &url, 10).await;
    let stats = traffic.stop().await;
    report_phase("failback", &stats);
    assert_no_failures(&stats);
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_in_users_see_no_errors_while_the_coordinator_is_down_for_15s() {
    let mut m = mesh().await;
    let mut sydney = m.region("sydney", &[]).await;
    let mut frankfurt = m.region("frankfurt", &[]).await;
    let _agent = m.agent(&["--region", "frankfurt"]);
    m.admin.wait_agent_on("dev", "frankfurt").await;
    let (a, a_url) = m.user_of("sydney", &sydney).await;
    let (b, b_url) = m.user_of("frankfurt", &frankfurt).await;
    ready(&a, &a_url).await;
    serves(&a, &a_url, 3).await;
    let (s, f) = (last_registration(&sydney).await, last_registration(&frankfurt).await);
    let traffic =
        Traffic::start(vec![("sydney".into(), a, a_url), ("frankfurt".into(), b, b_url)], Duration::from_millis(20));

    m.coord.proc.signal(Signal::SIGKILL);
    tokio::time::sleep(Duration::from_secs(15)).await; // the outage being rehearsed
    let report = sydney.report().await.unwrap();
    assert_eq!(report["status"], "degraded", "{report}");
    m.coord.restart().await;
    sydney.wait_registered_after(s).await;
    frankfurt.wait_registered_after(f).await;
    assert_no_failures(&traffic.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_plane_ignores_postgres_being_down_for_10s() {
    let mut m = mesh().await;
    let sydney = m.region("sydney", &[]).await;
    let frankfurt = m.region("frankfurt", &[]).await;
    let _agent = m.agent(&["--region", "frankfurt"]);
    m.admin.wait_agent_on("dev", "frankfurt").await;
    let (a, a_url) = m.user_of("sydney", &sydney).await;
    let (b, b_url) = m.user_of("frankfurt", &frankfurt).await;
    ready(&a, &a_url).await;
    serves(&a, &a_url, 3).await;
    let traffic =
        Traffic::start(vec![("sydney".into(), a, a_url), ("frankfurt".into(), b, b_url)], Duration::from_millis(20));

    m.pg.pg.stop().unwrap();
    let stopped = Instant::now();
    let down = m.admin.get("/api/v2/regions").await;
    assert_eq!(down.status, 503, "{}", down.body);
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await; // the outage
    m.pg.pg.start().unwrap();
    wait_for(Duration::from_secs(15), "API recovery", || async {
        (m.admin.get("/api/v2/regions").await.status == 200).then_some(())
    })
    .await;
    assert_no_failures(&traffic.stop().await);
    assert!(m.coord.proc.child.try_wait().unwrap().is_none(), "recovered without a restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_cut_off_from_the_coordinator_keeps_serving_and_heals() {
    let m = mesh().await;
    // Sydney reaches the coordinator, and the coordinator reaches sydney, only
    // through links the test can cut; users reach sydney directly.
    let to_coordinator = link_to(&m.coord.url).await;
    let from_coordinator = pending_link().await;
    let token = m.admin.create_region("sydney").await;
    let (via, access) = (format!("http://{}", to_coordinator.addr()), format!("http://{}", from_coordinator.addr()));
    let extra = ["--login-url", &m.coord.url, "--access-url", &access];
    let mut sydney = Proxy::spawn_named(m.dir.path(), &via, &token, "sydney", &extra).await;
    from_coordinator.set_upstreams(vec![sydney.ready.as_ref().unwrap().listen]);
    sydney.wait_registered().await;
    m.admin.wait_status("sydney", "ok", Duration::from_secs(10)).await;
    let _agent = m.agent(&["--region", "sydney"]);
    m.admin.wait_agent_on("dev", "sydney").await;
    let (user, url) = m.user_of("sydney", &sydney).await;
    let traffic = Traffic::start(vec![("sydney".into(), user, url)], Duration::from_millis(20));

    for link in [&to_coordinator, &from_coordinator] {
        link.set_mode(Mode::Stall);
    }
    let detect = m.admin.wait_status("sydney", "unreachable", 2 * INTERVAL + Duration::from_millis(500)).await;
    eprintln!("partitioned region shown unreachable after {detect:?}");
    wait_for(Duration::from_secs(20), "sydney to report itself degraded", || async {
        sydney.report().await.filter(|r| r["status"] == "degraded")
    })
    .await;

    for link in [&to_coordinator, &from_coordinator] {
        link.set_mode(Mode::Pass);
    }
    let heal = m.admin.wait_status("sydney", "ok", Duration::from_secs(15)).await;
    eprintln!("healed region shown ok after {heal:?}");
    assert_no_failures(&traffic.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_coordinator_an_agent_still_moves_and_is_found() {
    let mut m = mesh().await;
    let mut sydney = m.region("sydney", &[]).await;
    let mut frankfurt = m.region("frankfurt", &[]).await;
    let virginia = m.region("virginia", &[]).await;
    let _agent = m.agent(&["--region", "frankfurt"]);
    m.admin.wait_agent_on("dev", "frankfurt").await;
    let (user, url) = m.user_of("virginia", &virginia).await;
    ready(&user, &url).await;
    serves(&user, &url, 3).await;
    let before = last_registration(&sydney).await;

    // The coordinator goes, then the agent's region: the agent attaches to
    // sydney on its attach token, and virginia finds it by asking its peers.
    // Every request needs a new app connection (`?close`), so each needs the route.
    let users = || vec![("virginia".into(), user.clone(), format!("{url}?close"))];
    m.coord.proc.signal(Signal::SIGKILL);
    wait_for(Duration::from_secs(10), "virginia to notice the coordinator is gone", || async {
        virginia.report().await.filter(|r| r["coordinator_reachable"] == false)
    })
    .await;
    let traffic = Traffic::start(users(), Duration::from_millis(20));
    let killed_at = traffic.now_ms();
    frankfurt.proc.kill();
    wait_for(Duration::from_secs(10), "sydney to admit the agent by its attach token", || async {
        sydney.proc.output().contains("admitted the agent by its attach token").then_some(())
    })
    .await;
    serves(&user, &url, 10).await;
    let stats = excusing_in_flight(traffic.stop().await, killed_at);
    report_phase("coordinator down, then the agent's region killed", &stats);
    assert_no_failures(&stats);

    // When the coordinator returns, sydney records the attachment: the route is real again.
    let traffic = Traffic::start(users(), Duration::from_millis(20));
    m.coord.restart().await;
    sydney.wait_registered_after(before).await;
    m.admin.wait_agent_on("dev", "sydney").await;
    serves(&user, &url, 5).await;
    let stats = traffic.stop().await;
    report_phase("coordinator back", &stats);
    assert_no_failures(&stats);
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_of_one_region_reach_each_others_agents() {
    let m = mesh().await;
    let token = m.admin.create_region("sydney").await;
    let mut a = Proxy::spawn_named(m.dir.path(), &m.coord.url, &token, "sydney", &[]).await;
    a.wait_registered().await;
    m.admin.wait_status("sydney", "ok", Duration::from_secs(10)).await;
    let _agent = m.agent(&["--region", "sydney"]);
    m.admin.wait_agent_on("dev", "sydney").await;
    // A second replica joins; the agent is attached to the first, not to it.
    let mut b = Proxy::spawn_named(m.dir.path(), &m.coord.url, &token, "sydney", &[]).await;
    b.wait_registered().await;
    let attached = "meridian_relay_agents_attached";
    assert_eq!((counter_of(&a.url, attached).await, counter_of(&b.url, attached).await), (1, 0));
    let (user, url) = m.user_of("sydney", &b).await;
    ready(&user, &url).await;
    serves(&user, &url, 5).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_change_made_through_one_coordinator_replica_reaches_proxies_of_another() {
    let m = mesh().await;
    // A second coordinator replica on the same database (and the same secrets key).
    let second = Coordinator::start(m.dir.path(), &m.pg.url(), "1s", &[]).await;
    let sydney = m.region("sydney", &[]).await; // follows routes from the first
    let token = m.admin.create_region("frankfurt").await;
    let mut frankfurt = Proxy::spawn_named(m.dir.path(), &second.url, &token, "frankfurt", &[]).await;
    frankfurt.wait_registered().await;
    m.admin.wait_status("frankfurt", "ok", Duration::from_secs(10)).await;
    // The agent attaches through frankfurt, whose coordinator is the second replica.
    let _agent =
        Agent::spawn_with(m.dir.path(), &second.url, m.agent_token.as_deref().unwrap(), &["--region", "frankfurt"]);
    m.admin.wait_agent_on("dev", "frankfurt").await;
    let (user, url) = m.user_of("sydney", &sydney).await;
    ready(&user, &url).await;
    serves(&user, &url, 5).await;
}

/// Prints each target's figures for a phase of an outage (the closing note quotes them).
fn report_phase(phase: &str, stats: &[(String, TrafficStats)]) {
    for (name, s) in stats {
        eprintln!("{phase}: {name}: {} served, {} failed {:?}", s.ok, s.failed.len(), s.failed.first());
    }
}

/// Traffic stats with the failures of requests sent before `at` (in flight
/// through a process SIGKILLed then: the design's one exception) taken out;
/// at most one such per target.
fn excusing_in_flight(mut stats: Vec<(String, TrafficStats)>, at: u128) -> Vec<(String, TrafficStats)> {
    for (name, s) in &mut stats {
        let in_flight = s.failed.iter().filter(|(sent, _)| *sent <= at).count();
        assert!(in_flight <= 1, "{name}: more than the request in flight failed: {:?}", s.failed);
        s.failed.retain(|(sent, _)| *sent > at);
    }
    stats
}

/// How many times `proxy` searched its peers for a moved agent.
async fn searches(proxy: &Proxy) -> u64 {
    counter_of(&proxy.url, "meridian_relay_agent_searches_total").await
}

/// A region's relay that restarted listens on a new address (`--relay-listen`
/// is ephemeral by default), one the agent attached elsewhere was not given
/// when it attached. Asked to dial it back for a mesh hop, the agent refuses
/// (the request goes over the link as a stream instead, and is served), then
/// fetches the relay list again: the region's next app connections come on
/// data connections the agent dials to its new address.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_dials_back_to_a_relay_that_restarted_on_a_new_address() {
    let m = mesh().await;
    let mut sydney = m.region("sydney", &[]).await;
    let _frankfurt = m.region("frankfurt", &[]).await;
    let _agent = m.agent(&["--region", "frankfurt"]);
    m.admin.wait_agent_on("dev", "frankfurt").await;
    let (user, url) = m.user_of("sydney", &sydney).await;
    // A new app connection per request: each asks the agent for a data connection.
    let fresh = format!("{url}?close");
    ready(&user, &fresh).await;
    serves(&user, &fresh, 3).await;
    let data = "meridian_relay_data_connections_total";
    assert!(counter_of(&sydney.url, data).await >= 3, "the hop did not use data connections before the restart");

    sydney.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let mut served = 0;
    while counter_of(&sydney.url, data).await == 0 {
        assert!(
            Instant::now() < deadline,
            "{served} requests through sydney's restarted relay, none on a data connection: the agent never \
             learned its new address"
        );
        pace.tick().await;
        let r = user.get(&fresh).send().await.unwrap();
        assert_eq!(r.status(), 200, "a request through the restarted relay failed");
        r.bytes().await.unwrap();
        served += 1;
    }
    eprintln!("{served} requests through sydney before the agent dialed its new relay address");
    serves(&user, &fresh, 3).await;
    assert!(counter_of(&sydney.url, data).await >= 4);
}

/// The common case: an agent started without `--region` sits on the
/// primary, the coordinator's own relay. The coordinator dies: the agent
/// moves to another region on its attach token, and every region with users
/// finds it there at once; when the coordinator returns, the attachment is
/// recorded and every region's routes converge on it (tokyo, which saw no
/// traffic meanwhile, serves without searching), also through a Postgres outage.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_on_the_primary_is_served_through_every_region_while_the_coordinator_is_down() {
    let mut m = mesh().await;
    let mut sydney = m.region("sydney", &[]).await;
    let mut frankfurt = m.region("frankfurt", &[]).await;
    let mut virginia = m.region("virginia", &[]).await;
    let mut tokyo = m.region("tokyo", &[]).await;
    let _agent = m.agent(&[]);
    m.admin.wait_agent_on("dev", "primary").await;
    let (a, a_url) = m.user_of("sydney", &sydney).await;
    let (b, b_url) = m.user_of("frankfurt", &frankfurt).await;
    let (c, c_url) = m.user_of("virginia", &virginia).await;
    let (d, d_url) = m.user_of("tokyo", &tokyo).await;
    // Each region has heard of the others (a heartbeat after all were up).
    for p in [&mut sydney, &mut frankfurt, &mut virginia, &mut tokyo] {
        let before = last_registration(p).await;
        p.wait_registered_after(before).await;
    }
    let before: Vec<Option<String>> =
        futures_util::future::join_all([&sydney, &frankfurt, &virginia, &tokyo].map(last_registration)).await;
    let users = || {
        let regions = [("sydney", &a, &a_url), ("frankfurt", &b, &b_url), ("virginia", &c, &c_url)];
        regions.map(|(r, client, url)| (r.to_owned(), client.clone(), url.clone())).to_vec()
    };

    let traffic = Traffic::start(users(), Duration::from_millis(50));
    traffic.wait_flowing(5).await;
    let killed_at = traffic.now_ms();
    m.coord.proc.signal(Signal::SIGKILL);
    tokio::time::sleep(Duration::from_secs(15)).await; // the outage being rehearsed
    let outage = excusing_in_flight(traffic.stop().await, killed_at);
    report_phase("coordinator down 15 s", &outage);
    assert_no_failures(&outage);

    let traffic = Traffic::start(users(), Duration::from_millis(50));
    m.coord.restart().await;
    for (p, before) in [&mut sydney, &mut frankfurt, &mut virginia, &mut tokyo].into_iter().zip(before) {
        p.wait_registered_after(before).await;
    }
    // The attachment made while the coordinator was away is recorded.
    let moved_to = wait_for(INTERVAL * 3, "the agent's new attachment to be recorded", || async {
        let region = m.admin.agent_region("dev").await?;
        (region != "primary").then_some(region)
    })
    .await;
    eprintln!("the agent moved to {moved_to}");
    assert_eq!(searches(&tokyo).await, 0, "tokyo saw no traffic yet");
    m.pg.pg.stop().unwrap();
    let stopped = Instant::now();
    serves(&d, &d_url, 5).await;
    assert_eq!(searches(&tokyo).await, 0, "tokyo's routes converged: it never had to search");
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await; // Postgres down
    m.pg.pg.start().unwrap();
    let after = traffic.stop().await;
    report_phase("coordinator back, then Postgres down 10 s", &after);
    assert_no_failures(&after);
}

/// The agent's region dies while the coordinator is down: the agent moves
/// on its attach token and every other region finds it within seconds.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_region_dies_while_the_coordinator_is_down_is_found_by_every_region() {
    let m = mesh().await;
    let mut sydney = m.region("sydney", &[]).await;
    let mut frankfurt = m.region("frankfurt", &[]).await;
    let mut virginia = m.region("virginia", &[]).await;
    let _agent = m.agent(&["--region", "frankfurt"]);
    m.admin.wait_agent_on("dev", "frankfurt").await;
    let (a, a_url) = m.user_of("sydney", &sydney).await;
    let (c, c_url) = m.user_of("virginia", &virginia).await;
    for p in [&mut sydney, &mut frankfurt, &mut virginia] {
        let before = last_registration(p).await;
        p.wait_registered_after(before).await;
    }
    // Every request needs a new connection to the app (`?close`): a pooled
    // data connection, which the agent dialed to the region directly, would
    // outlive the agent's region and need no route at all.
    let users = vec![("sydney".into(), a, format!("{a_url}?close")), ("virginia".into(), c, format!("{c_url}?close"))];
    let traffic = Traffic::start(users, Duration::from_millis(50));
    traffic.wait_flowing(5).await;
    m.coord.proc.signal(Signal::SIGKILL);
    // The coordinator is gone (every region has noticed); then the agent's region goes.
    for p in [&sydney, &frankfurt, &virginia] {
        wait_for(Duration::from_secs(10), "the regions to notice the coordinator is gone", || async {
            p.report().await.filter(|r| r["coordinator_reachable"] == false)
        })
        .await;
    }
    let killed_at = traffic.now_ms();
    frankfurt.proc.kill();
    tokio::time::sleep(Duration::from_secs(10)).await; // the window watched after the kill
    let stats = excusing_in_flight(traffic.stop().await, killed_at);
    report_phase("coordinator down, then the agent's region killed", &stats);
    // A request sent while the agent was moving waits for it (up to 2 s),
    // so nothing fails. The agent is now on sydney or virginia; the other
    // searched for it, a few times in all, not once per request.
    assert_no_failures(&stats);
    let n = searches(&sydney).await + searches(&virginia).await;
    eprintln!("searches for the moved agent: {n}");
    assert!((1..=20).contains(&n), "{n} searches");
}
