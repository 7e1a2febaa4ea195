//! Folded stacks, the input format of flamegraph.pl, inferno, speedscope and
//! Pyroscope: one line per stack, `root;outer;…;inner VALUE`.
//!
//! Choices, so that the output sums exactly to the report's totals:
//! - the root frame is the process, `comm (pid N)`, so a report of several
//!   processes stays one graph with one tower per process;
//! - frames go OUTERMOST first (the model keeps them innermost first);
//! - the value is live bytes, or total bytes with `--value total`;
//! - stacks whose names are equal (same code, different addresses) are merged
//!   and lines are sorted, so the output is deterministic;
//! - the format has no escape: `;` inside a name becomes `:`, and control
//!   characters (line breaks included) are written `\xNN` as in text output
//!   (spaces are fine: the value is after the LAST space). This also keeps
//!   them out of the SVG, where XML 1.0 allows no control character but tab,
//!   newline and carriage return, not even as a character reference;
//! - stacks whose value is 0 are left out (they would draw nothing).
use std::collections::BTreeMap;

use super::{fmt, Frame, FrameKind, ProcessReport, Report, StackReport, ValueKind};

/// The name a frame has in folded stacks and flame graphs. Unnamed JIT code
/// is one `[JIT]` frame: its addresses mean nothing outside this run.
pub fn frame_name(f: &Frame) -> String {
    match (f.kind, &f.symbol) {
        (FrameKind::Jit, None) => "[JIT]".to_string(),
        _ => clean(&f.display_name()),
    }
}

/// The root frame naming a process.
pub fn process_name(p: &ProcessReport) -> String {
    let comm = if p.comm.is_empty() { "?" } else { &p.comm };
    clean(&format!("{comm} (pid {})", p.pid))
}

fn clean(s: &str) -> String {
    fmt::clean(s).replace(';', ":")
}

/// `root;outer;…;inner` for one stack, without its value.
pub fn stack_line(p: &ProcessReport, s: &StackReport) -> String {
    let mut line = process_name(p);
    if s.frames.is_empty() {
        line.push_str(";[unknown]");
    }
    for f in s.frames.iter().rev() {
        line.push(';');
        line.push_str(&frame_name(f));
    }
    line
}

/// Merged folded stacks with their values (zero values left out), sorted.
pub fn collapse(report: &Report, value: ValueKind) -> BTreeMap<String, u64> {
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for p in &report.processes {
        for s in &p.stacks {
            let v = value.of(s);
            if v == 0 {
                continue;
            }
            *lines.entry(stack_line(p, s)).or_default() += v;
        }
    }
    lines
}

pub fn render(report: &Report, value: ValueKind) -> String {
    let mut out = String::new();
    for (stack, v) in collapse(report, value) {
        out.push_str(&stack);
        out.push(' ');
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Bucket, Mode};

    fn frame(sym: &str) -> Frame {
        Frame {
            addr: "0x10".into(),
            symbol: Some(sym.into()),
            module: Some("/usr/bin/node".into()),
            ..Frame::default()
        }
    }

    fn report() -> Report {
        let mut r = Report::new(Mode::Malloc);
        let stack = |live, total, frames: Vec<Frame>| StackReport {
            bucket: Some(Bucket::NativeAddon),
            live_bytes: live,
            live_allocs: 1,
            total_bytes: total,
            total_allocs: 2,
            frames,
            ..StackReport::default()
        };
        r.processes.push(ProcessReport {
            pid: 42,
            comm: "node".into(),
            stacks: vec![
                stack(
                    100,
                    300,
                    vec![frame("malloc"), frame("leak;it"), frame("main")],
                ),
                // Same names at other addresses: merged with the first.
                stack(
                    20,
                    20,
                    vec![frame("malloc"), frame("leak;it"), frame("main")],
                ),
                stack(0, 7, vec![frame("free_soon"), frame("main")]),
            ],
            ..ProcessReport::default()
        });
        r
    }

    #[test]
    fn outermost_first_merged_and_escaped() {
        assert_eq!(
            render(&report(), ValueKind::Live),
            "node (pid 42);main;leak:it;malloc 120\n"
        );
    }

    #[test]
    fn total_keeps_freed_stacks() {
        assert_eq!(
            render(&report(), ValueKind::Total),
            "node (pid 42);main;free_soon 7\nnode (pid 42);main;leak:it;malloc 320\n"
        );
    }
}
