//! What a side has to write on its path, written by the session's own task
//! (no writer task, no channel, no wake-up per chunk): frames gathered into
//! one vectored write, a DATA payload shared with the unacknowledged buffer
//! (never copied), and an ACK whose count is read when it is written, so a
//! queued acknowledgement is never stale. Writing never keeps a side from
//! reading: [`Outbox::poll_write`] is one `poll_write_vectored`, and nothing
//! is lost if the write is dropped unfinished.

use super::{ACK, DATA, EOF};
use bytes::Bytes;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

/// Frames gathered into one write (two slices each).
const MAX_FRAMES: usize = 32;

/// A frame: its head (5 bytes, 13 for an ACK) and its payload.
struct Frame {
    head: [u8; 13],
    head_len: usize,
    payload: Bytes,
}

impl Frame {
    fn new(kind: u8, payload: Bytes) -> Self {
        let mut head = [0u8; 13];
        head[0] = kind;
        head[1..5].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        Self { head, head_len: 5, payload }
    }

    fn ack(received: u64) -> Self {
        let mut f = Self::new(ACK, Bytes::new());
        f.head[1..5].copy_from_slice(&8u32.to_be_bytes());
        f.head[5..13].copy_from_slice(&received.to_be_bytes());
        f.head_len = 13;
        f
    }

    fn len(&self) -> usize {
        self.head_len + self.payload.len()
    }

    /// The frame's bytes from `from` on, as at most two slices.
    fn slices(&self, from: usize) -> [&[u8]; 2] {
        let head = &self.head[..self.head_len];
        if from < head.len() {
            [&head[from..], &self.payload]
        } else {
            [&self.payload[from - head.len()..], &[]]
        }
    }
}

/// Frames waiting to be written, oldest first.
#[derive(Default)]
pub(super) struct Outbox {
    frames: VecDeque<Frame>,
    /// Bytes of the front frame already written.
    front_written: usize,
    /// An ACK is to go out with the next write (its count read then).
    ack_due: bool,
    /// Bytes were written since the last flush.
    unflushed: bool,
}

impl Outbox {
    pub(super) fn data(&mut self, payload: Bytes) {
        self.frames.push_back(Frame::new(DATA, payload));
    }

    pub(super) fn eof(&mut self) {
        self.frames.push_back(Frame::new(EOF, Bytes::new()));
    }

    /// Asks for an ACK with the next write.
    pub(super) fn ack(&mut self) {
        self.ack_due = true;
    }

    /// Something is waiting to be written.
    pub(super) fn pending(&self) -> bool {
        self.ack_due || !self.frames.is_empty()
    }

    /// Something is to be written or flushed.
    pub(super) fn busy(&self) -> bool {
        self.pending() || self.unflushed
    }

    /// Writes what waits ([`Self::poll_write`]), or, once everything is
    /// written, flushes the path (a TLS stream may hold the last records):
    /// `Ok(1)` for a flush done.
    pub(super) fn poll_send(
        &mut self,
        w: &mut (impl AsyncWrite + Unpin),
        cx: &mut Context<'_>,
        received: u64,
    ) -> Poll<std::io::Result<usize>> {
        if self.pending() {
            return self.poll_write(w, cx, received);
        }
        Pin::new(&mut *w).poll_flush(cx).map_ok(|()| {
            self.unflushed = false;
            1
        })
    }

    /// Writes what it can in one vectored write; an ACK due carries
    /// `received` as it is now. `Ok(0)` means the path takes no more.
    fn poll_write(
        &mut self,
        w: &mut (impl AsyncWrite + Unpin),
        cx: &mut Context<'_>,
        received: u64,
    ) -> Poll<std::io::Result<usize>> {
        if self.ack_due {
            // First, or behind the rest of a partly written frame; an older
            // ACK not yet begun goes (written after this one, its smaller
            // count would go back on what the peer was told: a protocol error).
            let started = usize::from(self.front_written > 0).min(self.frames.len());
            let mut index = 0;
            self.frames.retain(|f| {
                index += 1;
                index <= started || f.head[0] != ACK
            });
            self.frames.insert(started, Frame::ack(received));
            self.ack_due = false;
        }
        let mut slices = [IoSlice::new(&[]); 2 * MAX_FRAMES];
        let mut n = 0;
        for (i, frame) in self.frames.iter().take(MAX_FRAMES).enumerate() {
            let from = if i == 0 { self.front_written } else { 0 };
            for part in frame.slices(from).into_iter().filter(|p| !p.is_empty()) {
                slices[n] = IoSlice::new(part);
                n += 1;
            }
        }
        let written = match Pin::new(&mut *w).poll_write_vectored(cx, &slices[..n]) {
            Poll::Ready(Ok(written)) => written,
            other => return other,
        };
        self.unflushed = true;
        self.advance(written);
        Poll::Ready(Ok(written))
    }

    /// Drops `written` bytes from the front.
    fn advance(&mut self, mut written: usize) {
        while written > 0 {
            let Some(front) = self.frames.front() else { return };
            let left = front.len() - self.front_written;
            if left <= written {
                written -= left;
                self.frames.pop_front();
                self.front_written = 0;
            } else {
                self.front_written += written;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path that takes at most `max` bytes per write.
    struct Trickle {
        got: Vec<u8>,
        max: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Frames come out whole and in order however the path splits the
    /// writes, and an ACK asked for midway lands between two frames with
    /// the count of the moment it is written.
    #[test]
    fn frames_come_out_whole_and_an_ack_between_them() {
        for max in [1, 3, 7, 64, 1 << 20] {
            let mut out = Outbox::default();
            let mut path = Trickle { got: Vec::new(), max };
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            out.data(Bytes::from_static(b"hello"));
            out.data(Bytes::from(vec![7u8; 100]));
            let _ = out.poll_write(&mut path, &mut cx, 0);
            out.ack();
            out.eof();
            let mut received = 40;
            while out.pending() {
                received += 1;
                assert!(matches!(out.poll_write(&mut path, &mut cx, received), Poll::Ready(Ok(1..))));
            }
            assert!(out.busy() && !out.pending(), "a flush is due");
            let mut want = vec![DATA, 0, 0, 0, 5];
            want.extend_from_slice(b"hello");
            let data2 = [&[DATA, 0, 0, 0, 100][..], &[7u8; 100]].concat();
            let eof = [EOF, 0, 0, 0, 0];
            // Where the ACK went depends on how much the first write took.
            let mut frames: Vec<Vec<u8>> = Vec::new();
            let mut rest = &path.got[..];
            while !rest.is_empty() {
                let len = 5 + u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
                frames.push(rest[..len].to_vec());
                rest = &rest[len..];
            }
            let acks: Vec<&Vec<u8>> = frames.iter().filter(|f| f[0] == ACK).collect();
            assert_eq!(acks.len(), 1, "one ACK (paths of {max} bytes a write)");
            assert!(u64::from_be_bytes(acks[0][5..13].try_into().unwrap()) > 40, "the ACK's count is the newest");
            let others: Vec<Vec<u8>> = frames.into_iter().filter(|f| f[0] != ACK).collect();
            assert_eq!(others, vec![want, data2, eof.to_vec()], "paths of {max} bytes a write");
        }
    }

    /// ACKs asked for while the path is slow to take them never go out of
    /// order: each count written is at least the one before (a smaller one
    /// after a larger is a protocol error the peer ends the session for).
    #[test]
    fn acks_queued_on_a_slow_path_go_out_in_order() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Outbox::default();
        let mut path = Trickle { got: Vec::new(), max: 3 };
        for round in 0..20u64 {
            out.data(Bytes::from(vec![round as u8; 40]));
            out.ack();
            let _ = out.poll_write(&mut path, &mut cx, 100 + round);
        }
        while out.pending() {
            let _ = out.poll_write(&mut path, &mut cx, 1000);
        }
        let mut counts = Vec::new();
        let mut rest = &path.got[..];
        while !rest.is_empty() {
            let len = 5 + u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
            if rest[0] == ACK {
                counts.push(u64::from_be_bytes(rest[5..13].try_into().unwrap()));
            }
            rest = &rest[len..];
        }
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "ACK counts out of order: {counts:?}");
        assert!(!counts.is_empty());
    }
}
