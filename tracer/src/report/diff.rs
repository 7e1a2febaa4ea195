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
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{
    fmt::{clean, human_bytes, signed_bytes},
    folded,
    frames::js_name,
    text, Bucket, Buckets, Format, Frame, FrameKind, RenderError, RenderOptions, Report,
};

pub const SCHEMA: &str = "offheap.diff.v1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffStack {
    /// Innermost first, as in a report; taken from AFTER when the stack is in it.
    pub frames: Vec<Frame>,
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

fn delta(a: u64, b: u64) -> i64 {
    (i128::from(b) - i128::from(a)).clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

pub fn diff(before: &Report, after: &Report) -> DiffReport {
    let mut index: HashMap<Vec<String>, usize> = HashMap::new();
    let mut stacks: Vec<DiffStack> = Vec::new();
    let mut buckets = BucketsDiff::default();
    for (is_after, report) in [(false, before), (true, after)] {
        for p in &report.processes {
            for b in Bucket::ALL {
                let side = if is_after {
                    &mut buckets.after
                } else {
                    &mut buckets.before
                };
                *side.get_mut(b) += p.buckets.get(b);
            }
            for s in &p.stacks {
                let key: Vec<String> = s.frames.iter().map(frame_key).collect();
                let i = *index.entry(key).or_insert_with(|| {
                    stacks.push(DiffStack {
                        frames: s.frames.clone(),
                        bucket: s.bucket,
                        before_live_bytes: 0,
                        after_live_bytes: 0,
                        delta_live_bytes: 0,
                    });
                    stacks.len() - 1
                });
                let d = &mut stacks[i];
                if is_after {
                    if d.after_live_bytes == 0 && d.before_live_bytes > 0 {
                        // Show AFTER's addresses and bucket: the newer run.
                        d.frames = s.frames.clone();
                        d.bucket = s.bucket;
                    }
                    d.after_live_bytes += s.live_bytes;
                } else {
                    d.before_live_bytes += s.live_bytes;
                }
            }
        }
    }
    for d in &mut stacks {
        d.delta_live_bytes = delta(d.before_live_bytes, d.after_live_bytes);
    }
    stacks.sort_by(|a, b| {
        b.delta_live_bytes
            .cmp(&a.delta_live_bytes)
            .then(b.after_live_bytes.cmp(&a.after_live_bytes))
    });
    let d = &mut buckets.delta;
    let (bf, af) = (buckets.before, buckets.after);
    *d = BucketDeltas {
        v8_heap: delta(bf.v8_heap, af.v8_heap),
        array_buffers: delta(bf.array_buffers, af.array_buffers),
        native_addon: delta(bf.native_addon, af.native_addon),
        node_native: delta(bf.node_native, af.node_native),
        other: delta(bf.other, af.other),
    };
    DiffReport {
        schema: SCHEMA.to_string(),
        stacks,
        buckets,
    }
}

fn render_text(d: &DiffReport, opts: &RenderOptions) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let (bf, af) = (&d.buckets.before, &d.buckets.after);
    let _ = writeln!(
        out,
        "offheap diff · off-heap {} -> {} ({}) · V8 heap {} -> {} ({})",
        human_bytes(bf.off_heap()),
        human_bytes(af.off_heap()),
        signed_bytes(delta(bf.off_heap(), af.off_heap())),
        human_bytes(bf.v8_heap),
        human_bytes(af.v8_heap),
        signed_bytes(delta(bf.v8_heap, af.v8_heap)),
    );
    for b in Bucket::ALL {
        let _ = writeln!(
            out,
            "  {:<14} {:>10} -> {:>10}  {:>11}",
            b.as_str(),
            human_bytes(bf.get(b)),
            human_bytes(af.get(b)),
            signed_bytes(delta(bf.get(b), af.get(b)))
        );
    }
    let changed: Vec<&DiffStack> = d
        .stacks
        .iter()
        .filter(|s| s.delta_live_bytes != 0)
        .collect();
    let _ = writeln!(
        out,
        "\n{} stacks changed, largest growth first:",
        changed.len()
    );
    for s in changed.iter().take(opts.top.unwrap_or(usize::MAX)) {
        let _ = writeln!(
            out,
            "\n  {} ({} -> {}) {}",
            signed_bytes(s.delta_live_bytes),
            human_bytes(s.before_live_bytes),
            human_bytes(s.after_live_bytes),
            s.bucket.map(Bucket::as_str).unwrap_or("unclassified")
        );
        for l in text::stacks::lines(&s.frames, opts.frames) {
            let line = match l {
                text::stacks::Line::Frame(f) => clean(&f.display_name()),
                text::stacks::Line::Folded { count, parts } => {
                    text::stacks::Line::folded_text(count, &parts)
                }
            };
            let _ = writeln!(out, "      {line}");
        }
    }
    out
}

/// Two-value folded stacks, `outer;…;inner BEFORE AFTER`: the input of
/// differential flame graphs (flamegraph.pl and inferno read it as is). No
/// process root: the two runs have different pids.
fn render_folded(d: &DiffReport) -> String {
    let mut lines: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for s in &d.stacks {
        if s.before_live_bytes == 0 && s.after_live_bytes == 0 {
            continue;
        }
        let mut names: Vec<String> = s.frames.iter().rev().map(folded::frame_name).collect();
        if names.is_empty() {
            names.push("[unknown]".into());
        }
        let e = lines.entry(names.join(";")).or_default();
        e.0 += s.before_live_bytes;
        e.1 += s.after_live_bytes;
    }
    lines
        .into_iter()
        .map(|(k, (a, b))| format!("{k} {a} {b}\n"))
        .collect()
}

/// Diffs render as text, json, folded (two values) or a differential SVG.
pub fn render(
    d: &DiffReport,
    format: Format,
    opts: &RenderOptions,
) -> Result<Vec<u8>, RenderError> {
    match format {
        Format::Text => Ok(render_text(d, opts).into_bytes()),
        Format::Json => {
            let mut v = serde_json::to_vec_pretty(d)
                .map_err(|e| RenderError::Encode("json", e.to_string()))?;
            v.push(b'\n');
            Ok(v)
        }
        Format::Folded => Ok(render_folded(d).into_bytes()),
        Format::Svg => render_svg(d),
        Format::Pprof | Format::Chart => Err(RenderError::Encode(
            "diff",
            "a diff renders as text, json, folded or svg".into(),
        )),
    }
}

/// A differential flame graph (inferno, as difffolded.pl + flamegraph.pl):
/// frame widths are AFTER's bytes, red frames grew, blue ones shrank.
fn render_svg(d: &DiffReport) -> Result<Vec<u8>, RenderError> {
    let lines = render_folded(d);
    if lines.is_empty() {
        return Err(RenderError::Encode(
            "svg",
            "neither report has live bytes".into(),
        ));
    }
    let (bf, af) = (&d.buckets.before, &d.buckets.after);
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = format!(
        "offheap diff · off-heap {} -> {} ({}) · red grew, blue shrank",
        human_bytes(bf.off_heap()),
        human_bytes(af.off_heap()),
        signed_bytes(delta(bf.off_heap(), af.off_heap()))
    );
    opts.count_name = "bytes".to_string();
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(&mut opts, lines.lines(), &mut out)
        .map_err(|e| RenderError::Encode("svg", e.to_string()))?;
    Ok(out)
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
        assert_eq!(signed_bytes(-2048), "-2.0 KiB");
    }
}
