//! One SSH connection: session channels (a shell, a command or sftp; see
//! [`super::process`]), `direct-tcpip` (`ssh -L`, VS Code) and
//! `tcpip-forward` (`ssh -R`).
//!
//! Requests on a session channel are answered here (success, or failure for
//! what is not offered); the channel's own task (it receives every request
//! as a message too) does the work.

use russh::server::{Auth, ChannelOpenHandle, Handler, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use std::collections::HashMap;
use std::time::Duration;

/// Longest wait for a forwarded connection to its target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The state of one SSH connection.
#[derive(Default)]
pub struct Connection {
    /// `ssh -R` listeners, by the (address, port) the client asked for.
    forwards: HashMap<(String, u32), tokio::task::AbortHandle>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        for (_, listener) in self.forwards.drain() {
            listener.abort();
        }
    }
}

impl Handler for Connection {
    type Error = russh::Error;

    /// The region authorized the stream for the workspace's owner before it
    /// reached the agent: SSH's own sign-in has nothing left to check.
    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        tokio::spawn(super::process::serve_channel(channel));
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if super::process::allowed_env(name) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    /// `ssh -L`: a connection from inside the workspace to `host:port`, as
    /// `ssh` to any host would make it (the shell could open it as well).
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Ok(port) = u16::try_from(port) else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        let connect = tokio::net::TcpStream::connect((host.to_owned(), port));
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                reply.accept().await;
                tokio::spawn(pipe(channel, tcp));
            }
            failed => {
                tracing::debug!(%host, port, error = ?failed.map(|r| r.err()), "a forwarded connection failed");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    /// `ssh -R`: listens in the workspace (on loopback unless the client
    /// names another address) and opens a `forwarded-tcpip` channel to the
    /// client for each connection.
    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Ok(asked) = u16::try_from(*port) else { return Ok(false) };
        let bind_to = match address {
            "" | "localhost" => "127.0.0.1",
            other => other,
        };
        let listener = match tokio::net::TcpListener::bind((bind_to, asked)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::info!(address, port = asked, error = %e, "cannot listen for a remote forward");
                return Ok(false);
            }
        };
        let bound = listener.local_addr().map(|a| a.port()).unwrap_or(asked);
        *port = u32::from(bound);
        let handle = session.handle();
        let (address, key_port) = (address.to_owned(), u32::from(asked));
        let task = tokio::spawn({
            let address = address.clone();
            async move {
                while let Ok((tcp, peer)) = listener.accept().await {
                    let _ = tcp.set_nodelay(true);
                    let (handle, address) = (handle.clone(), address.clone());
                    tokio::spawn(async move {
                        let open = handle.channel_open_forwarded_tcpip(
                            address,
                            u32::from(bound),
                            peer.ip().to_string(),
                            u32::from(peer.port()),
                        );
                        if let Ok(channel) = open.await {
                            pipe(channel, tcp).await;
                        }
                    });
                }
            }
        });
        if let Some(old) = self.forwards.insert((address, key_port), task.abort_handle()) {
            old.abort();
        }
        Ok(true)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self.forwards.remove(&(address.to_owned(), port)).map(|l| l.abort()).is_some())
    }
}

/// Copies bytes between a channel and a TCP connection until both ends close.
async fn pipe(channel: Channel<Msg>, mut tcp: tokio::net::TcpStream) {
    let mut stream = channel.into_stream();
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await;
}
