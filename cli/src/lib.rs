//! The `meridian` command line apart from the server roles (whose crates are
//! `meridian-coordinator`, `meridian-proxy` and `meridian-agent`); the binary
//! in `src/main.rs` parses the command line and calls into this crate.
//!
//! - [`session`], [`ops`], [`workspaces`], [`audit`], [`connections`]: the client commands
//!   (`login`, `regions`, `users`, `workspaces`, `audit`, `connections`) over the coordinator's API.
//! - [`shell`]: `ssh`, `config-ssh` and `port-forward`: a workspace's shell and
//!   ports through the nearest region, in sessions that survive its death.
//! - [`demo`]: a whole deployment on loopback (`meridian demo`): its child
//!   processes, simulated links and the fault controller a drill talks to.
//! - [`faults`]: the fault vocabulary the demo and the drills share.
//! - [`drill`]: rehearsals (`meridian drill`): one fault under steady
//!   traffic, or a soak of every fault in turn under mixed traffic.

pub mod audit;
pub mod browser_login;
pub mod connections;
pub mod demo;
pub mod drill;
pub mod faults;
pub mod ops;
pub mod session;
pub mod shell;
pub mod workspaces;

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
