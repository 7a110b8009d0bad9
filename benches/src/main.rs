//! `meridian-bench [--quick] [--json]`: see `BENCHMARKS.md`.

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    /// One short round per row, to check the harness (figures mean nothing).
    #[arg(long)]
    quick: bool,
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    json: bool,
    /// The meridian binary [default: `meridian` next to this one].
    #[arg(long)]
    meridian: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let meridian = args.meridian.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.join("meridian")))
            .unwrap_or_else(|| "meridian".into())
    });
    let opts = meridian_bench::Options { quick: args.quick, meridian };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build();
    let result = runtime.map_err(anyhow::Error::from).and_then(|rt| rt.block_on(meridian_bench::run(&opts)));
    match result {
        Ok(report) => {
            let text =
                if args.json { serde_json::to_string_pretty(&report).unwrap_or_default() } else { report.markdown() };
            println!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meridian-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
