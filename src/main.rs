//! The `meridian` binary: parses the command line and calls into the role
//! crates (coordinator, proxy, agent) and `meridian-cli` (the client
//! commands, the demo and the drills). Startup order for the server roles:
//! load config → validate (exit 64 with a one-line reason) → bind and log
//! addresses → run until a signal → drain under a deadline → exit 0.

use clap::{Parser, Subcommand};
use meridian_cli::{audit, connections, demo, drill, ops, shell, shutdown_signal, workspaces};

/// mimalloc: the proxy allocates and frees per request, from one worker
/// thread per core; glibc's malloc was a tenth of its CPU time (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

/// Exit status for a bad configuration (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "meridian", version, about = "Multi-region edge proxy mesh for remote development workspaces")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Said under every server role's `--help`.
const LOG_HELP: &str = "Logging: MERIDIAN_LOG in the environment sets what is logged, in tracing's \
EnvFilter syntax (e.g. `info`, `meridian_proxy=debug`) [default: info, with pingora and sqlx at warn].";

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator: API, Postgres store, region health checker.
    #[command(after_help = LOG_HELP)]
    Coordinator(Box<meridian_coordinator::config::Args>),
    /// Run a regional proxy that registers with the coordinator.
    #[command(after_help = LOG_HELP)]
    Proxy(Box<meridian_proxy::config::Args>),
    /// Run a workspace agent: attach to a region's relay and serve the workspace's apps.
    #[command(after_help = LOG_HELP)]
    Agent(meridian_agent::config::Args),
    /// Run the sample app (the demo's): echoes requests, WebSocket echo at /ws.
    SampleApp {
        /// Address to listen on; port 0 picks a free one (see --ready-file).
        #[arg(long, env = "MERIDIAN_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Once listening, write the bound address here as JSON (`pid`, `listen`).
        #[arg(long, env = "MERIDIAN_READY_FILE")]
        ready_file: Option<std::path::PathBuf>,
        /// PEM certificate chain: serve HTTPS (for `{port}s--` URLs) instead of HTTP.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<std::path::PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<std::path::PathBuf>,
    },
    /// Run a whole deployment on loopback: coordinator, regional proxies, a workspace with an agent and a sample app.
    Demo(demo::DemoArgs),
    /// Rehearse an outage (kill-region, partition-region, kill-coordinator, stop-postgres,
    /// restart-region, cut-tunnel) under steady traffic through every region, and report
    /// detection, errors and recovery; or soak: all of them in turn under mixed traffic.
    Drill(Box<drill::DrillArgs>),
    /// Sign in to a coordinator and remember the session for later commands.
    Login(ops::LoginArgs),
    /// Manage regions (regional proxies).
    Regions(ops::RegionsArgs),
    /// Manage users.
    Users(ops::UsersArgs),
    /// Manage workspaces, their agents and apps.
    Workspaces(workspaces::WorkspacesArgs),
    /// Read the audit log: who changed users, regions and workspaces, signed in or out (admins).
    Audit(audit::AuditArgs),
    /// Read the connection log: who reached which app, port, shell or terminal, through
    /// which region, for how long (admins: everyone's; members: their own).
    Connections(connections::ConnectionsArgs),
    /// Open a shell (or run a command) in a workspace through the nearest region;
    /// `--stdio` for OpenSSH's ProxyCommand.
    Ssh(Box<shell::SshArgs>),
    /// Write `Host meridian.<workspace>` entries into ~/.ssh/config (a managed block), so
    /// plain ssh, scp, sftp and IDEs reach workspaces.
    ConfigSsh(shell::ConfigSshArgs),
    /// Forward local TCP ports to ports on a workspace's loopback through the nearest region.
    PortForward(Box<shell::PortForwardArgs>),
}

fn main() -> ExitCode {
    small_footprint();
    init_tracing();
    match Cli::parse().command {
        Command::Coordinator(args) => run_coordinator(*args),
        Command::Proxy(args) => run_proxy(*args),
        Command::Agent(args) => run_agent(args),
        Command::SampleApp { listen, ready_file, tls_cert, tls_key } => {
            run_sample_app(listen, ready_file, tls_cert.zip(tls_key))
        }
        Command::Demo(args) => ops::run(demo::run(args, shutdown_signal())),
        Command::Drill(args) => ops::run(drill::run(*args)),
        Command::Login(args) => ops::run(ops::login(args)),
        Command::Regions(args) => ops::run(ops::regions(args)),
        Command::Users(args) => ops::run(ops::users(args)),
        Command::Workspaces(args) => ops::run(workspaces::run(args)),
        Command::Audit(args) => ops::run(audit::run(args)),
        Command::Connections(args) => ops::run(connections::run(args)),
        Command::Ssh(args) => ops::run_code(shell::ssh(*args)),
        Command::ConfigSsh(args) => ops::run(shell::config_ssh(args)),
        Command::PortForward(args) => ops::run(shell::port_forward(*args)),
    }
}

fn run_coordinator(args: meridian_coordinator::config::Args) -> ExitCode {
    let config = match args.with_file().and_then(|a| a.resolve()) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(meridian_coordinator::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failure(format!("{e:#}")),
    }
}

fn run_proxy(args: meridian_proxy::config::Args) -> ExitCode {
    match args.with_file().and_then(|a| a.resolve()) {
        Ok(config) => match meridian_proxy::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => failure(format!("{e:#}")),
        },
        Err(e) => config_error(e),
    }
}

fn run_agent(args: meridian_agent::config::Args) -> ExitCode {
    let config = match args.resolve() {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(meridian_agent::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ meridian_agent::Fatal::TokenRefused(_)) => {
            eprintln!("meridian agent: {e}");
            ExitCode::from(meridian_agent::EXIT_TOKEN_REFUSED as u8)
        }
        Err(e) => failure(e),
    }
}

/// Every Meridian process runs without transparent huge pages. mimalloc asks
/// for them (`MADV_HUGEPAGE`), and one byte touched then makes 2 MiB resident
/// that is not given back until all of it is free: the agent held 9.3 MiB of
/// anonymous memory idle and 15.3 MiB for good after one burst of 200
/// connections (without: 2.0 and 3.5 MiB); a proxy's RSS was about twice what
/// it held (40–60 MiB against 23–28 in a soak) and swung by up to 20 MiB from
/// one reading to the next. They bought no CPU time: small GETs through the
/// proxy cost 122 µs with them and 118 µs without, in two load benchmarks run
/// one after the other (BENCHMARKS.md). Set before anything much is allocated.
fn small_footprint() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("meridian: cannot turn transparent huge pages off ({e}); running with them");
    }
}

fn run_sample_app(
    listen: std::net::SocketAddr,
    ready_file: Option<std::path::PathBuf>,
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> ExitCode {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => return config_error(format!("cannot listen on {listen}: {e}")),
        };
        let listen = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => return failure(e),
        };
        tracing::info!(%listen, tls = tls.is_some(), "sample app listening");
        if let Some(path) = &ready_file {
            let ready = meridian_regions::ready::Ready {
                pid: std::process::id(),
                listen,
                access_url: None,
                relay: None,
                internal: None,
            };
            if let Err(e) = meridian_regions::ready::write(path, &ready) {
                return failure(format!("cannot write {}: {e}", path.display()));
            }
        }
        let served = match tls {
            Some((cert, key)) => match meridian_regions::certificate::ReloadingCertificate::watch(&cert, &key)
                .and_then(meridian_regions::tunnel::tls_acceptor)
            {
                Ok(acceptor) => meridian_sample_app::serve_tls(listener, acceptor, shutdown_signal()).await,
                Err(e) => return config_error(format!("{e:#}")),
            },
            None => meridian_sample_app::serve(listener, shutdown_signal()).await,
        };
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => failure(e),
        }
    })
}

/// A multi-threaded runtime for a server role, or the exit code saying why not.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Runtime::new().map_err(|e| failure(format!("cannot start the runtime: {e}")))
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MERIDIAN_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,pingora=warn,pingora_core=warn,pingora_proxy=warn,sqlx=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn config_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("meridian: configuration error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn failure(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("meridian: {e}");
    ExitCode::FAILURE
}
