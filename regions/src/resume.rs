//! Streams that outlive their path: the resume protocol between a client
//! (`meridian ssh`, `port-forward`, the web terminal) and the agent, end to
//! end through whichever region carries them.
//!
//! Each side numbers the bytes it sends (its end of stream counts as one more
//! byte), keeps what the other has not acknowledged (at most
//! [`MAX_UNACKED`]; reading its local side waits while that is full), and
//! acknowledges what it received. When the path dies (a region killed or
//! partitioned), the client opens a new one through another region naming the
//! session ([`SESSION_HEADER`]) and how much it received ([`RECEIVED_HEADER`]);
//! the agent answers with how much it received, and each side sends again
//! exactly what the other lacks: nothing lost, nothing twice.
//!
//! On a path, both ways, frames: `[kind: u8][length: u32 BE][payload]`:
//! [`DATA`] (bytes), [`ACK`] (u64 BE: all bytes received so far), [`EOF`]
//! (no more bytes from this side). An [`ACK`] goes at least every
//! [`HEARTBEAT`], so a path on which nothing arrives for [`DEAD_AFTER`] is
//! dead even if no connection reported it (a partition).

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

mod outbox;
use outbox::Outbox;

/// Names the session on a path's upgrade request (32 hex digits, random: a
/// capability only the client that opened it holds).
pub const SESSION_HEADER: &str = "Meridian-Resume-Session";
/// On the upgrade request, the bytes the client received; on the 101, the agent's.
pub const RECEIVED_HEADER: &str = "Meridian-Resume-Received";
/// Frame kinds.
pub const DATA: u8 = 0;
pub const ACK: u8 = 1;
pub const EOF: u8 = 2;
/// Bytes kept for resending, per direction: 4 MiB (bounds a session's memory,
/// and is the window bulk transfers run in).
pub const MAX_UNACKED: usize = 4 << 20;
/// Largest DATA frame sent (32 KiB: one local read).
const MAX_FRAME: usize = 32 << 10;
/// The first read on a path or local side, and each while reads are small (4 KiB).
const SMALL_READ: usize = 4 << 10;
/// Largest read from a path (64 KiB: a few frames at once in a bulk transfer).
const MAX_READ_IN: usize = 64 << 10;
/// Largest frame accepted (a peer sending more is broken).
const MAX_FRAME_IN: usize = 1 << 20;
/// An ACK goes out at least this often, so the peer knows the path lives.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// A path on which nothing arrived this long is dead (four heartbeats missed).
pub const DEAD_AFTER: Duration = Duration::from_secs(2);

/// How often a side proves the path lives, and how soon it gives up on a
/// silent one. Only the client must notice a dead path fast (it is the one
/// that opens another); the agent only has to let an abandoned session go.
/// So the agent heartbeats every [`HEARTBEAT`] and the client gives up after
/// [`DEAD_AFTER`], while the client heartbeats every 20 s and the agent gives
/// up after a minute: an idle session costs two frames a second, not four
/// (1,000 idle shells made the agent slow to answer a new one).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub dead_after: Duration,
}

impl Timing {
    pub const CLIENT: Timing = Timing { heartbeat: Duration::from_secs(20), dead_after: DEAD_AFTER };
    pub const AGENT: Timing = Timing { heartbeat: HEARTBEAT, dead_after: Duration::from_secs(60) };
    /// Both sides quick (tests).
    pub const SYMMETRIC: Timing = Timing { heartbeat: HEARTBEAT, dead_after: DEAD_AFTER };
}
/// Received bytes acknowledged without waiting for the heartbeat, every this many.
const ACK_EVERY: u64 = 256 << 10;

/// A path: any byte stream (an upgraded HTTP connection through a region).
pub trait Path: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Path for T {}

/// How one path ended.
#[derive(Debug)]
pub enum Outcome {
    /// Both sides sent everything and their ends of stream; the session is over.
    Finished,
    /// The path died; the session waits for another.
    Lost(String),
}

/// A peer's claim that cannot be true: the session cannot go on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the peer says it received {claimed} bytes, but {sent} were sent and {acked} acknowledged")]
pub struct Mismatch {
    pub claimed: u64,
    pub acked: u64,
    pub sent: u64,
}

/// One side of a session: its local stream (the SSH server, a TCP
/// connection, a terminal) and what it sent, kept and received.
pub struct Endpoint<R, W> {
    local_r: R,
    local_w: W,
    /// Bytes sent and not acknowledged, oldest first; the first is at `acked`.
    unacked: VecDeque<Bytes>,
    unacked_len: usize,
    /// Bytes (and the end of stream, as one) sent, and acknowledged.
    sent: u64,
    acked: u64,
    /// Whether the local side ended (its end of stream is counted in `sent`).
    local_eof: bool,
    /// Bytes written to the local side, plus one once the peer's end of stream came.
    received: Arc<AtomicU64>,
    peer_eof: bool,
    timing: Timing,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Endpoint<R, W> {
    pub fn new(local_r: R, local_w: W) -> Self {
        Self::with_timing(local_r, local_w, Timing::SYMMETRIC)
    }

    /// An endpoint with its side's [`Timing`].
    pub fn with_timing(local_r: R, local_w: W, timing: Timing) -> Self {
        Self {
            timing,
            local_r,
            local_w,
            unacked: VecDeque::new(),
            unacked_len: 0,
            sent: 0,
            acked: 0,
            local_eof: false,
            received: Arc::new(AtomicU64::new(0)),
            peer_eof: false,
        }
    }

    /// What this side received so far (what it tells a new path's peer).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    /// Bytes held for resending.
    pub fn unacked_len(&self) -> usize {
        self.unacked_len
    }

    /// Takes the peer's count of what it received (an acknowledgement).
    fn ack(&mut self, claimed: u64) -> Result<(), Mismatch> {
        if claimed < self.acked || claimed > self.sent {
            return Err(Mismatch { claimed, acked: self.acked, sent: self.sent });
        }
        let mut drop = usize::try_from(claimed - self.acked).unwrap_or(usize::MAX);
        self.acked = claimed;
        while drop > 0 {
            let Some(front) = self.unacked.front_mut() else { break };
            if front.len() <= drop {
                drop -= front.len();
                self.unacked_len -= front.len();
                self.unacked.pop_front();
            } else {
                front.advance(drop);
                self.unacked_len -= drop;
                drop = 0;
            }
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.local_eof && self.acked == self.sent && self.peer_eof
    }

    /// Runs the session over `path`, whose peer said it received
    /// `peer_received` (from the upgrade's headers): sends again what the
    /// peer lacks, then carries bytes both ways until the session finishes
    /// or the path dies. `superseded` resolving (a newer path arrived) ends
    /// this one as lost.
    pub async fn run(
        &mut self,
        path: impl Path,
        peer_received: u64,
        superseded: impl std::future::Future<Output = ()>,
    ) -> Result<Outcome, Mismatch> {
        self.ack(peer_received)?;
        let (mut path_r, mut path_w) = tokio::io::split(path);
        // Frames are written by this task, one vectored write at a time,
        // beside the reads: a peer that is slow to read never keeps this side
        // from reading (both sides sending at once). What waits in the outbox
        // is at most the unacknowledged window (the same buffers, shared) and
        // one ACK.
        let mut out = Outbox::default();
        for chunk in &self.unacked {
            out.data(chunk.clone());
        }
        if self.local_eof && self.acked < self.sent {
            out.eof();
        }
        tokio::pin!(superseded);
        // Read buffers start small and grow once a read fills them (see [`Buffer`]).
        let mut inbox = Buffer::new(MAX_READ_IN);
        let mut local = Buffer::new(MAX_FRAME);
        let mut acked_sent = self.received();
        let Timing { heartbeat, dead_after } = self.timing;
        let dead = tokio::time::sleep(dead_after);
        let beat = tokio::time::sleep(heartbeat);
        tokio::pin!(dead, beat);
        loop {
            if self.finished() {
                // The last ACK (and whatever waits) goes out before the path closes.
                out.ack();
                let _ = tokio::time::timeout(HEARTBEAT, drain(&mut out, &mut path_w, self.received())).await;
                return Ok(Outcome::Finished);
            }
            let room = !self.local_eof && self.unacked_len < MAX_UNACKED;
            let received = self.received();
            let (inbox_room, local_room) = (inbox.make_room(), local.make_room());
            tokio::select! {
                biased;
                read = path_r.read_buf(&mut inbox.bytes) => {
                    match read {
                        Ok(0) => return Ok(Outcome::Lost("the path closed".into())),
                        Err(e) => return Ok(Outcome::Lost(format!("the path failed: {e}"))),
                        Ok(n) => inbox.read(n, inbox_room),
                    }
                    dead.as_mut().reset(tokio::time::Instant::now() + dead_after);
                    if let Err(lost) = self.take_frames(&mut inbox.bytes).await? {
                        return Ok(Outcome::Lost(lost));
                    }
                    let received = self.received();
                    if received - acked_sent >= ACK_EVERY || (self.peer_eof && received != acked_sent) {
                        acked_sent = received;
                        out.ack();
                    }
                }
                wrote = std::future::poll_fn(|cx| out.poll_send(&mut path_w, cx, received)), if out.busy() => {
                    match wrote {
                        Ok(0) => return Ok(Outcome::Lost("the path closed".into())),
                        Err(e) => return Ok(Outcome::Lost(format!("the path failed: {e}"))),
                        Ok(_) => beat.as_mut().reset(tokio::time::Instant::now() + heartbeat),
                    }
                }
                read = self.local_r.read_buf(&mut local.bytes), if room => {
                    let n = read.unwrap_or(0);
                    local.read(n, local_room);
                    if n == 0 {
                        self.local_eof = true;
                        self.sent += 1;
                        out.eof();
                    } else {
                        let chunk = local.bytes.split().freeze();
                        self.sent += n as u64;
                        self.unacked_len += n;
                        self.unacked.push_back(chunk.clone());
                        out.data(chunk);
                    }
                }
                () = &mut beat => {
                    // Nothing written for a heartbeat: an ACK proves the path lives.
                    out.ack();
                    beat.as_mut().reset(tokio::time::Instant::now() + heartbeat);
                }
                () = &mut dead => return Ok(Outcome::Lost(format!("nothing arrived for {dead_after:?}"))),
                () = &mut superseded => return Ok(Outcome::Lost("a newer path took over".into())),
            }
        }
    }

    /// Handles the whole frames in `inbox`: `Ok(Err(why))` when the peer
    /// broke the framing (the path is dropped; the session may resume).
    async fn take_frames(&mut self, inbox: &mut BytesMut) -> Result<Result<(), String>, Mismatch> {
        while inbox.len() >= 5 {
            let kind = inbox[0];
            let len = u32::from_be_bytes([inbox[1], inbox[2], inbox[3], inbox[4]]) as usize;
            if len > MAX_FRAME_IN {
                return Ok(Err(format!("a frame of {len} bytes")));
            }
            if inbox.len() < 5 + len {
                inbox.reserve(5 + len - inbox.len());
                break;
            }
            inbox.advance(5);
            let payload = inbox.split_to(len);
            match kind {
                DATA if !self.peer_eof => {
                    // Counted as written, write by write: a path dropped
                    // midway never makes a byte count twice or not at all.
                    let mut rest = &payload[..];
                    while !rest.is_empty() {
                        match self.local_w.write(rest).await {
                            Ok(0) | Err(_) => {
                                // The local side is gone: nothing more can be
                                // delivered; count it consumed so the session ends.
                                self.received.fetch_add(rest.len() as u64, Ordering::AcqRel);
                                break;
                            }
                            Ok(n) => {
                                rest = &rest[n..];
                                self.received.fetch_add(n as u64, Ordering::AcqRel);
                            }
                        }
                    }
                    let _ = self.local_w.flush().await;
                }
                ACK if len == 8 => self.ack(u64::from_be_bytes(payload[..8].try_into().unwrap_or_default()))?,
                EOF if !self.peer_eof => {
                    // Counted before the local side is told: a path dropped
                    // while it is never makes the peer send it again.
                    self.peer_eof = true;
                    self.received.fetch_add(1, Ordering::AcqRel);
                    let _ = self.local_w.shutdown().await;
                }
                _ => return Ok(Err(format!("an unexpected frame (kind {kind}, {len} bytes)"))),
            }
        }
        Ok(Ok(()))
    }
}

/// A read buffer that starts at [`SMALL_READ`] and, once a read filled the
/// room it had (a bulk transfer), reads with `big` bytes of room from then
/// on: an idle session holds 4 KiB per direction, not the 96 KiB a bulk
/// transfer reads in (1,000 idle shells on one agent, BENCHMARKS.md).
struct Buffer {
    bytes: BytesMut,
    big: usize,
    /// A read took all the room there was: this path carries bulk.
    filled: bool,
}

impl Buffer {
    fn new(big: usize) -> Self {
        Self { bytes: BytesMut::new(), big, filled: false }
    }

    /// Room for the next read (allocated when short); how much.
    fn make_room(&mut self) -> usize {
        let spare = self.bytes.capacity() - self.bytes.len();
        if self.filled && spare < self.big {
            self.bytes.reserve(self.big);
        } else if spare == 0 {
            self.bytes.reserve(SMALL_READ);
        }
        self.bytes.capacity() - self.bytes.len()
    }

    /// A read of `n` bytes into `room`.
    fn read(&mut self, n: usize, room: usize) {
        self.filled |= n == room;
    }
}

/// Writes and flushes everything `out` holds.
async fn drain(out: &mut Outbox, w: &mut (impl AsyncWrite + Unpin), received: u64) -> std::io::Result<()> {
    while out.busy() {
        if std::future::poll_fn(|cx| out.poll_send(w, cx, received)).await? == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
    }
    Ok(())
}

/// A new random session id (32 hex digits).
pub fn new_session_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `id` is a session id as [`new_session_id`] makes them.
pub fn valid_session_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// A session carries a 20 MiB stream each way across five paths, four
    /// cut midway (one by a partition: it stops carrying bytes, no error), and
    /// both sides receive exactly what the other sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_survives_paths_cut_midway_with_nothing_lost_or_doubled() {
        const SIZE: usize = 20 << 20;
        let data = |seed: u8| (0..SIZE).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>();
        let (a_local, a_app) = tokio::io::duplex(1 << 16);
        let (b_local, b_app) = tokio::io::duplex(1 << 16);
        let (a_r, a_w) = tokio::io::split(a_local);
        let (b_r, b_w) = tokio::io::split(b_local);
        let mut a = Endpoint::new(a_r, a_w);
        let mut b = Endpoint::new(b_r, b_w);
        let app = |io: tokio::io::DuplexStream, out: Vec<u8>| {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(io);
                let send = async move {
                    for chunk in out.chunks(100_003) {
                        w.write_all(chunk).await.unwrap();
                    }
                    w.shutdown().await.unwrap();
                };
                let recv = async move {
                    let mut got = Vec::new();
                    r.read_to_end(&mut got).await.unwrap();
                    got
                };
                tokio::join!(send, recv).1
            })
        };
        let (a_sent, b_sent) = (data(1), data(7));
        let (a_app, b_app) = (app(a_app, a_sent.clone()), app(b_app, b_sent.clone()));
        let session = async {
            for round in 1.. {
                assert!(round < 50, "the session did not finish");
                let (pa, pb) = tokio::io::duplex(1 << 16);
                let (ra, rb) = (a.received(), b.received());
                // Paths 1 to 4 die after carrying 3 MiB each way; path 3 by a
                // partition (it stops carrying bytes, without an error).
                let budget = if round <= 4 { 3 << 20 } else { usize::MAX };
                let (pa, pb) = (Cut::new(pa, budget, round == 3), Cut::new(pb, budget, round == 3));
                let (oa, ob) =
                    tokio::join!(a.run(pa, rb, std::future::pending()), b.run(pb, ra, std::future::pending()));
                match (oa.unwrap(), ob.unwrap()) {
                    (Outcome::Finished, Outcome::Finished) => {
                        assert!(round > 4, "finished on a path that was to be cut");
                        break;
                    }
                    (Outcome::Finished, _) | (_, Outcome::Finished) if round <= 4 => {}
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), session).await.expect("the session did not finish in 60 s");
        let (a_got, b_got) = (a_app.await.unwrap(), b_app.await.unwrap());
        assert_eq!(a_got.len(), SIZE);
        assert_eq!(Sha256::digest(&a_got), Sha256::digest(&b_sent), "what a received differs from what b sent");
        assert_eq!(Sha256::digest(&b_got), Sha256::digest(&a_sent), "what b received differs from what a sent");
        assert!(a.unacked_len() == 0 && b.unacked_len() == 0);
    }

    /// A path that carries `budget` bytes written, then fails writes (a
    /// killed region) or, `stall`ing, swallows writes and never reads again.
    struct Cut {
        inner: tokio::io::DuplexStream,
        budget: usize,
        stall: bool,
    }

    impl Cut {
        fn new(inner: tokio::io::DuplexStream, budget: usize, stall: bool) -> Self {
            Self { inner, budget, stall }
        }
    }

    impl AsyncRead for Cut {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.stall && self.budget == 0 {
                return std::task::Poll::Pending;
            }
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Cut {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            use std::task::Poll;
            match (self.budget, self.stall) {
                (0, true) => return Poll::Ready(Ok(buf.len())),
                (0, false) => return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
                _ => {}
            }
            let n = buf.len().min(self.budget);
            let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, &buf[..n]);
            if let Poll::Ready(Ok(n)) = r {
                self.budget -= n;
            }
            r
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[test]
    fn a_claim_outside_what_was_sent_is_refused() {
        let (r, w) = tokio::io::split(tokio::io::duplex(16).0);
        let mut e = Endpoint::new(r, w);
        e.unacked.push_back(Bytes::from_static(b"hello"));
        e.unacked_len = 5;
        e.sent = 5;
        assert_eq!(e.ack(6), Err(Mismatch { claimed: 6, acked: 0, sent: 5 }));
        e.ack(3).unwrap();
        assert_eq!((e.unacked_len(), &e.unacked[0][..]), (2, &b"lo"[..]));
        assert_eq!(e.ack(2), Err(Mismatch { claimed: 2, acked: 3, sent: 5 }));
        assert!(valid_session_id(&new_session_id()) && !valid_session_id("ABC"));
    }
}
