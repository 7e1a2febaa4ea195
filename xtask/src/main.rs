//! `cargo xtask <task>`: the project's chores in Rust, so a fresh Debian machine needs
//! nothing but cargo and root to build, test, demo and bench offheap.
mod bench;
mod bench_attach;
mod bench_jsframes;
mod bench_threadpool;
mod bench_traffic;
mod bench_unwind;
mod bpf_stats;
mod demo;
mod floor;
mod node_versions;
mod proc;
mod setup;
mod stats;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "offheap project tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install the missing Debian packages and mount tracefs (idempotent; needs root).
    Setup,
    /// Setup, build in release, trace the bundled leaking Node program and print the report.
    Demo {
        /// Tracing mode passed to `offheap run --mode`.
        #[arg(long, value_enum, default_value_t = TraceMode::Resident)]
        mode: TraceMode,
        /// How long to trace, in seconds.
        #[arg(long, default_value_t = 8)]
        duration: u32,
        /// Run this offheap binary instead of building target/release/offheap.
        #[arg(long, value_name = "PATH")]
        offheap: Option<std::path::PathBuf>,
    },
    /// Setup, build everything, run every unit and end-to-end test serially.
    Test,
    /// Measure tracing overhead on an allocation-heavy Node loop (prints, never asserts).
    Bench(bench::BenchArgs),
}

/// The modes of `offheap --mode`, spelled the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TraceMode {
    Resident,
    Malloc,
}

impl TraceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TraceMode::Resident => "resident",
            TraceMode::Malloc => "malloc",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Demo {
            mode,
            duration,
            offheap,
        } => demo::run(mode, duration, offheap),
        Task::Test => test::run(),
        Task::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of contexts, outermost first.
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
