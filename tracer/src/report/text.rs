//! Text output for a person: per process, a summary that contrasts the V8 heap
//! with everything off it, then the top stacks per bucket.
use std::fmt::Write;

use super::{Bucket, ProcessReport, RenderOptions, Report, StackReport};

/// Formats bytes with binary units, e.g. `1.5 MiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

pub fn summary_line(p: &ProcessReport) -> String {
    let b = &p.buckets;
    format!(
        "V8 heap {} · off-heap {} (array_buffers {}, native_addon {}, node_native {}, other {})",
        human_bytes(b.v8_heap),
        human_bytes(b.off_heap()),
        human_bytes(b.array_buffers),
        human_bytes(b.native_addon),
        human_bytes(b.node_native),
        human_bytes(b.other),
    )
}

fn stack_block(out: &mut String, s: &StackReport) {
    let _ = write!(
        out,
        "    {} live in {} allocs ({} total in {})",
        human_bytes(s.live_bytes),
        s.live_allocs,
        human_bytes(s.total_bytes),
        s.total_allocs
    );
    if let Some(a) = s.attribution {
        let _ = write!(
            out,
            ", attribution {}",
            serde_json::to_value(a)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        );
    }
    if let Some(g) = s.growth_bytes_per_sec {
        let _ = write!(out, ", growth {}/s", human_bytes(g.max(0.0) as u64));
    }
    out.push('\n');
    for f in &s.frames {
        let _ = write!(out, "        {}", f.display_name());
        if let (Some(file), Some(line)) = (&f.file, f.line) {
            let _ = write!(out, " ({file}:{line})");
        } else if let Some(m) = &f.module {
            let _ = write!(out, " [{}]", m.rsplit('/').next().unwrap_or(m));
        }
        out.push('\n');
    }
}

pub fn render(report: &Report, opts: &RenderOptions) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "offheap report · mode {} · {:.1}s · dropped events {}",
        report.mode.as_str(),
        report.duration_secs,
        report.dropped_events
    );
    for w in &report.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    if let Some(oom) = &report.oom {
        let _ = writeln!(
            out,
            "OOM kill: pid {} ({}) anon-rss {} file-rss {} shmem-rss {}",
            oom.pid,
            oom.comm,
            human_bytes(oom.anon_rss_bytes),
            human_bytes(oom.file_rss_bytes),
            human_bytes(oom.shmem_rss_bytes)
        );
    }
    for p in &report.processes {
        let _ = writeln!(
            out,
            "\nPID {} ({}) {}{} · RSS {}",
            p.pid,
            p.comm,
            p.exe,
            if p.exited { " [exited]" } else { "" },
            human_bytes(p.rss_bytes)
        );
        let _ = writeln!(out, "  {}", summary_line(p));
        if let Some(r) = &p.reconciliation {
            let _ = writeln!(out, "  {r}");
        }
        for b in Bucket::ALL {
            let stacks: Vec<&StackReport> =
                p.stacks.iter().filter(|s| s.bucket == Some(b)).collect();
            if stacks.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "\n  {} · {} in {} stacks",
                b.as_str(),
                human_bytes(p.buckets.get(b)),
                stacks.len()
            );
            for s in stacks.iter().take(opts.top.unwrap_or(usize::MAX)) {
                stack_block(&mut out, s);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
