//! A session channel's work: the user's login shell or a command (`sh -c`
//! as `ssh host cmd` runs it), on a PTY when one was asked for (window
//! changes follow), else on pipes with stdout and stderr kept apart; the
//! client's environment, signals, and the exit status at the end. Or the
//! `sftp` subsystem.
//!
//! Processes run as the agent's own user, in its home directory, without
//! the agent's `MERIDIAN_*` environment (its token never reaches a shell).

use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// After a PTY's process exits, how long output still draining from it is
/// waited for before the exit status is sent (the client ends on it, so
/// output sent later is lost). Draining ends at once in the usual case (the
/// terminal's last holder gone, its reader sees the end right after the
/// last bytes); the bound only matters when a background process still
/// holds the terminal, or the agent is starved of CPU. With 500 ms a shell's
/// last line went missing once on a loaded CI machine (this bound running out
/// is the one way the exit status overtakes output); 3 s.
const PTY_DRAIN: Duration = Duration::from_secs(3);
/// Most environment variables a client may set on one channel.
const MAX_ENV: usize = 256;

/// What a channel asked for before its shell, command or subsystem.
#[derive(Default)]
pub(crate) struct Setup {
    pub pty: Option<(String, pty_process::Size)>,
    pub env: Vec<(String, String)>,
}

/// Whether a client may set environment variable `name` (OpenSSH's
/// `AcceptEnv` is the server's choice; here every variable but those that
/// change what runs or how it loads, and Meridian's own).
pub fn allowed_env(name: &str) -> bool {
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    let refused =
        name.starts_with("LD_") || name.starts_with("MERIDIAN_") || ["PATH", "SHELL", "HOME", "USER"].contains(&name);
    valid && !refused
}

/// Serves a session channel: collects its setup, then runs what it asks for.
pub async fn serve_channel(mut channel: Channel<Msg>) {
    let mut setup = Setup::default();
    loop {
        match channel.wait().await {
            None => return,
            Some(ChannelMsg::RequestPty { term, col_width, row_height, .. }) => {
                let size = pty_process::Size::new(clamp(row_height), clamp(col_width));
                setup.pty = Some((term, size));
            }
            Some(ChannelMsg::SetEnv { variable_name, variable_value, .. }) => {
                if allowed_env(&variable_name) && setup.env.len() < MAX_ENV {
                    setup.env.push((variable_name, variable_value));
                }
            }
            Some(ChannelMsg::RequestShell { .. }) => return run(channel, setup, None).await,
            Some(ChannelMsg::Exec { command, .. }) => return run(channel, setup, Some(command)).await,
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == "sftp" => return sftp(channel).await,
            Some(_) => {}
        }
    }
}

/// The `sftp` subsystem until the client ends it, then its exit status
/// (scp reports a transfer without one as failed).
async fn sftp(channel: Channel<Msg>) {
    let (ours, theirs) = tokio::io::duplex(256 << 10);
    russh_sftp::server::run(theirs, super::sftp::Sftp::default()).await;
    let (mut rx, tx) = channel.split();
    let (mut from_sftp, mut to_sftp) = tokio::io::split(ours);
    let mut to_client = tx.make_writer();
    let answers = async {
        let _ = tokio::io::copy(&mut from_sftp, &mut to_client).await;
        let _ = to_client.flush().await;
    };
    let requests = async {
        let _ = tokio::io::copy(&mut rx.make_reader(), &mut to_sftp).await;
        let _ = to_sftp.shutdown().await;
    };
    tokio::join!(answers, requests);
    let _ = tx.exit_status(0).await;
    let _ = tx.eof().await;
    let _ = tx.close().await;
}

fn clamp(n: u32) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// The agent's user: login shell and home directory.
pub(crate) struct Account {
    pub name: String,
    pub shell: std::path::PathBuf,
    pub home: std::path::PathBuf,
}

pub(crate) fn account() -> Account {
    let user = nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten();
    let shell = user.as_ref().map(|u| u.shell.clone()).filter(|s| s.is_file()).unwrap_or_else(|| "/bin/sh".into());
    let home = user.as_ref().map(|u| u.dir.clone()).filter(|d| d.is_dir()).unwrap_or_else(|| "/".into());
    Account { name: user.map(|u| u.name).unwrap_or_default(), shell, home }
}

/// The environment a process starts with: the agent's, without Meridian's
/// own variables, with the account's and the client's.
pub(crate) fn environment(account: &Account, setup: &Setup) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars().filter(|(k, _)| !k.starts_with("MERIDIAN_")).collect();
    let mut set = |k: &str, v: String| {
        env.retain(|(name, _)| name != k);
        env.push((k.to_owned(), v));
    };
    set("HOME", account.home.display().to_string());
    set("USER", account.name.clone());
    set("LOGNAME", account.name.clone());
    set("SHELL", account.shell.display().to_string());
    if let Some((term, _)) = &setup.pty {
        set("TERM", term.clone());
    }
    for (k, v) in &setup.env {
        set(k, v.clone());
    }
    env
}

/// How a process starts: the account's shell, as a login shell (`-bash`,
/// argv[0] with a dash, as login(1) does) or with `-c COMMAND`, in the
/// account's home directory with `env` only.
pub(crate) struct Launch {
    shell: std::path::PathBuf,
    arg0: String,
    args: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
    home: std::path::PathBuf,
}

impl Launch {
    pub(crate) fn new(account: &Account, env: Vec<(String, String)>, command: Option<&[u8]>) -> Self {
        let (arg0, args) = match command {
            None => (format!("-{}", account.shell.file_name().and_then(|n| n.to_str()).unwrap_or("sh")), vec![]),
            Some(c) => {
                (account.shell.display().to_string(), vec!["-c".into(), std::ffi::OsStr::from_bytes(c).to_owned()])
            }
        };
        Self { shell: account.shell.clone(), arg0, args, env, home: account.home.clone() }
    }

    /// Started on the PTY whose other end is `pts` (the session leader, with it as its terminal).
    pub(crate) fn on_pty(&self, pts: pty_process::Pts) -> std::io::Result<tokio::process::Child> {
        pty_process::Command::new(&self.shell)
            .arg0(&self.arg0)
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.home)
            .spawn(pts)
            .map_err(std::io::Error::other)
    }

    /// Started on pipes, in a process group of its own (signals reach its children too).
    fn on_pipes(&self) -> std::io::Result<tokio::process::Child> {
        use std::process::Stdio;
        tokio::process::Command::new(&self.shell)
            .arg0(&self.arg0)
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
    }
}

/// Runs the shell (`command` = `None`, as a login shell) or a command, and
/// reports its exit status.
async fn run(channel: Channel<Msg>, setup: Setup, command: Option<Vec<u8>>) {
    let account = account();
    let launch = Launch::new(&account, environment(&account, &setup), command.as_deref());
    let (rx, tx) = channel.split();
    let status = match &setup.pty {
        Some((_, size)) => on_pty(rx, &tx, &launch, *size).await,
        None => on_pipes(rx, &tx, &launch).await,
    };
    let code = match status {
        Ok(status) => exit_code(status),
        Err(e) => {
            let mut err = tx.make_writer_ext(Some(1));
            let _ =
                err.write_all(format!("meridian: cannot start {}: {e}\r\n", account.shell.display()).as_bytes()).await;
            127
        }
    };
    let _ = tx.exit_status(code).await;
    let _ = tx.eof().await;
    let _ = tx.close().await;
}

use std::os::unix::ffi::OsStrExt;

fn exit_code(status: std::process::ExitStatus) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u32,
        // Killed by a signal: the shell's convention, 128 + its number.
        (None, Some(sig)) => 128 + sig as u32,
        (None, None) => 255,
    }
}

/// On a new PTY: output goes to the channel as it comes; input, window
/// changes and signals come from it until the process exits.
async fn on_pty(
    mut rx: ChannelReadHalf,
    tx: &ChannelWriteHalf<Msg>,
    launch: &Launch,
    size: pty_process::Size,
) -> std::io::Result<std::process::ExitStatus> {
    let (pty, pts) = pty_process::open().map_err(std::io::Error::other)?;
    pty.resize(size).map_err(std::io::Error::other)?;
    let mut child = launch.on_pty(pts)?;
    let pid = child.id();
    let (pty_r, mut pty_w) = pty.into_split();
    let output = tokio::spawn(copy_out(pty_r, tx.make_writer()));
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    let _ = pty_w.write_all(&data).await;
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    let _ = pty_w.resize(pty_process::Size::new(clamp(row_height), clamp(col_width)));
                }
                Some(ChannelMsg::Signal { signal }) => deliver(pid, &signal, true),
                // A terminal has no end of input: the client's EOF changes nothing.
                Some(_) => {}
                None => {
                    // The client is gone: hang up, as a terminal closing does.
                    tracing::info!(?pid, "the SSH client went away; hanging up its terminal");
                    deliver(pid, &Sig::HUP, true);
                    break child.wait().await?;
                }
            },
        }
    };
    // The process is gone; what it wrote last may still be on its way.
    let _ = tokio::time::timeout(PTY_DRAIN, output).await;
    Ok(status)
}

/// On pipes: stdout and stderr go to the channel apart (data and extended
/// data); input until the client's EOF closes stdin.
async fn on_pipes(
    mut rx: ChannelReadHalf,
    tx: &ChannelWriteHalf<Msg>,
    launch: &Launch,
) -> std::io::Result<std::process::ExitStatus> {
    let mut child = launch.on_pipes()?;
    let pid = child.id();
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take().map(|o| tokio::spawn(copy_out(o, tx.make_writer())));
    let stderr = child.stderr.take().map(|e| tokio::spawn(copy_out(e, tx.make_writer_ext(Some(1)))));
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(w) = stdin.as_mut() {
                        if w.write_all(&data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Some(ChannelMsg::Eof) => stdin = None,
                Some(ChannelMsg::Signal { signal }) => deliver(pid, &signal, true),
                Some(_) => {}
                None => {
                    deliver(pid, &Sig::HUP, true);
                    break child.wait().await?;
                }
            },
        }
    };
    // Output is complete once the pipes close (everything the command wrote).
    for out in [stdout, stderr].into_iter().flatten() {
        let _ = out.await;
    }
    Ok(status)
}

/// Copies a process's output to a channel writer until it ends.
async fn copy_out(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.flush().await;
}

/// Sends `sig` to the process (and its process group: the shell's children too).
pub(crate) fn deliver(pid: Option<u32>, sig: &Sig, group: bool) {
    use nix::sys::signal::Signal;
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else { return };
    let signal = match sig {
        Sig::ABRT => Signal::SIGABRT,
        Sig::ALRM => Signal::SIGALRM,
        Sig::FPE => Signal::SIGFPE,
        Sig::HUP => Signal::SIGHUP,
        Sig::ILL => Signal::SIGILL,
        Sig::INT => Signal::SIGINT,
        Sig::KILL => Signal::SIGKILL,
        Sig::PIPE => Signal::SIGPIPE,
        Sig::QUIT => Signal::SIGQUIT,
        Sig::SEGV => Signal::SIGSEGV,
        Sig::TERM => Signal::SIGTERM,
        Sig::USR1 => Signal::SIGUSR1,
        Sig::Custom(_) => return,
    };
    let target = nix::unistd::Pid::from_raw(if group { -pid } else { pid });
    let _ = nix::sys::signal::kill(target, signal);
}

#[cfg(test)]
mod tests {
    #[test]
    fn environment_names_a_client_may_set() {
        for ok in ["LANG", "LC_ALL", "GIT_AUTHOR_NAME", "TZ", "_x"] {
            assert!(super::allowed_env(ok), "{ok}");
        }
        for refused in ["LD_PRELOAD", "PATH", "MERIDIAN_AGENT_TOKEN", "HOME", "1X", "A-B", "", "A=B"] {
            assert!(!super::allowed_env(refused), "{refused}");
        }
    }
}
