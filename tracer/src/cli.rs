//! Command-line interface: every subcommand and flag. Front ends only choose
//! targets and outputs; they do not know how a probe works.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::report::{text::FrameView, Format, Mode, ValueKind};

#[derive(Debug, Parser)]
#[command(
    name = "offheap",
    version,
    about = "Find the memory of a Node.js process that heapUsed never shows",
    long_about = "offheap traces a process with eBPF and attributes its memory to the code that \
                  allocated it, split into the V8 heap and everything off it (Buffers, addons, \
                  zlib/openssl/libuv state). Needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE, \
                  CAP_SYS_PTRACE, CAP_SYS_ADMIN).\n\nExit codes: 0 a report was written; 1 usage \
                  error; 2 tracing could not start; 3 tracing ran but the report could not be written; \
                  130 interrupted (SIGINT/SIGTERM) while attaching, before tracing started. \
                  They are about the report, not the traced command: `run` exits 0 when CMD \
                  failed, and says how CMD ended on stderr."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to a running process and report its memory by allocating stack.
    Record(RecordArgs),
    /// Start a command, held before exec until every probe is attached, and
    /// trace it and every process it forks.
    ///
    /// Exits 0 once the report is written, whatever the command's exit
    /// status; how the command ended is printed on stderr
    /// (`offheap: the command exited with status N`).
    Run(RunArgs),
    /// Long-running agent: trace many processes, write OOM post-mortems, serve metrics.
    Watch(WatchArgs),
    /// Render a saved JSON report again, in any format.
    Report(ReportArgs),
    /// Compare two saved JSON reports and rank the stacks that grew.
    ///
    /// Stacks are matched by their symbolized frames, never by address, so two
    /// runs of one program compare. Formats: text, json, folded with two
    /// values per line (`stack BEFORE AFTER`), or svg: a differential flame
    /// graph where red frames grew and blue ones shrank.
    Diff(DiffArgs),
    /// Print the verdict of a saved JSON report: where the memory grows, its
    /// shape, the culprit, the heap limit against the container's, allocator
    /// retention, and what to do next.
    Explain(ExplainArgs),
}

/// Options shared by every command that traces.
#[derive(Debug, Args, Clone)]
pub struct TraceOpts {
    /// What to trace: `resident` (page faults and mappings; cheap, the default)
    /// or `malloc` (every malloc-family call; exact, slow).
    #[arg(long, value_enum, default_value_t = Mode::Resident)]
    pub mode: Mode,
    /// Stop after this many seconds (default: until the target exits or Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    #[command(flatten)]
    pub output: OutputOpts,
    /// Sampling interval of the time series and the live view, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub interval: f64,
    /// Redraw a live top-like view every interval (default when stdout is a terminal).
    #[arg(long)]
    pub live: bool,
    /// Never show the live view.
    #[arg(long, conflicts_with = "live")]
    pub no_live: bool,
}

#[derive(Debug, Args, Clone)]
pub struct OutputOpts {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the report here (atomically) instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Text output: show at most N stacks per bucket (JSON always has all).
    #[arg(long, value_name = "N")]
    pub top: Option<usize>,
    /// Folded and SVG output: weigh stacks by live bytes or by total bytes allocated.
    #[arg(long, value_enum, default_value_t = ValueKind::Live)]
    pub value: ValueKind,
    /// Text output: `folded` shows runs of V8/libuv/start-up frames as one
    /// line; `all` shows every frame (JSON, pprof and folded always have all).
    #[arg(long, value_enum, default_value_t = FrameView::Folded)]
    pub frames: FrameView,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The process to trace.
    #[arg(long, short)]
    pub pid: u32,
    /// Also trace the processes it forks from now on (node's `cluster`,
    /// `child_process.fork`, PM2), each in its own entry; in malloc mode
    /// from when its uprobes are attached, a few ms after the fork.
    #[arg(long)]
    pub children: bool,
    #[command(flatten)]
    pub trace: TraceOpts,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub trace: TraceOpts,
    /// The command to start, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Trace every process in this cgroup directory and below (v1 memory or v2). Repeatable.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Vec<PathBuf>,
    /// Trace every process with this command name. Repeatable.
    #[arg(long, value_name = "NAME")]
    pub comm: Vec<String>,
    /// Trace every process whose executable is node (the DaemonSet default).
    #[arg(long)]
    pub all_node: bool,
    /// Write OOM post-mortems (and pre-OOM snapshots) into this directory.
    #[arg(long, value_name = "DIR")]
    pub oom_dir: Option<PathBuf>,
    /// Write a pre-OOM snapshot when a cgroup's usage crosses this percentage of its limit.
    #[arg(long, value_name = "PERCENT", default_value_t = 90.0)]
    pub warn_at: f64,
    /// Serve Prometheus metrics, /healthz and /report?pid=N here.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub listen: String,
    #[arg(long, value_enum, default_value_t = Mode::Resident)]
    pub mode: Mode,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Sampling interval of the time series, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub interval: f64,
    /// Most stacks kept per process; the smallest are evicted beyond it (and counted).
    #[arg(long, default_value_t = 4096)]
    pub max_stacks_per_process: usize,
    /// Most stacks kept over all processes.
    #[arg(long, default_value_t = 65536)]
    pub max_stacks_total: usize,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A JSON report written by `record`, `run` or `watch`.
    pub file: PathBuf,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The earlier JSON report.
    pub before: PathBuf,
    /// The later JSON report.
    pub after: PathBuf,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A JSON report written by `record`, `run` or `watch`.
    pub file: PathBuf,
}

/// clap's error for bad arguments on one line, as every other error is
/// (README): clap renders the error, then the arguments it lists and its
/// tips on indented lines, a usage line and a help hint. This keeps the
/// error, what it lists and its tips, and ends with the help command of the
/// subcommand in the usage line.
pub fn one_line_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("invalid arguments");
    let mut out = format!(
        "offheap: error: {}",
        first.strip_prefix("error: ").unwrap_or(first)
    );
    let mut help = "offheap --help".to_string();
    let mut in_first_block = true;
    for l in lines {
        let t = l.trim();
        if t.is_empty() {
            in_first_block = false;
        } else if let Some(usage) = t.strip_prefix("Usage: ") {
            let words: Vec<&str> = usage
                .split_whitespace()
                .take_while(|w| !w.starts_with(['[', '<', '-']))
                .collect();
            help = format!("{} --help", words.join(" "));
        } else if t.starts_with("For more information") {
        } else if in_first_block {
            out.push(' ');
            out.push_str(t);
        } else {
            out.push_str("; ");
            out.push_str(t);
        }
    }
    out.push_str(&format!("; try '{help}'"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(args: &[&str]) -> String {
        let e = Cli::try_parse_from(std::iter::once("offheap").chain(args.iter().copied()))
            .unwrap_err();
        one_line_error(&e)
    }

    #[test]
    fn clap_errors_are_one_line_with_a_help_hint() {
        assert_eq!(
            err(&["record", "--bogus"]),
            "offheap: error: unexpected argument '--bogus' found; try 'offheap record --help'"
        );
        assert_eq!(
            err(&["record"]),
            "offheap: error: the following required arguments were not provided: --pid <PID>; \
             try 'offheap record --help'"
        );
        assert_eq!(
            err(&["record", "--pid", "1", "--mode", "foo"]),
            "offheap: error: invalid value 'foo' for '--mode <MODE>' \
             [possible values: malloc, resident]; try 'offheap --help'"
        );
        assert_eq!(
            err(&["recrd"]),
            "offheap: error: unrecognized subcommand 'recrd'; \
             tip: some similar subcommands exist: 'report', 'record'; try 'offheap --help'"
        );
        for args in [&["run"][..], &["record", "--pid", "x"], &["diff", "a"]] {
            assert_eq!(err(args).lines().count(), 1, "{args:?}");
        }
    }
}
