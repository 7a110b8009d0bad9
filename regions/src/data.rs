//! Data connections: one plain TCP (or TLS) connection per upstream
//! connection, dialed by the agent to its relay on request, as frp and
//! rathole do. The HTTP/2 tunnel carries control (and stays the fallback);
//! the bytes of an app connection travel on their own socket, which the
//! proxy hands to pingora like any TCP upstream: no HTTP/2 framing, no flow
//! control, no wake-up of a shared connection task per frame.
//!
//! 1. The relay picks a [`Nonce`] and asks over the tunnel: `POST`
//!    [`DATA_PATH`] with [`TARGET_HEADER`] and [`NONCE_HEADER`].
//! 2. The agent checks the target, connects to the app, dials the relay URL
//!    it attached to, and writes [`PREAMBLE`], the nonce and `\r\n`.
//! 3. The relay's listener tells that preamble from an HTTP request by its
//!    first bytes, finds the waiting request by the nonce's id, compares the
//!    secret in constant time, and answers one byte, [`ACK`].
//! 4. The agent answers `204` over the tunnel and copies bytes between the
//!    app and the data connection. An agent that cannot dial back answers
//!    [`CANNOT_DIAL_BACK`], and the relay opens an HTTP/2 stream instead.
//!
//! A mesh hop works the same way: the asking relay sends the request over its
//! link to the relay holding the tunnel, with the request's app token and
//! [`DIAL_HEADER`] naming itself; the holder checks the token and passes the
//! request to its agent, which dials the asking relay directly (only a relay
//! from its own list). The bytes skip the holder altogether.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Relay → agent over the tunnel: open a data connection.
pub const DATA_PATH: &str = "/meridian/data";
pub const TARGET_HEADER: &str = "meridian-target";
pub const NONCE_HEADER: &str = "meridian-data-nonce";
/// For a mesh hop: the relay (one the agent was given) to dial instead of its
/// own, the one whose proxy asked; no bytes then pass the relay in between.
pub const DIAL_HEADER: &str = "meridian-data-dial";
/// The first bytes of a data connection. No HTTP method starts like this.
pub const PREAMBLE: &[u8; 16] = b"MERIDIAN-DATA/1 ";
/// The relay's one-byte answer once it matched the nonce.
pub const ACK: u8 = b'+';
/// The agent's answer when it cannot reach the relay for a data connection.
pub const CANNOT_DIAL_BACK: u16 = 421;
/// Longest wait for the preamble, the acknowledgement, or the dial itself.
pub const DATA_TIMEOUT: Duration = Duration::from_secs(5);

const ID_LEN: usize = 16;
const SECRET_LEN: usize = 32;
/// Preamble + id + secret (hex) + `\r\n`.
pub const LINE_LEN: usize = PREAMBLE.len() + ID_LEN + SECRET_LEN + 2;

/// A one-time credential for one data connection: a public id (the lookup
/// key) and a secret compared in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct Nonce {
    pub id: [u8; ID_LEN],
    secret: [u8; SECRET_LEN],
}

impl std::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nonce({})", String::from_utf8_lossy(&self.id))
    }
}

impl Nonce {
    pub fn random() -> Self {
        use rand::Rng;
        let mut rng = rand::rng();
        let hex = |b: u8| b"0123456789abcdef"[usize::from(b & 15)];
        Self { id: std::array::from_fn(|_| hex(rng.random())), secret: std::array::from_fn(|_| hex(rng.random())) }
    }

    /// The header value: id and secret, 48 hex digits.
    pub fn to_header(&self) -> String {
        let mut s = String::with_capacity(ID_LEN + SECRET_LEN);
        s.push_str(std::str::from_utf8(&self.id).unwrap_or_default());
        s.push_str(std::str::from_utf8(&self.secret).unwrap_or_default());
        s
    }

    pub fn parse(text: &[u8]) -> Option<Self> {
        if text.len() != ID_LEN + SECRET_LEN || !text.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let (id, secret) = text.split_at(ID_LEN);
        Some(Self { id: id.try_into().ok()?, secret: secret.try_into().ok()? })
    }

    /// Whether `other` carries the same secret (constant time).
    pub fn matches(&self, other: &Self) -> bool {
        self.id == other.id && bool::from(self.secret.ct_eq(&other.secret))
    }
}

/// A data connection: plain TCP, or TLS when the relay listens on https.
#[derive(Debug)]
pub enum DataStream {
    Plain(TcpStream),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

macro_rules! each {
    ($self:ident, $method:ident($($arg:expr),*)) => {
        match $self.get_mut() {
            DataStream::Plain(s) => Pin::new(s).$method($($arg),*),
            DataStream::Client(s) => Pin::new(s.as_mut()).$method($($arg),*),
            DataStream::Server(s) => Pin::new(s.as_mut()).$method($($arg),*),
        }
    };
}

impl AsyncRead for DataStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        each!(self, poll_read(cx, buf))
    }
}

impl AsyncWrite for DataStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        each!(self, poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        each!(self, poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        matches!(self, Self::Plain(_))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, poll_shutdown(cx))
    }
}

/// Agent side: dials `relay_url` (the one the tunnel went to), presents
/// `nonce` and waits for the relay's [`ACK`].
pub async fn dial(relay_url: &str, nonce: &str, tls: &crate::tls_client::TlsClient) -> anyhow::Result<DataStream> {
    use anyhow::Context as _;
    let url = url::Url::parse(relay_url)?;
    let host = url.host_str().context("relay URL has no host")?.to_owned();
    let port = url.port_or_known_default().context("relay URL has no port")?;
    let dial = async {
        let tcp = crate::resolve::connect(&host, port).await?;
        tcp.set_nodelay(true)?;
        let mut stream = match url.scheme() {
            "http" => DataStream::Plain(tcp),
            "https" => {
                let name = rustls::pki_types::ServerName::try_from(
                    host.trim_start_matches('[').trim_end_matches(']').to_owned(),
                )?;
                DataStream::Client(Box::new(tls.connector().connect(name, tcp).await?))
            }
            other => anyhow::bail!("{relay_url}: unsupported scheme {other}"),
        };
        let mut line = Vec::with_capacity(LINE_LEN);
        line.extend_from_slice(PREAMBLE);
        line.extend_from_slice(nonce.as_bytes());
        line.extend_from_slice(b"\r\n");
        stream.write_all(&line).await?;
        stream.flush().await?;
        let mut ack = [0u8];
        stream.read_exact(&mut ack).await.context("the relay did not take the data connection")?;
        anyhow::ensure!(ack[0] == ACK, "the relay answered {:?} instead of the data acknowledgement", ack[0]);
        Ok(stream)
    };
    tokio::time::timeout(DATA_TIMEOUT, dial).await.context("timed out dialing a data connection")?
}

/// Relay side: what a new connection's first bytes say it is.
pub enum Opening<T> {
    /// A data connection presenting this nonce; nothing past the preamble line has been read.
    Data(T, Nonce),
    /// Anything else, with the bytes read so far (to be read again).
    Other(T, Vec<u8>),
}

/// Reads just enough of a new connection to tell a data connection from an
/// HTTP request (never past the preamble line), within [`DATA_TIMEOUT`].
pub async fn classify<T: AsyncRead + Unpin>(mut io: T) -> std::io::Result<Opening<T>> {
    let read = async {
        let mut head = [0u8; PREAMBLE.len()];
        let mut n = 0;
        while n < head.len() {
            let got = io.read(&mut head[n..]).await?;
            if got == 0 || head[n..n + got] != PREAMBLE[n..n + got] {
                return Ok(Opening::Other(io, head[..n + got].to_vec()));
            }
            n += got;
        }
        let mut rest = [0u8; LINE_LEN - PREAMBLE.len()];
        io.read_exact(&mut rest).await?;
        let (nonce, end) = rest.split_at(ID_LEN + SECRET_LEN);
        match (Nonce::parse(nonce), end) {
            (Some(nonce), b"\r\n") => Ok(Opening::Data(io, nonce)),
            _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed data connection preamble")),
        }
    };
    tokio::time::timeout(DATA_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no request within the deadline")))
}

/// A connection whose first bytes were already read: they are read again first.
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Vec<u8>,
    at: usize,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        Self { prefix, at: 0, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if me.at < me.prefix.len() {
            let n = (me.prefix.len() - me.at).min(buf.remaining());
            buf.put_slice(&me.prefix[me.at..me.at + n]);
            me.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tells_data_connections_from_http() {
        let nonce = Nonce::random();
        let line = [&PREAMBLE[..], nonce.to_header().as_bytes(), b"\r\nafter"].concat();
        let Ok(Opening::Data(mut rest, got)) = classify(&line[..]).await else { panic!("not a data connection") };
        assert!(got.matches(&nonce));
        let mut after = String::new();
        rest.read_to_string(&mut after).await.unwrap();
        assert_eq!(after, "after", "read past the preamble line");

        let http = b"GET /api/v2/agents/me/tunnel HTTP/1.1\r\n";
        let Ok(Opening::Other(rest, read)) = classify(&http[..]).await else { panic!("not HTTP") };
        let mut again = Vec::new();
        Rewind::new(read, rest).read_to_end(&mut again).await.unwrap();
        assert_eq!(again, http);

        let short = b"GET";
        assert!(matches!(classify(&short[..]).await, Ok(Opening::Other(_, r)) if r == short));
        let bad = [&PREAMBLE[..], &[b'z'; ID_LEN + SECRET_LEN], b"\r\n"].concat();
        assert!(classify(&bad[..]).await.is_err(), "a malformed nonce is refused");
    }

    #[test]
    fn nonces_match_only_their_secret() {
        let (a, b) = (Nonce::random(), Nonce::random());
        let parsed = Nonce::parse(a.to_header().as_bytes()).unwrap();
        assert!(a.matches(&parsed));
        let forged = Nonce { id: a.id, secret: b.secret };
        assert!(!a.matches(&forged));
        assert!(Nonce::parse(b"short").is_none());
    }
}
