//! `cargo xtask bench`'s traffic part: what the traffic probes (traffic.bpf.c:
//! a BTF raw tracepoint on every socket read, a perf tracepoint on accept4's
//! return) cost a socket-heavy Node loop (bench/traffic-loop.js).
//!
//! Two figures. The probes' own time in the kernel, per event: BPF run-time
//! statistics (kernel.bpf_stats_enabled, restored afterwards) of the two
//! programs, sampled with bpftool while `offheap run` traces the loop. And
//! the loop's slowdown under `offheap run --mode resident` (which also pays
//! resident mode's fault tracking), in paired rounds. It prints, never
//! asserts.
use std::path::Path;

use anyhow::{anyhow, ensure, Result};

use crate::bpf_stats::{self, ProgStats};
use crate::stats::median;

const WORKLOAD: &str = "bench/traffic-loop.js";
/// The programs, as bpftool names them (their full names, from BTF).
const RECV: &str = "traffic_sock_recv";
const ACCEPT: &str = "traffic_accept4_exit";

fn elapsed(stdout: &str) -> Result<f64> {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("traffic-loop: elapsed_ms="))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("{WORKLOAD} printed no `traffic-loop: elapsed_ms=` line"))
}

fn untraced(root: &Path) -> Result<f64> {
    elapsed(&crate::proc::node_stdout(root, WORKLOAD)?)
}

/// One traced run: the loop's time and the programs' last counters.
fn traced(root: &Path, offheap: &Path) -> Result<(f64, Option<(ProgStats, ProgStats)>)> {
    let report =
        std::env::temp_dir().join(format!("offheap-bench-traffic-{}.json", std::process::id()));
    let mut cmd = bpf_stats::resident_run(offheap, root, &report, WORKLOAD);
    let (out, _, last) = bpf_stats::traced_run(&mut cmd, &report, &[RECV, ACCEPT])?;
    let ms = elapsed(&String::from_utf8_lossy(&out.stdout))?;
    let stats = last.and_then(|m| Some((*m.get(RECV)?, *m.get(ACCEPT)?)));
    Ok((ms, stats))
}

/// Runs `pairs` rounds and prints the part's lines.
pub fn run(root: &Path, offheap: &Path, pairs: u32) -> Result<()> {
    ensure!(root.join(WORKLOAD).exists(), "{WORKLOAD} is missing");
    bpf_stats::enabled(|| rounds(root, offheap, pairs))
}

fn rounds(root: &Path, offheap: &Path, pairs: u32) -> Result<()> {
    let (mut u, mut t, mut per_recv, mut per_accept, mut probe_ms) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 1..=pairs {
        let a = untraced(root)?;
        let (b, stats) = traced(root, offheap)?;
        println!(
            "bench: round {i}/{pairs}: traffic: untraced {a:.1} ms, traced {b:.1} ms ({:.3}x)",
            b / a
        );
        u.push(a);
        t.push(b);
        if let Some((r, acc)) = stats.filter(|(r, a)| r.runs > 0 && a.runs > 0) {
            let (pr, pa) = (r.ns as f64 / r.runs as f64, acc.ns as f64 / acc.runs as f64);
            println!(
                "bench: traffic: {} socket reads {pr:.0} ns each, {} accept4 returns {pa:.0} ns \
                 each (BPF run time)",
                r.runs, acc.runs
            );
            per_recv.push(pr);
            per_accept.push(pa);
            probe_ms.push((r.ns + acc.ns) as f64 / 1e6);
        }
    }
    let m = |v: &[f64]| median(v).unwrap_or(f64::NAN);
    println!(
        "  traffic        {pairs} pairs  untraced {:>8.1} ms  traced {:>9.1} ms  slowdown {:.3}x  \
         (offheap run --mode resident, traffic probes included)",
        m(&u),
        m(&t),
        m(&t) / m(&u)
    );
    // The run counts include the host's other socket reads and accepts while
    // tracing ran, each leaving after the `targets` lookup.
    println!(
        "  traffic probes: {:.0} ns per socket read, {:.0} ns per accept4 return (medians of BPF \
         run time per event): {:.1} ms in the kernel for a {:.1} ms loop",
        m(&per_recv),
        m(&per_accept),
        m(&probe_ms),
        m(&u)
    );
    Ok(())
}
