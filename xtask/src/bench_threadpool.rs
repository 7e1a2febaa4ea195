//! `cargo xtask bench`'s threadpool part: what following libuv's threadpool
//! (threadpool.bpf.c: uprobes on uv_queue_work, uv__queue_work and
//! uv_async_send) costs a zlib-heavy Node loop (bench/zlib-loop.js: one-shot
//! zlib.deflate() calls, each a stream whose work runs on the threadpool).
//!
//! Two figures. The probes' own time in the kernel: BPF run-time statistics
//! (kernel.bpf_stats_enabled, restored afterwards) of threadpool_enter,
//! sampled with bpftool while `offheap run` traces the loop, per probe hit
//! and per queued work item. And the loop's slowdown under `offheap run
//! --mode resident` with the threadpool probes against the same without
//! them ($OFFHEAP_NO_THREADPOOL), in paired rounds, and against no tracing.
//! It prints, never asserts.
use std::{
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{anyhow, ensure, Context, Result};

use crate::stats::median;

const WORKLOAD: &str = "bench/zlib-loop.js";
const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// The program, as bpftool names it (from BTF; the kernel keeps 15 bytes).
const PROGRAM: &str = "threadpool_ent";

/// run_cnt and run_time_ns of the program, at the last sample.
#[derive(Clone, Copy, Debug, Default)]
struct ProgStats {
    runs: u64,
    ns: u64,
}

/// (items, elapsed ms) from the workload's last line.
fn parse(stdout: &str) -> Result<(u64, f64)> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("zlib-loop:"))
        .ok_or_else(|| anyhow!("{WORKLOAD} printed no `zlib-loop:` line"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .ok_or_else(|| anyhow!("no {name} in {line:?}"))
    };
    Ok((field("items=")?.parse()?, field("elapsed_ms=")?.parse()?))
}

fn untraced(root: &Path) -> Result<f64> {
    let out = Command::new("node")
        .arg(WORKLOAD)
        .current_dir(root)
        .output()
        .context("could not start node")?;
    ensure!(
        out.status.success(),
        "node {WORKLOAD} failed ({})",
        out.status
    );
    Ok(parse(&String::from_utf8_lossy(&out.stdout))?.1)
}

/// The program's counters now (the sum over every loaded copy).
fn sample() -> Option<ProgStats> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut s = ProgStats::default();
    for p in v.as_array()? {
        if p["name"].as_str().is_some_and(|n| n.starts_with(PROGRAM)) {
            s.runs += p["run_cnt"].as_u64().unwrap_or(0);
            s.ns += p["run_time_ns"].as_u64().unwrap_or(0);
        }
    }
    (s.runs > 0).then_some(s)
}

/// One traced run (`probes`: with the threadpool probes): the loop's items
/// and time, and the program's last counters.
fn traced(root: &Path, offheap: &Path, probes: bool) -> Result<(u64, f64, Option<ProgStats>)> {
    let report = std::env::temp_dir().join(format!(
        "offheap-bench-threadpool-{}.json",
        std::process::id()
    ));
    let last: Arc<Mutex<Option<ProgStats>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (last, done) = (Arc::clone(&last), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(s) = sample() {
                    *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut cmd = Command::new(offheap);
    cmd.current_dir(root)
        .args([
            "run",
            "--mode",
            "resident",
            "--no-live",
            "--format",
            "json",
            "--output",
        ])
        .arg(&report)
        .args(["--", "node", WORKLOAD]);
    if !probes {
        cmd.env("OFFHEAP_NO_THREADPOOL", "1");
    }
    let out = cmd.output().context("could not start offheap");
    done.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let _ = std::fs::remove_file(&report);
    let out = out?;
    ensure!(
        out.status.success(),
        "offheap run exited with {}",
        out.status
    );
    let (items, ms) = parse(&String::from_utf8_lossy(&out.stdout))?;
    let stats = *last.lock().unwrap_or_else(|e| e.into_inner());
    Ok((items, ms, stats.filter(|_| probes)))
}

/// Runs `pairs` rounds and prints the part's lines.
pub fn run(root: &Path, offheap: &Path, pairs: u32) -> Result<()> {
    ensure!(root.join(WORKLOAD).exists(), "{WORKLOAD} is missing");
    let before = std::fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
    let enable = before.trim() == "0";
    if enable {
        std::fs::write(STATS, "1").with_context(|| format!("enabling {STATS}"))?;
    }
    let result = rounds(root, offheap, pairs);
    if enable {
        let _ = std::fs::write(STATS, "0");
    }
    result
}

fn rounds(root: &Path, offheap: &Path, pairs: u32) -> Result<()> {
    let (mut u, mut without, mut with, mut per_hit, mut per_item, mut hits_per_item, mut probe_ms) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for i in 1..=pairs {
        let a = untraced(root)?;
        let (_, b, _) = traced(root, offheap, false)?;
        let (items, c, stats) = traced(root, offheap, true)?;
        println!(
            "bench: round {i}/{pairs}: threadpool: untraced {a:.1} ms, resident without the \
             threadpool probes {b:.1} ms, with them {c:.1} ms ({:.3}x)",
            c / b
        );
        u.push(a);
        without.push(b);
        with.push(c);
        if let Some(s) = stats {
            let hit = s.ns as f64 / s.runs as f64;
            let item = s.ns as f64 / items as f64;
            println!(
                "bench: threadpool: {} probe hits for {items} deflate calls: {hit:.0} ns a hit, \
                 {item:.0} ns a call (BPF run time)",
                s.runs
            );
            per_hit.push(hit);
            per_item.push(item);
            hits_per_item.push(s.runs as f64 / items as f64);
            probe_ms.push(s.ns as f64 / 1e6);
        }
    }
    let m = |v: &[f64]| median(v).unwrap_or(f64::NAN);
    println!(
        "  threadpool     {pairs} pairs  untraced {:>8.1} ms  resident {:>8.1} ms  + threadpool \
         probes {:>8.1} ms  probes' slowdown {:.3}x  (tracing's {:.3}x)",
        m(&u),
        m(&without),
        m(&with),
        m(&with) / m(&without),
        m(&with) / m(&u)
    );
    // A deflate call queues one work item or more (a write, a flush), each
    // hitting uv_queue_work, uv__queue_work and worker's uv_async_send; the
    // host's other uv_async_send calls of the target count too.
    println!(
        "  threadpool probes: {:.0} ns a hit, {:.1} hits and {:.0} ns per deflate call (medians \
         of BPF run time): {:.1} ms in the kernel for a {:.1} ms loop",
        m(&per_hit),
        m(&hits_per_item),
        m(&per_item),
        m(&probe_ms),
        m(&u)
    );
    Ok(())
}
