//! Data connections: the relay asks an agent (over its tunnel, or a link to
//! the relay holding it) to dial a connection to an app presenting a nonce;
//! the connection arrives on the listener and is matched here to the request
//! waiting for it (see `meridian_regions::data`).

use super::dial::Upstream;
use super::Relay;
use meridian_regions::data::{self, DataStream, Nonce};
use meridian_regions::tunnel::{StreamError, Tunnel};
use std::collections::HashMap;

/// Data connections the relay asked for and waits on, by nonce id.
pub(super) type Pending = std::sync::Mutex<HashMap<[u8; 16], (Nonce, tokio::sync::oneshot::Sender<DataStream>)>>;

/// Forgets a pending data connection when its request ends, however it ends.
struct PendingGuard<'a>(&'a Pending, [u8; 16]);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
    }
}

impl Relay {
    /// Asks for a data connection to `target` over `tunnel` (an agent's, or
    /// a link to the relay holding it, see `meridian_regions::data`) and
    /// waits for the agent to dial this relay with the nonce. `None` when it
    /// cannot: the caller falls back to an HTTP/2 stream.
    pub(super) async fn await_data(
        &self,
        tunnel: &Tunnel,
        target: &str,
        extra: &[(&str, &str)],
    ) -> Result<Option<Upstream>, StreamError> {
        let nonce = Nonce::random();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.dials.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(nonce.id, (nonce.clone(), tx));
        let _forget = PendingGuard(&self.dials.pending, nonce.id);
        if !tunnel.request_data(target, &nonce.to_header(), extra).await? {
            return Ok(None);
        }
        // The agent answers only once this relay acknowledged the connection.
        match rx.await {
            Ok(conn) => {
                self.state.metrics.data_connections.inc();
                Ok(Some(Upstream::Data(conn)))
            }
            Err(_) => Err(StreamError::TunnelClosed("the data connection was lost".into())),
        }
    }

    /// A data connection presenting `nonce`: handed to the request waiting
    /// for it (after the one-byte acknowledgement), or closed.
    pub(super) async fn claim(&self, mut conn: DataStream, nonce: Nonce) {
        use tokio::io::AsyncWriteExt;
        let waiting = {
            let mut pending = self.dials.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get(&nonce.id) {
                Some((expected, _)) if expected.matches(&nonce) => pending.remove(&nonce.id).map(|(_, tx)| tx),
                _ => None,
            }
        };
        let Some(waiting) = waiting else {
            return tracing::warn!(?nonce, "refused a data connection with an unknown nonce");
        };
        let acked = tokio::time::timeout(data::DATA_TIMEOUT, async {
            conn.write_all(&[data::ACK]).await?;
            conn.flush().await
        });
        if matches!(acked.await, Ok(Ok(()))) {
            let _ = waiting.send(conn);
        }
    }
}
