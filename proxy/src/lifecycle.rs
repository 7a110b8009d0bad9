//! The proxy's life after start: register once the listener is up, heartbeat,
//! and on SIGTERM or SIGINT stop accepting, deregister, ask attached agents to
//! move to another relay, drain in-flight requests and those agents' tunnels
//! under the drain deadline, and exit 0.
//!
//! Pingora's own graceful shutdown sleeps its full grace period even when idle;
//! this service exits as soon as the drain is done, so an idle proxy stops in
//! well under a second and pingora's grace period is only the hard ceiling.

use crate::registration::Registrar;
use crate::state::ProxyState;
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Longest wait for the coordinator to acknowledge deregistration.
pub const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait, once drained, for the coordinator to store the connection
/// log's last records (what it does not take stays on disk for the next start).
pub const FINAL_SHIP_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for our own listener before registering anyway.
const LISTENER_WAIT: Duration = Duration::from_secs(10);

/// Both SIGTERM and SIGINT (Ctrl-C) shut down gracefully.
pub struct Signals;

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                }
            }
            _ => {
                tracing::error!("cannot install signal handlers; only SIGKILL will stop this proxy");
                std::future::pending::<()>().await;
            }
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// What the lifecycle does once drained.
pub enum OnStopped {
    /// Exit the process (a standalone proxy; pingora would otherwise sleep its grace period).
    Exit,
    /// Tell the embedding process, which finishes its own shutdown.
    Notify(std::sync::mpsc::Sender<()>),
}

pub struct Lifecycle {
    registrar: Registrar,
    state: Arc<ProxyState>,
    relay: Arc<crate::relay::Relay>,
    /// Flipped once drained: the route feed is followed until then, so the
    /// drain sees agents move.
    drained: tokio::sync::watch::Sender<bool>,
    on_stopped: std::sync::Mutex<Option<OnStopped>>,
    listen: SocketAddr,
    drain_timeout: Duration,
    /// Client connections still open (see [`crate::gate::Connections`]).
    connections: Arc<std::sync::Mutex<crate::gate::Connections>>,
}

/// After the drain, how long client connections get to close (an HTTP/2
/// connection finishing its GOAWAY) before the process exits under them.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

impl Lifecycle {
    pub fn new(
        registrar: Registrar,
        state: Arc<ProxyState>,
        (relay, drained): (Arc<crate::relay::Relay>, tokio::sync::watch::Sender<bool>),
        (listen, connections): (SocketAddr, Arc<std::sync::Mutex<crate::gate::Connections>>),
        drain_timeout: Duration,
        on_stopped: OnStopped,
    ) -> Self {
        let on_stopped = std::sync::Mutex::new(Some(on_stopped));
        Self { registrar, state, relay, drained, on_stopped, listen, drain_timeout, connections }
    }

    /// Waits until our listener accepts connections, so the coordinator's first
    /// health check (sent right after registration) finds us serving.
    async fn wait_for_listener(&self) {
        let mut addr = self.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let deadline = Instant::now() + LISTENER_WAIT;
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(%addr, "listener not reachable yet; registering anyway");
    }

    /// Waits, up to the drain deadline, until no request is in flight here,
    /// every attached agent has attached to another relay, and no stream that
    /// a peer relay opened through this relay (a request it started before the
    /// agent moved: a streamed response, a WebSocket) is still busy; a quiet
    /// one ends within [`crate::relay::RELAYED_QUIET`].
    async fn drain(&self, deadline: Instant) {
        self.relay.ask_agents_to_leave().await;
        self.relay.start_draining();
        // This service's own context is not a request; nothing else counts here.
        let busy = || self.state.in_flight() > 0 || self.relay.agents_staying() > 0 || self.relay.relayed_streams() > 0;
        while busy() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        match (self.state.in_flight(), self.relay.agents_staying(), self.relay.relayed_streams()) {
            (0, 0, 0) => tracing::info!("drained"),
            (requests, agents, relayed) => {
                tracing::warn!(requests, agents, relayed, "drain deadline passed; closing what is left")
            }
        }
        // Answers are written; let the connections that carried them close
        // (an exit under an HTTP/2 connection resets it instead of ending it).
        // A keep-alive connection may still bring the request its client sent
        // before it could know (see pingora-proxy's PATCHED.md): one that
        // starts is answered, within the drain deadline.
        let close_by = Instant::now() + CLOSE_WAIT;
        while (self.open_connections() > 0 && Instant::now() < close_by)
            || (self.state.in_flight() > 0 && Instant::now() < deadline)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn open_connections(&self) -> usize {
        self.connections.lock().unwrap_or_else(|e| e.into_inner()).total()
    }
}

#[async_trait]
impl BackgroundService for Lifecycle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.wait_for_listener().await;
        if let Some(fatal) = self.registrar.run(&mut shutdown).await {
            tracing::error!("{}", fatal.message);
            eprintln!("meridian proxy: {}", fatal.message);
            std::process::exit(fatal.exit_code);
        }
        // Pingora has stopped accepting; tell the coordinator, then drain.
        self.registrar.deregister().await;
        let deadline = Instant::now() + self.drain_timeout;
        self.drain(deadline).await;
        if let Some(log) = self.state.connection_log() {
            crate::connection_log::shipper::finish(log, &self.registrar.client, FINAL_SHIP_TIMEOUT).await;
            // A request that came on a kept-alive connection while the log
            // shipped (the coordinator may be a long round trip away) is
            // answered, not cut by the exit; its app session goes to the
            // journal, for the next start to ship.
            let settle_by = deadline.max(Instant::now() + CLOSE_WAIT);
            while self.state.in_flight() > 0 && Instant::now() < settle_by {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            log.stop();
        }
        self.drained.send_replace(true);
        tracing::info!("proxy stopped");
        match self.on_stopped.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(OnStopped::Notify(done)) => {
                let _ = done.send(());
            }
            _ => std::process::exit(0),
        }
    }
}

/// Ships the connection log until shutdown begins (the lifecycle ships
/// the rest once drained).
pub struct ShipperService {
    pub log: Arc<crate::connection_log::ConnectionLog>,
    pub coordinator: meridian_regions::client::Client,
    pub state: Arc<ProxyState>,
}

#[async_trait]
impl BackgroundService for ShipperService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let (log, coordinator, state) = (self.log.clone(), self.coordinator.clone(), self.state.clone());
        crate::connection_log::shipper::run(log, coordinator, state, shutdown).await;
    }
}

/// Readiness first: when `inner` fires, `/readyz` turns 503 at once and the
/// listener keeps accepting for `delay`, so a load balancer that polls
/// readiness (or a Kubernetes Service whose endpoints are being updated)
/// stops sending new connections before they would be refused.
pub struct Draining {
    pub inner: Box<dyn ShutdownSignalWatch + Sync>,
    pub state: Arc<ProxyState>,
    pub delay: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Draining {
    async fn recv(&self) -> ShutdownSignal {
        let signal = self.inner.recv().await;
        self.state.start_draining();
        if !self.delay.is_zero() {
            tracing::info!(delay = ?self.delay, "not ready (/readyz 503); still accepting until the delay ends");
            tokio::time::sleep(self.delay).await;
        }
        signal
    }
}

/// Shutdown on a channel, for an embedded proxy: the embedding process decides when.
pub struct WatchSignal(pub tokio::sync::watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for WatchSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
        ShutdownSignal::GracefulTerminate
    }
}

/// Runs the relay on its listener (bound before start, so its address could be
/// registered) and follows the coordinator's route feed, until shutdown.
pub struct RelayService {
    relay: Arc<crate::relay::Relay>,
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    coordinator: meridian_regions::client::Client,
    /// Routes are followed until the lifecycle has drained, past shutdown.
    drained: tokio::sync::watch::Receiver<bool>,
}

impl RelayService {
    pub fn new(
        relay: Arc<crate::relay::Relay>,
        listener: std::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        coordinator: meridian_regions::client::Client,
        drained: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self { relay, listener: std::sync::Mutex::new(Some(listener)), tls, coordinator, drained }
    }
}

#[async_trait]
impl BackgroundService for RelayService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(listener) = self.listener.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => return tracing::error!(error = %e, "cannot start the relay listener"),
        };
        let routes = self.relay.routes.clone();
        tokio::join!(
            self.relay.clone().serve(listener, self.tls.clone(), shutdown.clone()),
            routes.follow(&self.coordinator, self.drained.clone(), &self.relay.state),
        );
    }
}
