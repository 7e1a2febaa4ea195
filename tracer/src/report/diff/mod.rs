//! Comparing two reports: what grew between BEFORE and AFTER.
//!
//! Stacks are matched by what their frames mean, never by address (ASLR moves
//! every module between runs, and a perf map's path carries the pid):
//! - native frame with a symbol: symbol + module file name (not its path, which
//!   differs when seen through /proc/PID/root);
//! - JS frame: function name without V8's tier marker (`~` interpreted, `*`
//!   optimized... a function changes tier between runs) + script file;
//! - no symbol: module file name only (the model has no module offset), so
//!   unsymbolized frames of one module match each other;
//! - JIT code with no name: `[JIT]`.
//!
//! Stacks with equal keys are summed over all processes of a report: two runs
//! have different pids, so processes are not matched either.
//!
//! Two reports of 200 000 stacks are gigabytes once parsed, so `offheap diff`
//! never holds them: `stream` reads each file stack by stack into `index`,
//! which keeps every distinct frame and frame key once and each stack as
//! their ids; a diff stack's frames are shared (`Arc`) with that table.
mod index;
mod render;
pub mod stream;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{frames::js_name, Bucket, Buckets, Frame, FrameKind, Report};

pub use index::DiffIndex;
pub use render::{render, render_to};

pub const SCHEMA: &str = "offheap.diff.v1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffStack {
    /// Innermost first, as in a report; taken from AFTER when the stack is in it.
    pub frames: Vec<Arc<Frame>>,
    pub bucket: Option<Bucket>,
    pub before_live_bytes: u64,
    pub after_live_bytes: u64,
    pub delta_live_bytes: i64,
}

/// Signed bytes per bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketDeltas {
    pub v8_heap: i64,
    pub array_buffers: i64,
    pub native_addon: i64,
    pub node_native: i64,
    pub other: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BucketsDiff {
    pub before: Buckets,
    pub after: Buckets,
    pub delta: BucketDeltas,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffReport {
    pub schema: String,
    /// Sorted by `delta_live_bytes`, largest growth first.
    pub stacks: Vec<DiffStack>,
    /// Bucket totals summed over every process of each report.
    pub buckets: BucketsDiff,
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// What a frame means, independent of where the run put it in memory.
pub fn frame_key(f: &Frame) -> String {
    match (f.kind, &f.symbol) {
        (FrameKind::Js, Some(s)) => {
            format!("js {} @ {}", js_name(s), f.file.as_deref().unwrap_or(""))
        }
        (_, Some(s)) => format!(
            "{} @ {}",
            s,
            f.module.as_deref().map(basename).unwrap_or("")
        ),
        (FrameKind::Jit, None) => "[JIT]".to_string(),
        (_, None) => match &f.module {
            Some(m) => format!("? @ {}", basename(m)),
            None => "[unknown]".to_string(),
        },
    }
}

pub(crate) fn delta(a: u64, b: u64) -> i64 {
    (i128::from(b) - i128::from(a)).clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

/// Compares two reports held in memory (see `index` for reading files
/// without holding them).
pub fn diff(before: &Report, after: &Report) -> DiffReport {
    let mut index = DiffIndex::default();
    for (is_after, report) in [(false, before), (true, after)] {
        for p in &report.processes {
            index.add_buckets(&p.buckets, is_after);
            for s in &p.stacks {
                index.add_stack(s, is_after);
            }
        }
    }
    index.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn js(sym: &str, file: &str, pid: u32) -> Frame {
        Frame {
            addr: "0x3000".into(),
            symbol: Some(sym.into()),
            module: Some(format!("/tmp/perf-{pid}.map")),
            file: Some(file.into()),
            kind: FrameKind::Js,
            ..Frame::default()
        }
    }

    #[test]
    fn keys_ignore_addresses_tiers_and_paths() {
        let a = Frame {
            addr: "0x7f00001000".into(),
            symbol: Some("malloc".into()),
            module: Some("/lib/x86_64-linux-gnu/libc.so.6".into()),
            ..Frame::default()
        };
        let b = Frame {
            addr: "0x7e00009000".into(),
            module: Some("/proc/77/root/lib/x86_64-linux-gnu/libc.so.6".into()),
            ..a.clone()
        };
        assert_eq!(frame_key(&a), frame_key(&b));
        assert_eq!(
            frame_key(&js("JS:~handle", "/app/x.js", 1)),
            frame_key(&js("JS:*handle", "/app/x.js", 2))
        );
        assert_ne!(
            frame_key(&js("JS:*handle", "/app/x.js", 1)),
            frame_key(&js("JS:*handle", "/app/y.js", 1))
        );
        assert_eq!(js_name("LazyCompile:*a.b /x.js:1"), "a.b /x.js:1");
    }
}
