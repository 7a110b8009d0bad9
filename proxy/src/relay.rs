//! The relay: where agents attach, and where this region's proxy opens
//! streams to them.
//!
//! Agents dial the relay listener and upgrade (`meridian_regions::tunnel`);
//! the relay checks the agent token with the coordinator, which records the
//! attachment, and keeps one [`Tunnel`] per agent. [`Relay::open`] is the one
//! interface the data plane uses to reach an agent.

use bytes::Bytes;
use http_body_util::Full;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use meridian_regions::api::{AgentAttach, AgentDetach};
use meridian_regions::client::{Client, ClientError};
use meridian_regions::headers::AGENT_TOKEN;
use meridian_regions::tunnel::{StreamError, Tunnel, TUNNEL_PATH, UPGRADE_PROTOCOL};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use uuid::Uuid;

/// Why the data plane could not reach an agent.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("the workspace agent is not connected to this region")]
    NotAttached,
    #[error(transparent)]
    Stream(#[from] StreamError),
}

pub struct Relay {
    coordinator: Client,
    agents: RwLock<HashMap<Uuid, Tunnel>>,
}

impl Relay {
    pub fn new(coordinator: Client) -> Arc<Self> {
        Arc::new(Self { coordinator, agents: RwLock::default() })
    }

    /// Opens a byte stream to `target` (`host:port`) inside agent `agent_id`'s workspace.
    pub async fn open(&self, agent_id: Uuid, target: &str) -> Result<TokioIo<Upgraded>, DialError> {
        let tunnel = self.tunnel(agent_id).ok_or(DialError::NotAttached)?;
        Ok(tunnel.open(target).await?)
    }

    pub fn is_attached(&self, agent_id: Uuid) -> bool {
        self.tunnel(agent_id).is_some()
    }

    fn tunnel(&self, agent_id: Uuid) -> Option<Tunnel> {
        let agents = self.agents.read().unwrap_or_else(|e| e.into_inner());
        agents.get(&agent_id).filter(|t| t.is_open()).cloned()
    }

    /// Accepts agents on `listener` until `shutdown` flips to true.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "relay accept failed");
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let relay = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| relay.clone().handshake(req));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades();
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "relay connection ended");
                }
            });
        }
    }

    /// Answers an agent's upgrade request: 101 and a tunnel, or a clear refusal.
    async fn handshake(
        self: Arc<Self>,
        mut req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        let reply = |status: StatusCode, msg: &str| {
            let mut r = Response::new(Full::new(Bytes::from(format!("{{\"message\":{msg:?}}}"))));
            *r.status_mut() = status;
            Ok(r)
        };
        let upgrade_ok = req
            .headers()
            .get(hyper::header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(UPGRADE_PROTOCOL.as_bytes()));
        if req.uri().path() != TUNNEL_PATH || !upgrade_ok {
            return reply(
                StatusCode::NOT_FOUND,
                "This is a Meridian relay; agents upgrade at /api/v2/agents/me/tunnel.",
            );
        }
        let Some(token) = req.headers().get(AGENT_TOKEN).and_then(|v| v.to_str().ok()).map(str::to_owned) else {
            return reply(StatusCode::UNAUTHORIZED, "No agent token.");
        };
        let agent_id = match self.coordinator.agent_attach(&AgentAttach { agent_token: token }).await {
            Ok(r) => r.agent_id,
            Err(ClientError::Api { status, message, .. }) if status.is_client_error() => {
                return reply(StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::UNAUTHORIZED), &message)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check an agent token with the coordinator");
                return reply(StatusCode::SERVICE_UNAVAILABLE, "The coordinator is unreachable; try again shortly.");
            }
        };
        tokio::spawn(async move {
            match hyper::upgrade::on(&mut req).await {
                Ok(io) => self.run_tunnel(agent_id, io).await,
                Err(e) => tracing::warn!(agent = %agent_id, error = %e, "agent upgrade failed"),
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static(UPGRADE_PROTOCOL));
        resp.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("upgrade"));
        Ok(resp)
    }

    /// Holds one agent's tunnel until it ends, then forgets it (unless a newer
    /// tunnel of the same agent replaced it) and tells the coordinator.
    async fn run_tunnel(&self, agent_id: Uuid, io: Upgraded) {
        let (tunnel, driver) = match Tunnel::client(io).await {
            Ok(t) => t,
            Err(e) => return tracing::warn!(agent = %agent_id, error = %e, "tunnel handshake failed"),
        };
        self.agents.write().unwrap_or_else(|e| e.into_inner()).insert(agent_id, tunnel.clone());
        tracing::info!(agent = %agent_id, "agent attached");
        driver.await;
        let replaced = {
            let mut agents = self.agents.write().unwrap_or_else(|e| e.into_inner());
            match agents.get(&agent_id) {
                Some(t) if t.is_open() => true,
                _ => {
                    agents.remove(&agent_id);
                    false
                }
            }
        };
        tracing::info!(agent = %agent_id, "agent detached");
        if !replaced {
            if let Err(e) = self.coordinator.agent_detach(&AgentDetach { agent_id }).await {
                tracing::debug!(agent = %agent_id, error = %e, "cannot record the detach");
            }
        }
    }
}
