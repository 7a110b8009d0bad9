//! The primary region's proxy and relay, run inside the coordinator.
//!
//! It is the same data plane as a regional proxy (`meridian_proxy`), bound to
//! the coordinator's public `--listen`: app hosts and paths are served there,
//! and everything else is passed to the API on its internal listener. It
//! registers as a replica of region `primary` with a token that exists only in
//! this process's memory.

use crate::config::Config;
use meridian_regions::token::{Secret, Token};
use std::net::SocketAddr;
use std::time::Duration;
use uuid::Uuid;

/// The primary region's fixed id (see the first migration).
pub const PRIMARY_REGION_ID: Uuid = Uuid::from_u128(1);

/// A fresh token for the embedded proxy; only its hash is kept by the API.
pub fn token() -> Token {
    let (token, _) = crate::secret::new_token(PRIMARY_REGION_ID);
    token
}

/// The running embedded proxy.
pub struct PrimaryProxy {
    shutdown: tokio::sync::watch::Sender<bool>,
    stopped: std::sync::mpsc::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

/// The primary's proxy, its listeners bound and not yet serving.
pub struct Bound {
    config: meridian_proxy::config::Config,
    listeners: meridian_proxy::Listeners,
    /// Its state, shared with the coordinator's `/healthz-report`.
    pub state: std::sync::Arc<meridian_proxy::state::ProxyState>,
}

impl Bound {
    /// Binds the coordinator's `--listen` and `--relay-listen` for the primary's
    /// proxy (token `token`, registering through the whole API at `api`), and
    /// settles `config` on the bound ports: its listen address, the relay's,
    /// and a port of 0 in its access URLs.
    pub fn bind(config: &mut Config, token: &Token, api: SocketAddr) -> anyhow::Result<Self> {
        let args = meridian_proxy::config::Args {
            coordinator_url: Some(url::Url::parse(&format!("http://{api}"))?),
            proxy_token: Some(Secret::new(token.encode().expose())),
            listen: Some(config.listen),
            access_url: Some(config.access_url.clone()),
            wildcard_access_url: config.wildcard_access_url.clone(),
            tls_cert: config.tls.as_ref().map(|t| t.0.clone()),
            tls_key: config.tls.as_ref().map(|t| t.1.clone()),
            relay_listen: Some(config.relay_listen),
            relay_url: config.relay_url.clone(),
            mesh_url: config.mesh_url.clone(),
            login_url: Some(config.access_url.clone()),
            drain_timeout: Some(crate::DRAIN_TIMEOUT),
            shutdown_delay: Some(config.shutdown_delay),
            app_timeout: config.app_timeout,
            max_connections_per_client: config.max_connections_per_client,
            data_dir: Some(config.state_dir.join("primary-proxy")),
            app_session_idle: config.app_session_idle,
            ..Default::default()
        };
        let mut proxy = args.resolve().map_err(|e| anyhow::anyhow!("primary proxy: {e}"))?;
        // Fails here, in one line, if a port is taken.
        let listeners = proxy.bind()?;
        proxy.login_url = proxy.access_url.clone();
        config.listen = proxy.listen;
        config.relay_listen = proxy.relay_listen;
        config.access_url = proxy.access_url.clone();
        config.wildcard_access_url = proxy.wildcard_access_url.clone();
        Ok(Self { config: proxy, listeners, state: meridian_proxy::state::ProxyState::new() })
    }

    /// Starts the proxy on its own thread (pingora makes its own runtimes).
    /// `public_api`: where it forwards what users send (the whole API, or the
    /// API without the proxy API). `forwarded_by`: the proof it sends with
    /// what it forwards (see [`crate::api::auth::client_addr`]).
    pub fn start(self, public_api: SocketAddr, forwarded_by: Secret) -> anyhow::Result<PrimaryProxy> {
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let (stopped_tx, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("primary-proxy".into()).spawn(move || {
            let mode = meridian_proxy::Mode::Embedded {
                shutdown: shutdown_rx,
                stopped: stopped_tx,
                api_upstream: public_api,
                forwarded_by,
                state: self.state,
            };
            if let Err(e) = meridian_proxy::run_with(self.config, self.listeners, mode) {
                tracing::error!("primary proxy: {e:#}");
            }
        })?;
        Ok(PrimaryProxy { shutdown, stopped, thread })
    }
}

impl PrimaryProxy {
    /// Resolves if the proxy's thread ends on its own (it should not).
    pub async fn exited(&self) {
        while !self.thread.is_finished() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops accepting, deregisters and drains, waiting at most `deadline`.
    pub async fn stop(self, deadline: Duration) {
        let _ = self.shutdown.send(true);
        let stopped = self.stopped;
        let done = tokio::task::spawn_blocking(move || stopped.recv_timeout(deadline).is_ok()).await;
        if !matches!(done, Ok(true)) {
            tracing::warn!("the primary proxy did not drain within {deadline:?}");
        }
    }
}
