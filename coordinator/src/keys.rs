//! The coordinator's app-token signing key.
//!
//! One Ed25519 key, created by whichever coordinator replica starts first and
//! stored in Postgres. Its private half is sealed (ChaCha20-Poly1305) with the
//! secrets key, 32 random bytes in a file outside the database
//! (`--secrets-key-file`), so a database dump alone cannot mint tokens. Every
//! coordinator replica needs the same secrets key file.

use crate::store::Store;
use anyhow::{bail, Context, Result};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use meridian_regions::app_token::{generate_key, PublicKey, Signer};
use rand::RngCore;
use std::path::Path;

const NONCE_LEN: usize = 12;

/// The key that seals secrets stored in Postgres.
pub struct SecretsKey(Key);

impl SecretsKey {
    /// Reads the key file, creating it (mode 0600, 32 random bytes in
    /// base64) if it does not exist yet.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let b64 = base64::engine::general_purpose::STANDARD;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(mut f) => {
                let mut bytes = [0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                f.write_all(format!("{}\n", b64.encode(bytes)).as_bytes())?;
                tracing::info!(path = %path.display(), "created the secrets key");
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create secrets key {}", path.display())),
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let bytes = b64
            .decode(text.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .with_context(|| format!("{} is not a Meridian secrets key (32 bytes in base64)", path.display()))?;
        Ok(Self(*Key::from_slice(&bytes)))
    }

    /// Seals `plaintext` (ChaCha20-Poly1305, a random nonce in front).
    pub(crate) fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = ChaCha20Poly1305::new(&self.0)
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        Ok([&nonce[..], &sealed].concat())
    }

    /// The mesh secret relays present to each other: HMAC-SHA256 of a fixed
    /// label under the secrets key, so every coordinator replica derives the
    /// same one without storing it, and it changes with the secrets key.
    pub fn mesh_secret(&self) -> meridian_regions::token::Secret {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.0.as_slice());
        let tag = ring::hmac::sign(&key, b"meridian relay mesh secret v1");
        meridian_regions::token::Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// Opens what [`SecretsKey::seal`] sealed.
    pub(crate) fn open(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            bail!("sealed value is truncated");
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        ChaCha20Poly1305::new(&self.0)
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| anyhow::anyhow!("a secret in the database was sealed with another secrets key"))
    }
}

/// The signing key in use and every public key proxies should trust.
pub struct Keys {
    pub signer: Signer,
    pub public: Vec<PublicKey>,
    /// Handed to proxies at registration for their relay links.
    pub mesh_secret: meridian_regions::token::Secret,
    /// Checks attach tokens relays vouch with.
    pub verifier: meridian_regions::app_token::Verifier,
}

/// Loads the signing key, creating it on first start.
pub async fn load_or_create(store: &Store, secrets: &SecretsKey) -> Result<Keys> {
    if store.signing_keys().await?.is_empty() {
        let kid = uuid::Uuid::new_v4().simple().to_string();
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let (der, public) = generate_key(&kid, seed);
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&public.x)?;
        // Loses quietly to a replica that created one at the same moment.
        store.insert_first_signing_key(&kid, &x, &secrets.seal(&der)?).await?;
    }
    let rows = store.signing_keys().await?;
    let (kid, _, sealed) = rows.first().context("no signing key")?;
    let signer = Signer::new(kid, &secrets.open(sealed)?);
    let public: Vec<PublicKey> = rows
        .iter()
        .map(|(kid, x, _)| PublicKey {
            kid: kid.clone(),
            x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(x),
        })
        .collect();
    let verifier = meridian_regions::app_token::Verifier::new(&public);
    Ok(Keys { signer, public, mesh_secret: secrets.mesh_secret(), verifier })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/secrets.key");
        let a = SecretsKey::load_or_create(&path).unwrap();
        let b = SecretsKey::load_or_create(&path).unwrap();
        let sealed = a.seal(b"private").unwrap();
        assert_eq!(b.open(&sealed).unwrap(), b"private", "the same file gives the same key");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let other = SecretsKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.open(&sealed).is_err(), "another key cannot open it");
        assert!(a.open(&sealed[..5]).is_err());
        assert_eq!(a.mesh_secret(), b.mesh_secret(), "replicas derive the same mesh secret");
        assert_ne!(a.mesh_secret(), other.mesh_secret());
        std::fs::write(dir.path().join("bad.key"), "nope").unwrap();
        assert!(SecretsKey::load_or_create(&dir.path().join("bad.key")).is_err());
    }
}
