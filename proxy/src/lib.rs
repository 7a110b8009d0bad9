//! Meridian's regional proxy: the data plane edge, on pingora with rustls.
//!
//! - [`config`]: options and their validation.
//! - [`service`]: the pingora `ProxyHttp` dispatcher and per-request context.
//! - [`routing`]: host and path → app, own endpoint, or refusal.
//! - [`auth`]: tickets, app sessions, and app tokens verified from a moka cache.
//! - [`upstream`]: app connections through agent tunnels; [`relay`]: where agents attach;
//!   [`routes`]: where every agent is (pushed by the coordinator); [`mesh`]: links to peer relays.
//! - [`gate`]: framing, host, path and SNI checks before routing; connection caps and head limits.
//! - [`memo`]: what a connection's last request resolved (host, route, token), kept for its next.
//! - [`hygiene`]: what is stripped and set between client and app; [`pages`]: error pages.
//! - [`endpoints`]: the proxy's own endpoints (`/healthz`, `/healthz-report`, ...).
//! - [`registration`]: register, heartbeat and deregister with the coordinator.
//! - [`lifecycle`]: signals, the shutdown drain, and the background services
//!   that tie registration and the relay to the server's life.
//! - [`state`]: what the data plane and the registration loop share; [`metrics`]: `GET /metrics`.
//! - [`connection_log`]: one record per session, kept on disk and shipped to the coordinator.

pub mod access;
pub mod auth;
pub mod config;
pub mod connection_log;
pub mod endpoints;
pub mod gate;
pub mod hygiene;
pub mod lifecycle;
pub mod memo;
pub mod mesh;
pub mod metrics;
pub mod pages;
pub mod registration;
pub mod relay;
pub mod routes;
pub mod routing;
pub mod search;
pub mod service;
pub mod state;
pub mod upstream;

use config::Config;
use meridian_regions::certificate::ReloadingCertificate;
use meridian_regions::client::{http_client, Client, Credential};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use state::ProxyState;
use std::sync::Arc;

/// How the proxy runs.
pub enum Mode {
    /// On its own: SIGTERM or SIGINT drains, deregisters and exits the process.
    Standalone,
    /// Inside the coordinator, as the primary region's proxy and relay: it
    /// stops when `shutdown` turns true and reports on `stopped`; whatever is
    /// not an app goes to the coordinator API at `api_upstream`, with
    /// `forwarded_by` in [`meridian_regions::headers::FORWARDED_BY`] (the API
    /// trusts its `X-Forwarded-For` only then).
    Embedded {
        shutdown: tokio::sync::watch::Receiver<bool>,
        stopped: std::sync::mpsc::Sender<()>,
        api_upstream: std::net::SocketAddr,
        forwarded_by: meridian_regions::token::Secret,
        /// The proxy's state, which the embedding process reads too (its health report).
        state: Arc<ProxyState>,
    },
}

/// Runs a standalone proxy until SIGTERM or SIGINT, then drains, deregisters
/// and exits. Blocks the calling thread; pingora makes its own runtimes.
pub fn run(mut config: Config) -> anyhow::Result<()> {
    let listeners = config.bind()?;
    run_with(config, listeners, Mode::Standalone)
}

/// The proxy's listeners, bound by [`Config::bind`] before anything names their ports.
pub struct Listeners {
    /// Apps, the proxy's own endpoints (and in the coordinator, the API).
    pub app: std::net::TcpListener,
    /// The relay: agents and peer relays.
    pub relay: std::net::TcpListener,
}

/// Runs the proxy in `mode` on `listeners` (bound with `config`); blocks the calling thread.
pub fn run_with(config: Config, listeners: Listeners, mode: Mode) -> anyhow::Result<()> {
    let state = match &mode {
        Mode::Embedded { state, .. } => state.clone(),
        Mode::Standalone => ProxyState::new(),
    };
    state.set_dashboard_origin(config.login_url.origin().ascii_serialization());
    state.set_pipe_idle(config.pipe_idle_timeout);
    let log = open_connection_log(&config, &state)?;
    let http = http_client(config.ca_cert.as_deref()).map_err(anyhow::Error::msg)?;
    let coordinator = Client::new(config.coordinator_url.as_str(), Credential::Proxy(config.proxy_token.clone()), http);
    let auth = Arc::new(auth::Auth::new(
        coordinator.clone(),
        config.login_url.as_str(),
        config.tls.is_some(),
        config.offline_grace,
        state.clone(),
    ));
    // One certificate for the app listener and the relay, reloaded when its files change.
    let certificate = match &config.tls {
        Some((cert, key)) => Some(ReloadingCertificate::watch(cert, key)?),
        None => None,
    };
    let relay = RelaySide::new(&config, listeners.relay, certificate.clone(), &coordinator, &auth, &state)?;
    let registrar = registration::Registrar::new(
        &config,
        state.clone(),
        coordinator.clone(),
        auth.clone(),
        relay.relay.clone(),
        relay.relay_addr.clone(),
        relay.mesh_addr.clone(),
    );

    let drain_secs = config.drain_timeout.as_secs().max(1);
    let conf = ServerConf {
        threads: config.threads,
        // The hard ceiling of the drain: the lifecycle service exits as soon
        // as requests are done, and pingora's grace period only bounds it.
        grace_period_seconds: Some(
            drain_secs + lifecycle::DEREGISTER_TIMEOUT.as_secs() + lifecycle::FINAL_SHIP_TIMEOUT.as_secs(),
        ),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server.adopt_listener(&config.listen.to_string(), listeners.app);
    let connections: Arc<std::sync::Mutex<gate::Connections>> = Arc::default();
    let proxy = app_service(&config, &server, &mode, (&state, auth, &relay.relay), &connections, certificate)?;
    tracing::info!(listen = %config.listen, access_url = %config.access_url, relay = %relay.relay_addr,
        replica = %config.replica_id, "proxy listening");
    server.add_service(proxy);
    let ready = meridian_regions::ready::Ready::serving(config.listen, &config.access_url, config.relay_listen);
    ready.report(config.ready_file.as_deref()).map_err(anyhow::Error::msg)?;
    let (on_stopped, signal): (_, Box<dyn pingora::server::ShutdownSignalWatch + Sync>) = match mode {
        Mode::Standalone => (lifecycle::OnStopped::Exit, Box::new(lifecycle::Signals)),
        Mode::Embedded { shutdown, stopped, .. } => {
            (lifecycle::OnStopped::Notify(stopped), Box::new(lifecycle::WatchSignal(shutdown)))
        }
    };
    let (drained_tx, drained_rx) = tokio::sync::watch::channel(false);
    let draining_state = state.clone();
    server.add_service(background_service(
        "lifecycle",
        lifecycle::Lifecycle::new(
            registrar,
            state,
            (relay.relay.clone(), drained_tx),
            (config.listen, connections),
            config.drain_timeout,
            on_stopped,
        ),
    ));
    if let Some(log) = log {
        server.add_service(background_service(
            "connection log",
            lifecycle::ShipperService { log, coordinator: coordinator.clone(), state: draining_state.clone() },
        ));
    }
    server.add_service(background_service(
        "relay",
        lifecycle::RelayService::new(relay.relay, relay.listener, relay.tls, coordinator, drained_rx),
    ));
    let signal = Box::new(lifecycle::Draining { inner: signal, state: draining_state, delay: config.shutdown_delay });
    server.run(RunArgs { shutdown_signal: signal });
    Ok(())
}

/// The connection log in its directory, its metrics registered (none with --no-connection-log).
fn open_connection_log(
    config: &Config,
    state: &Arc<ProxyState>,
) -> anyhow::Result<Option<Arc<connection_log::ConnectionLog>>> {
    let c = &config.connection_log;
    let Some(dir) = &c.dir else { return Ok(None) };
    let log = connection_log::ConnectionLog::open(dir, c.max_disk_bytes, c.app_session_idle, config.replica_id)
        .map_err(|e| anyhow::anyhow!("cannot keep the connection log in {}: {e}", dir.display()))?;
    for metric in log.counters.collectors() {
        state.metrics.register(metric);
    }
    state.set_connection_log(log.clone());
    Ok(Some(log))
}

/// The relay's side of a proxy: its listener, its TLS, and the URLs
/// agents and peer relays dial it by.
struct RelaySide {
    relay: Arc<relay::Relay>,
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// What agents dial.
    relay_addr: String,
    /// What peer relays dial (the relay address unless set apart).
    mesh_addr: String,
}

impl RelaySide {
    fn new(
        config: &Config,
        listener: std::net::TcpListener,
        certificate: Option<Arc<ReloadingCertificate>>,
        coordinator: &Client,
        auth: &Arc<auth::Auth>,
        state: &Arc<ProxyState>,
    ) -> anyhow::Result<Self> {
        let tls = certificate.map(meridian_regions::tunnel::tls_acceptor).transpose()?;
        let relay_addr = match &config.relay_url {
            Some(url) => url.as_str().trim_end_matches('/').to_owned(),
            None => advertised(listener.local_addr()?, &config.access_url, tls.is_some()),
        };
        let mesh_addr =
            config.mesh_url.as_ref().map_or(relay_addr.clone(), |u| u.as_str().trim_end_matches('/').to_owned());
        let dial_tls = meridian_regions::tunnel::TlsClient::new(config.ca_cert.as_deref())?;
        let relay = relay::Relay::new(
            coordinator.clone(),
            config.replica_id,
            mesh_addr.clone(),
            relay_addr.clone(),
            mesh::Mesh::new(dial_tls),
            auth.clone(),
            state.clone(),
        );
        Ok(Self { relay, listener, tls, relay_addr, mesh_addr })
    }
}

/// The app listener's service: the proxy's phases (`service`) behind the
/// connection caps (`gate`), on `config.listen`, over TLS with `certificate`.
fn app_service(
    config: &Config,
    server: &Server,
    mode: &Mode,
    (state, auth, relay): (&Arc<ProxyState>, Arc<auth::Auth>, &Arc<relay::Relay>),
    connections: &Arc<std::sync::Mutex<gate::Connections>>,
    certificate: Option<Arc<ReloadingCertificate>>,
) -> anyhow::Result<
    pingora::services::listening::Service<gate::Capped<pingora::proxy::HttpProxy<service::MeridianProxy>>>,
> {
    pingora::protocols::http::v1::server::set_head_limits(gate::head_limits(&config.limits));
    let mut app = pingora::proxy::http_proxy(
        &server.configuration,
        service::MeridianProxy {
            state: state.clone(),
            auth,
            relay: relay.clone(),
            wildcard_base: config.wildcard_access_url.as_deref().and_then(meridian_regions::app_url::wildcard_base),
            app_timeout: config.app_timeout,
            header_timeout: config.limits.header_timeout,
            idle_timeout_secs: config.limits.idle_timeout.as_secs(),
            control_plane: gate::ControlPlane {
                connections: connections.clone(),
                max_per_client: config.limits.max_connections_per_client,
            },
            api_upstream: match mode {
                Mode::Embedded { api_upstream, forwarded_by, .. } => {
                    Some(service::ApiUpstream { addr: *api_upstream, forwarded_by: forwarded_by.clone() })
                }
                Mode::Standalone => None,
            },
        },
    );
    app.h2_options = Some(gate::h2_options(&config.limits));
    let capped = gate::Capped {
        inner: Arc::new(app),
        max_total: config.limits.max_connections,
        max_per_client: config.limits.max_connections_per_client,
        open: connections.clone(),
    };
    let mut proxy = pingora::services::listening::Service::new("Meridian proxy".into(), capped);
    let addr = config.listen.to_string();
    // No L4 read buffer: pingora's HTTP layer reads into its own buffers, and
    // the default 64 KiB per connection would dominate an idle connection's memory.
    let listener = ListenerConfig::tcp(addr.as_str()).l4_buffer(L4BufferSettings { read: Some(0), write: None });
    match certificate {
        Some(certificate) => {
            let mut tls = TlsSettings::with_callbacks(Box::new(gate::RecordSni))?;
            tls.set_cert_resolver(certificate);
            tls.enable_h2();
            proxy.add_listener(listener.tls(tls));
        }
        None => proxy.add_listener(listener),
    }
    Ok(proxy)
}

/// The relay URL agents should dial. Over TLS it names the access URL's host,
/// which the certificate covers; otherwise the bound address, with an
/// unspecified IP replaced by the access URL's host.
fn advertised(addr: std::net::SocketAddr, access_url: &url::Url, tls: bool) -> String {
    let host = access_url.host_str().unwrap_or("127.0.0.1");
    match (tls, addr.ip().is_unspecified()) {
        (true, _) => format!("https://{host}:{}", addr.port()),
        (false, true) => format!("http://{host}:{}", addr.port()),
        (false, false) => format!("http://{addr}"),
    }
}
