//! `cargo xtask bench`: what tracing costs an allocation-heavy Node loop.
//!
//! Every figure is a median over paired runs (an untraced run next to a traced
//! one), timed by the workload itself (bench/alloc-loop.js prints its loop's elapsed ms),
//! so node's start-up and a tracer's attach and report never count. It prints and
//! never asserts: a benchmark on a shared 2-core machine is not a test.
//!
//! Parts: `floor` (a bare counting uprobe on malloc+free of the one PID, libbpf:
//! what any uprobe tool pays; it also runs `floor+return`, the same with a return
//! probe on malloc, what exact accounting pays at least), `bpftrace-floor` (the same with bpftrace, which
//! cannot narrow to one PID; see floor.rs), `malloc` and `resident`
//! (`offheap run --mode ...`), `traffic` (the traffic probes on a
//! socket-heavy loop: bench_traffic.rs), `threadpool` (the threadpool
//! probes on a zlib-heavy loop: bench_threadpool.rs), `attach` (attach
//! and exit times of `record --pid` in both modes against bpftrace's time to
//! ready: bench_attach.rs), `unwind` (the walker's cost per frame and the
//! unwind tables' memory: bench_unwind.rs), and `js-frames` (the walker's
//! cost per JS frame it decodes: bench_jsframes.rs).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::ValueEnum;

use crate::floor::{self, PerPidCounter};
use crate::proc::{cargo, run_cmd, workspace_root};
use crate::setup;
use crate::stats::{median, parse_bpftrace_count, parse_elapsed_ms, quantile};
use crate::{bench_attach, bench_jsframes, bench_threadpool, bench_traffic, bench_unwind};

const WORKLOAD: &str = "bench/alloc-loop.js";
const MALLOC_GOAL_VS_FLOOR: f64 = 1.3;
const RESIDENT_GOAL: f64 = 1.03;
const SYMBOLIZE_GOAL_MS: f64 = 1000.0;
const SETTLE: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Rounds for the floors and malloc mode, each one untraced run and then
    /// each of them traced (untraced runs here vary by 30%, so 9 by default).
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..))]
    pairs: u32,
    /// Rounds (one untraced run, one traced) for resident mode: its effect is
    /// small next to the machine's noise, so more of them.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..))]
    resident_pairs: u32,
    /// Workload loop iterations (default: the workload's, ~0.5-1 s untraced).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    iterations: Option<u32>,
    /// Runs of each tracer in the attach part (attach and exit times).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    attach_runs: u32,
    /// Run only these parts (repeatable; default: all).
    #[arg(long, value_enum)]
    only: Vec<PartName>,
    /// Use the existing target/release/offheap instead of building it.
    #[arg(long)]
    no_build: bool,
    /// Measure this offheap binary instead of target/release/offheap (implies --no-build).
    #[arg(long, value_name = "PATH")]
    offheap: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PartName {
    Floor,
    BpftraceFloor,
    Malloc,
    Resident,
    Traffic,
    Threadpool,
    Attach,
    Unwind,
    JsFrames,
}

/// One part's paired samples (milliseconds).
struct Paired {
    name: &'static str,
    untraced: Vec<f64>,
    traced: Vec<f64>,
}

impl Paired {
    /// Median traced / median untraced: the slowdown the goals are checked on.
    fn ratio(&self) -> Option<f64> {
        Some(median(&self.traced)? / median(&self.untraced)?)
    }

    /// Median of each pair's traced/untraced: steadier when the machine's load
    /// drifts, since a pair's two runs are adjacent in time.
    fn pair_ratio(&self) -> Option<f64> {
        let ratios: Vec<f64> = self
            .traced
            .iter()
            .zip(&self.untraced)
            .map(|(t, u)| t / u)
            .collect();
        median(&ratios)
    }
}

struct Bench {
    root: PathBuf,
    offheap: PathBuf,
    iterations: Option<u32>,
    libc: PathBuf,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    setup::run()?;
    let root = workspace_root();
    if !args.no_build && args.offheap.is_none() {
        println!("bench: cargo build --release -p tracer");
        run_cmd(cargo().args(["build", "--release", "-p", "tracer"]))?;
        // Another part of the project may add a symbolizer micro-bench; build it
        // when its source exists, and never fail the bench over it.
        if root.join("tracer/examples/symbench.rs").exists() {
            let _ = run_cmd(cargo().args([
                "build",
                "--release",
                "-p",
                "tracer",
                "--example",
                "symbench",
            ]));
        }
    }
    let bench = Bench {
        offheap: args
            .offheap
            .clone()
            .unwrap_or_else(|| root.join("target/release/offheap")),
        root,
        iterations: args.iterations,
        libc: floor::node_libc(),
    };
    ensure!(
        bench.root.join(WORKLOAD).exists(),
        "{WORKLOAD} is missing from the workspace"
    );
    let wants = |p: PartName| args.only.is_empty() || args.only.contains(&p);

    // Warm the page cache and node's code cache once; not counted.
    let warm = bench.untraced()?;
    println!("bench: workload node {WORKLOAD}: warm-up run {warm:.0} ms untraced");

    // The floors and malloc mode run interleaved, in rounds that share one
    // untraced run: the machine's drift then hits every part alike, and within
    // a round malloc's slowdown over the floor's is malloc's traced time over
    // the floor's (the untraced time cancels).
    let counter = if wants(PartName::Floor) {
        match PerPidCounter::build(&bench.root) {
            Ok(counter) => Some(counter),
            Err(e) => {
                println!("bench: floor: not available: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let mut parts: Vec<Part<'_>> = Vec::new();
    if let Some(counter) = &counter {
        parts.push(Part::new("floor", move |b: &Bench| {
            let out = counter.run(&b.root, &b.libc, &b.node_args(), false)?;
            counted("floor", &out)
        }));
        // Not a goal's reference: what the return probe alone adds, which
        // exact accounting cannot do without (malloc mode's alloc_exit).
        parts.push(Part::new("floor+return", move |b: &Bench| {
            let out = counter.run(&b.root, &b.libc, &b.node_args(), true)?;
            counted("floor+return", &out)
        }));
    }
    if wants(PartName::BpftraceFloor) {
        parts.push(Part::new("bpftrace-floor", |b: &Bench| {
            let out = floor::bpftrace(&b.root, &b.libc, &b.node_args())?;
            counted("bpftrace-floor", &out)
        }));
    }
    if wants(PartName::Malloc) {
        parts.push(Part::new("malloc", |b: &Bench| b.offheap_run("malloc")));
    }
    let mut interleaved = rounds(&bench, parts, args.pairs);
    let mut take = |name: &str| {
        interleaved
            .iter()
            .position(|p| p.name == name)
            .map(|i| interleaved.remove(i))
    };
    let (floor, floor_ret, bt_floor, malloc) = (
        take("floor"),
        take("floor+return"),
        take("bpftrace-floor"),
        take("malloc"),
    );
    let resident = if wants(PartName::Resident) {
        let part = Part::new("resident", |b: &Bench| b.offheap_run("resident"));
        rounds(&bench, vec![part], args.resident_pairs).pop()
    } else {
        None
    };

    println!();
    println!("bench summary: medians of paired runs, loop time measured inside node");
    for p in [&floor, &floor_ret, &bt_floor, &malloc, &resident]
        .into_iter()
        .flatten()
    {
        summary_line(p);
    }
    for f in [&floor, &bt_floor].into_iter().flatten() {
        if let (Some(m), Some(fr)) = (malloc.as_ref(), f.ratio()) {
            let mr = m.ratio().unwrap_or(f64::NAN);
            let rel = mr / fr;
            // Per round: malloc's traced time over the floor's, both against
            // the round's one untraced run. Printed for the spread only: on
            // this project's 2-core VM the two traced runs of a round were
            // not correlated (r between -0.16 and 0.26 over four 11-15 round
            // benches), so a round's ratio carries both runs' noise, and the
            // goal is judged as the issue states it, on the slowdowns above.
            let per_round: Vec<f64> = m.traced.iter().zip(&f.traced).map(|(m, f)| m / f).collect();
            let q = |x| quantile(&per_round, x).unwrap_or(f64::NAN);
            let (lo, hi) = (q(0.25), q(0.75));
            println!(
                "  malloc slowdown / {} slowdown: {mr:.2}x / {fr:.2}x = {rel:.2}  (goal <= {MALLOC_GOAL_VS_FLOOR}) {}  (per round: median {:.2}, quartiles {lo:.2}-{hi:.2})",
                f.name,
                verdict(rel <= MALLOC_GOAL_VS_FLOOR),
                median(&per_round).unwrap_or(f64::NAN),
            );
        }
    }
    if let (Some(m), Some(fr)) = (
        malloc.as_ref().and_then(Paired::ratio),
        floor_ret.as_ref().and_then(Paired::ratio),
    ) {
        println!(
            "  malloc slowdown / floor+return slowdown: {m:.2}x / {fr:.2}x = {:.2}  (no goal: the \
             floor of exact accounting, which must see malloc's return value)",
            m / fr
        );
    }
    if let Some(r) = resident.as_ref().and_then(Paired::ratio) {
        println!(
            "  resident slowdown = {r:.3}x  (goal <= {RESIDENT_GOAL}) {}",
            verdict(r <= RESIDENT_GOAL)
        );
    }
    if wants(PartName::Traffic) {
        if let Err(e) = bench_traffic::run(&bench.root, &bench.offheap, args.pairs) {
            println!("  traffic: not available: {e:#}");
        }
    }
    if wants(PartName::Threadpool) {
        if let Err(e) = bench_threadpool::run(&bench.root, &bench.offheap, args.pairs) {
            println!("  threadpool: not available: {e:#}");
        }
    }
    if wants(PartName::Attach) {
        if let Err(e) = bench_attach::run(&bench.offheap, &bench.libc, args.attach_runs) {
            println!("  attach: not available: {e:#}");
        }
    }
    if wants(PartName::Unwind) {
        if let Err(e) = bench_unwind::run(&bench.root, &bench.offheap, args.pairs.min(5)) {
            println!("  unwind: not available: {e:#}");
        }
    }
    if wants(PartName::JsFrames) {
        if let Err(e) = bench_jsframes::run(&bench.root, &bench.offheap, args.pairs) {
            println!("  js frames: not available: {e:#}");
        }
    }
    symbench(&bench.root);
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met {
        "goal met"
    } else {
        "goal NOT met"
    }
}

fn summary_line(p: &Paired) {
    let (u, t) = (median(&p.untraced), median(&p.traced));
    match (u, t, p.ratio()) {
        (Some(u), Some(t), Some(r)) => println!(
            "  {:<14} {} pairs  untraced {u:>8.1} ms  traced {t:>9.1} ms  slowdown {r:.3}x  \
             (median of pair ratios {:.3}x)",
            p.name,
            p.traced.len(),
            p.pair_ratio().unwrap_or(f64::NAN)
        ),
        _ => println!("  {:<14} no complete pair", p.name),
    }
}

/// Runs the workload traced one way; returns its loop time in ms.
type TracedRun<'a> = Box<dyn FnMut(&Bench) -> Result<f64> + 'a>;

/// One traced way of running the workload, for `rounds`.
struct Part<'a> {
    name: &'static str,
    run: TracedRun<'a>,
}

impl<'a> Part<'a> {
    fn new(name: &'static str, run: impl FnMut(&Bench) -> Result<f64> + 'a) -> Self {
        Part {
            name,
            run: Box::new(run),
        }
    }
}

/// Runs `n` rounds of one untraced run followed by each part (in an order that
/// rotates from round to round, so that no part always runs first). A part
/// that fails is reported as not available and dropped; the others go on.
fn rounds(bench: &Bench, mut parts: Vec<Part<'_>>, n: u32) -> Vec<Paired> {
    let mut out: Vec<Paired> = parts
        .iter()
        .map(|p| Paired {
            name: p.name,
            untraced: Vec::new(),
            traced: Vec::new(),
        })
        .collect();
    let mut alive = vec![true; parts.len()];
    for i in 1..=n {
        if !alive.iter().any(|a| *a) {
            break;
        }
        let u = match bench.untraced() {
            Ok(u) => u,
            Err(e) => {
                println!("bench: untraced run failed: {e:#}");
                return Vec::new();
            }
        };
        let k = parts.len();
        for j in (0..k).map(|j| (j + i as usize) % k) {
            if !alive[j] {
                continue;
            }
            let name = parts[j].name;
            match (parts[j].run)(bench) {
                Ok(t) => {
                    println!(
                        "bench: round {i}/{n}: {name}: untraced {u:.1} ms, traced {t:.1} ms ({:.3}x)",
                        t / u
                    );
                    out[j].untraced.push(u);
                    out[j].traced.push(t);
                }
                Err(e) => {
                    println!("bench: {name}: not available: {e:#}");
                    alive[j] = false;
                }
            }
        }
    }
    out.into_iter()
        .zip(alive)
        .filter(|(_, a)| *a)
        .map(|(p, _)| p)
        .collect()
}

impl Bench {
    /// node's arguments: the workload and its iteration count, if given.
    fn node_args(&self) -> Vec<String> {
        let mut args = vec![WORKLOAD.to_string()];
        args.extend(self.iterations.map(|n| n.to_string()));
        args
    }

    fn node_cmd(&self) -> Command {
        // Every run starts from a machine at rest: a tracer that just exited
        // still has maps and links being freed by the kernel for a moment.
        std::thread::sleep(SETTLE);
        let mut cmd = Command::new("node");
        cmd.current_dir(&self.root).args(self.node_args());
        cmd
    }

    fn untraced(&self) -> Result<f64> {
        let out = self
            .node_cmd()
            .stderr(Stdio::inherit())
            .output()
            .context("could not start node")?;
        ensure!(
            out.status.success(),
            "node {WORKLOAD} failed ({})",
            out.status
        );
        elapsed(&out.stdout)
    }

    /// `offheap run --mode MODE -- node WORKLOAD`, the report written to a temp file
    /// so stdout carries only the workload's lines.
    fn offheap_run(&self, mode: &str) -> Result<f64> {
        ensure!(
            self.offheap.exists(),
            "{} is not built",
            self.offheap.display()
        );
        let report =
            std::env::temp_dir().join(format!("offheap-bench-{}.json", std::process::id()));
        let node = self.node_cmd();
        let out = Command::new(&self.offheap)
            .current_dir(&self.root)
            .args([
                "run",
                "--mode",
                mode,
                "--no-live",
                "--format",
                "json",
                "--output",
            ])
            .arg(&report)
            .arg("--")
            .arg(node.get_program())
            .args(node.get_args())
            .output()
            .context("could not start offheap")?;
        let json = std::fs::read_to_string(&report);
        let _ = std::fs::remove_file(&report);
        if !out.status.success() {
            return Err(anyhow!(
                "offheap run --mode {mode} exited with {}: {}",
                out.status,
                last_line(&String::from_utf8_lossy(&out.stderr))
            ));
        }
        let ms = elapsed(&out.stdout)?;
        let json =
            json.with_context(|| format!("offheap wrote no report at {}", report.display()))?;
        println!("bench: {mode}: report: {}", report_summary(&json)?);
        Ok(ms)
    }
}

/// `N stacks, M dropped events` from an offheap JSON report. Dropped events mean
/// the traced time understates the full cost, so the bench shows them.
fn report_summary(json: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(json).context("the report is not JSON")?;
    let dropped = v["dropped_events"]
        .as_u64()
        .ok_or_else(|| anyhow!("the report has no dropped_events"))?;
    let stacks: usize = v["processes"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["stacks"].as_array())
                .map(Vec::len)
                .sum()
        })
        .unwrap_or(0);
    let warn = if dropped > 0 {
        " (events were lost: the traced time understates the cost)"
    } else {
        ""
    };
    Ok(format!("{stacks} stacks, {dropped} dropped events{warn}"))
}

/// The workload's time from a floor's stdout, printing the calls it counted; a
/// floor whose probes never fired measured nothing.
fn counted(name: &str, stdout: &str) -> Result<f64> {
    let ms = elapsed(stdout.as_bytes())?;
    match parse_bpftrace_count(stdout) {
        Some(n) if n > 0 => println!("bench: {name}: counted {n} probe hits"),
        _ => bail!("it counted no malloc/free calls: its probes did not fire"),
    }
    Ok(ms)
}

fn elapsed(stdout: &[u8]) -> Result<f64> {
    parse_elapsed_ms(&String::from_utf8_lossy(stdout))
        .ok_or_else(|| anyhow!("the workload printed no `alloc-loop: elapsed_ms=` line"))
}

fn last_line(s: &str) -> &str {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
        .trim()
}

/// `symbolize_ms=<ms>` from symbench's line
/// `symbench stacks=... frames=... capture_ms=... symbolize_ms=...`.
fn symbolize_ms(text: &str) -> Option<f64> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("symbolize_ms="))
        .and_then(|v| v.parse().ok())
}

/// Prints the symbolizer figure when another part of the project built one.
fn symbench(root: &Path) {
    let bin = root.join("target/release/examples/symbench");
    if !bin.exists() {
        println!("  symbolizer: no target/release/examples/symbench, skipped");
        return;
    }
    match Command::new(&bin).current_dir(root).output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            for l in text.lines() {
                println!("  symbolizer: {l}");
            }
            if let Some(ms) = symbolize_ms(&text) {
                println!(
                    "  symbolizer: 10,000 stacks symbolized in {ms:.0} ms after the first parse \
                     (goal < {SYMBOLIZE_GOAL_MS} ms) {}",
                    verdict(ms < SYMBOLIZE_GOAL_MS)
                );
            }
        }
        Ok(out) => println!(
            "  symbolizer: symbench failed ({}): {}",
            out.status,
            last_line(&String::from_utf8_lossy(&out.stderr))
        ),
        Err(e) => println!("  symbolizer: could not start symbench: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_reports() {
        let json = r#"{"schema":"offheap.report.v1","dropped_events":0,
            "processes":[{"stacks":[{},{}]},{"stacks":[{}]}]}"#;
        assert_eq!(report_summary(json).unwrap(), "3 stacks, 0 dropped events");
        let lossy = r#"{"dropped_events":7,"processes":[]}"#;
        assert!(report_summary(lossy)
            .unwrap()
            .starts_with("0 stacks, 7 dropped events (events were lost"));
        assert!(report_summary("not json").is_err());
    }

    #[test]
    fn reads_symbench_line() {
        let line = "symbench stacks=10000 frames=160000 unique=4000 named=3990 capture_ms=812.5 symbolize_ms=95.3\n";
        assert_eq!(symbolize_ms(line), Some(95.3));
        assert_eq!(symbolize_ms("symbench failed\n"), None);
    }
}
