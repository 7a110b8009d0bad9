//! Byte pipes between two connections (an app connection and a relay's
//! stream or data connection) that end after a stretch with no bytes either
//! way, so a peer that vanished without closing (a dead host, a dropped NAT
//! mapping) does not hold two sockets and a task forever.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
    let start = Instant::now();
    // Milliseconds from `start` to the last byte read or written on `a`
    // (every byte either way passes `a`).
    let last = AtomicU64::new(0);
    let mut watched = Watched { inner: a, start, last: &last };
    let copy = tokio::io::copy_bidirectional(&mut watched, b);
    tokio::pin!(copy);
    loop {
        let quiet_until = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            done = &mut copy => return done,
            () = tokio::time::sleep_until(quiet_until) => {
                let latest = start + Duration::from_millis(last.load(Ordering::Relaxed));
                if latest + idle <= Instant::now() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, format!("no bytes either way for {idle:?}")));
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
}
