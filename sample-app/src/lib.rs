//! A small app to put behind Meridian: the demo's sample app and the tests'
//! upstream. It shows the request it received, and takes its behaviour from
//! request headers so one suite can exercise every case:
//!
//! - `x-sample-status: 503` → that status;
//! - `x-sample-delay-ms: 2000` → wait before answering;
//! - `x-sample-body-bytes: 10485760` → a body of that many bytes (streamed),
//!   of `m`s, or with `x-sample-body-seed: N` each byte [`pattern_byte`] of N and its offset;
//! - `x-sample-set-cookie: meridian_app_token=evil` → a `Set-Cookie` of that value;
//! - a query with `close` (`/?close`) → `Connection: close` (every request then
//!   needs a new connection to the app);
//! - `POST /upload` → the received body's length and SHA-256; with
//!   `x-sample-sha256: <hex>`, a body of another hash is refused (422);
//! - `GET /stream?count=N&every_ms=M` → a streamed response of N lines
//!   (`0\n`, `1\n`, …), one every M ms;
//! - `GET /ws` → WebSocket echo;
//! - `x-sample-tag: T` → the request is counted under T, and
//!   `GET /__sample/seen?tag=T` answers `{"received": N, "in_flight": M}`: a
//!   test waits for its request to reach the app, and sees whether it came twice.

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::time::Duration;

fn router() -> Router {
    let seen = Seen::default();
    Router::new()
        .route("/ws", get(ws))
        .route("/upload", post(upload))
        .route("/stream", get(stream))
        .route("/__sample/seen", get(seen_by_tag))
        .fallback(any(echo))
        .layer(axum::middleware::from_fn_with_state(seen.clone(), count_tagged))
        .with_state(seen)
}

/// Requests counted by their `x-sample-tag`: (received, in flight).
#[derive(Clone, Default)]
struct Seen(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>>);

impl Seen {
    fn update(&self, tag: &str, f: impl FnOnce(&mut (u64, u64))) {
        f(self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(tag.to_owned()).or_default());
    }
}

/// Counts a tagged request while it is answered (a request cut off counts as done).
async fn count_tagged(
    axum::extract::State(seen): axum::extract::State<Seen>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(tag) = req.headers().get("x-sample-tag").and_then(|v| v.to_str().ok()).map(str::to_owned) else {
        return next.run(req).await;
    };
    struct Done(Seen, String);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.update(&self.1, |c| c.1 -= 1);
        }
    }
    seen.update(&tag, |c| *c = (c.0 + 1, c.1 + 1));
    let _done = Done(seen, tag);
    next.run(req).await
}

#[derive(serde::Deserialize)]
struct TagQuery {
    tag: String,
}

async fn seen_by_tag(
    axum::extract::State(seen): axum::extract::State<Seen>,
    axum::extract::Query(q): axum::extract::Query<TagQuery>,
) -> Response {
    let (received, in_flight) =
        seen.0.lock().unwrap_or_else(|e| e.into_inner()).get(&q.tag).copied().unwrap_or_default();
    axum::Json(serde_json::json!({"received": received, "in_flight": in_flight})).into_response()
}

/// Serves the sample app on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router()).with_graceful_shutdown(shutdown).await
}

/// Serves the sample app over TLS (an app that speaks HTTPS itself, reached
/// through `{port}s--` URLs) until `shutdown` resolves.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(tcp).await else { return };
            let service = TowerToHyperService::new(router());
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn echo(req: Request) -> Response {
    let headers = req.headers().clone();
    let close = req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "close"));
    if let Some(ms) = number(&headers, "x-sample-delay-ms") {
        tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
    }
    let status =
        number(&headers, "x-sample-status").and_then(|s| StatusCode::from_u16(s as u16).ok()).unwrap_or(StatusCode::OK);
    let mut resp = if let Some(n) = number(&headers, "x-sample-body-bytes") {
        const CHUNK: u64 = 64 * 1024;
        let seed = number(&headers, "x-sample-body-seed");
        let plain = Bytes::from(vec![b'm'; CHUNK as usize]);
        let stream = futures_util::stream::iter((0..n.div_ceil(CHUNK)).map(move |i| {
            let (from, to) = (i * CHUNK, ((i + 1) * CHUNK).min(n));
            Ok::<_, std::io::Error>(match seed {
                Some(seed) => Bytes::from((from..to).map(|at| pattern_byte(seed, at)).collect::<Vec<u8>>()),
                None => plain.slice(..(to - from) as usize),
            })
        }));
        let mut r = Response::new(Body::from_stream(stream));
        r.headers_mut().insert("content-length", n.into());
        r
    } else {
        let seen = serde_json::json!({
            "method": req.method().as_str(),
            "uri": req.uri().to_string(),
            "headers": headers.iter().map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect::<Vec<_>>(),
        });
        let mut r = axum::Json(seen).into_response();
        r.headers_mut().insert("x-sample-app", "meridian".parse().unwrap_or_else(|_| unreachable!()));
        r
    };
    if let Some(cookie) = headers.get("x-sample-set-cookie") {
        resp.headers_mut().append("set-cookie", cookie.clone());
        resp.headers_mut().append("set-cookie", "sample=1; Path=/".parse().unwrap_or_else(|_| unreachable!()));
    }
    if close {
        resp.headers_mut().insert("connection", "close".parse().unwrap_or_else(|_| unreachable!()));
    }
    *resp.status_mut() = status;
    resp
}

/// Byte `offset` of a body generated for `seed`: bodies of different seeds
/// differ everywhere, and a shifted or spliced body no longer matches.
pub fn pattern_byte(seed: u64, offset: u64) -> u8 {
    (seed.wrapping_mul(0x9E37_79B9).wrapping_add(offset.wrapping_mul(31)) % 251) as u8
}

async fn upload(headers: HeaderMap, body: Body) -> Response {
    let mut stream = body.into_data_stream();
    let (mut len, mut hash) = (0u64, Sha256::new());
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                len += c.len() as u64;
                hash.update(&c);
            }
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        }
    }
    let sha256: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if let Some(expected) = headers.get("x-sample-sha256").and_then(|v| v.to_str().ok()) {
        if !expected.eq_ignore_ascii_case(&sha256) {
            let message = format!("the body's SHA-256 is {sha256}, not {expected} ({len} bytes received)");
            return (StatusCode::UNPROCESSABLE_ENTITY, message).into_response();
        }
    }
    axum::Json(serde_json::json!({ "bytes": len, "sha256": sha256 })).into_response()
}

async fn stream(axum::extract::Query(q): axum::extract::Query<StreamQuery>) -> Response {
    let every = Duration::from_millis(q.every_ms.unwrap_or(100).min(60_000));
    let lines = futures_util::stream::unfold(0u64, move |n| async move {
        if n >= q.count.unwrap_or(10).min(1_000_000) {
            return None;
        }
        if n > 0 {
            tokio::time::sleep(every).await;
        }
        Some((Ok::<_, std::io::Error>(Bytes::from(format!("{n}\n"))), n + 1))
    });
    let mut r = Response::new(Body::from_stream(lines));
    r.headers_mut().insert("content-type", "text/plain".parse().unwrap_or_else(|_| unreachable!()));
    r
}

#[derive(serde::Deserialize)]
struct StreamQuery {
    count: Option<u64>,
    every_ms: Option<u64>,
}

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            let reply = match msg {
                Message::Text(t) => Message::Text(t),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}
