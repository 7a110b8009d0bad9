//! Prometheus metrics of one proxy process, served at `GET /metrics`.
//! Counters are bumped where things happen; gauges are read from the live
//! state when scraped, so nothing is counted twice.

use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// Requests by how they were answered: `app`, `login`, `denied`, `rejected`, `own`, `api`.
    pub requests: Labelled,
    /// Token checks on the hot path: `cached`, `verified`, `refused` (and `grace`).
    pub tokens: Labelled,
    /// Agents whose tunnel this relay holds.
    pub agents: IntGauge,
    /// Streams opened to apps through tunnels (pooled streams are not counted again).
    pub streams: prometheus::IntCounter,
    /// Of those, the ones on a data connection the agent dialed (not an HTTP/2 stream).
    pub data_connections: prometheus::IntCounter,
    /// Fetches of the coordinator's keys for a token naming an unknown key id.
    pub key_refetches: prometheus::IntCounter,
    /// Searches of the peer relays for a moved agent, and the probes they sent.
    pub searches: prometheus::IntCounter,
    pub search_probes: prometheus::IntCounter,
    /// Relay accepts that failed (out of file descriptors, usually), and
    /// connections closed at once because the relay held its maximum.
    pub relay_accept_errors: prometheus::IntCounter,
    pub relay_refused: prometheus::IntCounter,
    in_flight: IntGauge,
    coordinator_reachable: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("meridian_proxy_requests_total", "Requests by how the proxy answered them"),
            &["outcome"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let tokens = IntCounterVec::new(
            Opts::new("meridian_proxy_token_checks_total", "App token checks: cached, verified or refused"),
            &["result"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let gauge =
            |name: &str, help: &str| IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let agents = gauge("meridian_relay_agents_attached", "Agents whose tunnel this relay holds");
        let streams = prometheus::IntCounter::new(
            "meridian_relay_streams_opened_total",
            "Streams opened to apps through tunnels",
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let _ = registry.register(Box::new(streams.clone()));
        let key_refetches = prometheus::IntCounter::new(
            "meridian_proxy_key_refetches_total",
            "Key fetches for tokens naming a key id this proxy did not know",
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let _ = registry.register(Box::new(key_refetches.clone()));
        let counter = |name: &str, help: &str| {
            let c = prometheus::IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("static metric: {e}"));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let searches = counter("meridian_relay_agent_searches_total", "Searches of the peer relays for a moved agent");
        let data_connections = counter(
            "meridian_relay_data_connections_total",
            "App connections carried on a data connection the agent dialed in, not an HTTP/2 stream",
        );
        let search_probes = counter("meridian_relay_search_probes_total", "Peer relays asked during those searches");
        let relay_accept_errors =
            counter("meridian_relay_accept_errors_total", "Relay accepts that failed (each pauses accepting)");
        let relay_refused = counter(
            "meridian_relay_connections_refused_total",
            "Relay connections closed at once because the relay held its maximum",
        );
        let in_flight = gauge("meridian_proxy_requests_in_flight", "Requests being served");
        let coordinator_reachable =
            gauge("meridian_proxy_coordinator_reachable", "1 if the last coordinator call succeeded");
        for c in [Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>, Box::new(tokens.clone())] {
            let _ = registry.register(c);
        }
        for g in [&agents, &in_flight, &coordinator_reachable] {
            let _ = registry.register(Box::new(g.clone()));
        }
        Self {
            registry,
            requests: Labelled::new(&requests, &["app", "login", "denied", "rejected", "own", "api"]),
            tokens: Labelled::new(&tokens, &["cached", "verified", "refused", "grace"]),
            agents,
            streams,
            data_connections,
            key_refetches,
            searches,
            search_probes,
            relay_accept_errors,
            relay_refused,
            in_flight,
            coordinator_reachable,
        }
    }

    /// Adds a metric kept elsewhere (the mesh's) to the exposition.
    pub fn register(&self, metric: Box<dyn prometheus::core::Collector>) {
        let _ = self.registry.register(metric);
    }

    /// The text exposition, with gauges read from the live state.
    pub fn render(&self, in_flight: usize, coordinator_reachable: bool) -> String {
        self.in_flight.set(in_flight as i64);
        self.coordinator_reachable.set(i64::from(coordinator_reachable));
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The counters of an `IntCounterVec` for a fixed set of labels, resolved
/// once: counting one is then a string comparison or two and an atomic add,
/// not a hash of the label and a lock per request.
pub struct Labelled {
    vec: IntCounterVec,
    resolved: Vec<(&'static str, prometheus::IntCounter)>,
}

impl Labelled {
    fn new(vec: &IntCounterVec, labels: &[&'static str]) -> Self {
        let resolved = labels.iter().map(|l| (*l, vec.with_label_values(&[*l]))).collect();
        Self { vec: vec.clone(), resolved }
    }

    pub fn inc(&self, label: &str) {
        match self.resolved.iter().find(|(l, _)| *l == label) {
            Some((_, c)) => c.inc(),
            None => self.vec.with_label_values(&[label]).inc(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
