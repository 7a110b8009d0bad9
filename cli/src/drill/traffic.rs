//! The drill's synthetic users: steady requests through every region, each
//! bounded by a timeout, every outcome recorded with its time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An error the client saw: a status other than 200, or a transport error.
    Error(String),
    /// No complete answer within the timeout.
    Hung,
    /// A 200 whose body is not the echo of this request (another's, or none), or was cut short.
    Lost,
}

/// One request: when it was sent (since the drill started) and how it ended.
#[derive(Debug, Clone)]
pub struct Sample {
    pub sent: Duration,
    pub outcome: Outcome,
}

/// Requests through one region.
pub struct Stream {
    pub region: String,
    pub samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts sending `rate` requests per second to `url` (ending in `/`).
pub fn start(
    region: String,
    client: reqwest::Client,
    url: String,
    rate: u32,
    timeout: Duration,
    epoch: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Stream {
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let out = samples.clone();
    let every = Duration::from_secs(1) / rate.max(1);
    let tag = region.clone();
    let task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inflight = tokio::task::JoinSet::new();
        let mut n = 0u64;
        while !*stop.borrow() {
            ticker.tick().await;
            n += 1;
            let (client, url, out) = (client.clone(), format!("{url}drill/{tag}/{n}"), out.clone());
            inflight.spawn(async move {
                let sent = epoch.elapsed();
                let outcome = one(&client, &url, timeout).await;
                out.lock().unwrap_or_else(|e| e.into_inner()).push(Sample { sent, outcome });
            });
            while inflight.try_join_next().is_some() {}
        }
        // Every request sent is waited for (each is bounded by the timeout).
        while inflight.join_next().await.is_some() {}
    });
    Stream { region, samples, task }
}

impl Stream {
    /// Waits for the requests in flight and returns every sample, in send order.
    pub async fn finish(self) -> (String, Vec<Sample>) {
        let _ = self.task.await;
        let mut samples = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()));
        samples.sort_by_key(|s| s.sent);
        (self.region, samples)
    }

    /// Whether the last `n` answered requests all succeeded.
    pub fn healthy_tail(&self, n: usize) -> bool {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut recent: Vec<&Sample> = samples.iter().collect();
        recent.sort_by_key(|s| s.sent);
        recent.len() >= n && recent.iter().rev().take(n).all(|s| s.outcome == Outcome::Ok)
    }
}

async fn one(client: &reqwest::Client, url: &str, timeout: Duration) -> Outcome {
    let path = url.split_once("/drill/").map(|(_, p)| format!("/drill/{p}")).unwrap_or_default();
    let exchange = async {
        let resp = client.get(url).send().await.map_err(|e| Outcome::Error(transport(&e)))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|_| Outcome::Lost)?;
        if status != 200 {
            return Err(Outcome::Error(format!("HTTP {}", status.as_u16())));
        }
        // The sample app echoes the request: a 200 that is not the echo of
        // this one (another request's, or no echo at all: a login page, a
        // proxy's own page) is not this request served.
        let echoed = serde_json::from_slice::<serde_json::Value>(&body).ok();
        match echoed.as_ref().and_then(|v| v["uri"].as_str()) {
            Some(uri) if uri.ends_with(&path) => Ok(()),
            _ => Err(Outcome::Lost),
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(o)) => o,
        Err(_) => Outcome::Hung,
    }
}

/// A short name for a transport error.
pub(super) fn transport(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "connect".into()
    } else if e.is_timeout() {
        "timeout".into()
    } else {
        "reset".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering every request 200 with `body`.
    async fn answering(body: &'static str) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = tcp.write_all(format!("{head}{body}").as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn only_the_echo_of_this_request_is_served() {
        let client = reqwest::Client::new();
        let cases = [
            (r#"{"uri":"/drill/sydney/7"}"#, Outcome::Ok),
            (r#"{"uri":"/drill/sydney/8"}"#, Outcome::Lost),
            ("<!doctype html><title>Sign in</title>", Outcome::Lost),
            (r#"{"status":"ok"}"#, Outcome::Lost),
        ];
        for (body, expected) in cases {
            let addr = answering(body).await;
            let outcome = one(&client, &format!("http://{addr}/drill/sydney/7"), Duration::from_secs(5)).await;
            assert_eq!(outcome, expected, "{body}");
        }
    }
}
