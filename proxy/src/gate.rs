//! What a request must pass before anything routes on it, and what a
//! connection must pass before it is served:
//!
//! - [`check`]: the head's framing (no smuggling), one exact host (`Host` and
//!   `:authority` agree, the TLS SNI names it too, else 421), and the one
//!   normalized path that is both authorized and forwarded.
//! - [`Capped`]: global and per-client caps on open connections.
//! - [`head_limits`]: request line, header size and count, and the deadline
//!   for a whole head (enforced by the patched pingora, see `vendor/`).

use crate::config::Limits;
use async_trait::async_trait;
use meridian_regions::headers;
use meridian_regions::request::{check_framing, normalize_path, parse_authority, RequestError};
use pingora::apps::ServerApp;
use pingora::listeners::TlsAccept;
use pingora::protocols::http::v1::server::HeadLimits;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::Stream;
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use std::any::Any;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

/// A request that passed [`check`].
#[derive(Debug)]
pub struct Checked {
    /// `host[:port]`, lower case, without a trailing dot.
    pub host: std::sync::Arc<str>,
    /// The normalized path (no query).
    pub path: String,
}

/// A refusal: status and a message naming the problem.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

impl From<RequestError> for Refused {
    fn from(e: RequestError) -> Self {
        Refused { status: e.status(), message: e.to_string() }
    }
}

/// Checks the framing, host and path of the request in `session`.
pub fn check(session: &Session) -> Result<Checked, Refused> {
    if let Some(h1) = session.as_downstream().as_http1() {
        check_framing(&h1.get_headers_raw_bytes())?;
    }
    let req = session.req_header();
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(refused(400, "more than one Host header")),
        (Some(v), None) => Some(v.to_str().map_err(|_| refused(400, "invalid Host: not ASCII"))?),
        (None, None) => None,
    };
    let uri_authority = req.uri.authority().map(|a| a.as_str());
    let raw = match (header, uri_authority) {
        (Some(h), Some(a)) if !h.eq_ignore_ascii_case(a) => {
            return Err(refused(400, "the request names two different hosts (Host and the target's authority)"))
        }
        (Some(h), _) => h,
        (None, Some(a)) => a,
        (None, None) => return Err(refused(400, "the Host header is missing")),
    };
    let authority = crate::memo::host(raw, |raw| {
        let a = parse_authority(raw)?;
        Ok::<_, Refused>(crate::memo::Host { host_port: a.to_host_port().into(), name: a.host.into() })
    })?;
    if let Some(sni) = sni(session) {
        let sni = sni.trim_end_matches('.');
        if !sni.eq_ignore_ascii_case(&authority.name) {
            return Err(refused(
                421,
                &format!("this connection was opened for {sni}; open {} on a new connection", authority.name),
            ));
        }
    }
    let path = normalize_path(req.uri.path())?;
    Ok(Checked { host: authority.host_port.clone(), path })
}

/// For a chunked HTTP/1 request about to be forwarded: reads the first piece
/// of its body (kept and replayed to the app by pingora's retry buffer), so a
/// malformed chunk is refused here with a 400 before any byte goes upstream.
/// A client that waits for `100 Continue` is not waited for.
pub async fn first_chunk(session: &mut Session, timeout: std::time::Duration) -> Result<(), Refused> {
    let req = session.req_header();
    let chunked = req.headers.contains_key(http::header::TRANSFER_ENCODING);
    let expects_continue =
        req.headers.get(http::header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !chunked || expects_continue || session.as_downstream().as_http1().is_none() {
        return Ok(());
    }
    let downstream = session.as_downstream_mut();
    downstream.enable_retry_buffering();
    match tokio::time::timeout(timeout, downstream.read_request_body()).await {
        Ok(Ok(_)) if !downstream.retry_buffer_truncated() => Ok(()),
        Ok(Ok(_)) => Err(refused(413, "the first chunk of the request body is too large to check")),
        Ok(Err(e)) => Err(refused(400, &format!("malformed chunked request body ({})", e.etype().as_str()))),
        Err(_) => Err(refused(408, "the request body did not start within the header deadline")),
    }
}

/// Whether `raw` (a request target as received) is exactly `path[?query]`.
pub fn is_target(raw: &[u8], path: &str, query: Option<&str>) -> bool {
    match query {
        None => raw == path.as_bytes(),
        Some(q) => {
            raw.len() == path.len() + 1 + q.len()
                && raw.starts_with(path.as_bytes())
                && raw[path.len()] == b'?'
                && raw.ends_with(q.as_bytes())
        }
    }
}

fn refused(status: u16, message: &str) -> Refused {
    Refused { status, message: message.to_owned() }
}

/// The TLS server name the client asked for, recorded by [`RecordSni`].
fn sni(session: &Session) -> Option<&str> {
    let digest = session.digest()?.ssl_digest.as_ref()?;
    digest.extension.get::<Sni>()?.0.as_deref()
}

/// The SNI of a TLS connection, kept in its digest.
#[derive(Debug)]
struct Sni(Option<String>);

/// Keeps each TLS connection's SNI for [`check`].
pub struct RecordSni;

#[async_trait]
impl TlsAccept for RecordSni {
    async fn handshake_complete_callback(&self, tls: &TlsRef) -> Option<Arc<dyn Any + Send + Sync>> {
        Some(Arc::new(Sni(tls.server_name().map(str::to_owned))))
    }
}

/// The patched pingora's head limits from the configuration. They are set
/// process-wide (the one global here, against the house style): pingora reads a
/// request head before any hook of the proxy runs, and its HTTP session has no
/// per-service settings to carry them.
pub fn head_limits(limits: &Limits) -> HeadLimits {
    HeadLimits {
        max_request_line: limits.max_request_line,
        max_header_bytes: limits.max_header_bytes,
        max_headers: limits.max_headers,
        deadline: Some(limits.header_timeout),
    }
}

/// HTTP/2 gets the same header budget: the header list may not exceed the
/// request line and header limits together (a larger HEADERS frame is refused),
/// and one connection may not open more than 100 streams at once.
pub fn h2_options(limits: &Limits) -> pingora::protocols::http::v2::server::H2Options {
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size((limits.max_request_line + limits.max_header_bytes) as u32);
    h2.max_concurrent_streams(100);
    h2
}

/// Open connections, in all and per client address. A connection that
/// carries a proxy or agent token to the API ([`Connections::promote`]) stops
/// counting against its address, and goes back ([`Connections::demote`]) if
/// the API refuses the token: control-plane clients share egress
/// addresses (a NAT, a Kubernetes node) far more than browsers do, and a
/// thousand proxy replicas behind one address are not one abusive client.
/// They still count in all.
#[derive(Debug, Default)]
pub struct Connections {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
    /// Promoted connections, by peer address (address and port name one connection).
    control: std::collections::HashSet<std::net::SocketAddr>,
}

impl Connections {
    /// Puts a connection that turned out not to be a control-plane client's
    /// (its token was refused) back into its address's count; whether the
    /// address is now over `max_per_client` (then the connection should close).
    pub fn demote(&mut self, peer: std::net::SocketAddr, max_per_client: usize) -> bool {
        if !self.control.remove(&peer) {
            return false;
        }
        let n = self.by_client.entry(peer.ip()).or_default();
        *n += 1;
        *n > max_per_client
    }

    /// Moves the connection from `peer` out of its address's count (once).
    pub fn promote(&mut self, peer: std::net::SocketAddr) {
        if !self.control.insert(peer) {
            return;
        }
        if let Some(n) = self.by_client.get_mut(&peer.ip()) {
            *n -= 1;
            if *n == 0 {
                self.by_client.remove(&peer.ip());
            }
        }
    }

    /// Open connections now, in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Open connections now: in all, from `ip` (not promoted), and promoted.
    pub fn counts(&self, ip: IpAddr) -> (usize, usize, usize) {
        (self.total, self.by_client.get(&ip).copied().unwrap_or(0), self.control.len())
    }
}

/// Connection accounting for control-plane clients on the API (the primary):
/// a request carrying a proxy or agent token promotes its connection at once
/// (a route long poll waits 20 s for its answer), and a refusal of that token
/// (401/403) demotes it again, closing it if its address is then over the cap.
pub struct ControlPlane {
    pub connections: Arc<Mutex<Connections>>,
    pub max_per_client: usize,
}

impl ControlPlane {
    /// Whether this API request comes with a control-plane credential (then promoted).
    pub fn on_request(&self, session: &Session) -> bool {
        let h = &session.req_header().headers;
        let control = h.contains_key(headers::PROXY_TOKEN) || h.contains_key(headers::AGENT_TOKEN);
        if let Some(peer) = session.client_addr().and_then(|a| a.as_inet()).filter(|_| control) {
            self.lock().promote(*peer);
        }
        control
    }

    /// The API answered a control-plane request with `status`.
    pub fn on_response(&self, session: &mut Session, status: u16) {
        if !matches!(status, 401 | 403) {
            return;
        }
        let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
        if peer.is_some_and(|peer| self.lock().demote(peer, self.max_per_client)) {
            session.set_keepalive(None);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A pingora app served only while the caps on open connections hold; a
/// connection over a cap gets a plain 503 (HTTP/1) or is closed.
pub struct Capped<A> {
    pub inner: Arc<A>,
    pub max_total: usize,
    pub max_per_client: usize,
    pub open: Arc<Mutex<Connections>>,
}

/// Counts one connection while it lives.
struct Admitted {
    open: Arc<Mutex<Connections>>,
    client: Option<std::net::SocketAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(peer) = self.client {
            if open.control.remove(&peer) {
                return; // promoted: no longer counted against its address
            }
            let ip = peer.ip();
            if let Some(n) = open.by_client.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.by_client.remove(&ip);
                }
            }
        }
    }
}

impl<A> Capped<A> {
    fn admit(&self, client: Option<std::net::SocketAddr>) -> Result<Admitted, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.max_total {
            return Err("This proxy is at its connection limit; try again shortly.");
        }
        if let Some(peer) = client {
            let n = open.by_client.entry(peer.ip()).or_default();
            if *n >= self.max_per_client {
                return Err("Too many open connections from your address; close some and try again.");
            }
            *n += 1;
        }
        open.total += 1;
        Ok(Admitted { open: self.open.clone(), client })
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Capped<A> {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let client = stream.get_socket_digest().and_then(|d| d.peer_addr().cloned()).and_then(|a| a.as_inet().copied());
        let _admitted = match self.admit(client) {
            Ok(a) => a,
            Err(message) => {
                tracing::debug!(?client, message, "connection refused by a cap");
                let h2 = stream.selected_alpn_proto().is_some_and(|p| p == pingora::protocols::ALPN::H2);
                if !h2 {
                    let reply = format!(
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{message}\n",
                        message.len() + 1
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.flush().await;
                }
                return None;
            }
        };
        crate::memo::scope(self.inner.process_new(stream, shutdown)).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::{is_target, Connections};

    #[test]
    fn promoted_connections_leave_their_address_count() {
        let mut open = Connections::default();
        let ip: std::net::IpAddr = [127, 0, 0, 2].into();
        let peers: Vec<std::net::SocketAddr> = (1000..1003).map(|port| (ip, port).into()).collect();
        for _ in &peers {
            open.total += 1;
            *open.by_client.entry(ip).or_default() += 1;
        }
        open.promote(peers[0]);
        open.promote(peers[0]); // once only
        assert_eq!(open.counts(ip), (3, 2, 1));
        open.promote(peers[1]);
        open.promote(peers[2]);
        assert_eq!(open.counts(ip), (3, 0, 3), "the address holds no unauthenticated connection");
        // A refused token: back into the count; over a cap of 1 on the second.
        assert!(!open.demote(peers[0], 1));
        assert!(open.demote(peers[1], 1));
        assert!(!open.demote(peers[1], 1), "once only");
        assert_eq!(open.counts(ip), (3, 2, 1));
    }

    #[test]
    fn targets_compare_without_building_them() {
        assert!(is_target(b"/a/b", "/a/b", None));
        assert!(is_target(b"/a?x=1", "/a", Some("x=1")));
        assert!(!is_target(b"/a/../b", "/b", None));
        assert!(!is_target(b"http://h/a", "/a", None));
        assert!(!is_target(b"/a", "/a", Some("")));
        assert!(!is_target(b"/ax=1", "/a", Some("=1")));
    }
}
