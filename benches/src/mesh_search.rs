//! The search for a moved agent at mesh scale, part of the control-plane
//! simulation: `relays` stub relays on loopback (each accepts a relay link and
//! answers `OPTIONS` probes; one of them holds the agent), the real `Mesh` and
//! `Searches` of the region that asks, and `requests` requests for the moved
//! agent arriving at once. Reports what the asking region spent: searches,
//! probes, links dialed, and how long until the agent was found; then the
//! same for an agent that is nowhere (the worst case: every relay asked).

use anyhow::Result;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian_proxy::mesh::Mesh;
use meridian_proxy::metrics::Metrics;
use meridian_proxy::search::Searches;
use meridian_regions::token::Secret;
use meridian_regions::tunnel::{TlsClient, AGENT_HEADER, LINK_PROTOCOL};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

#[derive(Debug, Clone, serde::Serialize)]
pub struct MeshSearch {
    pub relays: usize,
    pub requests: usize,
    /// For an agent that moved to one relay: searches run, peers probed,
    /// links dialed, and milliseconds until every request had the route.
    pub searches: u64,
    pub probes: u64,
    pub links_dialed: u64,
    pub found_ms: f64,
    /// For an agent that is nowhere: the same.
    pub nowhere_probes: u64,
    pub nowhere_ms: f64,
}

/// What every stub relay counts.
#[derive(Default)]
struct Counts {
    links: AtomicU64,
}

pub async fn simulate(relays: usize, requests: usize) -> Result<MeshSearch> {
    let counts = Arc::new(Counts::default());
    let moved = Uuid::new_v4();
    let holder = relays / 2;
    let mut peers = HashMap::new();
    for i in 0..relays {
        let url = stub_relay((i == holder).then_some(moved), counts.clone()).await?;
        peers.insert(url, format!("r{i}"));
    }
    let mesh = Arc::new(Mesh::new(TlsClient::new(None)?));
    mesh.set_secret(Secret::new("bench"));
    mesh.set_peers(peers);
    let (searches, metrics) = (Searches::default(), Metrics::new());

    let started = Instant::now();
    let all = (0..requests).map(|_| searches.find(&mesh, "http://asking-region", moved, &metrics));
    let found = futures_util::future::join_all(all).await;
    let found_ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(found.iter().all(Option::is_some), "a request did not find the moved agent");
    let (searched, probed, linked) =
        (metrics.searches.get(), metrics.search_probes.get(), counts.links.load(Ordering::Relaxed));

    let started = Instant::now();
    let nowhere = searches.find(&mesh, "http://asking-region", Uuid::new_v4(), &metrics).await;
    let nowhere_ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(nowhere.is_none(), "an agent that is nowhere was found");
    Ok(MeshSearch {
        relays,
        requests,
        searches: searched,
        probes: probed,
        links_dialed: linked,
        found_ms,
        nowhere_probes: metrics.search_probes.get() - probed,
        nowhere_ms,
    })
}

/// A relay that accepts links (any mesh secret) and answers probes: 200 for
/// `holds`, 404 for any other agent. Its URL.
async fn stub_relay(holds: Option<Uuid>, counts: Arc<Counts>) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counts = counts.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    counts.links.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        if let Ok(io) = hyper::upgrade::on(&mut req).await {
                            let probes =
                                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                                    let agent = req.headers().get(AGENT_HEADER).and_then(|v| v.to_str().ok());
                                    let held =
                                        agent.and_then(|a| a.parse::<Uuid>().ok()).is_some_and(|a| Some(a) == holds);
                                    let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                                    *resp.status_mut() =
                                        if held { hyper::StatusCode::OK } else { hyper::StatusCode::NOT_FOUND };
                                    async move { Ok::<_, std::convert::Infallible>(resp) }
                                });
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, probes)
                                .await;
                        }
                    });
                    let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                    resp.headers_mut()
                        .insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static(LINK_PROTOCOL));
                    resp.headers_mut()
                        .insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("upgrade"));
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(url)
}

impl MeshSearch {
    pub fn markdown(&self) -> String {
        format!(
            "### Searching {} relays for a moved agent ({} requests for it at once)\n\n\
             | | agent on one relay | agent nowhere |\n|---|---|---|\n\
             | searches | {} | 1 |\n| relays asked | {} | {} |\n| links dialed | {} | – |\n\
             | time to the answer | {:.0} ms | {:.0} ms |\n",
            self.relays,
            self.requests,
            self.searches,
            self.probes,
            self.nowhere_probes,
            self.links_dialed,
            self.found_ms,
            self.nowhere_ms,
        )
    }
}
