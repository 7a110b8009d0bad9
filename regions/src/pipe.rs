//! Byte pipes between two connections (an app connection and a relay's
//! stream or data connection) that end after a stretch with no bytes either
//! way, so a peer that vanished without closing (a dead host, a dropped NAT
//! mapping) does not hold two sockets and a task forever. Between two TCP
//! sockets ([`splice`]) the bytes stay in the kernel.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a pipe may carry nothing before it is closed. Default 1 h: long
/// enough for an idle terminal or notebook WebSocket, short enough that a
/// dead peer's pipe goes. Agents and relays take `--pipe-idle-timeout`.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(3600);

/// Copies both ways between `a` and `b` until both sides close (the byte
/// counts, as `tokio::io::copy_bidirectional`), or an error, or `idle` passes
/// with no byte moving (`TimedOut`).
pub async fn pipe<A, B>(a: &mut A, b: &mut B, idle: Duration) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    pipe_with(a, b, idle, None).await
}

/// [`pipe`] that, once `drain` turns true, also ends as soon as `quiet`
/// passes with no byte moving: what a relay that is shutting down does with
/// the streams it carries for peer relays. A stream still busy (a response
/// streaming, a WebSocket talking) runs on; one idle in a peer's connection
/// pool, or between requests, lets the relay go.
pub async fn pipe_until_drained<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    quiet: Duration,
    drain: tokio::sync::watch::Receiver<bool>,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    pipe_with(a, b, idle, Some((quiet, drain))).await
}

async fn pipe_with<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    drain: Option<(Duration, tokio::sync::watch::Receiver<bool>)>,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let start = Instant::now();
    // Milliseconds from `start` to the last byte read or written on `a`
    // (every byte either way passes `a`).
    let last = AtomicU64::new(0);
    let mut watched = Watched { inner: a, start, last: &last };
    until_idle(tokio::io::copy_bidirectional(&mut watched, b), start, &last, idle, drain).await
}

/// [`pipe`] for two TCP sockets, with bulk transfers moved inside the kernel
/// (`splice(2)` through a kernel pipe per direction) instead of copied
/// through user space, and small ones copied (see [`splice_one_way`]): what
/// the agent does between its data connection and the app. Same ends as
/// [`pipe`]: both sides closed (each EOF is passed on as a write shutdown),
/// an error, or `idle` with no byte moving.
pub async fn splice(a: &mut TcpStream, b: &mut TcpStream, idle: Duration) -> io::Result<(u64, u64)> {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    let ((a_read, a_write), (b_read, b_write)) = (a.split(), b.split());
    let both =
        async { tokio::try_join!(splice_one_way(a_read, b_write, &touch), splice_one_way(b_read, a_write, &touch)) };
    until_idle(both, start, &last, idle, None).await
}

/// Runs `work` until it ends, or until `idle` passes with `last` (milliseconds
/// from `start` to the last byte moved) unchanged: then `TimedOut`. With
/// `drain`, once it turns true the limit is `quiet` instead (if shorter).
async fn until_idle<T>(
    work: impl std::future::Future<Output = io::Result<T>>,
    start: Instant,
    last: &AtomicU64,
    mut idle: Duration,
    mut drain: Option<(Duration, tokio::sync::watch::Receiver<bool>)>,
) -> io::Result<T> {
    tokio::pin!(work);
    loop {
        let drained = drain.as_mut().is_some_and(|(_, d)| *d.borrow_and_update());
        if let (true, Some((quiet, _))) = (drained, drain.take_if(|_| drained)) {
            idle = idle.min(quiet);
        }
        let quiet_until = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        let draining = async {
            match drain.as_mut() {
                // A closed sender never drains.
                Some((_, d)) => {
                    if d.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = &mut work => return done,
            () = draining => {}
            () = tokio::time::sleep_until(quiet_until) => {
                let latest = start + Duration::from_millis(last.load(Ordering::Relaxed));
                if latest + idle <= Instant::now() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, format!("no bytes either way for {idle:?}")));
                }
            }
        }
    }
}

/// Moves bytes from `from` to `to` until `from`'s EOF (then shuts down
/// `to`'s writing half), waiting on each socket's readiness. Reads that fit
/// a small buffer (requests, answers, keystrokes, WebSocket messages) are
/// copied through it: a `recv` and a `send`, cheaper for a few hundred bytes
/// than a splice into a kernel pipe and one out of it (a hop of this code:
/// 17.0 → 15.8 µs of CPU per small request; BENCHMARKS.md). They are read
/// with the stream's `poll_read`, which takes a read that leaves the buffer
/// part empty as the socket drained and waits for readiness next, where
/// `try_read_buf` would ask the kernel again and get `EAGAIN`: one `recv`
/// less per message. The first read that fills the buffer means a bulk
/// transfer: from then on the bytes stay in the kernel (socket → pipe, then
/// pipe → socket until the pipe is empty).
async fn splice_one_way(mut from: ReadHalf<'_>, to: WriteHalf<'_>, touch: &impl Fn()) -> io::Result<u64> {
    const SMALL: usize = 8 * 1024;
    let to: &TcpStream = to.as_ref();
    let mut total = 0u64;
    loop {
        // Allocated per read (a thread-local free list's work), so an idle
        // pipe holds no buffer.
        let mut buf = Vec::with_capacity(SMALL);
        let read = from.read_buf(&mut buf).await?;
        if read == 0 {
            return shut_write(to).map(|()| total);
        }
        touch();
        let mut sent = 0;
        while sent < read {
            to.writable().await?;
            match to.try_write(&buf[sent..read]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => {
                    let written = written?;
                    sent += written;
                    total += written as u64;
                    touch();
                }
            }
        }
        if read == SMALL {
            break;
        }
    }
    splice_bulk(from.as_ref(), to, touch, total).await
}

/// Like copy_bidirectional: an EOF goes on as a write shutdown.
fn shut_write(to: &TcpStream) -> io::Result<()> {
    match nix::sys::socket::shutdown(to.as_raw_fd(), nix::sys::socket::Shutdown::Write) {
        Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// [`splice_one_way`] once a transfer is bulk: `total` bytes moved so far.
async fn splice_bulk(from: &TcpStream, to: &TcpStream, touch: &impl Fn(), mut total: u64) -> io::Result<u64> {
    use nix::fcntl::{splice, SpliceFFlags};
    use tokio::io::Interest;
    let (pipe_out, pipe_in) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    // A kernel pipe holds 64 KiB by default.
    const CHUNK: usize = 64 * 1024;
    loop {
        let read = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || Ok(splice(from, None, &pipe_in, None, CHUNK, flags)?)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                read => break read?,
            }
        };
        if read == 0 {
            return shut_write(to).map(|()| total);
        }
        touch();
        let mut left = read;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || Ok(splice(&pipe_out, None, to, None, left, flags)?)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => {
                    let written = written?;
                    left -= written;
                    total += written as u64;
                    touch();
                }
            }
        }
    }
}

struct Watched<'a, T: ?Sized> {
    inner: &'a mut T,
    start: Instant,
    last: &'a AtomicU64,
}

impl<T: ?Sized> Watched<'_, T> {
    fn touch(&self) {
        self.last.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Watched<'_, T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Watched<'_, T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut *self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_pipe_lives_while_bytes_move_and_ends_when_they_stop() {
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let idle = Duration::from_secs(10);
        let piped = tokio::spawn(async move { pipe(&mut a, &mut b, idle).await });
        // Bytes every 6 s, either way, for 30 s: never 10 s quiet.
        for i in 0..5u8 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            let mut got = [0u8; 1];
            if i % 2 == 0 {
                a_peer.write_all(&[i]).await.unwrap();
                b_peer.read_exact(&mut got).await.unwrap();
            } else {
                b_peer.write_all(&[i]).await.unwrap();
                a_peer.read_exact(&mut got).await.unwrap();
            }
            assert_eq!(got[0], i);
            assert!(!piped.is_finished(), "closed while bytes moved");
        }
        // Then nothing: closed once 10 s have passed with no byte.
        let ended = tokio::time::timeout(Duration::from_secs(11), piped).await.expect("still open").unwrap();
        assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_pipe_ends_once_quiet_and_a_busy_one_runs_on() {
        let (drain_tx, drain) = tokio::sync::watch::channel(false);
        let (idle, quiet) = (Duration::from_secs(3600), Duration::from_secs(2));
        let start = |drain: tokio::sync::watch::Receiver<bool>| {
            let (mut a, a_peer) = tokio::io::duplex(64);
            let (mut b, b_peer) = tokio::io::duplex(64);
            let piped = tokio::spawn(async move { pipe_until_drained(&mut a, &mut b, idle, quiet, drain).await });
            (piped, a_peer, b_peer)
        };
        let (idle_pipe, _ia, _ib) = start(drain.clone());
        let (busy_pipe, mut busy_a, mut busy_b) = start(drain);
        // Before the drain, a quiet pipe lives (the idle limit is an hour).
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!idle_pipe.is_finished(), "a quiet pipe closed before the drain");
        // The busy one is busy when the drain begins.
        busy_a.write_all(b"x").await.unwrap();
        busy_b.read_exact(&mut [0u8; 1]).await.unwrap();
        drain_tx.send_replace(true);
        // The busy pipe moves a byte every second for 10 s: never 2 s quiet.
        for i in 0..10u8 {
            busy_a.write_all(&[i]).await.unwrap();
            let mut got = [0u8; 1];
            busy_b.read_exact(&mut got).await.unwrap();
            assert_eq!(got[0], i);
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(!busy_pipe.is_finished(), "a busy pipe closed in the drain");
        }
        let ended = tokio::time::timeout(Duration::from_millis(10), idle_pipe).await.expect("the quiet pipe is open");
        assert_eq!(ended.unwrap().unwrap_err().kind(), io::ErrorKind::TimedOut);
        // Then the busy one goes quiet, and ends within `quiet`.
        let ended = tokio::time::timeout(quiet + Duration::from_millis(10), busy_pipe).await.expect("still open");
        assert_eq!(ended.unwrap().unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    /// Two connected loopback sockets.
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dialed = TcpStream::connect(listener.local_addr().unwrap());
        let (dialed, accepted) = tokio::join!(dialed, listener.accept());
        (dialed.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn splice_moves_every_byte_both_ways_and_passes_each_close_on() {
        let (mut a, mut a_peer) = socket_pair().await;
        let (mut b, mut b_peer) = socket_pair().await;
        let piped = tokio::spawn(async move { splice(&mut a, &mut b, Duration::from_secs(30)).await });
        // 3 MiB one way (more than a kernel pipe holds), 100 KiB the other, at once.
        let down: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let up: Vec<u8> = (0..100 * 1024u32).map(|i| (i % 241) as u8).collect();
        let (down_sent, up_sent) = (down.clone(), up.clone());
        let (mut a_read, mut a_write) = a_peer.split();
        let (mut b_read, mut b_write) = b_peer.split();
        let (mut at_b, mut at_a) = (Vec::new(), Vec::new());
        let moved = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(
                async {
                    a_write.write_all(&down_sent).await.unwrap();
                    a_write.shutdown().await.unwrap();
                },
                async {
                    b_write.write_all(&up_sent).await.unwrap();
                    b_write.shutdown().await.unwrap();
                },
                b_read.read_to_end(&mut at_b),
                a_read.read_to_end(&mut at_a),
            )
        });
        let ((), (), got_b, got_a) = moved.await.expect("every byte and both closes within 10 s");
        // Each side's EOF arrived (read_to_end returned) after every byte.
        assert_eq!(got_b.unwrap(), down.len());
        assert_eq!(got_a.unwrap(), up.len());
        assert!(at_b == down, "the bytes from a arrived changed");
        assert!(at_a == up, "the bytes from b arrived changed");
        let counts = tokio::time::timeout(Duration::from_secs(5), piped).await.expect("ended").unwrap().unwrap();
        assert_eq!(counts, (down.len() as u64, up.len() as u64));
    }

    /// What a pooled data connection carries: small exchanges (copied), a
    /// bulk answer (spliced), and small exchanges again, each byte in order.
    #[tokio::test]
    async fn splice_carries_small_exchanges_around_a_bulk_transfer_in_order() {
        let (mut a, mut a_peer) = socket_pair().await;
        let (mut b, mut b_peer) = socket_pair().await;
        let piped = tokio::spawn(async move { splice(&mut a, &mut b, Duration::from_secs(30)).await });
        let exchange = |i: u32| format!("request {i}: {}", "x".repeat((i as usize * 37) % 900)).into_bytes();
        let talk = async {
            for i in 0..40u32 {
                let (request, answer) = (exchange(i), exchange(i + 1000));
                a_peer.write_all(&request).await.unwrap();
                let mut got = vec![0u8; request.len()];
                b_peer.read_exact(&mut got).await.unwrap();
                assert!(got == request, "request {i} arrived changed");
                b_peer.write_all(&answer).await.unwrap();
                let mut got = vec![0u8; answer.len()];
                a_peer.read_exact(&mut got).await.unwrap();
                assert!(got == answer, "answer {i} arrived changed");
            }
        };
        tokio::time::timeout(Duration::from_secs(10), talk).await.expect("small exchanges within 10 s");
        // A bulk answer: 2 MiB, read as it comes.
        let bulk: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
        let mut got = vec![0u8; bulk.len()];
        let moved = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(b_peer.write_all(&bulk), a_peer.read_exact(&mut got))
        });
        let (sent, read) = moved.await.expect("the bulk answer within 10 s");
        sent.unwrap();
        read.unwrap();
        assert!(got == bulk, "the bulk answer arrived changed");
        // Small again, both ways, then each side closes.
        a_peer.write_all(b"after").await.unwrap();
        let mut got = [0u8; 5];
        b_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"after");
        b_peer.write_all(b"bye").await.unwrap();
        b_peer.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), a_peer.read_to_end(&mut rest)).await.expect("EOF").unwrap();
        assert_eq!(rest, b"bye");
        a_peer.shutdown().await.unwrap();
        let counts = tokio::time::timeout(Duration::from_secs(5), piped).await.expect("ended").unwrap().unwrap();
        let small: u64 = (0..40u32).map(|i| exchange(i).len() as u64).sum();
        let answers: u64 = (0..40u32).map(|i| exchange(i + 1000).len() as u64).sum();
        assert_eq!(counts, (small + 5, answers + bulk.len() as u64 + 3));
    }

    #[tokio::test]
    async fn splice_ends_when_no_bytes_move_for_the_idle_timeout() {
        let (mut a, mut a_peer) = socket_pair().await;
        let (mut b, mut b_peer) = socket_pair().await;
        let idle = Duration::from_millis(300);
        let started = Instant::now();
        let piped = tokio::spawn(async move { splice(&mut a, &mut b, idle).await });
        // A byte every 100 ms for 600 ms keeps it open.
        for i in 0..6u8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            a_peer.write_all(&[i]).await.unwrap();
            let mut got = [0u8; 1];
            b_peer.read_exact(&mut got).await.unwrap();
            assert_eq!(got[0], i);
        }
        assert!(!piped.is_finished(), "closed while bytes moved");
        let ended = tokio::time::timeout(Duration::from_secs(5), piped).await.expect("still open").unwrap();
        assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(900), "ended after {:?}", started.elapsed());
    }
}
