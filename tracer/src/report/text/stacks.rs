//! Stacks for a person: stacks that symbolize to the same frames are one
//! (their figures added up), each opens with a headline (bytes, bucket,
//! growth, culprit frame), and runs of the runtime's own frames (V8 builtins
//! and internals, libuv, node's and libc's start-up) fold into one line,
//! `… 14 V8/libuv frames …`, unless every frame is asked for
//! (`--frames all`). JSON, pprof and folded output keep every frame.
use std::{collections::HashMap, fmt::Write};

use super::super::{
    diff::frame_key,
    fmt::{clean, human_bytes, human_ns, signed_bytes},
    frames::{first_user_frame, runtime_of, short_name, Runtime},
    Frame, FrameKind, Quantiles, StackReport,
};

/// Runs of at least this many runtime frames fold into one line.
const MIN_FOLD: usize = 3;

/// Which frames the text shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FrameView {
    /// Runs of V8/libuv/start-up frames folded into one line.
    #[default]
    Folded,
    /// Every frame.
    All,
}

/// One line of a stack: a frame, or a folded run of runtime frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Frame(&'a Frame),
    Folded { count: usize, parts: Vec<Runtime> },
}

impl Line<'_> {
    /// `… 14 V8/libuv frames …` for a folded run.
    pub fn folded_text(count: usize, parts: &[Runtime]) -> String {
        let names: Vec<&str> = parts.iter().map(|p| p.as_str()).collect();
        format!("… {count} {} frames …", names.join("/"))
    }
}

/// The lines of a stack, innermost first.
pub fn lines(frames: &[Frame], view: FrameView) -> Vec<Line<'_>> {
    if view == FrameView::All {
        return frames.iter().map(Line::Frame).collect();
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let run = frames[i..]
            .iter()
            .take_while(|f| runtime_of(f).is_some())
            .count();
        if run >= MIN_FOLD {
            let mut parts: Vec<Runtime> = Vec::new();
            for f in &frames[i..i + run] {
                let r = runtime_of(f).expect("counted as runtime");
                if !parts.contains(&r) {
                    parts.push(r);
                }
            }
            out.push(Line::Folded { count: run, parts });
            i += run;
        } else {
            out.push(Line::Frame(&frames[i]));
            i += 1;
        }
    }
    out
}

/// `name (file:line)` or `name [module]`, cleaned for a terminal.
pub fn frame_line(f: &Frame) -> String {
    let name = match (f.kind, &f.symbol) {
        (FrameKind::Jit, None) => format!("[JIT] {}", f.addr),
        _ => f.display_name(),
    };
    let place = if let (Some(file), Some(line)) = (&f.file, f.line) {
        format!(" ({file}:{line})")
    } else if let Some(m) = &f.module {
        format!(" [{}]", m.rsplit('/').next().unwrap_or(m))
    } else {
        String::new()
    };
    clean(&format!("{name}{place}"))
}

/// Stacks of one bucket with the same frames, added up; the quantiles and frames are those of the largest.
pub struct Merged<'a> {
    pub top: &'a StackReport,
    pub stacks: usize,
    pub live_bytes: u64,
    pub live_allocs: u64,
    pub total_bytes: u64,
    pub total_allocs: u64,
    pub growth_bytes_per_sec: Option<f64>,
}

/// Merges stacks whose frames mean the same (`diff::frame_key`: symbols and
/// module names, JS functions whatever their tier; not addresses, which
/// differ for JIT code recompiled or call sites within one function),
/// largest first.
pub fn merge<'a>(stacks: &[&'a StackReport]) -> Vec<Merged<'a>> {
    let mut index: HashMap<Vec<String>, usize> = HashMap::new();
    let mut out: Vec<Merged<'a>> = Vec::new();
    for s in stacks {
        let key: Vec<String> = s.frames.iter().map(frame_key).collect();
        match index.get(&key) {
            Some(&i) => {
                let m = &mut out[i];
                m.stacks += 1;
                m.live_bytes += s.live_bytes;
                m.live_allocs += s.live_allocs;
                m.total_bytes += s.total_bytes;
                m.total_allocs += s.total_allocs;
                if let Some(g) = s.growth_bytes_per_sec {
                    *m.growth_bytes_per_sec.get_or_insert(0.0) += g;
                }
                if s.live_bytes > m.top.live_bytes {
                    m.top = s;
                }
            }
            None => {
                index.insert(key, out.len());
                out.push(Merged {
                    top: s,
                    stacks: 1,
                    live_bytes: s.live_bytes,
                    live_allocs: s.live_allocs,
                    total_bytes: s.total_bytes,
                    total_allocs: s.total_allocs,
                    growth_bytes_per_sec: s.growth_bytes_per_sec,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        b.live_bytes
            .cmp(&a.live_bytes)
            .then(b.total_bytes.cmp(&a.total_bytes))
    });
    out
}

fn quantiles(q: &Quantiles, unit: fn(u64) -> String) -> String {
    format!(
        "p50 {} · p90 {} · p99 {} · max {} (n={})",
        unit(q.p50),
        unit(q.p90),
        unit(q.p99),
        unit(q.max),
        q.count
    )
}

/// One merged stack: its headline, its figures, its frames.
pub fn block(out: &mut String, m: &Merged<'_>, view: FrameView) {
    let s = m.top;
    let bucket = s.bucket.map_or("unclassified", |b| b.as_str());
    let _ = write!(out, "    {} {bucket}", human_bytes(m.live_bytes));
    if let Some(g) = m.growth_bytes_per_sec {
        let _ = write!(out, " · growth {}/s", signed_bytes(g as i64));
    }
    if let Some((f, _)) = first_user_frame(&s.frames) {
        let _ = write!(out, " · {}", clean(&short_name(f)));
    }
    out.push('\n');
    let _ = write!(
        out,
        "      {} live in {} allocs ({} total in {})",
        human_bytes(m.live_bytes),
        m.live_allocs,
        human_bytes(m.total_bytes),
        m.total_allocs
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
    if let Some(a) = &s.addon {
        let _ = write!(out, ", addon {}", clean(a));
    }
    if m.stacks > 1 {
        let _ = write!(out, ", {} stacks with these frames merged", m.stacks);
    }
    out.push('\n');
    if let Some(q) = &s.sizes {
        let _ = writeln!(out, "      sizes     {}", quantiles(q, human_bytes));
    }
    if let Some(q) = &s.lifetimes_ns {
        let _ = writeln!(out, "      lifetimes {}", quantiles(q, human_ns));
    }
    for l in lines(&s.frames, view) {
        let text = match l {
            Line::Frame(f) => frame_line(f),
            Line::Folded { count, parts } => Line::folded_text(count, &parts),
        };
        let _ = writeln!(out, "        {text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Bucket;

    fn f(symbol: &str, module: &str) -> Frame {
        Frame {
            addr: "0x1".into(),
            symbol: Some(symbol.into()),
            module: Some(module.into()),
            ..Frame::default()
        }
    }

    #[test]
    fn runs_of_runtime_frames_fold_and_all_shows_them() {
        let node = "/usr/bin/node";
        let frames = vec![
            f("calloc", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            f("v8::internal::BackingStore::Allocate", node),
            f("Builtins_JSBuiltinsConstructStub", node),
            f("Builtins_CreateTypedArray", node),
            f("node::Parser::on_headers_complete", node),
            f("uv__read", node),
            f("uv__io_poll", node),
            f("node::SpinEventLoopInternal", node),
            f(
                "__libc_start_call_main",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
            ),
        ];
        let text: Vec<String> = lines(&frames, FrameView::Folded)
            .into_iter()
            .map(|l| match l {
                Line::Frame(f) => f.display_name(),
                Line::Folded { count, parts } => Line::folded_text(count, &parts),
            })
            .collect();
        assert_eq!(
            text,
            vec![
                "calloc",
                "… 3 V8 frames …",
                "node::Parser::on_headers_complete",
                "… 4 libuv/node start-up/libc start-up frames …",
            ]
        );
        assert_eq!(lines(&frames, FrameView::All).len(), frames.len());
        // Two runtime frames alone stay.
        assert_eq!(lines(&frames[4..7], FrameView::Folded).len(), 3);
    }

    #[test]
    fn identical_frames_merge() {
        let a = StackReport {
            bucket: Some(Bucket::NodeNative),
            live_bytes: 10,
            live_allocs: 1,
            frames: vec![f("deflateInit2_", "/usr/bin/node")],
            ..StackReport::default()
        };
        let b = StackReport {
            live_bytes: 30,
            live_allocs: 2,
            frames: vec![Frame {
                addr: "0x99".into(),
                ..a.frames[0].clone()
            }],
            ..a.clone()
        };
        let c = StackReport {
            frames: vec![f("inflateInit2_", "/usr/bin/node")],
            ..a.clone()
        };
        let m = merge(&[&a, &b, &c]);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].stacks, m[0].live_bytes, m[0].live_allocs), (2, 40, 3));
        assert_eq!(m[0].top.live_bytes, 30);
    }
}
