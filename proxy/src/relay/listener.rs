//! The relay's listener: accepts within [`Admission`]'s caps, then tells
//! what a connection is by its first bytes: a data connection presenting a
//! nonce ([`super::data`]), or HTTP: an agent's tunnel upgrade
//! ([`super::attach`], [`super::agents`]) or a peer relay's link ([`super::link`]).

use super::admission::{Admission, Refusal, HANDSHAKE_DEADLINE};
use super::Relay;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use meridian_regions::data::{self, DataStream, Opening};
use meridian_regions::tunnel::{LINK_PATH, LINK_PROTOCOL, TUNNEL_PATH, UPGRADE_PROTOCOL};
use std::sync::Arc;

/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// A 101 answer switching to `protocol`.
pub(super) fn switching(protocol: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static(protocol));
    resp.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("upgrade"));
    resp
}

impl Relay {
    /// Accepts agents and peer relays on `listener` (over TLS with `tls`) until
    /// `shutdown` flips to true, within the caps of [`Admission::for_this_process`].
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        self.serve_within(Admission::for_this_process(), listener, tls, shutdown).await;
    }

    /// [`Relay::serve`], holding unproven connections within `admission`'s caps.
    pub(super) async fn serve_within(
        self: Arc<Self>,
        admission: Arc<Admission>,
        listener: tokio::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, usually: retrying at once only spins.
                        tracing::warn!(error = %e, "relay accept failed; pausing accepts");
                        self.state.metrics.relay_accept_errors.inc();
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                        continue;
                    }
                },
            };
            // Closed at once (dropped) when over a cap.
            let unproven = match admission.admit(peer.ip()) {
                Ok(unproven) => unproven,
                Err(refusal) => {
                    self.state.metrics.relay_refused.inc();
                    match refusal {
                        Refusal::Full(max) => {
                            tracing::warn!(%peer, max, "relay connection cap reached; refused a connection")
                        }
                        Refusal::Address(max) => {
                            tracing::debug!(%peer, max, "a client's relay connection cap reached; refused a connection")
                        }
                    }
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (relay, tls) = (self.clone(), tls.clone());
            tokio::spawn(async move {
                // Counted until it proves itself: an upgrade hands the
                // connection on (the tunnel or link runs in a task of its
                // own), a data connection is claimed, or it ends.
                let _unproven = unproven;
                match tls {
                    Some(acceptor) => match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => relay.serve_opening(stream, |s| DataStream::Server(Box::new(s)), peer).await,
                        _ => tracing::debug!(%peer, "relay TLS handshake failed"),
                    },
                    None => relay.serve_opening(tcp, DataStream::Plain, peer).await,
                }
            });
        }
    }

    /// A new connection (after TLS, if any): a data connection presenting a
    /// nonce (`wrap` makes it a data stream), or an agent or peer relay speaking HTTP.
    async fn serve_opening<T>(self: Arc<Self>, io: T, wrap: impl FnOnce(T) -> DataStream, peer: std::net::SocketAddr)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let result = match data::classify(io).await {
            Ok(Opening::Data(s, nonce)) => return self.claim(wrap(s), nonce).await,
            Ok(Opening::Other(s, read)) => self.serve_connection(TokioIo::new(data::Rewind::new(read, s))).await,
            Err(e) => return tracing::debug!(%peer, error = %e, "relay connection ended"),
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "relay connection ended");
        }
    }

    async fn serve_connection<T>(self: Arc<Self>, io: T) -> hyper::Result<()>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req| self.clone().handshake(req));
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HANDSHAKE_DEADLINE)
            .serve_connection(io, service)
            .with_upgrades()
            .await
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
        let upgrade = |p: &str| {
            req.headers().get(hyper::header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(p.as_bytes()))
        };
        if req.uri().path() == LINK_PATH && upgrade(LINK_PROTOCOL) {
            return Ok(self.accept_link(req).await);
        }
        if req.uri().path() != TUNNEL_PATH || !upgrade(UPGRADE_PROTOCOL) {
            return reply(
                StatusCode::NOT_FOUND,
                "This is a Meridian relay; agents upgrade at /api/v2/agents/me/tunnel.",
            );
        }
        let agent_id = match self.admit_agent(req.headers()).await {
            Ok(agent_id) => agent_id,
            Err(super::attach::Refused(status, message)) => return reply(status, message),
        };
        tokio::spawn(async move {
            match hyper::upgrade::on(&mut req).await {
                Ok(io) => self.run_tunnel(agent_id, io).await,
                Err(e) => tracing::warn!(agent = %agent_id, error = %e, "agent upgrade failed"),
            }
        });
        Ok(switching(UPGRADE_PROTOCOL))
    }
}

#[cfg(test)]
mod tests {
    use super::super::admission;
    use super::super::testing::serving;
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection to `addr` from loopback address `from`.
    async fn connect_from(from: [u8; 4], addr: std::net::SocketAddr) -> tokio::net::TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((std::net::Ipv4Addr::from(from), 0).into()).unwrap();
        socket.connect(addr).await.unwrap()
    }

    /// Whether the relay closes `conn` (without answering) within `within`.
    async fn closed(conn: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 1];
        matches!(tokio::time::timeout(within, conn.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }

    /// The probe's flood: one address opening connection after connection
    /// and never finishing a request. It gets its share, the next are
    /// closed at once, another address is still served, and a connection
    /// that does not prove itself is closed after the handshake deadline.
    #[tokio::test]
    async fn one_address_cannot_take_the_relay_port() {
        let (relay, addr, _stop) = serving(Admission::new(100, 3)).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(connect_from([127, 0, 0, 1], addr).await);
        }
        for conn in &mut held {
            assert!(answered(conn).await, "the address's share is served");
        }
        let mut fourth = connect_from([127, 0, 0, 1], addr).await;
        assert!(closed(&mut fourth, Duration::from_secs(2)).await, "a fourth connection of one address was held");
        assert_eq!(relay.state.metrics.relay_refused.get(), 1);
        let mut other = connect_from([127, 0, 0, 2], addr).await;
        assert!(answered(&mut other).await, "another address is served");

        // Silent connections (a request never finished) end at the deadline.
        let started = tokio::time::Instant::now();
        let mut silent = connect_from([127, 0, 0, 3], addr).await;
        silent.write_all(b"GET / HTTP/1.1\r\nhost: rel").await.unwrap();
        assert!(closed(&mut silent, HANDSHAKE_DEADLINE * 3).await, "a half-sent request was held");
        assert!(started.elapsed() >= HANDSHAKE_DEADLINE - Duration::from_millis(500), "closed before its deadline");
    }

    /// Asks the relay on `conn` for a path it does not serve: its 404 shows
    /// the connection was accepted and is being served.
    async fn answered(conn: &mut tokio::net::TcpStream) -> bool {
        if conn.write_all(b"GET / HTTP/1.1\r\nhost: relay\r\n\r\n").await.is_err() {
            return false;
        }
        // The whole answer (its JSON body ends the read), so the next one starts clean.
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 1024];
            while !answer.ends_with(b"}") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        });
        read.await.is_ok() && answer.starts_with(b"HTTP/1.1 404")
    }

    #[tokio::test]
    async fn the_relay_holds_at_most_its_maximum_of_connections() {
        let (relay, addr, _stop) = serving(Admission::new(2, 2)).await;
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(answered(&mut first).await && answered(&mut second).await, "two places, two connections served");

        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0) | Err(_))), "a connection beyond the maximum was not closed: {closed:?}");
        assert_eq!(relay.state.metrics.relay_refused.get(), 1);
        assert!(answered(&mut second).await, "the connections held are still served");

        // A place freed is a place for the next connection (the relay notices
        // the close asynchronously, so a connection may be refused first).
        drop(first);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut next = tokio::net::TcpStream::connect(addr).await.unwrap();
            if answered(&mut next).await {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the freed place was never given to a new connection");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn failed_accepts_pause_the_listener_instead_of_spinning() {
        // Lowers this process's descriptor limit: nextest runs each test in a process of its own.
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (relay, addr, _stop) = serving(Admission::new(admission::MAX_UNPROVEN, admission::MAX_UNPROVEN)).await;
        let mut waiting = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(answered(&mut waiting).await);

        // Out of file descriptors: every descriptor below a lowered limit in
        // use, so the next accept fails (EMFILE) while a connection waits.
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let highest = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, highest + 1, hard).unwrap();
        let mut fillers = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            fillers.push(f);
        }
        let mut blocked = std::net::TcpStream::connect(addr);
        assert!(blocked.is_err(), "a descriptor was left for the test's own connection");
        drop(fillers.pop());
        blocked = std::net::TcpStream::connect(addr);
        let blocked = blocked.unwrap();

        // Half a second of a listener that cannot accept: about five tries at
        // one per pause, where a loop without the pause makes thousands.
        let window = Duration::from_millis(500);
        tokio::time::sleep(window).await;
        let errors = relay.state.metrics.relay_accept_errors.get();
        drop(fillers);
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
        let most = (window.as_millis() / ACCEPT_PAUSE.as_millis()) as u64 + 2;
        assert!((1..=most).contains(&errors), "{errors} failed accepts in {window:?} (at most {most})");

        // Descriptors free again: the waiting connection is accepted and served.
        blocked.set_nonblocking(true).unwrap();
        let mut blocked = tokio::net::TcpStream::from_std(blocked).unwrap();
        assert!(answered(&mut blocked).await, "accepting did not resume");
    }
}
