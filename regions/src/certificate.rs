//! A TLS certificate that follows its files: `--tls-cert`/`--tls-key` are read
//! at start (an error there is a configuration error) and again whenever their
//! contents change, so a certificate that cert-manager (or an operator) rewrites
//! is served to new connections without a restart.
//!
//! The files are polled every [`POLL_INTERVAL`] (1 s): a Kubernetes secret
//! volume swaps a `..data` symlink, which file-change notifications on the
//! files themselves miss, and two reads of a few kilobytes a second cost
//! nothing. A pair that does not parse, or whose key does not match the
//! certificate (one file rewritten, the other not yet), is not taken: the
//! previous certificate keeps being served and the next poll tries again.
//! Connections already open keep the certificate they were opened with; the
//! swap is one atomic pointer store, so no handshake ever sees half of it.

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often the files are read for a change. Default 1 s: a rotated
/// certificate is served within about a second of being written.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The served certificate, swapped atomically when its files change.
#[derive(Debug)]
pub struct ReloadingCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<Loaded>,
}

/// One certificate chain and key, with the file contents it was read from.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    files: (Vec<u8>, Vec<u8>),
}

impl ReloadingCertificate {
    /// Reads and checks the pair once, and starts watching it (a thread that
    /// ends when the returned value is dropped).
    pub fn watch(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<Self>> {
        let files = read_pair(cert_path, key_path)?;
        let key = parse_pair(&files).with_context(|| {
            format!("cannot use TLS certificate {} with key {}", cert_path.display(), key_path.display())
        })?;
        let this = Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: ArcSwap::from_pointee(Loaded { key, files }),
        });
        let weak = Arc::downgrade(&this);
        std::thread::Builder::new().name("tls-reload".into()).spawn(move || poll(weak))?;
        Ok(this)
    }

    /// The certificate chain served to new connections now.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().key.cert.clone()
    }

    /// Reads the files; takes a changed, valid pair. Returns whether the
    /// served certificate changed.
    pub fn reload(&self) -> bool {
        let files = match read_pair(&self.cert_path, &self.key_path) {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "TLS certificate files unreadable; still serving the previous certificate");
                return false;
            }
        };
        if files == self.current.load().files {
            return false;
        }
        match parse_pair(&files) {
            Ok(key) => {
                tracing::info!(cert = %self.cert_path.display(), fingerprint = %fingerprint(&key),
                    "TLS certificate reloaded; new connections get it");
                self.current.store(Arc::new(Loaded { key, files }));
                true
            }
            Err(e) => {
                tracing::warn!(cert = %self.cert_path.display(), error = %format!("{e:#}"),
                    "TLS certificate files changed but are not a usable pair (yet); still serving the previous certificate");
                false
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

fn poll(this: Weak<ReloadingCertificate>) {
    loop {
        std::thread::sleep(POLL_INTERVAL);
        match this.upgrade() {
            Some(cert) => {
                cert.reload();
            }
            None => return,
        }
    }
}

fn read_pair(cert: &Path, key: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let c = std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
    let k = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
    Ok((c, k))
}

fn parse_pair((cert, key): &(Vec<u8>, Vec<u8>)) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>().context("bad PEM certificate")?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in the certificate file");
    let key = PrivateKeyDer::from_pem_slice(key).context("no private key in the key file")?;
    let provider = rustls::crypto::ring::default_provider();
    let signer = provider.key_provider.load_private_key(key).context("unsupported private key")?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().context("the private key does not belong to the certificate")?;
    Ok(Arc::new(certified))
}

/// The first 8 bytes of the leaf's SHA-256, hex: names a certificate in logs.
fn fingerprint(key: &CertifiedKey) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.cert[0].as_ref());
    digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.into()]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_rewritten_pair_is_taken_and_a_mismatched_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let (a_cert, a_key) = pair("a.localhost");
        std::fs::write(&c, &a_cert).unwrap();
        std::fs::write(&k, &a_key).unwrap();
        let served = ReloadingCertificate::watch(&c, &k).unwrap();
        let first = served.chain();
        assert!(!served.reload(), "unchanged files change nothing");

        // Half a rotation: the new certificate with the old key is refused.
        let (b_cert, b_key) = pair("b.localhost");
        std::fs::write(&c, &b_cert).unwrap();
        assert!(!served.reload());
        assert_eq!(served.chain(), first, "a mismatched pair is not served");
        std::fs::write(&k, "not a key").unwrap();
        assert!(!served.reload());
        assert_eq!(served.chain(), first);

        // The whole rotation is taken.
        std::fs::write(&k, &b_key).unwrap();
        assert!(served.reload());
        assert_ne!(served.chain(), first);
        assert_eq!(served.chain()[0].as_ref(), CertificateDer::from_pem_slice(b_cert.as_bytes()).unwrap().as_ref());

        // Files that vanish keep the current certificate.
        std::fs::remove_file(&c).unwrap();
        assert!(!served.reload());
    }

    #[test]
    fn a_bad_pair_at_start_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let (a_cert, _) = pair("a.localhost");
        let (_, b_key) = pair("b.localhost");
        std::fs::write(&c, a_cert).unwrap();
        std::fs::write(&k, b_key).unwrap();
        let err = ReloadingCertificate::watch(&c, &k).unwrap_err();
        assert!(format!("{err:#}").contains("does not belong"), "{err:#}");
        let err = ReloadingCertificate::watch(&dir.path().join("missing.pem"), &k).unwrap_err();
        assert!(format!("{err:#}").contains("cannot read"), "{err:#}");
    }
}
