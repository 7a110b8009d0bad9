//! Peer relays link in (one HTTP/1.1 upgrade, then HTTP/2, authenticated by
//! the mesh secret) and open streams to the agents attached here: each
//! `CONNECT` carries the user's grant, which this relay checks itself; a
//! link never forwards to another link.

use super::drain::RELAYED_QUIET;
use super::Relay;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use meridian_regions::data;
use meridian_regions::headers::MESH_SECRET;
use meridian_regions::tunnel::{StreamError, AGENT_HEADER, GRANT_HEADER, LINK_PROTOCOL};
use std::sync::Arc;
use uuid::Uuid;

impl Relay {
    /// A peer relay links in: check the mesh secret, then serve its streams
    /// from this relay's own tunnels.
    pub(super) async fn accept_link(self: Arc<Self>, mut req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let presented = req.headers().get(MESH_SECRET).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !self.mesh.admits(presented) {
            let mut r =
                Response::new(Full::new(Bytes::from_static(b"{\"message\":\"link refused: wrong mesh secret\"}")));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            return r;
        }
        tokio::spawn(async move {
            let Ok(io) = hyper::upgrade::on(&mut req).await else { return };
            tracing::info!("peer relay linked in");
            let relay = self.clone();
            let open = self.mesh.open_links.clone();
            open.inc();
            let service = hyper::service::service_fn(move |req| relay.clone().link_stream(req));
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(meridian_regions::tunnel::PING_INTERVAL)
                .keep_alive_timeout(meridian_regions::tunnel::PING_TIMEOUT)
                .initial_stream_window_size(meridian_regions::tunnel::STREAM_WINDOW)
                .initial_connection_window_size(meridian_regions::tunnel::CONNECTION_WINDOW)
                .max_frame_size(meridian_regions::tunnel::MAX_FRAME)
                .max_send_buf_size(meridian_regions::tunnel::SEND_BUFFER)
                .max_concurrent_streams(meridian_regions::tunnel::MAX_STREAMS)
                // As on tunnels (see `Tunnel::client`): resets are the peer relay's own churn.
                .max_local_error_reset_streams(None)
                .serve_connection(io, service)
                .await;
            open.dec();
            tracing::info!("peer relay link closed");
        });
        super::listener::switching(LINK_PROTOCOL)
    }

    /// One stream over a link: `CONNECT target` for the agent in `meridian-agent`.
    async fn link_stream(
        self: Arc<Self>,
        mut req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        let status = |s: StatusCode| {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = s;
            Ok(r)
        };
        if req.uri().path() == meridian_regions::tunnel::PING_PATH {
            return status(StatusCode::NO_CONTENT);
        }
        let agent = req.headers().get(AGENT_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<Uuid>().ok());
        if let (Some(agent), true) = (agent, req.method() == hyper::Method::OPTIONS) {
            return status(if self.agents.tunnel(agent).is_some() { StatusCode::OK } else { StatusCode::NOT_FOUND });
        }
        if let (Some(agent), true) = (agent, req.method() == hyper::Method::POST && req.uri().path() == data::DATA_PATH)
        {
            return status(self.link_data(agent, &req).await);
        }
        let target = req.uri().authority().map(|a| a.as_str().to_owned());
        let (Some(agent), Some(target), true) = (agent, target, req.method() == hyper::Method::CONNECT) else {
            return status(StatusCode::BAD_REQUEST);
        };
        // A user's request must stand behind every stream: the mesh secret
        // only admits the link, never a stream by itself.
        let grant = req.headers().get(GRANT_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !self.auth.admits_stream(grant, agent, &target) {
            tracing::warn!(%agent, %target, "refused a link stream without a valid grant");
            return status(StatusCode::FORBIDDEN);
        }
        // Only this relay's own tunnels: a link never forwards to another link.
        let Some(tunnel) = self.agents.tunnel(agent) else { return status(StatusCode::NOT_FOUND) };
        let mut upstream = match self.open_local(&tunnel, &target).await {
            Ok(io) => io,
            Err(StreamError::Refused { status: s, .. }) => {
                return status(StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY))
            }
            // As for data connections: a tunnel that closed is an agent not attached here.
            Err(StreamError::TunnelClosed(_)) => return status(StatusCode::NOT_FOUND),
        };
        let relayed = self.drain.track();
        let idle = self.state.pipe_idle();
        let drain = self.drain.subscribe();
        tokio::spawn(async move {
            let _relayed = relayed;
            if let Ok(down) = hyper::upgrade::on(&mut req).await {
                let mut down = TokioIo::new(down);
                let _ =
                    meridian_regions::pipe::pipe_until_drained(&mut down, &mut upstream, idle, RELAYED_QUIET, drain)
                        .await;
            }
        });
        status(StatusCode::OK)
    }

    /// A peer relay asks for a data connection from an agent attached here
    /// (a mesh hop): with a valid grant, the agent is asked to dial the peer
    /// directly; the answer is the agent's (204 dialed, 421 cannot).
    async fn link_data(&self, agent: Uuid, req: &Request<hyper::body::Incoming>) -> StatusCode {
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        let (Some(target), Some(nonce), Some(dial)) =
            (header(data::TARGET_HEADER), header(data::NONCE_HEADER), header(data::DIAL_HEADER))
        else {
            return StatusCode::BAD_REQUEST;
        };
        if !self.auth.admits_stream(header(GRANT_HEADER).unwrap_or_default(), agent, target) {
            tracing::warn!(%agent, %target, "refused a link data connection without a valid grant");
            return StatusCode::FORBIDDEN;
        }
        let Some(tunnel) = self.agents.tunnel(agent) else { return StatusCode::NOT_FOUND };
        match tunnel.request_data(target, nonce, &[(data::DIAL_HEADER, dial)]).await {
            Ok(true) => StatusCode::NO_CONTENT,
            Ok(false) => StatusCode::from_u16(data::CANNOT_DIAL_BACK).unwrap_or(StatusCode::BAD_GATEWAY),
            Err(StreamError::Refused { status, .. }) => StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            // The agent's tunnel closed under the ask: it is not attached here
            // (any more), so the asking relay waits for its next route.
            Err(StreamError::TunnelClosed(_)) => StatusCode::NOT_FOUND,
        }
    }
}
