//! Who may hold a connection to the relay port before proving who they are.
//!
//! Anyone can reach the relay port. Until a connection proves itself (an
//! agent's tunnel upgrade, a peer relay's link, a data connection's nonce)
//! it holds a descriptor and a task for nothing, so such connections are
//! capped three ways: in all (a share of the process's descriptors, so the
//! public listener always has its own), per client address (one client
//! cannot take the whole share), and in time (each proves itself within
//! [`HANDSHAKE_DEADLINE`] or is closed). A connection that proved itself
//! leaves both counts: agents share NAT addresses, and a busy region's
//! tunnels and data connections must never count against one address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Longest a relay connection may take to prove itself: its TLS handshake,
/// then a data connection's preamble or an upgrade request answered.
pub const HANDSHAKE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);
/// Unproven connections one client address may hold at once. Agents behind
/// one NAT reconnecting together after a relay restart each hold one for a
/// few milliseconds; a client holding more is refused at once.
pub const MAX_UNPROVEN_PER_ADDRESS: usize = 128;
/// Unproven connections in all, at most: a quarter of the process's
/// descriptor limit, so the public listener (and the coordinator, the
/// relay's own dials, the tunnels) keep the rest.
pub const DESCRIPTOR_SHARE: u64 = 4;
/// The cap when the descriptor limit cannot be read, and the cap's ceiling.
pub const MAX_UNPROVEN: usize = 50_000;

/// The counts; see the module's documentation.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_address: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The relay holds [`Admission`]'s total of unproven connections.
    Full(usize),
    /// This address holds its share.
    Address(usize),
}

/// One unproven connection, counted until dropped.
#[derive(Debug)]
pub struct Unproven {
    admission: Arc<Admission>,
    address: IpAddr,
}

impl Admission {
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_address, counts: Mutex::default() })
    }

    /// The relay's own caps: [`MAX_UNPROVEN_PER_ADDRESS`], and a share of
    /// the process's descriptor limit in all.
    pub fn for_this_process() -> Arc<Self> {
        Self::new(total_from_descriptors(descriptor_limit()), MAX_UNPROVEN_PER_ADDRESS)
    }

    /// Counts a new connection from `address`, or says why it is refused.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Unproven, Refusal> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max_total {
            return Err(Refusal::Full(self.max_total));
        }
        let mine = counts.by_address.entry(address).or_default();
        if *mine >= self.max_per_address {
            return Err(Refusal::Address(self.max_per_address));
        }
        *mine += 1;
        counts.total += 1;
        Ok(Unproven { admission: self.clone(), address })
    }
}

impl Drop for Unproven {
    fn drop(&mut self) {
        let mut counts = self.admission.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.by_address.remove(&self.address);
            }
        }
    }
}

/// The process's soft descriptor limit, if it can be read.
fn descriptor_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok().map(|(soft, _)| soft)
}

/// [`DESCRIPTOR_SHARE`] of `limit`, at least one per-address share and at most [`MAX_UNPROVEN`].
fn total_from_descriptors(limit: Option<u64>) -> usize {
    let Some(limit) = limit else { return MAX_UNPROVEN };
    let share = usize::try_from(limit / DESCRIPTOR_SHARE).unwrap_or(MAX_UNPROVEN);
    share.clamp(MAX_UNPROVEN_PER_ADDRESS, MAX_UNPROVEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_all() {
        let admission = Admission::new(5, 3);
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let mut held: Vec<Unproven> = (0..3).map(|_| admission.admit(a).unwrap()).collect();
        assert_eq!(admission.admit(a).unwrap_err(), Refusal::Address(3), "a's share is taken");
        held.push(admission.admit(b).unwrap());
        held.push(admission.admit(b).unwrap());
        assert_eq!(admission.admit(b).unwrap_err(), Refusal::Full(5), "the total is taken");
        held.remove(0);
        let again = admission.admit(a).expect("a connection that ended frees its place");
        drop(held);
        drop(again);
        let counts = admission.counts.lock().unwrap();
        assert_eq!((counts.total, counts.by_address.len()), (0, 0), "nothing left counted");
    }

    #[test]
    fn the_total_is_a_share_of_the_descriptor_limit() {
        assert_eq!(total_from_descriptors(Some(20_000)), 5_000);
        assert_eq!(total_from_descriptors(Some(1_048_576)), MAX_UNPROVEN);
        assert_eq!(total_from_descriptors(Some(64)), MAX_UNPROVEN_PER_ADDRESS);
        assert_eq!(total_from_descriptors(None), MAX_UNPROVEN);
    }
}
