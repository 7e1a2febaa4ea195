//! `cargo xtask bench`'s threadpool part: what following libuv's threadpool
//! (threadpool.bpf.c: uprobes on uv_queue_work, uv__queue_work and
//! uv_async_send) costs a zlib-heavy Node loop (bench/zlib-loop.js: one-shot
//! zlib.deflate() calls, each a stream whose work runs on the threadpool).
//!
//! Two figures. The probes' own time in the kernel: BPF run-time statistics
//! (kernel.bpf_stats_enabled, restored afterwards) of the threadpool probes' program,
//! sampled with bpftool while `offheap run` traces the loop, per probe hit
//! and per queued work item. And the loop's slowdown under `offheap run
//! --mode resident` with the threadpool probes against the same without
//! them ($OFFHEAP_NO_THREADPOOL), in paired rounds, and against no tracing.
//! It prints, never asserts.
use std::path::Path;

use anyhow::{anyhow, ensure, Result};

use crate::bpf_stats::{self, ProgStats};
use crate::stats::median;

const WORKLOAD: &str = "bench/zlib-loop.js";
/// The program, as bpftool names it (from BTF; the kernel keeps 15 bytes):
/// malloc mode's entry program, which runs the threadpool probes too; in
/// resident mode, which this part traces, it carries only them.
const PROGRAM: &str = "alloc_enter";

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
    Ok(parse(&crate::proc::node_stdout(root, WORKLOAD)?)?.1)
}

/// One traced run (`probes`: with the threadpool probes): the loop's items
/// and time, and the program's last counters.
fn traced(root: &Path, offheap: &Path, probes: bool) -> Result<(u64, f64, Option<ProgStats>)> {
    let report = std::env::temp_dir().join(format!(
        "offheap-bench-threadpool-{}.json",
        std::process::id()
    ));
    let mut cmd = bpf_stats::resident_run(offheap, root, &report, WORKLOAD);
    if !probes {
        cmd.env("OFFHEAP_NO_THREADPOOL", "1");
    }
    let (out, _, last) = bpf_stats::traced_run(&mut cmd, &report, &[PROGRAM])?;
    let (items, ms) = parse(&String::from_utf8_lossy(&out.stdout))?;
    // Every copy of the program (one object per tracer run).
    let stats = last.map(|m| {
        m.iter().filter(|(name, _)| name.starts_with(PROGRAM)).fold(
            ProgStats::default(),
            |a, (_, s)| ProgStats {
                runs: a.runs + s.runs,
                ns: a.ns + s.ns,
            },
        )
    });
    Ok((items, ms, stats.filter(|s| probes && s.runs > 0)))
}

/// Runs `pairs` rounds and prints the part's lines.
pub fn run(root: &Path, offheap: &Path, pairs: u32) -> Result<()> {
    ensure!(root.join(WORKLOAD).exists(), "{WORKLOAD} is missing");
    bpf_stats::enabled(|| rounds(root, offheap, pairs))
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
