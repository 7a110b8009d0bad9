//! Generating, hashing and checking secrets.
//!
//! Session and proxy tokens carry 32 random bytes; only their SHA-256 is
//! stored (a fast hash suits a secret with that much entropy) and checked in
//! constant time. Passwords get Argon2id with the crate's default parameters,
//! on the blocking pool because each hash takes tens of milliseconds, and at
//! most half the cores' worth at once ([`HASHERS`]): a flood of sign-ins
//! waits its turn (or, past [`QUEUE`], is turned away) instead of taking the
//! CPU from heartbeats, health checks and app-token issuing.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use meridian_regions::token::{Secret, Token};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;

/// A new token for `id` and the hash to store for it.
pub fn new_token(id: Uuid) -> (Token, Vec<u8>) {
    let secret = random_secret();
    let hash = hash_secret(secret.expose());
    (Token { id, secret }, hash)
}

/// 32 random bytes, base64url: a secret of a token, or of this process.
pub fn random_secret() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Whether `secret` hashes to `stored`, in time independent of where they differ.
pub fn secret_matches(secret: &str, stored: &[u8]) -> bool {
    hash_secret(secret).ct_eq(stored).into()
}

/// Password hashes that run at once.
static HASHERS: LazyLock<tokio::sync::Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    tokio::sync::Semaphore::new((cores / 2).max(1))
});
/// Sign-ins that may wait for a hasher; the next is refused at once ([`Busy`]).
pub const QUEUE: usize = 64;
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// Too many sign-ins are waiting for a password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// Counts one waiter until it drops (also when its request is cancelled).
struct Waiting;

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a sign-in would be turned away ([`Busy`]) now: checked before
/// its database lookup, so a flood costs neither a query nor a hash.
pub fn hashing_busy() -> bool {
    WAITING.load(Ordering::Relaxed) >= QUEUE
}

/// Runs `hash` (Argon2 work) on the blocking pool when a hasher is free;
/// with `bounded`, refuses instead of queueing behind [`QUEUE`] others.
async fn hashing<T: Send + 'static>(bounded: bool, hash: impl FnOnce() -> T + Send + 'static) -> Result<T, Busy> {
    let waiting = WAITING.fetch_add(1, Ordering::Relaxed);
    let _waiting = Waiting;
    if bounded && waiting >= QUEUE {
        return Err(Busy);
    }
    let _permit = HASHERS.acquire().await.map_err(|_| Busy)?;
    tokio::task::spawn_blocking(hash).await.map_err(|_| Busy)
}

/// Argon2id hash of `password` in PHC string form (waits for a hasher).
pub async fn hash_password(password: Secret) -> anyhow::Result<String> {
    hashing(false, move || hash_password_blocking(password.expose()))
        .await
        .map_err(|Busy| anyhow::anyhow!("password hashing stopped"))?
}

fn hash_password_blocking(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
}

/// A hash of a random password, checked against when the user does not exist,
/// so a login's timing does not reveal which usernames exist.
static DECOY_HASH: LazyLock<String> = LazyLock::new(|| {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hash_password_blocking(&format!("{bytes:?}")).unwrap_or_default()
});

/// Whether `password` matches the stored PHC hash (constant time inside
/// argon2). With no stored hash (no such user) it still spends one hash.
/// [`Busy`] when [`QUEUE`] sign-ins already wait for a hasher.
pub async fn verify_password(password: Secret, stored: Option<String>) -> Result<bool, Busy> {
    hashing(true, move || {
        let exists = stored.is_some();
        let stored = stored.unwrap_or_else(|| DECOY_HASH.clone());
        let ok = PasswordHash::new(&stored)
            .map(|h| Argon2::default().verify_password(password.expose().as_bytes(), &h).is_ok())
            .unwrap_or(false);
        ok && exists
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_checks() {
        let (token, hash) = new_token(Uuid::new_v4());
        assert!(secret_matches(token.secret.expose(), &hash));
        assert!(!secret_matches("wrong", &hash));
        assert!(!secret_matches(token.secret.expose(), &hash[..31]), "short hash never matches");
        let (other, _) = new_token(Uuid::new_v4());
        assert_ne!(token.secret, other.secret);
    }

    #[tokio::test]
    async fn password_hash_checks() {
        let hash = hash_password(Secret::new("correct horse")).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(Secret::new("correct horse"), Some(hash.clone())).await.unwrap());
        assert!(!verify_password(Secret::new("Correct horse"), Some(hash)).await.unwrap());
        assert!(!verify_password(Secret::new("x"), Some("not a hash".into())).await.unwrap());
        assert!(!verify_password(Secret::new("correct horse"), None).await.unwrap(), "no user never matches");
    }
}
