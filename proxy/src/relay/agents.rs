//! The agents' tunnels this relay holds: one per agent (a newer one replaces
//! it), the attachment recorded with the coordinator (later, for agents
//! admitted while it was unreachable), and asking them to leave at shutdown.

use super::Relay;
use meridian_regions::api::{AgentAttach, AgentDetach};
use meridian_regions::client::Client;
use meridian_regions::tunnel::Tunnel;
use std::collections::HashMap;
use std::sync::RwLock;
use uuid::Uuid;

/// Longest wait for an agent to acknowledge a request to leave.
const LEAVE_ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) struct Agents {
    pub coordinator: Client,
    /// This replica, named when recording an attach or detach.
    pub replica_id: Uuid,
    /// This relay's region, from the first registration (attach tokens name it).
    pub region: std::sync::OnceLock<String>,
    pub tunnels: RwLock<HashMap<Uuid, Tunnel>>,
    /// Attached agents, for `/metrics`.
    pub attached: prometheus::IntGauge,
    /// Agents admitted while the coordinator was unreachable, with their
    /// attach tokens, until the coordinator has recorded them.
    pub unrecorded: std::sync::Mutex<HashMap<Uuid, String>>,
}

impl Agents {
    pub fn new(coordinator: Client, replica_id: Uuid, attached: prometheus::IntGauge) -> Self {
        Self {
            coordinator,
            replica_id,
            region: std::sync::OnceLock::new(),
            tunnels: RwLock::default(),
            attached,
            unrecorded: std::sync::Mutex::default(),
        }
    }

    /// Whether an open tunnel of `agent_id` is held here (without cloning it).
    pub fn holds(&self, agent_id: Uuid) -> bool {
        self.tunnels.read().unwrap_or_else(|e| e.into_inner()).get(&agent_id).is_some_and(Tunnel::is_open)
    }

    pub fn tunnel(&self, agent_id: Uuid) -> Option<Tunnel> {
        let tunnels = self.tunnels.read().unwrap_or_else(|e| e.into_inner());
        tunnels.get(&agent_id).filter(|t| t.is_open()).cloned()
    }

    /// How many of the agents held here `stays` says are staying.
    pub fn staying(&self, stays: impl Fn(Uuid) -> bool) -> usize {
        self.tunnels.read().unwrap_or_else(|e| e.into_inner()).keys().filter(|a| stays(**a)).count()
    }

    pub async fn ask_to_leave(&self) {
        let tunnels: Vec<(Uuid, Tunnel)> =
            self.tunnels.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(a, t)| (*a, t.clone())).collect();
        let asks = tunnels.into_iter().map(|(agent, tunnel)| async move {
            let agreed = tokio::time::timeout(LEAVE_ASK_TIMEOUT, tunnel.ask_to_leave()).await.unwrap_or(false);
            tracing::info!(%agent, agreed, "asked an agent to attach elsewhere");
        });
        futures_util::future::join_all(asks).await;
    }

    /// Records the agents admitted while the coordinator was unreachable.
    pub async fn record_offline(&self) {
        let pending: Vec<(Uuid, String)> =
            self.unrecorded.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (*k, v.clone())).collect();
        for (agent_id, attach_token) in pending {
            if self.tunnel(agent_id).is_some() {
                let ask = AgentAttach {
                    agent_token: String::new(),
                    attach_token: Some(attach_token),
                    replica_id: Some(self.replica_id),
                };
                if let Err(e) = self.coordinator.agent_attach(&ask).await {
                    if e.is_retryable() {
                        continue;
                    }
                    tracing::warn!(agent = %agent_id, error = %e, "the coordinator refused an offline attachment");
                }
            }
            self.unrecorded.lock().unwrap_or_else(|e| e.into_inner()).remove(&agent_id);
        }
    }

    /// Tells the coordinator `agent_id` is not attached here.
    async fn detach(&self, agent_id: Uuid) {
        let detach = AgentDetach { agent_id, replica_id: Some(self.replica_id) };
        if let Err(e) = self.coordinator.agent_detach(&detach).await {
            tracing::debug!(agent = %agent_id, error = %e, "cannot record the detach");
        }
    }
}

impl Relay {
    /// Holds one agent's tunnel until it ends, then forgets it (unless a newer
    /// tunnel of the same agent replaced it) and tells the coordinator.
    pub(super) async fn run_tunnel<T>(&self, agent_id: Uuid, io: T)
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (tunnel, driver) = match Tunnel::client(io).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(agent = %agent_id, error = %e, "tunnel handshake failed");
                // The coordinator already routes to this relay: take that back,
                // unless another tunnel of the agent is here.
                if self.agents.tunnel(agent_id).is_none() {
                    self.agents.detach(agent_id).await;
                }
                return;
            }
        };
        {
            let mut agents = self.agents.tunnels.write().unwrap_or_else(|e| e.into_inner());
            agents.insert(agent_id, tunnel.clone());
            self.agents.attached.set(agents.len() as i64);
        }
        // Requests that arrived between the coordinator's route and this
        // registration wait on a route change: this is one.
        self.routes.poke();
        tracing::info!(agent = %agent_id, "agent attached");
        driver.await;
        let replaced = {
            let mut agents = self.agents.tunnels.write().unwrap_or_else(|e| e.into_inner());
            match agents.get(&agent_id) {
                Some(t) if t.is_open() => true,
                _ => {
                    agents.remove(&agent_id);
                    self.agents.attached.set(agents.len() as i64);
                    false
                }
            }
        };
        tracing::info!(agent = %agent_id, "agent detached");
        if !replaced {
            // A request whose stream this tunnel's end cut short waits on a
            // route change, but the agent's new route may have come before it
            // began (the agent moves make-before-break): the tunnel leaving is
            // the change that sends it there.
            self.routes.poke();
            self.agents.detach(agent_id).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::relay_of;
    use hyper_util::rt::TokioIo;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use uuid::Uuid;

    /// An agent's connection that broke right after its upgrade: the relay's
    /// tunnel handshake fails, and the coordinator (which already routes to
    /// this relay) is told the agent is not here after all.
    #[tokio::test]
    async fn a_failed_tunnel_handshake_takes_the_attachment_back() {
        let coordinator = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = relay_of(&format!("http://{}", coordinator.local_addr().unwrap()));
        // The coordinator's side: the first request it gets, answered 200.
        let asked = tokio::spawn(async move {
            let (mut conn, _) = coordinator.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&request).contains("}") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await.unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        let agent = Uuid::new_v4();
        let (here, there) = tokio::io::duplex(1024);
        drop(there);
        tokio::time::timeout(Duration::from_secs(10), relay.run_tunnel(agent, TokioIo::new(here))).await.unwrap();
        let request = tokio::time::timeout(Duration::from_secs(5), asked).await.expect("no detach was sent").unwrap();
        assert!(request.starts_with("POST /api/v2/proxies/me/agent-detach "), "{request}");
        assert!(request.contains(&agent.to_string()), "{request}");
        assert!(relay.agents.tunnel(agent).is_none());
    }
}
