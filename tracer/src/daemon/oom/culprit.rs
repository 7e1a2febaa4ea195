//! The culprit of an OOM log line: the largest off-heap stack, told in a
//! few frames, and the process's verdict.
use crate::report::{
    self,
    fmt::{clean, human_bytes},
    Report, StackReport,
};

/// Frames shown in a log line, innermost first.
const LOG_FRAMES: usize = 3;

/// The largest off-heap stack of `pid` (all processes when None).
pub fn top_off_heap(report: &Report, pid: Option<u32>) -> Option<&StackReport> {
    report
        .processes
        .iter()
        .filter(|p| pid.is_none_or(|pid| p.pid == pid))
        .flat_map(|p| &p.stacks)
        .filter(|s| s.bucket.is_some_and(|b| b.is_off_heap()))
        .max_by_key(|s| s.live_bytes)
}

/// `812.0 MiB array_buffers at handleRequest ← parseBody ← onData`.
/// `<bytes> <bucket> at <first frames past the allocator> ← … ← <first JS
/// frame>`: the native frames say what allocated, the JS frame whose code
/// asked for it.
pub fn describe_stack(s: &StackReport) -> String {
    let bucket = s.bucket.map_or("unclassified", |b| b.as_str());
    let mut out = format!("{} {bucket}", human_bytes(s.live_bytes));
    let frames = report::telling_frames(&s.frames);
    let mut names: Vec<String> = frames
        .iter()
        .take(LOG_FRAMES)
        .map(|f| clean(&f.display_name()))
        .collect();
    let js = frames
        .iter()
        .skip(LOG_FRAMES)
        .find(|f| f.kind == report::FrameKind::Js);
    match js {
        Some(f) => {
            names.push("…".into());
            names.push(clean(&f.display_name()));
        }
        None if frames.len() > LOG_FRAMES => names.push("…".into()),
        None => {}
    }
    if !names.is_empty() {
        out.push_str(" at ");
        out.push_str(&names.join(" ← "));
    }
    out
}

pub(super) fn top_line(report: &Report, pid: Option<u32>) -> String {
    match top_off_heap(report, pid) {
        Some(s) => format!("top off-heap: {}", describe_stack(s)),
        None => "top off-heap: no off-heap stack recorded".to_string(),
    }
}

/// `; verdict: <headline>` of process `pid`, or nothing when it has none.
pub fn verdict_part(report: &Report, pid: u32) -> String {
    report
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .and_then(|p| p.verdict.as_ref())
        .map(|v| format!("; verdict: {}", v.headline))
        .unwrap_or_default()
}
