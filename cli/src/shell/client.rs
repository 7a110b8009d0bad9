//! `meridian ssh`'s own SSH client (russh): the agent's host key checked
//! against the one the coordinator published, a PTY when stdin is a
//! terminal and no command is given (raw mode, window changes), stdout and
//! stderr apart, and the remote exit status as the command's own.

use super::dial::{run_session, Dialer};
use anyhow::{bail, Context, Result};
use russh::keys::PublicKey;
use russh::ChannelMsg;
use std::io::IsTerminal;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Checks the server's key against the published one.
pub struct Verify {
    expected: PublicKey,
}

impl russh::client::Handler for Verify {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(
            matches!(key, russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.expected.key_data()),
        )
    }
}

/// The task carrying an SSH connection: how its session ended.
pub type Carrier = tokio::task::JoinHandle<Result<()>>;

/// An SSH connection to the agent through a resumable session (carried by
/// a task that lives as long as the connection), the agent's host key
/// checked against the published one, signed in.
pub async fn connect(dialer: Arc<Dialer>) -> Result<(russh::client::Handle<Verify>, Carrier)> {
    let published = dialer
        .host_key()
        .context("the agent has not published an SSH host key (is it older than this client, or not started yet?)")?;
    let expected = PublicKey::from_openssh(&published).context("the published host key is not an OpenSSH key")?;
    let (ours, theirs) = tokio::io::duplex(256 << 10);
    let carrier = tokio::spawn(async move {
        let (r, w) = tokio::io::split(theirs);
        run_session(&dialer, r, w).await
    });
    let config = Arc::new(russh::client::Config {
        inactivity_timeout: None,
        window_size: 2 << 20,
        nodelay: true,
        ..Default::default()
    });
    let mut ssh = match russh::client::connect_stream(config, ours, Verify { expected }).await {
        Ok(ssh) => ssh,
        Err(russh::Error::UnknownKey) => {
            bail!("the agent's host key differs from the one the coordinator published: refusing to connect")
        }
        Err(e) => match carrier.await {
            Ok(Err(why)) => return Err(why),
            _ => return Err(e).context("SSH handshake failed"),
        },
    };
    let user = std::env::var("USER").unwrap_or_else(|_| "meridian".into());
    if !ssh.authenticate_none(user).await?.success() {
        bail!("the agent refused the SSH session");
    }
    Ok((ssh, carrier))
}

/// Why a connection ended before the remote side said how its command
/// exited: what its carrier saw (given a moment to say it).
async fn lost(carrier: Carrier) -> anyhow::Error {
    let why = match tokio::time::timeout(std::time::Duration::from_secs(2), carrier).await {
        Ok(Ok(Err(why))) => format!("{why:#}"),
        Ok(Ok(Ok(()))) => "the agent closed it".to_owned(),
        Ok(Err(e)) => format!("its carrier failed: {e}"),
        Err(_) => "it stopped answering".to_owned(),
    };
    anyhow::anyhow!("the connection to the workspace ended before the remote command exited: {why}")
}

/// Runs `command` (a login shell when empty); its exit status.
pub async fn run(dialer: Arc<Dialer>, command: &[String]) -> Result<u32> {
    let (ssh, carrier) = connect(dialer).await?;
    let mut channel = ssh.channel_open_session().await?;
    let tty = command.is_empty() && std::io::stdin().is_terminal();
    if tty {
        let (cols, rows) = window_size();
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
        channel.request_pty(false, &term, cols, rows, 0, 0, &[]).await?;
    }
    if command.is_empty() {
        channel.request_shell(true).await?;
    } else {
        channel.exec(true, command.join(" ")).await?;
    }
    let _raw = tty.then(RawMode::enter).transpose()?;
    let mut stdin = stdin_chunks();
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
    let mut code = None;
    loop {
        tokio::select! {
            chunk = stdin.recv() => match chunk {
                Some(data) => channel.data(&data[..]).await?,
                None => {
                    channel.eof().await?;
                    stdin = closed();
                }
            },
            _ = winch.recv(), if tty => {
                let (cols, rows) = window_size();
                channel.window_change(cols, rows, 0, 0).await?;
            }
            msg = channel.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    stdout.write_all(&data).await?;
                    stdout.flush().await?;
                }
                Some(ChannelMsg::ExtendedData { data, .. }) => {
                    stderr.write_all(&data).await?;
                    stderr.flush().await?;
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => code = Some(exit_status),
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
        }
    }
    let _ = ssh.disconnect(russh::Disconnect::ByApplication, "", "").await;
    match code {
        Some(code) => Ok(code),
        None => Err(lost(carrier).await),
    }
}

/// Stdin read on its own thread, in chunks (reading it is not cancel-safe).
fn stdin_chunks() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = vec![0u8; 32 << 10];
        let mut stdin = std::io::stdin().lock();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || tx.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

/// A receiver that never yields (stdin ended; the channel's EOF was sent).
fn closed() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    std::mem::forget(tx);
    rx
}

/// The terminal's (columns, rows); 80×24 when unknown.
fn window_size() -> (u32, u32) {
    match rustix::termios::tcgetwinsize(std::io::stdout()) {
        Ok(ws) if ws.ws_col > 0 => (ws.ws_col.into(), ws.ws_row.into()),
        _ => (80, 24),
    }
}

/// The terminal in raw mode until dropped (keystrokes go to the remote shell as typed).
struct RawMode(rustix::termios::Termios);

impl RawMode {
    fn enter() -> Result<Self> {
        use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
        let saved = tcgetattr(std::io::stdin())?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(std::io::stdin(), OptionalActions::Now, &raw)?;
        Ok(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Now, &self.0);
    }
}
