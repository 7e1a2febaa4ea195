//! A diff as text, JSON, two-value folded stacks or a differential SVG,
//! written to any `Write` as it is made: a diff of large reports is itself
//! large, and need not exist twice (as a Vec and as a file).
use std::io::{self, Write};

use super::{delta, DiffReport, DiffStack};
use crate::report::{
    fmt::{clean, human_bytes, signed_bytes},
    folded, text, Bucket, Format, RenderError, RenderOptions,
};

/// A rendering that cannot be made, as an io::Error of the writer.
fn refuse(what: &'static str, why: &str) -> io::Error {
    io::Error::other(RenderError::Nothing {
        format: what,
        why: why.to_string(),
    })
}

fn render_text(d: &DiffReport, opts: &RenderOptions, out: &mut dyn Write) -> io::Result<()> {
    let (bf, af) = (&d.buckets.before, &d.buckets.after);
    writeln!(
        out,
        "offheap diff · off-heap {} -> {} ({}) · V8 heap {} -> {} ({})",
        human_bytes(bf.off_heap()),
        human_bytes(af.off_heap()),
        signed_bytes(delta(bf.off_heap(), af.off_heap())),
        human_bytes(bf.v8_heap),
        human_bytes(af.v8_heap),
        signed_bytes(delta(bf.v8_heap, af.v8_heap)),
    )?;
    for b in Bucket::ALL {
        writeln!(
            out,
            "  {:<14} {:>10} -> {:>10}  {:>11}",
            b.as_str(),
            human_bytes(bf.get(b)),
            human_bytes(af.get(b)),
            signed_bytes(delta(bf.get(b), af.get(b)))
        )?;
    }
    let changed: Vec<&DiffStack> = d
        .stacks
        .iter()
        .filter(|s| s.delta_live_bytes != 0)
        .collect();
    writeln!(
        out,
        "\n{} stacks changed, largest growth first:",
        changed.len()
    )?;
    for s in changed.iter().take(opts.top.unwrap_or(usize::MAX)) {
        writeln!(
            out,
            "\n  {} ({} -> {}) {}",
            signed_bytes(s.delta_live_bytes),
            human_bytes(s.before_live_bytes),
            human_bytes(s.after_live_bytes),
            s.bucket.map(Bucket::as_str).unwrap_or("unclassified")
        )?;
        let frames: Vec<_> = s.frames.iter().map(|f| (**f).clone()).collect();
        for l in text::stacks::lines(&frames, opts.frames) {
            let line = match l {
                text::stacks::Line::Frame(f) => clean(&f.display_name()),
                text::stacks::Line::Folded { count, parts } => {
                    text::stacks::Line::folded_text(count, &parts)
                }
            };
            writeln!(out, "      {line}")?;
        }
    }
    Ok(())
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
        let mut names: Vec<String> = s
            .frames
            .iter()
            .rev()
            .map(|f| folded::frame_name(f))
            .collect();
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
pub fn render(d: &DiffReport, format: Format, opts: &RenderOptions) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    render_to(d, format, opts, &mut out)?;
    Ok(out)
}

/// `render`, written to `out` as it is made. A diff that cannot be drawn
/// (pprof; an SVG of nothing) is an error of kind `Other` holding a
/// `RenderError`.
pub fn render_to(
    d: &DiffReport,
    format: Format,
    opts: &RenderOptions,
    out: &mut dyn Write,
) -> io::Result<()> {
    match format {
        Format::Text => render_text(d, opts, out),
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, d)?;
            out.write_all(b"\n")
        }
        Format::Folded => out.write_all(render_folded(d).as_bytes()),
        Format::Svg => render_svg(d, out),
        Format::Pprof | Format::Chart => Err(refuse(
            "diff",
            "a diff renders as text, json, folded or svg",
        )),
    }
}

/// A differential flame graph (inferno, as difffolded.pl + flamegraph.pl):
/// frame widths are AFTER's bytes, red frames grew, blue ones shrank.
fn render_svg(d: &DiffReport, out: &mut dyn Write) -> io::Result<()> {
    let lines = render_folded(d);
    if lines.is_empty() {
        return Err(refuse("svg", "neither report has live bytes"));
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
    inferno::flamegraph::from_lines(&mut opts, lines.lines(), out)
}
