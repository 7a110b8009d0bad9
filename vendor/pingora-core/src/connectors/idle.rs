// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! Meridian patch: the keep-alive pool of idle upstream streams, kept without
//! a task per idle connection (see PATCHED.md).
//!
//! `pingora_pool::ConnectionPool` watches each idle connection with a task of
//! its own, spawned on every release and woken on every reuse (a spawned
//! future, a `Mutex` around the stream, a oneshot channel, an LRU entry with a
//! `Notify`, a timer). Here an idle stream is a plain entry in one queue:
//! reuse takes the newest entry for the key and checks it then (its idle
//! deadline, and the connector's non-blocking read test for a peer that closed
//! or sent data); one sweeper task per pool drops, at least once a second,
//! the entries whose deadline passed or whose peer closed them, so idle
//! connections are still let go without traffic. Tested through
//! `TransportConnector` in `meridian-proxy` (`upstream::tests`).

use super::{test_reusable_stream, PoolCallback};
use crate::protocols::Stream;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// The longest time between two sweeps.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The shortest: a deadline due sooner is swept this late at most.
const SWEEP_AT_LEAST: Duration = Duration::from_millis(10);

struct Entry {
    key: u64,
    stream: Stream,
    since: Instant,
    deadline: Option<Instant>,
}

struct Inner {
    /// Oldest first: the front is evicted when the pool is full.
    entries: Mutex<VecDeque<Entry>>,
    capacity: usize,
    sweeping: AtomicBool,
    callback: Option<PoolCallback>,
    unexpected_data: Arc<AtomicU64>,
}

/// Idle streams by reuse key, at most `capacity` of them in all.
pub(crate) struct IdlePool {
    inner: Arc<Inner>,
}

impl IdlePool {
    pub(crate) fn new(
        capacity: usize,
        callback: Option<PoolCallback>,
        unexpected_data: Arc<AtomicU64>,
    ) -> Self {
        let inner = Inner {
            entries: Mutex::new(VecDeque::new()),
            capacity,
            sweeping: AtomicBool::new(false),
            callback,
            unexpected_data,
        };
        IdlePool {
            inner: Arc::new(inner),
        }
    }

    /// The newest idle stream for `key` whose idle deadline has not passed.
    /// The caller tests it further (its peer, the read test) before use.
    pub(crate) fn get(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let found = {
            let mut entries = self.inner.entries.lock();
            loop {
                let Some(i) = entries.iter().rposition(|e| e.key == key) else {
                    break None;
                };
                let entry = entries.remove(i).expect("position is in the queue");
                if entry.deadline.is_some_and(|d| d <= now) {
                    expired.push(entry);
                    continue;
                }
                break Some(entry.stream);
            }
        };
        self.inner.let_go(expired);
        found
    }

    /// Keeps `stream` for reuse under `key`, for at most `idle_timeout`.
    pub(crate) fn put(&self, key: u64, stream: Stream, idle_timeout: Option<Duration>) {
        if self.inner.capacity == 0 {
            return;
        }
        let since = Instant::now();
        let entry = Entry {
            key,
            stream,
            since,
            deadline: idle_timeout.map(|t| since + t),
        };
        let mut evicted = Vec::new();
        {
            let mut entries = self.inner.entries.lock();
            entries.push_back(entry);
            while entries.len() > self.inner.capacity {
                evicted.extend(entries.pop_front());
            }
        }
        self.inner.let_go(evicted);
        self.start_sweeper();
    }

    /// One sweeper task per pool, on the runtime of the thread that first
    /// released a stream; started again if that runtime went away.
    fn start_sweeper(&self) {
        if self.inner.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::downgrade(&self.inner);
        pingora_runtime::current_handle().spawn(sweep_while_alive(pool));
    }
}

/// Clears `sweeping` when the sweeper ends, also when its runtime drops it.
struct Sweeping(Weak<Inner>);

impl Drop for Sweeping {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.sweeping.store(false, Ordering::Release);
        }
    }
}

async fn sweep_while_alive(pool: Weak<Inner>) {
    let _running = Sweeping(pool.clone());
    let mut wait = SWEEP_EVERY;
    loop {
        tokio::time::sleep(wait).await;
        let Some(inner) = pool.upgrade() else { return };
        wait = inner.sweep(Instant::now());
    }
}

impl Inner {
    /// Drops every entry whose deadline passed or whose peer closed it (or
    /// sent what nobody asked for); returns how long until the next sweep.
    fn sweep(&self, now: Instant) -> Duration {
        let mut gone = Vec::new();
        let mut next = SWEEP_EVERY;
        {
            let mut entries = self.entries.lock();
            let mut kept = VecDeque::with_capacity(entries.len());
            for mut entry in entries.drain(..) {
                let expired = entry.deadline.is_some_and(|d| d <= now);
                if expired || !test_reusable_stream(&mut entry.stream, &self.unexpected_data) {
                    gone.push(entry);
                    continue;
                }
                if let Some(d) = entry.deadline {
                    next = next.min(d - now);
                }
                kept.push_back(entry);
            }
            *entries = kept;
        }
        self.let_go(gone);
        next.max(SWEEP_AT_LEAST)
    }

    /// Closes streams that leave the pool unused (outside the lock: each
    /// close is a system call), telling the callback how long they idled.
    fn let_go(&self, entries: Vec<Entry>) {
        for entry in entries {
            if let Some(callback) = &self.callback {
                callback(entry.since.elapsed());
            }
            drop(entry.stream);
        }
    }
}
