//! SVG flame graph, drawn in process by inferno from the folded stacks.
//!
//! Colour by bucket: every stack gets one more frame on top, `[bucket]`, in
//! that bucket's colour, and each code frame whose bytes all belong to one
//! bucket takes that bucket's colour too. Frames shared by several buckets
//! (main, the event loop, malloc itself) are grey, as is the process root.
//! inferno colours by frame name only, hence the rule by name, not by position.
use std::collections::HashMap;

use inferno::flamegraph::{self, color::Color, color::PaletteMap, Options};

use super::{fmt::human_bytes, folded, Bucket, RenderError, Report, ValueKind};

const SHARED: Color = Color {
    r: 200,
    g: 200,
    b: 200,
};

/// One fixed colour per bucket (ColorBrewer Set2, which stays apart for
/// colour-blind readers); the subtitle names them.
pub fn bucket_color(b: Option<Bucket>) -> Color {
    let (r, g, b) = match b {
        Some(Bucket::V8Heap) => (102, 194, 165),
        Some(Bucket::ArrayBuffers) => (252, 141, 98),
        Some(Bucket::NativeAddon) => (231, 84, 128),
        Some(Bucket::NodeNative) => (141, 160, 203),
        Some(Bucket::Other) => (229, 196, 148),
        None => return SHARED,
    };
    Color { r, g, b }
}

/// The tip frame naming a stack's bucket.
pub fn bucket_frame(b: Option<Bucket>) -> String {
    format!("[{}]", b.map(Bucket::as_str).unwrap_or("unclassified"))
}

fn title(report: &Report, value: ValueKind) -> String {
    let who = match report.processes.as_slice() {
        [p] => folded::process_name(p),
        ps => format!("{} processes", ps.len()),
    };
    let (mut v8, mut off, mut shown) = (0, 0, 0);
    for p in &report.processes {
        v8 += p.buckets.v8_heap;
        off += p.buckets.off_heap();
        shown += p.stacks.iter().map(|s| value.of(s)).sum::<u64>();
    }
    format!(
        "offheap: {who} · {} bytes {} · V8 heap {} · off-heap {}",
        value.as_str(),
        human_bytes(shown),
        human_bytes(v8),
        human_bytes(off)
    )
}

pub fn render(report: &Report, value: ValueKind) -> Result<Vec<u8>, RenderError> {
    let mut lines: HashMap<String, u64> = HashMap::new();
    // Which bucket each frame name belongs to; None once it is seen in two.
    let mut owner: HashMap<String, Option<Bucket>> = HashMap::new();
    for p in &report.processes {
        owner.insert(folded::process_name(p), None);
        for s in &p.stacks {
            let v = value.of(s);
            if v == 0 {
                continue;
            }
            for f in &s.frames {
                owner
                    .entry(folded::frame_name(f))
                    .and_modify(|o| {
                        if *o != s.bucket {
                            *o = None
                        }
                    })
                    .or_insert(s.bucket);
            }
            let line = format!("{};{}", folded::stack_line(p, s), bucket_frame(s.bucket));
            *lines.entry(line).or_default() += v;
        }
    }
    if lines.is_empty() {
        return Err(RenderError::Nothing {
            format: "svg",
            why: format!("no stack has any {} bytes to draw", value.as_str()),
        });
    }
    let mut palette = PaletteMap::default();
    for (name, b) in &owner {
        palette.insert(name, bucket_color(*b));
    }
    for b in Bucket::ALL {
        palette.insert(bucket_frame(Some(b)), bucket_color(Some(b)));
    }
    palette.insert(bucket_frame(None), SHARED);
    // inferno's root frame ("all") has an empty name.
    palette.insert("", SHARED);

    let mut opts = Options::default();
    opts.title = title(report, value);
    opts.subtitle = Some(
        "colours: v8_heap green · array_buffers orange · native_addon pink · \
         node_native blue · other sand · grey: shared by several buckets"
            .to_string(),
    );
    opts.count_name = "bytes".to_string();
    opts.name_type = "Frame:".to_string();
    opts.palette_map = Some(&mut palette);
    let mut sorted: Vec<String> = lines.into_iter().map(|(k, v)| format!("{k} {v}")).collect();
    sorted.sort();
    let mut out = Vec::new();
    flamegraph::from_lines(&mut opts, sorted.iter().map(String::as_str), &mut out).map_err(
        |source| RenderError::Io {
            format: "svg",
            source,
        },
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Frame, Mode, ProcessReport, StackReport};

    fn f(s: &str) -> Frame {
        Frame {
            addr: "0x1".into(),
            symbol: Some(s.into()),
            ..Frame::default()
        }
    }

    #[test]
    fn names_frames_buckets_and_title() {
        let mut r = Report::new(Mode::Malloc);
        r.processes.push(ProcessReport {
            pid: 9,
            comm: "node".into(),
            stacks: vec![StackReport {
                bucket: Some(Bucket::NativeAddon),
                live_bytes: 1 << 20,
                frames: vec![f("malloc"), f("addon_leak")],
                ..StackReport::default()
            }],
            ..ProcessReport::default()
        });
        let svg = String::from_utf8(render(&r, ValueKind::Live).unwrap()).unwrap();
        assert!(svg.contains("addon_leak"));
        assert!(svg.contains("[native_addon]"));
        assert!(svg.contains("node (pid 9)"));
        // native_addon's colour is used for its frames.
        assert!(svg.contains("rgb(231,84,128)"), "{svg}");
        let empty = Report::new(Mode::Malloc);
        assert!(render(&empty, ValueKind::Live).is_err());
    }

    /// XML 1.0 `Char`: no C0 control character but tab, newline and
    /// return, and not U+FFFE or U+FFFF.
    fn xml_char(c: char) -> bool {
        (!c.is_control() || matches!(c, '\t' | '\n' | '\r') || u32::from(c) >= 0x7f)
            && !matches!(c, '\u{FFFE}' | '\u{FFFF}')
    }

    /// The number of elements of a well-formed `svg`, or its first problem:
    /// a parse error, or a character XML 1.0 forbids, raw or as a `&#N;`
    /// reference (quick-xml checks neither).
    fn parse_xml(svg: &[u8]) -> Result<usize, String> {
        use quick_xml::events::Event;
        let text = std::str::from_utf8(svg).map_err(|e| e.to_string())?;
        if let Some(c) = text.chars().find(|&c| !xml_char(c)) {
            return Err(format!("character {c:?}"));
        }
        for (i, _) in text.match_indices("&#") {
            let body = &text[i + 2..text[i..].find(';').map_or(i + 2, |e| i + e)];
            let n = match body.strip_prefix('x') {
                Some(h) => u32::from_str_radix(h, 16),
                None => body.parse(),
            };
            let c = n
                .ok()
                .and_then(char::from_u32)
                .ok_or(format!("bad reference &#{body};"))?;
            if !xml_char(c) {
                return Err(format!("reference &#{body};"));
            }
        }
        let mut r = quick_xml::Reader::from_reader(svg);
        let mut buf = Vec::new();
        let mut n = 0;
        loop {
            match r.read_event_into(&mut buf).map_err(|e| e.to_string())? {
                Event::Eof => return Ok(n),
                Event::Start(e) | Event::Empty(e) => {
                    for a in e.attributes() {
                        a.map_err(|e| e.to_string())?
                            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map_err(|e| e.to_string())?;
                    }
                    n += 1;
                }
                _ => {}
            }
            buf.clear();
        }
    }

    #[test]
    fn names_with_control_characters_and_markup_stay_valid_xml() {
        let mut r = Report::new(Mode::Malloc);
        r.processes.push(ProcessReport {
            pid: 9,
            comm: "no\x01de<&>".into(),
            stacks: vec![StackReport {
                bucket: Some(Bucket::ArrayBuffers),
                live_bytes: 4096,
                frames: vec![
                    f("JS:~a\x1b[31mred\x07 <script>&amp; \"q\" 'a'"),
                    f("x\ny\rz\u{0}\u{7f}\u{9b}\u{fffe}\u{ffff}"),
                ],
                ..StackReport::default()
            }],
            ..ProcessReport::default()
        });
        let svg = render(&r, ValueKind::Live).unwrap();
        let elements = parse_xml(&svg).unwrap_or_else(|e| panic!("{e}"));
        assert!(elements > 10, "{elements}");
        let text = String::from_utf8(svg).unwrap();
        // Shown escaped, as in text output.
        assert!(text.contains("JS:~a\\x1b[31mred\\x07"), "{text}");
        assert!(!text.contains('\x1b') && !text.contains('\x01'));
    }
}
