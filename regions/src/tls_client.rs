//! The TLS client every Meridian process dials relays with (agents, peer
//! relays, data connections): the public roots plus an optional extra CA.

/// TLS settings for dialing `https` relays: the public roots plus, if given,
/// one extra PEM CA (for self-signed deployments).
#[derive(Clone)]
pub struct TlsClient(tokio_rustls::TlsConnector);

impl TlsClient {
    pub fn new(ca_cert: Option<&std::path::Path>) -> anyhow::Result<Self> {
        use anyhow::Context;
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(path) = ca_cert {
            for cert in
                CertificateDer::pem_file_iter(path).with_context(|| format!("cannot read {}", path.display()))?
            {
                roots.add(cert?)?;
            }
        }
        let config =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Self(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))))
    }

    pub fn connector(&self) -> &tokio_rustls::TlsConnector {
        &self.0
    }
}
