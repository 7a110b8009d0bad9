//! WebSocket echo round trips over one connection, one message in flight.

use crate::stack::Target;
use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Round trips per second and the p50/p99 round trip, in milliseconds.
pub async fn echo(target: &Target, duration: Duration) -> Result<crate::wrk::Figures> {
    let url = url::Url::parse(&target.url)?;
    let port = url.port_or_known_default().context("no port")?;
    let host = target
        .headers
        .iter()
        .find(|(k, _)| k == "Host")
        .map_or_else(|| format!("127.0.0.1:{port}"), |(_, v)| v.clone());
    let mut req = format!("ws://{host}/ws").into_client_request()?;
    if let Some((_, cookie)) = target.headers.iter().find(|(k, _)| k == "Cookie") {
        req.headers_mut().insert("cookie", cookie.parse()?);
    }
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.context("WebSocket handshake")?;
    let payload = "x".repeat(64);
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let sent = Instant::now();
        ws.send(Message::text(payload.clone())).await?;
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => times.push(sent.elapsed().as_secs_f64() * 1000.0),
            other => anyhow::bail!("no echo from {}: {other:?}", target.name),
        }
    }
    let _ = ws.close(None).await;
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    Ok(crate::wrk::Figures {
        requests_per_sec: times.len() as f64 / start.elapsed().as_secs_f64(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        errors: 0,
        causes: Default::default(),
        requests: times.len() as u64,
        quantiles_ms: (1..=1000).map(|i| at(f64::from(i) / 1000.0)).collect(),
    })
}
