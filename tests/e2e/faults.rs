//! Faults on the app's path, injected by user-space links (`meridian-netsim`)
//! between the agent and the app and between the agent and the relay: each
//! ends in a clear status or an aborted response, never a hang or a
//! truncated 200.

use crate::support::*;
use meridian_netsim::{Link, Mode};
use std::time::{Duration, Instant};

/// The proxy's `--app-timeout` in the harness (`Proxy::spawn`).
const APP_TIMEOUT: Duration = Duration::from_secs(3);

struct World {
    /// agent → app
    app_link: Link,
    /// agent → relay
    relay_link: Link,
    client: reqwest::Client,
    url: String,
    /// The proxy's own URL (its `/metrics`).
    proxy_url: String,
    _rest: (Agent, SampleApp, Mesh),
}

async fn world() -> World {
    let relay_link = pending_link().await;
    let relay_url = format!("http://{}", relay_link.addr());
    let mut m = Mesh::builder().region_with("sydney", &["--relay-url", &relay_url]).start().await;
    relay_link.set_upstreams(vec![m.proxy("sydney").relay()]);
    let app = SampleApp::start(m.dir.path()).await;
    let app_link = link_to(&format!("http://127.0.0.1:{}", app.port)).await;
    let agent = m.admin.public_app_workspace(m.dir.path(), &m.coord.url, app_link.addr().port(), "sydney").await;
    let client = browser();
    let url = format!("http://open--main--dev--admin.sydney.localhost:{}", m.proxy("sydney").port);
    let (hops, resp) = follow(&client, &format!("{url}/")).await;
    assert_eq!(resp.status(), 200, "{hops:?}");
    let proxy_url = m.proxy("sydney").url.clone();
    m.agent = None;
    World { app_link, relay_link, client, url, proxy_url, _rest: (agent, app, m) }
}

impl World {
    async fn get(&self, path: &str) -> reqwest::Response {
        let req = self.client.get(format!("{}{path}", self.url)).timeout(Duration::from_secs(15));
        req.send().await.unwrap()
    }

    /// Closes every agent → app connection (and so every pooled stream to the app).
    async fn fresh_app_connections(&self) {
        self.app_link.reset_all();
        // The agent notices the resets promptly; a probe request confirms.
        wait_for(Duration::from_secs(5), "the app served again", || async {
            (self.get("/probe").await.status() == 200).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_between_agent_app_and_relay_end_clearly() {
    let w = world().await;

    // The app's side accepts and closes at once: 502 naming the problem.
    w.fresh_app_connections().await;
    w.app_link.reset_all();
    w.app_link.set_mode(Mode::Refuse);
    let r = w.get("/dropped").await;
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("closed the connection before answering"), "the page names it");
    w.app_link.set_mode(Mode::Pass);

    // The app hangs (a partition): 504 at the app timeout, not later.
    w.fresh_app_connections().await;
    w.app_link.set_mode(Mode::Stall);
    let started = Instant::now();
    let r = w.get("/hang").await;
    let took = started.elapsed();
    assert_eq!(r.status(), 504);
    assert!(took >= APP_TIMEOUT - Duration::from_millis(100), "answered after {took:?}, before the timeout");
    assert!(took < APP_TIMEOUT + Duration::from_secs(3), "answered after {took:?}");
    w.app_link.set_mode(Mode::Pass);
    w.fresh_app_connections().await;

    // The app's connection resets mid-body: the client sees an aborted
    // response, never a complete-looking 200 with fewer bytes.
    let size: u64 = 256 << 20;
    let mut resp = w
        .client
        .get(format!("{}/big", w.url))
        .header("x-sample-body-bytes", size.to_string())
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().expect("a first chunk");
    w.app_link.reset_all();
    let mut got = first.len() as u64;
    let outcome = loop {
        match resp.chunk().await {
            Ok(Some(c)) => got += c.len() as u64,
            Ok(None) => break Ok(got),
            Err(e) => break Err(e),
        }
    };
    assert!(outcome.is_err(), "the body ended cleanly after {got} of {size} bytes");
    assert!(got < size);

    // The agent's tunnel drops under two requests in flight: the idempotent
    // one is sent once more through the re-attached tunnel and served; the
    // other (a POST, never repeated) fails cleanly, not by timing out.
    w.fresh_app_connections().await;
    let in_flight = |method: reqwest::Method, tag: &'static str| {
        let (client, url) = (w.client.clone(), w.url.clone());
        tokio::spawn(async move {
            let req = client.request(method, format!("{url}/slow")).header("x-sample-delay-ms", "1500");
            req.header("x-sample-tag", tag).timeout(Duration::from_secs(15)).send().await
        })
    };
    let (get, post) = (in_flight(reqwest::Method::GET, "drop-get"), in_flight(reqwest::Method::POST, "drop-post"));
    for tag in ["drop-get", "drop-post"] {
        wait_in_flight_at_app(&w.client, &w.url, tag, 1).await;
    }
    w.relay_link.reset_all();
    let get = get.await.unwrap().expect("the GET is answered");
    assert_eq!(get.status(), 200, "an idempotent request in flight through the dropped tunnel is sent again");
    let seen = |tag| app_seen(&w.client, &w.url, tag);
    assert_eq!(seen("drop-get").await.map(|s| s.0), Some(2), "the app saw the GET twice: sent again");
    // The POST is answered (not cut, not timed out): 502, naming what happened.
    let post = post.await.unwrap().expect("the POST is answered");
    assert_eq!(post.status(), 502, "a POST in flight through the dropped tunnel");
    let page = post.text().await.unwrap();
    assert!(page.contains("closed the connection before answering"), "{page}");
    assert_eq!(seen("drop-post").await.map(|s| s.0), Some(1), "the POST was never sent again");
    let started = Instant::now();
    wait_for(Duration::from_secs(10), "served through the re-attached tunnel", || async {
        (w.get("/after-drop").await.status() == 200).then_some(())
    })
    .await;
    eprintln!("served again {:?} after the tunnel dropped", started.elapsed());

    // Nothing listens where the app should be (connection refused): 502 naming it.
    w.app_link.close();
    w.app_link.reset_all();
    let refused = w.get("/refused").await;
    assert_eq!(refused.status(), 502);
    let page = refused.text().await.unwrap();
    assert!(page.contains("not reachable: is it running"), "the page names the problem: {page}");
}

/// A pooled app connection whose path died while it sat idle (a middlebox
/// between the agent and the relay lost its state, and nothing says so until
/// the next request is sent on it) costs that request nothing: it never
/// reached the app, so it goes again on a new connection and is answered.
/// (The reset is an OS error on a reused connection, which pingora itself
/// retries; Meridian's own rule in `error_while_proxy` covers paths that die
/// under a request on a new connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_pooled_connection_that_died_is_sent_again() {
    let w = world().await;
    for (i, method) in [reqwest::Method::GET, reqwest::Method::HEAD, reqwest::Method::PUT].into_iter().enumerate() {
        // The probe leaves one idle app connection in the proxy's pool.
        w.fresh_app_connections().await;
        w.relay_link.forget_all();
        let req = w.client.request(method.clone(), format!("{}/after-forgotten/{i}", w.url));
        let r = req.timeout(Duration::from_secs(15)).send().await.unwrap();
        let status = r.status();
        assert_eq!(status, 200, "{method} on a dead pooled connection: {}", r.text().await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_long_lived_streams_do_not_block_new_requests() {
    use futures_util::{SinkExt, StreamExt};
    let w = world().await;
    let authority = w.url.trim_start_matches("http://").to_owned();
    let port: u16 = authority.rsplit(':').next().unwrap().parse().unwrap();
    // The agent cannot dial data connections to the relay (new connections
    // through its link are refused; the tunnel stays): every app connection
    // is then a stream of the one tunnel.
    w.relay_link.set_mode(Mode::Refuse);
    let data = || counter_of(&w.proxy_url, "meridian_relay_data_connections_total");
    let data_before = data().await;
    // 250 WebSockets, each holding a stream of the one tunnel open (hyper's
    // default limit per HTTP/2 connection is 200).
    let mut sockets = Vec::new();
    for i in 0..250 {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let open = tokio_tungstenite::client_async(format!("ws://{authority}/ws"), tcp);
        let opened = tokio::time::timeout(Duration::from_secs(5), open).await;
        let (ws, resp) = opened.unwrap_or_else(|_| panic!("WebSocket {i} waited for a stream")).unwrap();
        assert_eq!(resp.status(), 101);
        sockets.push(ws);
    }
    let last = sockets.last_mut().unwrap();
    last.send(tokio_tungstenite::tungstenite::Message::text("ping")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), last.next()).await.expect("the 250th stream works");
    assert_eq!(echo.unwrap().unwrap().into_text().unwrap().as_str(), "ping");
    // A plain request still gets a stream at once.
    let r = w.client.get(format!("{}/beside", w.url)).timeout(Duration::from_secs(5)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(data().await, data_before, "WebSockets went over data connections, not the tunnel's streams");
}

/// A pipe between an app connection and the relay that carries nothing for
/// `--pipe-idle-timeout` is closed (a peer that vanished without closing
/// must not hold sockets forever); one that carries bytes stays.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_relayed_pipe_is_closed_after_the_pipe_idle_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let m = Mesh::builder()
        .region("sydney")
        .workspace(|app| serde_json::json!([{"slug": "open", "port": app, "share": "public"}]))
        .start()
        .await;
    let _agent = m.agent(&["--region", "sydney", "--pipe-idle-timeout", "2s"]);
    m.admin.wait_agent_on("dev", "sydney").await;
    let proxy = m.proxy("sydney");
    let host = format!("open--main--dev--admin.sydney.localhost:{}", proxy.port);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{host}/ws"), tcp).await.unwrap();
    // Bytes every second for 4 s (twice the timeout): the pipe stays.
    let mut last_byte = Instant::now();
    for i in 0..4 {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), format!("ping {i}"));
        last_byte = Instant::now();
    }
    // Then nothing: the agent closes the pipe, and the WebSocket ends.
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the idle WebSocket was still open after 15 s");
    let quiet = last_byte.elapsed();
    assert!(quiet >= Duration::from_millis(1500), "closed {quiet:?} after the last byte, before 2 s of quiet");
}

/// Agents whose tunnel `proxy`'s relay holds, from its `/metrics`.
async fn attached(proxy: &Proxy) -> u64 {
    counter_of(&proxy.url, "meridian_relay_agents_attached").await
}

/// The README: tunnel keep-alive catches a silent death within 5 s. The link
/// between agent and relay goes silent (stalled: no reset, no FIN, as a
/// partition or a dead host looks), and the relay lets the agent go within
/// the keep-alive's interval and timeout (2 s + 3 s); healed, it attaches again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_link_is_noticed_within_five_seconds() {
    let w = world().await;
    let proxy = w._rest.2.proxy("sydney");
    assert_eq!(attached(proxy).await, 1);
    w.relay_link.set_mode(Mode::Stall);
    let stalled = Instant::now();
    wait_for(Duration::from_secs(15), "the relay to let the silent agent go", || async {
        (attached(proxy).await == 0).then_some(())
    })
    .await;
    let noticed = stalled.elapsed();
    eprintln!("a silent agent link noticed after {noticed:?}");
    // 5 s at most by the keep-alive's clock (an idle tunnel is pinged every 2 s,
    // and a ping unanswered for 3 s ends it), plus slack for a loaded machine
    // and this test's polling.
    assert!(noticed <= Duration::from_millis(6500), "noticed after {noticed:?}, not within 5 s");

    w.relay_link.set_mode(Mode::Pass);
    wait_for(Duration::from_secs(20), "the agent attached again and served", || async {
        (w.get("/after-silence").await.status() == 200).then_some(())
    })
    .await;
    assert_eq!(attached(proxy).await, 1);
}
