//! Text output for a person: first the verdict on every process, then per
//! process a summary that contrasts the V8 heap with everything off it, the
//! series of each bucket with its growth, then the top stacks per bucket
//! (`stacks`: merged, each with a headline, runtime frames folded).
//!
//! Names that come from the target (symbols, JS functions, paths) may hold
//! control characters; they are shown as `?` so a report printed on a terminal
//! cannot drive it.
pub mod stacks;

use std::fmt::Write;

use super::{
    fmt::{clean, human_bytes, signed_bytes, sparkline},
    verdict, Bucket, ProcessReport, RenderOptions, Report, StackReport,
};
pub use stacks::FrameView;

/// The verdict block: `verdict PID 42 (node): <headline>`, then its other
/// lines indented. Empty for a process without a verdict.
pub fn verdict_block(out: &mut String, p: &ProcessReport) {
    let Some(v) = &p.verdict else { return };
    let lines = verdict::lines(v);
    let _ = writeln!(
        out,
        "verdict PID {} ({}): {}",
        p.pid,
        clean(&p.comm),
        clean(&lines[0])
    );
    for l in &lines[1..] {
        let _ = writeln!(out, "  {}", clean(l));
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

/// One line per bucket: its latest value, its growth over the series, and a
/// sparkline of the series.
fn series_block(out: &mut String, p: &ProcessReport) {
    let (Some(first), Some(last)) = (p.series.first(), p.series.last()) else {
        return;
    };
    let secs = last.t_secs - first.t_secs;
    let rate = |a: u64, b: u64| {
        if secs > 0.0 {
            format!("{}/s", signed_bytes(((b as f64 - a as f64) / secs) as i64))
        } else {
            String::new()
        }
    };
    let _ = writeln!(out, "  over {:.1}s ({} samples):", secs, p.series.len());
    let rss: Vec<u64> = p.series.iter().map(|s| s.rss_bytes).collect();
    let _ = writeln!(
        out,
        "    {:<14} {:>10} {:>14}  {}",
        "rss",
        human_bytes(last.rss_bytes),
        rate(first.rss_bytes, last.rss_bytes),
        sparkline(&rss)
    );
    for b in Bucket::ALL {
        let v: Vec<u64> = p.series.iter().map(|s| s.buckets.get(b)).collect();
        let _ = writeln!(
            out,
            "    {:<14} {:>10} {:>14}  {}",
            b.as_str(),
            human_bytes(last.buckets.get(b)),
            rate(first.buckets.get(b), last.buckets.get(b)),
            sparkline(&v)
        );
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
    for p in &report.processes {
        verdict_block(&mut out, p);
    }
    for w in &report.warnings {
        let _ = writeln!(out, "warning: {}", clean(w));
    }
    if let Some(oom) = &report.oom {
        let _ = writeln!(
            out,
            "OOM kill: pid {} ({}) anon-rss {} file-rss {} shmem-rss {}",
            oom.pid,
            clean(&oom.comm),
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
            clean(&p.comm),
            clean(&p.exe),
            if p.exited { " [exited]" } else { "" },
            human_bytes(p.rss_bytes)
        );
        let _ = writeln!(out, "  {}", summary_line(p));
        if let Some(r) = &p.reconciliation {
            let _ = writeln!(out, "  {}", clean(r));
        }
        if !p.preexisting.is_empty() {
            let lines: Vec<String> = p
                .preexisting
                .iter()
                .map(|l| format!("{} {}", clean(&l.kind), human_bytes(l.bytes)))
                .collect();
            let _ = writeln!(out, "  resident before tracing: {}", lines.join(", "));
        }
        series_block(&mut out, p);
        // Biggest bucket first: the answer to "where is the memory" leads.
        let mut order = Bucket::ALL;
        order.sort_by_key(|b| std::cmp::Reverse(p.buckets.get(*b)));
        for b in order {
            let stacks: Vec<&StackReport> =
                p.stacks.iter().filter(|s| s.bucket == Some(b)).collect();
            if stacks.is_empty() {
                continue;
            }
            let merged = stacks::merge(&stacks);
            let shown = opts.top.unwrap_or(usize::MAX).min(merged.len());
            let _ = writeln!(
                out,
                "\n  {} · {} in {} stacks{}",
                b.as_str(),
                human_bytes(p.buckets.get(b)),
                merged.len(),
                if shown < merged.len() {
                    format!(" (top {shown} shown)")
                } else {
                    String::new()
                }
            );
            for m in merged.iter().take(shown) {
                stacks::block(&mut out, m, opts.frames);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fmt::human_ns;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_ns(999), "999ns");
        assert_eq!(human_ns(1_200_000), "1.2ms");
        assert_eq!(human_ns(3_000_000_000), "3.0s");
    }

    #[test]
    fn a_stack_names_its_addon() {
        let mut report = Report::new(crate::report::Mode::Malloc);
        let mut p = ProcessReport::default();
        p.buckets.native_addon = 3_108_000;
        p.stacks.push(StackReport {
            bucket: Some(Bucket::NativeAddon),
            live_bytes: 3_108_000,
            live_allocs: 1,
            total_bytes: 3_108_000,
            total_allocs: 1,
            addon: Some("@img/sharp-linux-x64".into()),
            ..StackReport::default()
        });
        report.processes.push(p);
        let text = render(
            &report,
            &RenderOptions {
                top: None,
                value: Default::default(),
                frames: Default::default(),
            },
        );
        assert!(
            text.contains(
                "    3.0 MiB live in 1 allocs (3.0 MiB total in 1), addon @img/sharp-linux-x64\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn control_characters_are_neutralised() {
        assert_eq!(clean("a\x1b[2Jb\n"), "a\\x1b[2Jb\\x0a");
        assert_eq!(clean("csi\u{9b}del\u{7f}é"), "csi\\x9bdel\\x7fé");
        assert_eq!(clean("a\u{fffe}b\u{ffff}"), "a\\u{fffe}b\\u{ffff}");
    }
}
