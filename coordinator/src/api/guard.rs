//! What every request to the API and its pages passes before a handler:
//!
//! - **Host**: only the access URL's host, IP addresses, `localhost` and the
//!   `--allowed-host` names; any other name gets 421. A page on an attacker's
//!   domain that re-resolves to the coordinator (DNS rebinding) is refused.
//! - **Origin** (CSRF): a state change (any method but GET, HEAD, OPTIONS)
//!   that names an `Origin` must come from the access URL's origin, and one
//!   authenticated by the session cookie must name it. An app's page, whether
//!   on another origin of the same site (a region on another port, a subdomain
//!   app) or sandboxed on this one (`Origin: null`), cannot act as its viewer.
//!   Clients that send `Meridian-Session-Token` are not browsers riding a
//!   cookie and pass.
//! - **Answers** tell browsers not to sniff, frame or leak them.
//! - **Connections**: an answer given before the request's body was read to
//!   its end (a refusal here, a 401 before a handler reads its JSON) says
//!   `Connection: close`. The server stops reading such a connection once it
//!   has answered, and a proxy in front (the primary region's) that was not
//!   told would pool it and send the next request, never retried if it is a
//!   POST, onto a socket about to close: a 502 for somebody else.

use super::AppState;
use crate::error::ApiError;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meridian_regions::headers::{cookie_name, SESSION_COOKIE, SESSION_TOKEN};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The policy on JSON answers: nothing in them runs, nothing frames them.
const API_POLICY: &str = "default-src 'none'; frame-ancestors 'none'; sandbox";
/// The policy on the coordinator's own pages: never framed (clickjacking).
const PAGE_POLICY: &str = "frame-ancestors 'none'";

pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    if let Err(e) = check(&state, req.method(), req.headers(), authority.as_deref()) {
        return secured(e.into_response());
    }
    secured(next.run(req).await)
}

/// Outside `guard` and every handler: the answer to a request whose body
/// was not read to its end closes the connection.
pub async fn close_unread(req: Request, next: Next) -> Response {
    let http1 = req.version() < axum::http::Version::HTTP_2; // HTTP/2 has no such header
    let (req, read) = watch_body(req);
    let mut resp = next.run(req).await;
    if http1 && !read.load(Ordering::Acquire) {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The request with a body that records when it has been read to its end.
fn watch_body(req: Request) -> (Request, Arc<AtomicBool>) {
    let (parts, body) = req.into_parts();
    let read = Arc::new(AtomicBool::new(body.is_end_stream()));
    let watched = Watched { inner: body, read: read.clone() };
    (Request::from_parts(parts, Body::new(watched)), read)
}

/// A body that sets its flag once it has nothing more to give.
struct Watched {
    inner: Body,
    read: Arc<AtomicBool>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn check(state: &AppState, method: &Method, headers: &HeaderMap, authority: Option<&str>) -> Result<(), ApiError> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).or(authority).unwrap_or_default();
    if !host_allowed(state, host) {
        return Err(ApiError::Misdirected(format!(
            "This coordinator does not answer for host {host:?}; use {} (or add the name with --allowed-host).",
            state.config.access_url.origin().ascii_serialization()
        )));
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let own = state.config.access_url.origin().ascii_serialization();
    match headers.get(header::ORIGIN).map(|o| o.to_str().unwrap_or("?")) {
        Some(origin) if origin.eq_ignore_ascii_case(&own) => Ok(()),
        Some(origin) => Err(ApiError::Forbidden(format!(
            "Cross-origin request refused: it came from {origin}, not from {own}. Open Meridian at {own}."
        ))),
        None if cookie_authenticated(headers) => Err(ApiError::Forbidden(format!(
            "A request signed in by cookie must come from a page of {own} (it named no Origin)."
        ))),
        None => Ok(()),
    }
}

/// Whether the request would be signed in by the session cookie alone.
fn cookie_authenticated(headers: &HeaderMap) -> bool {
    headers.get(SESSION_TOKEN).is_none()
        && [SESSION_COOKIE, cookie_name(SESSION_COOKIE, true)]
            .iter()
            .any(|name| meridian_regions::headers::cookie_copies(headers, name).next().is_some())
}

/// The access URL's host, an IP address, `localhost`, or an allowed name; any port.
fn host_allowed(state: &AppState, host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return false;
    }
    let ip = name.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok();
    ip || name == "localhost"
        || state.config.access_url.host_str().is_some_and(|h| h.eq_ignore_ascii_case(&name))
        || state.config.allowed_hosts.contains(&name)
}

fn secured(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let json = h.get(header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        let policy = if json { API_POLICY } else { PAGE_POLICY };
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(policy));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends a POST's head (its 3-byte body held back) and returns the answer's head.
    async fn answer_before_body(conn: &mut tokio::net::TcpStream, path: &str) -> String {
        let head = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        read_head(conn).await
    }

    async fn read_head(conn: &mut tokio::net::TcpStream) -> String {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            let n =
                tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut byte)).await.unwrap().unwrap();
            assert_eq!(n, 1, "the connection closed after {:?}", String::from_utf8_lossy(&got));
            got.push(byte[0]);
        }
        String::from_utf8(got).unwrap().to_ascii_lowercase()
    }

    #[tokio::test]
    async fn an_answer_given_before_the_body_was_read_closes_the_connection() {
        let app = axum::Router::new()
            .route("/refuse", post(|| async { (axum::http::StatusCode::FORBIDDEN, "no") }))
            .route("/read", post(|body: Bytes| async move { format!("{}", body.len()) }))
            .layer(axum::middleware::from_fn(close_unread));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        // Refused unread: the answer says the connection ends (else the
        // server would close it unannounced and a pooling proxy would reuse it).
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = answer_before_body(&mut conn, "/refuse").await;
        assert!(head.starts_with("http/1.1 403"), "{head}");
        assert!(head.contains("connection: close"), "{head}");

        // Read to its end: the connection stays open for the next request.
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = "POST /read HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nx=1";
        for _ in 0..2 {
            conn.write_all(request.as_bytes()).await.unwrap();
            let head = read_head(&mut conn).await;
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert!(!head.contains("connection: close"), "{head}");
            let mut body = [0u8; 1];
            conn.read_exact(&mut body).await.unwrap();
            assert_eq!(&body, b"3");
        }
    }
}
