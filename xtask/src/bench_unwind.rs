//! `cargo xtask bench`'s unwind part (`--only unwind`): what the BPF
//! walker pays per frame, frame pointer against unwind table, and the unwind
//! tables' kernel memory for node, glibc, libstdc++ and an addon (issue 12).
//!
//! Per frame: bench/walk-chain.c built with and without frame pointers,
//! each run at two depths under `offheap run --mode malloc`; the malloc
//! uprobe program's BPF run time per call (kernel.bpf_stats_enabled, as in
//! bench_traffic.rs), deep minus shallow, over the frames the deep stacks
//! have more (counted in the report). The rest of a call's cost (the
//! uprobe's trap, the stack copy's fixed part, the maps) cancels.
//!
//! Memory: tracer/examples/unwind_memory.rs (the loader itself, into the
//! real BPF maps; each table's memlock) on a node process that has sharp
//! loaded (the npm package of tests/e2e/addon_npm.rs, installed into
//! target/npm/ by that test or here). It prints, never asserts.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{anyhow, ensure, Context, Result};

use crate::bpf_stats;
use crate::proc::{cargo, run_cmd};
use crate::stats::median;

const FIXTURE: &str = "bench/walk-chain.c";
/// The malloc-family uprobe program, where malloc mode walks the stack.
const ALLOC_ENTER: &str = "alloc_enter";
const SHALLOW: u32 = 0;
const DEEP: u32 = 60;
const CALLS: u32 = 100_000;
const SHARP: &str = "sharp@0.34.5";
const MEMORY_GOAL_MIB: f64 = 32.0;
const MIB: f64 = 1048576.0;

/// One build of the fixture.
struct Variant {
    name: &'static str,
    flag: &'static str,
}

const VARIANTS: [Variant; 2] = [
    Variant {
        name: "frame pointer",
        flag: "-fno-omit-frame-pointer",
    },
    Variant {
        name: "table",
        flag: "-fomit-frame-pointer",
    },
];

/// Holds the lock every BPF test of the workspace takes (tests/e2e/common:
/// bpf_lock), so that no test's tracer runs beside the measured one.
struct BpfLock(#[allow(dead_code)] std::fs::File);

fn bpf_lock() -> Result<BpfLock> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::create(std::env::temp_dir().join("offheap-e2e.lock"))?;
    // SAFETY: flock on an fd we own.
    ensure!(
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0,
        "flock: {}",
        std::io::Error::last_os_error()
    );
    Ok(BpfLock(f))
}

pub fn run(root: &Path, offheap: &Path, rounds: u32) -> Result<()> {
    ensure!(root.join(FIXTURE).exists(), "{FIXTURE} is missing");
    let _lock = bpf_lock()?;
    let out = root.join("target/xtask-bench");
    std::fs::create_dir_all(&out)?;
    let mut per_frame = Vec::new();
    for v in &VARIANTS {
        let bin = out.join(format!("walk-chain-{}", v.flag.trim_start_matches("-f")));
        run_cmd(
            Command::new("cc")
                .args(["-O2", "-g", v.flag])
                .arg(root.join(FIXTURE))
                .arg("-o")
                .arg(&bin),
        )?;
        let cost = bpf_stats::enabled(|| frame_cost(offheap, &bin, v.name, rounds))?;
        per_frame.push(cost);
    }
    if let [fp, table] = per_frame[..] {
        println!(
            "  unwind per frame: frame pointer {fp:.1} ns, table {table:.1} ns ({:.2}x) \
             (malloc uprobe's BPF run time, depth {DEEP} minus depth {SHALLOW}, per extra frame)",
            table / fp
        );
    }
    match memory(root) {
        Ok(()) => Ok(()),
        Err(e) => {
            println!("  unwind tables' memory: not available: {e:#}");
            Ok(())
        }
    }
}

/// The walk's cost per frame of one build: medians over `rounds` runs at
/// each depth.
fn frame_cost(offheap: &Path, bin: &Path, name: &str, rounds: u32) -> Result<f64> {
    let mut at = Vec::new();
    for depth in [SHALLOW, DEEP] {
        let (mut ns, mut frames) = (Vec::new(), 0);
        for i in 1..=rounds {
            let (per_call, n) = traced_walk(offheap, bin, depth)?;
            println!(
                "bench: round {i}/{rounds}: unwind: {name}, depth {depth}: {n} frames, \
                 {per_call:.0} ns per malloc (BPF run time)"
            );
            ns.push(per_call);
            frames = n;
        }
        at.push((median(&ns).unwrap_or(f64::NAN), frames));
    }
    let ((shallow, f0), (deep, f1)) = (at[0], at[1]);
    ensure!(
        f1 > f0,
        "the deep stacks have {f1} frames, the shallow {f0}"
    );
    let per = (deep - shallow) / (f1 - f0) as f64;
    println!(
        "  unwind {name:<14} {shallow:.0} ns per malloc at {f0} frames, {deep:.0} ns at {f1} \
         frames: {per:.1} ns per frame"
    );
    Ok(per)
}

/// One traced run at `depth`: alloc_enter's ns per run, and the frames of
/// the fixture's malloc stack. The counters are summed over every program of
/// that name (bpf_stats::Sample): this run's are the growth over a sample
/// taken before it (with the BPF test lock held no other tracer runs; a
/// program left loaded by one keeps still counters, which cancel).
fn traced_walk(offheap: &Path, bin: &Path, depth: u32) -> Result<(f64, usize)> {
    let before = bpf_stats::sample()
        .ok_or_else(|| anyhow!("bpftool prog show failed"))?
        .get(ALLOC_ENTER)
        .copied()
        .unwrap_or_default();
    let report =
        std::env::temp_dir().join(format!("offheap-bench-unwind-{}.json", std::process::id()));
    let mut cmd = Command::new(offheap);
    cmd.args(["run", "--mode", "malloc", "--no-live", "--format", "json"])
        .arg("--output")
        .arg(&report)
        .arg("--")
        .arg(bin)
        .args([depth.to_string(), CALLS.to_string()]);
    let (_, json, sample) = bpf_stats::traced_run(&mut cmd, &report, &[ALLOC_ENTER])?;
    let after = sample
        .and_then(|s| s.get(ALLOC_ENTER).copied())
        .ok_or_else(|| anyhow!("{ALLOC_ENTER} was never seen loaded"))?;
    let runs = after.runs.saturating_sub(before.runs);
    ensure!(runs > 0, "{ALLOC_ENTER} never ran");
    let ns = after.ns.saturating_sub(before.ns) as f64 / runs as f64;
    Ok((ns, loop_frames(&json?)?))
}

/// The frames of the report's stack with the most allocations: the loop's
/// malloc.
fn loop_frames(json: &str) -> Result<usize> {
    let v: serde_json::Value = serde_json::from_str(json).context("the report is not JSON")?;
    v["processes"][0]["stacks"]
        .as_array()
        .and_then(|s| s.iter().max_by_key(|s| s["total_allocs"].as_u64()))
        .and_then(|s| s["frames"].as_array())
        .map(Vec::len)
        .ok_or_else(|| anyhow!("the report has no stack"))
}

/// sharp under target/npm/ (as tests/e2e/addon_npm.rs installs it), else
/// installed there now from the npm registry.
fn sharp(root: &Path) -> Result<PathBuf> {
    let base = root.join("target/npm");
    let dir = base.join(SHARP.replace('@', "-"));
    if dir.join("node_modules/sharp").exists() {
        return Ok(dir);
    }
    println!("bench: npm install {SHARP}");
    run_cmd(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--no-save"])
            .arg("--ignore-scripts")
            .arg("--cache")
            .arg(base.join("cache"))
            .arg("--prefix")
            .arg(&dir)
            .arg(SHARP),
    )?;
    Ok(dir)
}

/// Prints the tables' memory of a node process with sharp loaded.
fn memory(root: &Path) -> Result<()> {
    let sharp = sharp(root)?;
    run_cmd(cargo().args([
        "build",
        "--release",
        "-p",
        "tracer",
        "--example",
        "unwind_memory",
    ]))?;
    let script = format!(
        "require({:?}); console.log('ready'); setInterval(() => {{}}, 1000)",
        sharp.join("node_modules/sharp")
    );
    let mut node = Command::new("node")
        .args(["-e", &script])
        .stdout(Stdio::piped())
        .spawn()
        .context("could not start node")?;
    let mut line = String::new();
    if let Some(out) = node.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    let out = Command::new(root.join("target/release/examples/unwind_memory"))
        .arg(node.id().to_string())
        .output();
    let _ = node.kill();
    let _ = node.wait();
    ensure!(line.trim() == "ready", "node with sharp did not start");
    let out = out.context("running unwind_memory")?;
    ensure!(
        out.status.success(),
        "unwind_memory: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let modules: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("unwind_memory module=")?;
            let (path, figures) = rest.split_once(" rows=")?;
            let bytes = figures.split_once(" bytes=")?.1.parse().ok()?;
            Some((path.to_string(), bytes))
        })
        .collect();
    let file = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    let of = |want: &str| -> u64 {
        modules
            .iter()
            .filter(|(p, _)| file(p).starts_with(want))
            .map(|(_, b)| *b)
            .sum()
    };
    let four = [
        ("node", "node"),
        ("glibc", "libc.so"),
        ("libstdc++", "libstdc++.so"),
        ("sharp's addon", "sharp-linux-x64.node"),
    ];
    let mut sum = 0;
    for (name, prefix) in four {
        let b = of(prefix);
        sum += b;
        println!(
            "  unwind table {name:<14} {:>7.2} MiB ({b} bytes)",
            b as f64 / MIB
        );
    }
    let vips = of("libvips-cpp.so");
    println!(
        "  unwind tables: those four {:.2} MiB (goal <= {MEMORY_GOAL_MIB} MiB) {}; with sharp's \
         libvips-cpp ({:.2} MiB) {:.2} MiB",
        sum as f64 / MIB,
        if sum as f64 / MIB <= MEMORY_GOAL_MIB {
            "goal met"
        } else {
            "goal NOT met"
        },
        vips as f64 / MIB,
        (sum + vips) as f64 / MIB
    );
    if let Some(total) = text.lines().find(|l| l.starts_with("unwind_memory total")) {
        println!("  unwind tables of the whole node process: {total}");
    }
    Ok(())
}
