//! A workspace's shell and TCP ports through the nearest region:
//!
//! - `meridian ssh WORKSPACE [-- COMMAND]`: a terminal session (or a
//!   command, with its exit status) with Meridian's own SSH client.
//! - `meridian ssh --stdio WORKSPACE`: the SSH connection on stdin/stdout,
//!   for OpenSSH's `ProxyCommand` (what `config-ssh` writes).
//! - `meridian config-ssh`: a managed block in `~/.ssh/config` and a
//!   known-hosts file of the agents' host keys, so plain `ssh`, `scp`,
//!   `sftp` and the IDEs work.
//! - `meridian port-forward WORKSPACE --tcp LOCAL[:REMOTE]…`.
//!
//! [`dial`] picks the region and carries each connection as a session that
//! survives its region's death; [`client`] is the SSH client; [`config`]
//! edits the SSH configuration; [`forward`] the port forwarder.

pub mod client;
pub mod config;
pub mod dial;
pub mod forward;

use crate::ops::Target;
use anyhow::Result;
use clap::Args;
use dial::{Dialer, Workspace};
use meridian_regions::stream::StreamKind;
use std::process::ExitCode;

#[derive(Args)]
pub struct SshArgs {
    #[command(flatten)]
    target: Target,
    /// Carry the SSH connection on stdin and stdout instead of running a
    /// client (OpenSSH: `ProxyCommand meridian ssh --stdio WORKSPACE`).
    #[arg(long)]
    stdio: bool,
    /// The region to go through first [default: the healthy one with the
    /// lowest measured latency]. A session moves on from it if it dies.
    #[arg(long, env = "MERIDIAN_REGION")]
    region: Option<String>,
    /// `[OWNER/]WORKSPACE[.AGENT]` (the agent may be left out when the workspace has one).
    workspace: Workspace,
    /// A command to run instead of a login shell (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

pub async fn ssh(args: SshArgs) -> Result<ExitCode> {
    let ca_cert = args.target.ca_cert().map(ToOwned::to_owned);
    let client = args.target.client()?;
    let dialer =
        Dialer::new(client, args.workspace, StreamKind::Ssh, args.region.as_deref(), ca_cert.as_deref()).await?;
    if args.stdio {
        let (stdin, stdout) = stdio();
        dial::run_session(&dialer, stdin, stdout).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let code = client::run(std::sync::Arc::new(dialer), &args.command).await?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}

type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
type Writer = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// stdin and stdout for `--stdio`: as OpenSSH gives them to a `ProxyCommand`
/// (pipes), read and written on the runtime's own reactor; tokio's
/// `stdin()`/`stdout()` hand every read and write to a blocking thread,
/// which cost scp through Meridian ~3 ms of CPU per MiB (BENCHMARKS.md).
/// Anything else (a file, a terminal) goes through tokio's.
fn stdio() -> (Reader, Writer) {
    use std::os::fd::AsFd;
    use tokio::net::unix::pipe;
    let stdin: Reader = match std::io::stdin().as_fd().try_clone_to_owned().map(pipe::Receiver::from_owned_fd) {
        Ok(Ok(pipe)) => Box::new(pipe),
        _ => Box::new(tokio::io::stdin()),
    };
    let stdout: Writer = match std::io::stdout().as_fd().try_clone_to_owned().map(pipe::Sender::from_owned_fd) {
        Ok(Ok(pipe)) => Box::new(pipe),
        _ => Box::new(tokio::io::stdout()),
    };
    (stdin, stdout)
}

#[derive(Args)]
pub struct ConfigSshArgs {
    #[command(flatten)]
    target: Target,
    /// The SSH configuration file to edit [default: ~/.ssh/config].
    #[arg(long, env = "MERIDIAN_SSH_CONFIG")]
    ssh_config: Option<std::path::PathBuf>,
    /// Print the block instead of writing it.
    #[arg(long)]
    dry_run: bool,
}

pub async fn config_ssh(args: ConfigSshArgs) -> Result<()> {
    config::run(args.target, args.ssh_config, args.dry_run).await
}

#[derive(Args)]
pub struct PortForwardArgs {
    #[command(flatten)]
    target: Target,
    /// `[OWNER/]WORKSPACE[.AGENT]`.
    workspace: Workspace,
    /// `LOCAL[:REMOTE]` (e.g. `5432`, `15432:5432`, `8000-8010`): listen on
    /// loopback port LOCAL and carry each connection to port REMOTE on the
    /// workspace's loopback. Repeatable.
    #[arg(long = "tcp", value_name = "LOCAL[:REMOTE]", required = true)]
    tcp: Vec<forward::Spec>,
    /// The region to go through first [default: the nearest healthy one].
    #[arg(long, env = "MERIDIAN_REGION")]
    region: Option<String>,
    /// Once listening, write the bound local addresses here as JSON.
    #[arg(long, env = "MERIDIAN_READY_FILE")]
    ready_file: Option<std::path::PathBuf>,
}

pub async fn port_forward(args: PortForwardArgs) -> Result<()> {
    let ca_cert = args.target.ca_cert().map(ToOwned::to_owned);
    let client = args.target.client()?;
    forward::run(client, args.workspace, &args.tcp, args.region, ca_cert, args.ready_file, crate::shutdown_signal())
        .await
}
