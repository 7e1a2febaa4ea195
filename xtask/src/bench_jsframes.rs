//! `cargo xtask bench`'s JS frame part: what the BPF walker pays per JS
//! frame it decodes (tracer-ebpf/include/v8.bpf.h: the JSFunction read, its
//! map check, the BytecodeArray's map for a JIT frame). bench/js-depth.js
//! allocates the same Buffers under a shallow and a deep JS stack, traced
//! in malloc mode with no node flags; alloc_enter (the program that walks)
//! is timed by the kernel's BPF run-time statistics. Its time per event,
//! deep minus shallow, over the difference in JS frames per stack (counted
//! in the report, on the stacks through node's ArrayBuffer allocator), is
//! the cost of one JS frame. It prints, never asserts.
use std::{path::Path, process::Command};

use anyhow::{anyhow, ensure, Result};
use serde_json::Value;

use crate::{bpf_stats, stats::median};

const WORKLOAD: &str = "bench/js-depth.js";
/// The program that walks the stack of a malloc-family call.
const PROG: &str = "alloc_enter";
/// JS frames of the workload's own functions, shallow and deep (plus its
/// top level and alloc() in both).
const SHALLOW: u32 = 1;
const DEEP: u32 = 41;
const ALLOCS: u32 = 50000;

/// One traced run at `depth`: BPF ns per alloc_enter event, and the JS
/// frames of the heaviest stack through NodeArrayBufferAllocator.
fn traced(root: &Path, offheap: &Path, depth: u32) -> Result<(f64, u64)> {
    let report = std::env::temp_dir().join(format!(
        "offheap-bench-js-{}-{depth}.json",
        std::process::id()
    ));
    let mut cmd = Command::new(offheap);
    cmd.current_dir(root)
        .args(["run", "--mode", "malloc", "--no-live", "--format", "json"])
        .arg("--output")
        .arg(&report)
        .args(["--", "node", WORKLOAD])
        .args([depth.to_string(), ALLOCS.to_string()]);
    let (_, text, stats) = bpf_stats::traced_run(&mut cmd, &report, &[PROG])?;
    let v: Value = serde_json::from_str(&text?)?;
    let per_event = stats
        .and_then(|s| {
            let p = s.get(PROG)?;
            (p.runs > 0).then(|| p.ns as f64 / p.runs as f64)
        })
        .ok_or_else(|| anyhow!("no run-time statistics of {PROG} (bpftool prog show)"))?;
    Ok((per_event, js_frames(&v)?))
}

/// The JS frames of the stack holding the most bytes through node's
/// ArrayBuffer allocator (the workload's Buffers).
fn js_frames(report: &Value) -> Result<u64> {
    let stacks = report["processes"][0]["stacks"]
        .as_array()
        .ok_or_else(|| anyhow!("a report without stacks"))?;
    stacks
        .iter()
        .filter(|s| {
            s["frames"].as_array().is_some_and(|f| {
                f.iter().any(|f| {
                    f["symbol"]
                        .as_str()
                        .is_some_and(|n| n.contains("NodeArrayBufferAllocator"))
                })
            })
        })
        .max_by_key(|s| s["total_bytes"].as_u64().unwrap_or(0))
        .map(|s| {
            s["frames"]
                .as_array()
                .map_or(0, |f| f.iter().filter(|f| f["kind"] == "js").count() as u64)
        })
        .ok_or_else(|| anyhow!("no stack through NodeArrayBufferAllocator"))
}

/// Runs `pairs` rounds (shallow, then deep) and prints the part's lines.
pub fn run(root: &Path, offheap: &Path, pairs: u32) -> Result<()> {
    ensure!(root.join(WORKLOAD).exists(), "{WORKLOAD} is missing");
    bpf_stats::enabled(|| rounds(root, offheap, pairs))
}

fn rounds(root: &Path, offheap: &Path, pairs: u32) -> Result<()> {
    let (mut shallow, mut deep, mut per_frame) = (vec![], vec![], vec![]);
    let mut frames = (0, 0);
    for i in 1..=pairs {
        // A round whose counters bpftool missed (it lists every program of
        // the machine, which can outlast a short trace) is skipped.
        let (s, fs, d, fd) = match (traced(root, offheap, SHALLOW), traced(root, offheap, DEEP)) {
            (Ok((s, fs)), Ok((d, fd))) => (s, fs, d, fd),
            (Err(e), _) | (_, Err(e)) => {
                println!("bench: round {i}/{pairs}: js frames: skipped: {e:#}");
                continue;
            }
        };
        ensure!(
            fd > fs,
            "the deep stack has {fd} JS frames, the shallow one {fs}"
        );
        let f = (d - s) / (fd - fs) as f64;
        println!(
            "bench: round {i}/{pairs}: js frames: {s:.0} ns per malloc at {fs} JS frames, {d:.0} ns \
             at {fd}: {f:.1} ns per JS frame ({PROG}, BPF run time)"
        );
        shallow.push(s);
        deep.push(d);
        per_frame.push(f);
        frames = (fs, fd);
    }
    ensure!(!per_frame.is_empty(), "every round was skipped");
    let m = |v: &[f64]| median(v).unwrap_or(f64::NAN);
    println!(
        "  js frames      {} pairs  {PROG} {:.0} ns per event at {} JS frames, {:.0} ns at {}: \
         {:.1} ns per JS frame walked and decoded (medians; malloc mode, no node flags)",
        per_frame.len(),
        m(&shallow),
        frames.0,
        m(&deep),
        frames.1,
        m(&per_frame)
    );
    Ok(())
}
