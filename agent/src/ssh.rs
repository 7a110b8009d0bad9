//! The agent's SSH server (russh). It listens on no port: a stream the
//! region authorized for the workspace's owner is its only way in (see
//! [`crate::streams`]), so SSH's own authentication is `none`.
//!
//! - [`host_key`]: the agent's persistent Ed25519 host key (the coordinator publishes its public half).
//! - [`session`]: one SSH connection: session channels, `direct-tcpip`, `tcpip-forward`.
//! - [`process`]: a session channel's shell or command, with or without a PTY.
//! - [`sftp`]: the `sftp` subsystem over the workspace's files (scp, sftp, IDEs).

pub mod host_key;
pub(crate) mod process;
mod session;
mod sftp;

use std::sync::Arc;
use std::time::Duration;

/// The SSH server: its configuration (host key, algorithms, limits), shared by every connection.
#[derive(Clone)]
pub struct Server {
    config: Arc<russh::server::Config>,
}

impl Server {
    pub fn new(host_key: russh::keys::PrivateKey) -> Self {
        let config = russh::server::Config {
            keys: vec![host_key],
            methods: russh::MethodSet::from(&[russh::MethodKind::None][..]),
            // The region authorized the stream before it arrived: nothing to wait out.
            auth_rejection_time: Duration::ZERO,
            auth_rejection_time_initial: Some(Duration::ZERO),
            // An idle shell is not a dead one: the resume layer ends sessions
            // whose client is gone (`streams::RESUME_WINDOW`).
            inactivity_timeout: None,
            keepalive_interval: None,
            // 2 MiB windows: bulk transfers (scp, forwards) are not held back by the window.
            window_size: 2 << 20,
            nodelay: true,
            ..Default::default()
        };
        Self { config: Arc::new(config) }
    }

    /// Serves one SSH connection over `io`, in the background.
    pub fn serve(&self, io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static) {
        let config = self.config.clone();
        tokio::spawn(async move {
            match russh::server::run_stream(config, io, session::Connection::default()).await {
                Ok(running) => {
                    if let Err(e) = running.await {
                        tracing::debug!(error = %e, "an SSH connection ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "an SSH connection failed to start"),
            }
        });
    }
}
