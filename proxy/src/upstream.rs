//! Upstream connections to workspace apps. The relay hands over a data
//! connection the agent dialed (a real TCP socket, see
//! `meridian_regions::data`) or, as the fallback, an HTTP/2 stream over the
//! tunnel or a mesh link; pingora speaks HTTP (or TLS) over either exactly as
//! over TCP, and pools them per (path, app address) like TCP connections.

use crate::access::Cut;
use crate::relay::{DialError, Relay, Upstream};
use async_trait::async_trait;
use meridian_regions::app_token::AppClaims;
use meridian_regions::data::DataStream;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr as L4Addr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use uuid::Uuid;

/// Longest wait for the agent to open a stream to the app.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled app connection is kept: it holds a stream (and an
/// app connection in the workspace) open.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// The peer for the app a verified token (`grant`, whose claims are
/// `claims`) opens; `read_timeout` bounds each read of the app's answer
/// (`None` for upgraded connections, which may idle). A relay in another
/// region admits the stream only with the grant.
///
/// An upgraded connection comes with the `cut` that ends it when its user's
/// tokens are revoked ([`crate::access`]): it gets a connection of its own
/// (a pool key no other request has), so the switch is on that connection.
pub fn peer(
    relay: &Arc<Relay>,
    claims: &AppClaims,
    grant: &Arc<str>,
    read_timeout: Option<Duration>,
    cut: Option<Arc<Cut>>,
) -> Result<Box<HttpPeer>> {
    let bad = || Error::explain(ErrorType::InternalError, "bad upstream in token");
    let agent_id = claims.agent_id;
    // Parsed once per verified token, not per request.
    let dial = claims.dial().ok_or_else(bad)?;
    // The address only keys the connection pool; the connector ignores it.
    // The host (SNI) keys it too, and must: apps named by host (`http://db:8080`,
    // `http://web:8080`) share the loopback address.
    let mut peer = HttpPeer::new(dial.addr, dial.tls, dial.host.clone());
    peer.group_key = relay.path_key(agent_id);
    if let Some(cut) = &cut {
        peer.group_key ^= cut.id;
    }
    peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
    peer.options.read_timeout = read_timeout;
    peer.options.idle_timeout = Some(POOL_IDLE);
    // Apps in a workspace serve self-signed certificates; the tunnel is the trust boundary.
    peer.options.verify_cert = false;
    peer.options.verify_hostname = false;
    let connector =
        TunnelConnector { relay: relay.clone(), agent_id, target: dial.target.clone(), grant: grant.clone(), cut };
    peer.options.custom_l4 = Some(Arc::new(connector));
    Ok(Box::new(peer))
}

struct TunnelConnector {
    relay: Arc<Relay>,
    agent_id: Uuid,
    target: Arc<str>,
    /// The app token of the request that dials; a pooled connection may
    /// later carry other users' requests for the same app, each authorized.
    grant: Arc<str>,
    cut: Option<Arc<Cut>>,
}

impl std::fmt::Debug for TunnelConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The grant is a credential: never printed.
        f.debug_struct("TunnelConnector").field("agent_id", &self.agent_id).field("target", &self.target).finish()
    }
}

#[async_trait]
impl L4Connect for TunnelConnector {
    async fn connect(&self, _addr: &L4Addr) -> Result<Stream> {
        // pingora applies no connection timeout to custom connectors: this is it.
        let open = tokio::time::timeout(CONNECT_TIMEOUT, self.relay.open(self.agent_id, &self.target, &self.grant));
        let io = open
            .await
            .map_err(|_| {
                Error::explain(ErrorType::ConnectTimedout, "the workspace agent did not open the connection in time")
            })?
            .map_err(|e| {
                let kind = match &e {
                    DialError::NotAttached => ErrorType::ConnectRefused,
                    DialError::PeerUnreachable(_) | DialError::Stream(_) => ErrorType::ConnectError,
                };
                Error::explain(kind, e.to_string())
            })?;
        match io {
            // A plain data connection is a TCP socket: pingora gets it as one,
            // registered with the runtime of the worker that will use it.
            Upstream::Data(DataStream::Plain(tcp)) => {
                let tcp = tcp.into_std().and_then(tokio::net::TcpStream::from_std).map_err(|e| {
                    Error::explain(ErrorType::ConnectError, format!("cannot adopt the data connection: {e}"))
                })?;
                if let Some(cut) = &self.cut {
                    cut.arm(&tcp);
                }
                Ok(Stream::from(tcp))
            }
            other => {
                let socket = TunnelSocket { io: Mutex::new(other), cut: self.cut.clone() };
                Ok(Stream::from(VirtualSocketStream::new(Box::new(socket))))
            }
        }
    }
}

/// A tunnel stream as pingora's virtual socket, failing once `cut`. The
/// mutex only adds `Sync`; every access goes through `&mut self`, so it is
/// never locked.
#[derive(Debug)]
struct TunnelSocket {
    io: Mutex<Upstream>,
    cut: Option<Arc<Cut>>,
}

impl TunnelSocket {
    fn io(self: Pin<&mut Self>) -> Pin<&mut Upstream> {
        Pin::new(self.get_mut().io.get_mut().unwrap_or_else(|e| e.into_inner()))
    }

    fn cut(&self, cx: &mut Context<'_>, reader: bool) -> Option<std::io::Error> {
        match self.cut.as_ref()?.poll(cx, reader) {
            Poll::Ready(e) => Some(e),
            Poll::Pending => None,
        }
    }
}

impl AsyncRead for TunnelSocket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.cut(cx, true) {
            return Poll::Ready(Err(e));
        }
        self.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelSocket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if let Some(e) = self.cut(cx, false) {
            return Poll::Ready(Err(e));
        }
        self.io().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}

impl VirtualSocket for TunnelSocket {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use pingora::connectors::{ConnectorOptions, TransportConnector};
    use pingora::protocols::l4::stream::Stream;
    use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
    use pingora::upstreams::peer::{BasicPeer, Peer};
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

    /// One end of an in-memory pipe as a virtual socket (what a tunnel stream is to pingora).
    #[derive(Debug)]
    struct Duplex(tokio::io::DuplexStream);

    impl AsyncRead for Duplex {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Duplex {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl VirtualSocket for Duplex {
        fn set_socket_option(&self, _opt: VirtualSockOpt) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn virtual_stream() -> (pingora::protocols::Stream, tokio::io::DuplexStream) {
        let (near, far) = tokio::io::duplex(64);
        (Box::new(Stream::from(VirtualSocketStream::new(Box::new(Duplex(near))))), far)
    }

    /// Two tunnel streams pooled for one app (pingora's pool, with the
    /// vendored patch giving virtual streams ids of their own): the one whose
    /// far end closes is the one that leaves the pool, and the other stays,
    /// open and reused next. With every virtual stream's id at -1 the pool let
    /// the open one go in the closed one's place and kept the closed one
    /// forever, holding the stream, its data connection, the agent's pipe
    /// and the app's connection open (the soak's "left open" descriptors).
    #[tokio::test]
    async fn pooled_tunnel_streams_leave_the_pool_each_for_itself() {
        let connector = TransportConnector::new(None);
        let peer = BasicPeer::new("127.0.0.1:8080");
        let ((a, mut a_far), (b, mut b_far)) = (virtual_stream(), virtual_stream());
        assert!(a.id() < -1 && b.id() < -1 && a.id() != b.id(), "{} {}", a.id(), b.id());
        connector.release_stream(a, peer.reuse_hash(), None);
        connector.release_stream(b, peer.reuse_hash(), None);

        // b (pooled last) closes at its far end: the pool lets b go, and b's far end reads EOF.
        b_far.shutdown().await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), b_far.read(&mut [0u8; 1])).await;
        assert!(matches!(read, Ok(Ok(0))), "the closed stream is still held: {read:?}");
        // a is untouched, and is what the pool hands out next.
        let quiet = tokio::time::timeout(Duration::from_millis(200), a_far.read(&mut [0u8; 1])).await;
        assert!(quiet.is_err(), "the open stream was let go in the closed one's place: {quiet:?}");
        let reused = connector.reused_stream(&peer).await.expect("the open stream is still pooled");
        carries_a_byte(reused, &mut a_far).await;
    }

    /// Writes a byte into `stream` and reads it at its far end.
    async fn carries_a_byte(mut stream: pingora::protocols::Stream, far: &mut tokio::io::DuplexStream) {
        stream.write_all(b"x").await.unwrap();
        stream.flush().await.unwrap();
        let mut got = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), far.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(&got, b"x");
    }

    /// An idle pooled stream is let go once its idle timeout passes, with no
    /// request coming to notice (the vendored pool's sweeper: it keeps no task
    /// per idle stream): its far end reads EOF, it is never handed out, and
    /// the stream beside it without a timeout stays and is reused.
    #[tokio::test]
    async fn an_idle_stream_past_its_timeout_is_closed_without_traffic() {
        let connector = TransportConnector::new(None);
        let peer = BasicPeer::new("127.0.0.1:8080");
        let ((a, mut a_far), (b, mut b_far)) = (virtual_stream(), virtual_stream());
        connector.release_stream(a, peer.reuse_hash(), Some(Duration::from_millis(100)));
        connector.release_stream(b, peer.reuse_hash(), None);

        let read = tokio::time::timeout(Duration::from_secs(5), a_far.read(&mut [0u8; 1])).await;
        assert!(matches!(read, Ok(Ok(0))), "the timed-out stream is still held: {read:?}");
        let reused = connector.reused_stream(&peer).await.expect("the stream without a timeout is pooled");
        carries_a_byte(reused, &mut b_far).await;
        assert!(connector.reused_stream(&peer).await.is_none(), "the timed-out stream was handed out");
    }

    /// A pool holding its limit closes the stream idle longest when one more
    /// comes back; the newer ones stay for reuse.
    #[tokio::test]
    async fn a_full_pool_closes_its_oldest_idle_stream() {
        let connector = TransportConnector::new(Some(ConnectorOptions::new(2)));
        let peer = BasicPeer::new("127.0.0.1:8080");
        let ((a, mut a_far), (b, _b_far), (c, _c_far)) = (virtual_stream(), virtual_stream(), virtual_stream());
        for stream in [a, b, c] {
            connector.release_stream(stream, peer.reuse_hash(), None);
        }
        let read = tokio::time::timeout(Duration::from_secs(5), a_far.read(&mut [0u8; 1])).await;
        assert!(matches!(read, Ok(Ok(0))), "the oldest stream is still held: {read:?}");
        assert!(connector.reused_stream(&peer).await.is_some());
        assert!(connector.reused_stream(&peer).await.is_some());
        assert!(connector.reused_stream(&peer).await.is_none(), "more streams pooled than the limit");
    }

    /// Apps named by host (`http://web:8080`, `http://db:8080`) share the
    /// pool's address (loopback; the relay dials the name inside the
    /// workspace): their host is what keeps one app's pooled connections from
    /// carrying another's requests.
    #[tokio::test]
    async fn apps_named_by_host_do_not_share_pooled_connections() {
        let relay = crate::relay::testing::relay();
        let grant: std::sync::Arc<str> = "grant".into();
        let pool_key = |upstream: &str| {
            let claims: meridian_regions::app_token::AppClaims = serde_json::from_value(serde_json::json!({
                "iss": "t", "sub": uuid::Uuid::nil(), "binding": "b", "agent_id": uuid::Uuid::nil(),
                "upstream": upstream, "share": "owner", "iat": 1, "nbf": 1, "exp": 301, "sid": uuid::Uuid::nil(),
            }))
            .unwrap();
            super::peer(&relay, &claims, &grant, None, None).unwrap().reuse_hash()
        };
        assert_eq!(pool_key("http://web:8080"), pool_key("http://web:8080"));
        assert_ne!(pool_key("http://web:8080"), pool_key("http://db:8080"));
        assert_ne!(pool_key("http://web:8080"), pool_key("https://web:8080"));
    }
}
