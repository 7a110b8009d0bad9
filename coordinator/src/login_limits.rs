//! Password guessing is limited: failed sign-ins are counted per account,
//! per client address, and per account from one address, each in a window
//! of [`WINDOW`]; past a limit, sign-ins are refused with 429 and
//! `Retry-After` before any password is hashed. A successful sign-in clears
//! the account's counts from that address.
//!
//! The limits are chosen so a guesser cannot lock a user out from their own
//! address cheaply: one address gets [`PER_ACCOUNT_AND_ADDRESS`] guesses at an
//! account, while the account as a whole (a guess from many addresses) is
//! refused only after [`PER_ACCOUNT`]. An unknown username is counted like a
//! known one, so the answers do not tell which accounts exist.
//!
//! Counters live in this process (a replica behind a load balancer keeps its
//! own: the limits are per replica), in bounded caches.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long failures are remembered: the window starts at the first failure.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Failed sign-ins to one account from one address, per window.
pub const PER_ACCOUNT_AND_ADDRESS: u32 = 10;
/// Failed sign-ins to one account from anywhere, per window.
pub const PER_ACCOUNT: u32 = 100;
/// Failed sign-ins from one address to any accounts, per window.
pub const PER_ADDRESS: u32 = 50;
/// Entries per counter cache (an attacker spraying names cannot grow it beyond).
const CAPACITY: u64 = 100_000;

/// Failures counted since `started`.
#[derive(Debug)]
struct Window {
    started: Instant,
    failures: u32,
}

impl Window {
    /// How long sign-ins stay refused, if the window is over `limit`.
    fn refused_for(&self, limit: u32, now: Instant) -> Option<Duration> {
        let left = WINDOW.checked_sub(now.duration_since(self.started))?;
        (self.failures >= limit && !left.is_zero()).then_some(left)
    }

    fn fail(&mut self, now: Instant) {
        if now.duration_since(self.started) >= WINDOW {
            *self = Window { started: now, failures: 0 };
        }
        self.failures = self.failures.saturating_add(1);
    }
}

type Counters<K> = moka::sync::Cache<K, Arc<Mutex<Window>>>;

fn counters<K: std::hash::Hash + Eq + Send + Sync + 'static>() -> Counters<K> {
    moka::sync::Cache::builder().max_capacity(CAPACITY).time_to_live(WINDOW).build()
}

/// Why a sign-in is refused before its password is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// What reached its limit, for the message.
    pub what: &'static str,
    pub retry_after: Duration,
}

impl Limited {
    pub fn message(&self) -> String {
        format!("Too many failed sign-ins {}; try again in {} seconds.", self.what, self.retry_after.as_secs().max(1))
    }
}

pub struct LoginLimits {
    accounts: Counters<String>,
    addresses: Counters<IpAddr>,
    pairs: Counters<(String, IpAddr)>,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self { accounts: counters(), addresses: counters(), pairs: counters() }
    }
}

/// Names are counted case-insensitively and trimmed, so spelling variants share a count.
fn account(username: &str) -> String {
    username.trim().to_lowercase()
}

fn refused<K>(counters: &Counters<K>, key: &K, limit: u32, now: Instant) -> Option<Duration>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    let window = counters.get(key)?;
    let w = window.lock().unwrap_or_else(|e| e.into_inner());
    w.refused_for(limit, now)
}

fn fail<K>(counters: &Counters<K>, key: K, now: Instant)
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    let window = counters.get_with(key, || Arc::new(Mutex::new(Window { started: now, failures: 0 })));
    window.lock().unwrap_or_else(|e| e.into_inner()).fail(now);
}

impl LoginLimits {
    /// Whether a sign-in to `username` from `client` may be checked now.
    pub fn check(&self, username: &str, client: IpAddr) -> Result<(), Limited> {
        let now = Instant::now();
        let name = account(username);
        let limited =
            |what, retry_after: Option<Duration>| retry_after.map(|retry_after| Limited { what, retry_after });
        let found = limited(
            "for this account from this address",
            refused(&self.pairs, &(name.clone(), client), PER_ACCOUNT_AND_ADDRESS, now),
        )
        .or_else(|| limited("from this address", refused(&self.addresses, &client, PER_ADDRESS, now)))
        .or_else(|| limited("for this account", refused(&self.accounts, &name, PER_ACCOUNT, now)));
        match found {
            Some(l) => Err(l),
            None => Ok(()),
        }
    }

    /// Counts a failed sign-in (a wrong password or an unknown user).
    pub fn failed(&self, username: &str, client: IpAddr) {
        let now = Instant::now();
        let name = account(username);
        fail(&self.pairs, (name.clone(), client), now);
        fail(&self.addresses, client, now);
        fail(&self.accounts, name, now);
    }

    /// A successful sign-in: the account's failures from this address are forgotten.
    pub fn succeeded(&self, username: &str, client: IpAddr) {
        self.pairs.invalidate(&(account(username), client));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        [127, 0, 0, last].into()
    }

    #[test]
    fn one_address_gets_a_few_guesses_at_an_account() {
        let limits = LoginLimits::default();
        for _ in 0..PER_ACCOUNT_AND_ADDRESS {
            assert!(limits.check("Alice", ip(1)).is_ok());
            limits.failed("alice", ip(1));
        }
        let refused = limits.check("ALICE ", ip(1)).unwrap_err();
        assert_eq!(refused.what, "for this account from this address");
        assert!(refused.retry_after <= WINDOW && refused.retry_after > WINDOW - Duration::from_secs(60));
        assert!(refused.message().contains("try again in"), "{}", refused.message());
        // The account itself is still open to its user elsewhere.
        assert!(limits.check("alice", ip(2)).is_ok());
        // Success from the address clears its count for that account.
        limits.succeeded("alice", ip(1));
        assert!(limits.check("alice", ip(1)).is_ok());
    }

    #[test]
    fn an_address_spraying_accounts_and_an_account_guessed_from_many_addresses_are_refused() {
        let limits = LoginLimits::default();
        for i in 0..PER_ADDRESS {
            limits.failed(&format!("user{i}"), ip(1));
        }
        assert_eq!(limits.check("someone", ip(1)).unwrap_err().what, "from this address");
        assert!(limits.check("someone", ip(2)).is_ok());

        for i in 0..PER_ACCOUNT {
            limits.failed("bob", ip(10 + (i % 200) as u8));
        }
        assert_eq!(limits.check("bob", ip(250)).unwrap_err().what, "for this account");
    }

    #[test]
    fn a_window_ends() {
        let started = Instant::now();
        let mut w = Window { started, failures: PER_ACCOUNT };
        assert!(w.refused_for(PER_ACCOUNT, started + WINDOW / 2).is_some());
        assert!(w.refused_for(PER_ACCOUNT, started + WINDOW).is_none());
        w.fail(started + WINDOW);
        assert_eq!(w.failures, 1, "a failure after the window starts a new one");
    }
}
