//! Steady synthetic traffic with every failure timestamped.

use super::*;

/// What steady traffic saw for one target.
#[derive(Debug, Default, Clone)]
pub struct TrafficStats {
    pub ok: u64,
    /// Each failure: when its request was sent (milliseconds since the
    /// start), and what happened.
    pub failed: Vec<(u128, String)>,
    /// The longest a successful request took: how long requests waited
    /// while the system recovered (a request waits for a moving agent's route).
    pub slowest_ok: Duration,
}

/// Steady synthetic traffic: one request every `every` to each target, each
/// bounded by a timeout, so a hang is counted as a failure, never waited out.
pub struct Traffic {
    started: Instant,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<(String, tokio::task::JoinHandle<TrafficStats>)>,
    /// Requests served so far, per target.
    served: Vec<Arc<std::sync::atomic::AtomicU64>>,
}

impl Traffic {
    pub fn start(targets: Vec<(String, reqwest::Client, String)>, every: Duration) -> Self {
        Self::start_with_timeout(targets, every, Duration::from_secs(5))
    }

    /// [`Traffic::start`] where a request slower than `timeout` counts as failed.
    pub fn start_with_timeout(
        targets: Vec<(String, reqwest::Client, String)>,
        every: Duration,
        timeout: Duration,
    ) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        let served: Vec<Arc<std::sync::atomic::AtomicU64>> = targets.iter().map(|_| Arc::default()).collect();
        let tasks = targets
            .into_iter()
            .zip(served.clone())
            .map(|((name, client, url), count)| {
                let stopped = stopped.clone();
                let task = tokio::spawn(async move {
                    let mut stats = TrafficStats::default();
                    while !*stopped.borrow() {
                        let at = started.elapsed().as_millis();
                        let begun = Instant::now();
                        let sent = client.get(&url).timeout(timeout).send().await;
                        match sent {
                            Ok(r) if r.status() == 200 => match r.bytes().await {
                                Ok(_) => {
                                    stats.ok += 1;
                                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    stats.slowest_ok = stats.slowest_ok.max(begun.elapsed());
                                }
                                Err(e) => stats.failed.push((at, format!("body: {e}"))),
                            },
                            Ok(r) => stats.failed.push((at, format!("HTTP {}", r.status()))),
                            Err(e) => stats.failed.push((at, format!("{e:?}"))),
                        }
                        tokio::time::sleep(every).await;
                    }
                    stats
                });
                (name, task)
            })
            .collect();
        Self { started, stop, tasks, served }
    }

    /// Waits until every target has been served `n` requests: traffic is flowing.
    pub async fn wait_flowing(&self, n: u64) {
        wait_for(Duration::from_secs(10), &format!("{n} requests served to every target"), || async {
            self.served.iter().all(|c| c.load(std::sync::atomic::Ordering::Relaxed) >= n).then_some(())
        })
        .await;
    }

    /// Milliseconds since the traffic started (the clock of [`TrafficStats::failed`]).
    pub fn now_ms(&self) -> u128 {
        self.started.elapsed().as_millis()
    }

    /// Stops and returns each target's stats.
    pub async fn stop(self) -> Vec<(String, TrafficStats)> {
        let _ = self.stop.send(true);
        let mut out = Vec::new();
        for (name, task) in self.tasks {
            out.push((name, tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap()));
        }
        out
    }
}
