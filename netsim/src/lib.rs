//! User-space network simulation on loopback, in the spirit of toxiproxy:
//! a [`Link`] is a TCP forwarder between a listening address and an upstream
//! address that can add one-way latency, stall (a partition: nothing flows in
//! either direction, new connections hang), refuse new connections, reset
//! every open connection, or forget them (a middlebox that lost its state:
//! the connections look alive until either side sends, which resets them, as
//! do bytes the link was carrying when it forgot). The kernel's netem is not available on the machines
//! Meridian is tested on, and tests may only use loopback.
//!
//! A link may balance over several upstreams ([`Link::start_balanced`]), as
//! a TCP load balancer in front of a region's replicas does: each new
//! connection goes to the next upstream in turn, skipping any that refuses it.
//!
//! Latency is added per chunk in each direction, without stop-and-wait, so a
//! link with latency L adds about 2·L to a round trip and keeps throughput.
//! A stall pauses reading and delivery: bytes wait in kernel buffers and flow
//! again when the partition heals, as retransmissions would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What a link does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward, with the configured latency.
    Pass,
    /// A partition: nothing flows, new connections are accepted but hang.
    Stall,
    /// New connections are closed at once (open ones keep flowing).
    Refuse,
}

/// Chunks in flight per direction before the reader waits (bounds memory).
const QUEUE: usize = 64;
const CHUNK: usize = 64 * 1024;

#[derive(Debug)]
struct Shared {
    latency_us: AtomicU64,
    mode: watch::Sender<Mode>,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
    /// Bumped to forget every open connection.
    forgets: watch::Sender<u64>,
    /// Where connections go; empty until set (connections are then closed at once).
    upstreams: std::sync::Mutex<Vec<SocketAddr>>,
    /// The upstream the next connection tries first (round robin).
    next: AtomicUsize,
}

/// A running link; dropping it stops accepting (open connections end when
/// their peers close).
#[derive(Debug, Clone)]
pub struct Link {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl Link {
    /// Listens on `listen` (port 0 picks one) and forwards to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Link> {
        Self::start_balanced(listen, vec![upstream]).await
    }

    /// Listens on `listen` and spreads new connections over `upstreams` in
    /// turn; an upstream that refuses the connection is skipped for the next.
    pub async fn start_balanced(listen: SocketAddr, upstreams: Vec<SocketAddr>) -> std::io::Result<Link> {
        if upstreams.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "a link needs an upstream"));
        }
        let link = Self::start_pending(listen).await?;
        link.set_upstreams(upstreams);
        Ok(link)
    }

    /// Listens on `listen` with no upstream yet: what it accepts is closed at
    /// once until [`Link::set_upstreams`]. For an upstream that binds its own
    /// port after it learns the link's address (it advertises the link).
    pub async fn start_pending(listen: SocketAddr) -> std::io::Result<Link> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            latency_us: AtomicU64::new(0),
            mode: watch::channel(Mode::Pass).0,
            resets: watch::channel(0).0,
            forgets: watch::channel(0).0,
            upstreams: std::sync::Mutex::default(),
            next: AtomicUsize::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept(listener, shared.clone(), stopped));
        Ok(Link { addr, shared, stop })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections go from now on (in turn, as in [`Link::start_balanced`]).
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        *self.shared.upstreams.lock().unwrap_or_else(|e| e.into_inner()) = upstreams;
    }

    /// One-way latency added in each direction.
    pub fn set_latency(&self, one_way: Duration) {
        self.shared.latency_us.store(one_way.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.shared.latency_us.load(Ordering::Relaxed))
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// Resets (RST) every connection open now.
    pub fn reset_all(&self) {
        self.shared.resets.send_modify(|n| *n += 1);
    }

    /// Forgets every connection open now: it carries nothing more, and the
    /// first bytes (or close) either side sends reset both sides, as a NAT or
    /// firewall that lost its state does. Until then both sides see an idle,
    /// healthy connection.
    pub fn forget_all(&self) {
        self.shared.forgets.send_modify(|n| *n += 1);
    }

    /// Stops accepting new connections.
    pub fn close(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        tracing::trace!(upstream = ?self.upstreams, "link closed");
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else { continue };
        if *shared.mode.borrow() == Mode::Refuse {
            drop(client);
            continue;
        }
        tokio::spawn(connection(client, shared.clone()));
    }
}

/// One forwarded connection: waits out a stall before dialing upstream, then
/// pumps both directions until either side closes or the link resets it.
async fn connection(client: TcpStream, shared: Arc<Shared>) {
    let mut resets = shared.resets.subscribe();
    let mut forgets = shared.forgets.subscribe();
    let mut mode = shared.mode.subscribe();
    if mode.wait_for(|m| *m != Mode::Stall).await.is_err() {
        return;
    }
    let Some(mut upstream) = dial(&shared).await else { return };
    let mut client = client;
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    // Bytes the link has read and not yet delivered, either way.
    let in_flight = AtomicUsize::new(0);
    let reset = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let pumps = async {
            tokio::join!(pump(cr, uw, &shared, &in_flight), pump(ur, cw, &shared, &in_flight));
        };
        tokio::select! {
            () = pumps => false,
            _ = resets.changed() => true,
            // Bytes it was carrying are lost with its state; their sender's
            // retransmission would meet the reset, so they reset at once.
            _ = forgets.changed() => in_flight.load(Ordering::Relaxed) > 0 || {
                tokio::select! {
                    _ = client.readable() => {}
                    _ = upstream.readable() => {}
                    _ = resets.changed() => {}
                }
                true
            },
        }
    };
    if reset {
        // Zero linger: closing sends RST, as a reset in the network would.
        let _ = (client.set_zero_linger(), upstream.set_zero_linger());
    }
}

/// Connects to the next upstream that accepts, trying each once.
async fn dial(shared: &Shared) -> Option<TcpStream> {
    let upstreams = shared.upstreams.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let first = shared.next.fetch_add(1, Ordering::Relaxed);
    for i in 0..upstreams.len() {
        let addr = upstreams[(first + i) % upstreams.len()];
        if let Ok(s) = TcpStream::connect(addr).await {
            return Some(s);
        }
    }
    None
}

/// Copies `from` → `to`, each chunk delivered `latency` after it was read,
/// pausing while the link stalls.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    shared: &Shared,
    in_flight: &AtomicUsize,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let reader_shared = shared;
    let reader = async move {
        let mut mode = reader_shared.mode.subscribe();
        loop {
            if mode.wait_for(|m| *m != Mode::Stall).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; CHUNK];
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.truncate(n);
            in_flight.fetch_add(n, Ordering::Relaxed);
            let due = Instant::now() + Duration::from_micros(reader_shared.latency_us.load(Ordering::Relaxed));
            if tx.send((due, buf)).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        let mut mode = shared.mode.subscribe();
        while let Some((due, chunk)) = rx.recv().await {
            // Not a timer for a chunk already due (a link without latency):
            // the timer's 1 ms ticks would add a millisecond per crossing.
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            if mode.wait_for(|m| *m != Mode::Stall).await.is_err() || to.write_all(&chunk).await.is_err() {
                return;
            }
            in_flight.fetch_sub(chunk.len(), Ordering::Relaxed);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream) -> Duration {
        let start = Instant::now();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        start.elapsed()
    }

    #[tokio::test]
    async fn latency_stall_and_reset() {
        let link = Link::start("127.0.0.1:0".parse().unwrap(), echo().await).await.unwrap();
        let mut s = TcpStream::connect(link.addr()).await.unwrap();
        assert!(round_trip(&mut s).await < Duration::from_millis(40), "no latency by default");
        link.set_latency(Duration::from_millis(50));
        let rtt = round_trip(&mut s).await;
        assert!(rtt >= Duration::from_millis(100), "one-way latency applies in both directions: {rtt:?}");

        link.set_latency(Duration::ZERO);
        link.set_mode(Mode::Stall);
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        let stalled = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await;
        assert!(stalled.is_err(), "a stalled link delivers nothing");
        link.set_mode(Mode::Pass);
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf, b"ping", "bytes sent during the stall arrive after it heals");

        link.reset_all();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "a reset closes open connections");

        let mut quiet = TcpStream::connect(link.addr()).await.unwrap();
        round_trip(&mut quiet).await;
        link.forget_all();
        let idle = tokio::time::timeout(Duration::from_millis(200), quiet.read(&mut buf)).await;
        assert!(idle.is_err(), "a forgotten connection looks alive while nobody sends");
        quiet.write_all(b"ping").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), quiet.read(&mut buf)).await.unwrap();
        assert!(n.is_err(), "the first bytes on a forgotten connection reset it: {n:?}");
        let mut fresh = TcpStream::connect(link.addr()).await.unwrap();
        round_trip(&mut fresh).await;

        // Bytes the link holds (here: delayed) when it forgets are lost with
        // its state, and reset the connection rather than leave both sides waiting.
        link.set_latency(Duration::from_millis(300));
        fresh.write_all(b"ping").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        link.forget_all();
        let n = tokio::time::timeout(Duration::from_secs(5), fresh.read(&mut buf)).await;
        assert!(matches!(n, Ok(Err(_))), "bytes in flight at the forget reset the connection: {n:?}");
        link.set_latency(Duration::ZERO);
        let mut fresh = TcpStream::connect(link.addr()).await.unwrap();
        round_trip(&mut fresh).await;

        link.set_mode(Mode::Refuse);
        let mut refused = TcpStream::connect(link.addr()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut buf)).await.unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "a refusing link closes new connections");
    }

    /// A listener that answers every connection with its own tag, then closes.
    async fn tagged(tag: u8) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(&[tag]).await;
            }
        });
        (addr, task)
    }

    async fn served_by(link: &Link) -> u8 {
        let mut s = TcpStream::connect(link.addr()).await.unwrap();
        let mut tag = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut tag)).await.unwrap().unwrap();
        tag[0]
    }

    #[tokio::test]
    async fn a_balanced_link_takes_turns_and_skips_an_upstream_that_refuses() {
        let (a, _a) = tagged(1).await;
        let (b, b_task) = tagged(2).await;
        let link = Link::start_balanced("127.0.0.1:0".parse().unwrap(), vec![a, b]).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(served_by(&link).await);
        }
        seen.sort_unstable();
        assert_eq!(seen, [1, 1, 2, 2], "new connections alternate between the upstreams");
        b_task.abort();
        let _ = b_task.await; // b's listener is closed: connecting to it is refused
        for _ in 0..4 {
            assert_eq!(served_by(&link).await, 1, "an upstream that refuses is skipped");
        }
    }

    #[tokio::test]
    async fn a_pending_link_closes_what_it_accepts_until_it_has_an_upstream() {
        let link = Link::start_pending("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut s = TcpStream::connect(link.addr()).await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut [0u8; 1])).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "closed, not held: {read:?}");
        let (a, _a) = tagged(3).await;
        link.set_upstreams(vec![a]);
        assert_eq!(served_by(&link).await, 3);
    }
}
