//! `meridian-bench [--quick] [--json]`: see `BENCHMARKS.md`.

use clap::Parser;

/// mimalloc: the proxy allocates and frees per request, from one worker
/// thread per core; glibc's malloc was a tenth of its CPU time (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    /// One short round per row, to check the harness (figures mean nothing).
    #[arg(long)]
    quick: bool,
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    json: bool,
    /// Only the load workloads whose name contains this text (e.g. "small GET").
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
    /// Instead of the load benchmark: the control plane with 100 regions of
    /// 10 replicas heartbeating and 10,000 agents attached.
    #[arg(long)]
    control_plane: bool,
    /// With --control-plane: how many agents are attached [default: 10000].
    #[arg(long)]
    agents: Option<usize>,
    /// Only start the stack, print a wrk command per target, and wait for
    /// Ctrl-C: for profiling by hand (see BENCHMARKS.md).
    #[arg(long)]
    hold: bool,
    /// Instead of a benchmark: serve bare pingora on LISTEN in front of
    /// UPSTREAM, with TLS if CERT and KEY are given (a floor row; the stack
    /// starts it).
    #[arg(long, num_args = 2..=4, value_names = ["LISTEN", "UPSTREAM", "CERT", "KEY"], hide = true)]
    bare_pingora: Option<Vec<String>>,
    /// Instead of a benchmark: copy bytes between connections to LISTEN and
    /// UPSTREAM (the hop of a floor row; the stack starts it).
    #[arg(long, num_args = 2, value_names = ["LISTEN", "UPSTREAM"], hide = true)]
    forward: Option<Vec<String>>,
    /// Instead of a benchmark: the agent's SSH server on a port of its own,
    /// with host key KEY (made if missing), reporting its address in
    /// --ready-file (the SSH server behind rathole in the scp rows).
    #[arg(long, value_name = "KEY", hide = true)]
    ssh_server: Option<PathBuf>,
    #[arg(long, value_name = "PATH", hide = true, requires = "ssh_server")]
    ready_file: Option<PathBuf>,
    /// The meridian binary [default: `meridian` next to this one].
    #[arg(long)]
    meridian: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let floor = match (args.bare_pingora.as_deref(), args.forward.as_deref()) {
        (Some([listen, upstream, tls @ ..]), _) => {
            let tls = match tls {
                [cert, key] => Some((cert.as_str(), key.as_str())),
                _ => None,
            };
            Some(
                upstream.parse().map_err(anyhow::Error::from).and_then(|u| meridian_bench::bare::serve(listen, u, tls)),
            )
        }
        (_, Some([listen, upstream])) => {
            Some(upstream.parse().map_err(anyhow::Error::from).and_then(|u| meridian_bench::bare::forward(listen, u)))
        }
        _ => None,
    };
    let floor = match (floor, &args.ssh_server, &args.ready_file) {
        (None, Some(key), Some(ready)) => Some(meridian_bench::scp::serve(key, ready)),
        (floor, ..) => floor,
    };
    if let Some(served) = floor {
        if let Err(e) = served {
            eprintln!("meridian-bench: {e:#}");
        }
        return std::process::ExitCode::FAILURE;
    }
    let meridian = args.meridian.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.join("meridian")))
            .unwrap_or_else(|| "meridian".into())
    });
    let opts = meridian_bench::Options {
        quick: args.quick,
        only: args.only,
        meridian,
        bare_pingora: std::env::current_exe().ok(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meridian-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let json = |v: &dyn erased::Json| v.to_json();
    if args.hold {
        return match rt.block_on(meridian_bench::hold(&opts.meridian, opts.bare_pingora.as_deref())) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("meridian-bench: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let result = if args.control_plane {
        let scale = meridian_bench::control_plane::Scale {
            regions: if args.quick { 5 } else { 100 },
            replicas: if args.quick { 20 } else { 1000 },
            agents: args.agents.unwrap_or(if args.quick { 200 } else { 10_000 }),
            window: std::time::Duration::from_secs(if args.quick { 3 } else { 30 }),
            records_per_sec: if args.quick { 100 } else { 5000 },
        };
        rt.block_on(meridian_bench::control_plane::simulate(&opts.meridian, scale)).and_then(|r| {
            let text = if args.json { json(&r) } else { r.markdown() };
            if r.failed_calls > 0 {
                println!("{text}");
                anyhow::bail!("{} control-plane calls failed: {:?}", r.failed_calls, r.failures);
            }
            Ok(text)
        })
    } else {
        rt.block_on(meridian_bench::run(&opts)).map(|r| if args.json { json(&r) } else { r.markdown() })
    };
    match result {
        Ok(text) => {
            println!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meridian-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

mod erased {
    /// Pretty JSON of any serializable report.
    pub trait Json {
        fn to_json(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> String {
            serde_json::to_string_pretty(self).unwrap_or_default()
        }
    }
}
