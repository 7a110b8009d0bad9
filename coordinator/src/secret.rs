//! Generating, hashing and checking secrets.
//!
//! Session and proxy tokens carry 32 random bytes; only their SHA-256 is
//! stored (a fast hash suits a secret with that much entropy) and checked in
//! constant time. Passwords get Argon2id with the crate's default parameters,
//! on the blocking pool because each hash takes tens of milliseconds.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use meridian_regions::token::{Secret, Token};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;

/// A new token for `id` and the hash to store for it.
pub fn new_token(id: Uuid) -> (Token, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_secret(&secret);
    (Token { id, secret: Secret::new(secret) }, hash)
}

pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Whether `secret` hashes to `stored`, in time independent of where they differ.
pub fn secret_matches(secret: &str, stored: &[u8]) -> bool {
    hash_secret(secret).ct_eq(stored).into()
}

/// Argon2id hash of `password` in PHC string form.
pub async fn hash_password(password: Secret) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || hash_password_blocking(password.expose())).await?
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
pub async fn verify_password(password: Secret, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let exists = stored.is_some();
        let stored = stored.unwrap_or_else(|| DECOY_HASH.clone());
        let ok = PasswordHash::new(&stored)
            .map(|h| Argon2::default().verify_password(password.expose().as_bytes(), &h).is_ok())
            .unwrap_or(false);
        ok && exists
    })
    .await
    .unwrap_or(false)
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
        assert!(verify_password(Secret::new("correct horse"), Some(hash.clone())).await);
        assert!(!verify_password(Secret::new("Correct horse"), Some(hash)).await);
        assert!(!verify_password(Secret::new("x"), Some("not a hash".into())).await);
        assert!(!verify_password(Secret::new("correct horse"), None).await, "no user never matches");
    }
}
