//! Formatting shared by the text outputs (text report, live view, diff):
//! byte sizes, durations, sparklines, and cleaning of names for a terminal.

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

/// Formats nanoseconds, e.g. `1.2ms`, `3.0s`.
pub fn human_ns(ns: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "µs"),
        (1, "ns"),
    ];
    for (scale, unit) in UNITS {
        if ns >= scale && scale > 1 {
            return format!("{:.1}{unit}", ns as f64 / scale as f64);
        }
    }
    format!("{ns}ns")
}

/// Escapes control characters (ESC, newlines, C1 codes...) as `\xNN`, and
/// the noncharacters U+FFFE and U+FFFF as `\u{fffe}`: a name comes from
/// what the traced process writes (its perf map, its heap), and must neither
/// drive the terminal nor break a line-based output, nor an SVG: what XML
/// 1.0 forbids is exactly C0 controls but tab/LF/CR, and U+FFFE/U+FFFF.
/// Every control character (Unicode category Cc) is below U+00A0, so two hex
/// digits do.
pub fn clean(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else if matches!(c, '\u{FFFE}' | '\u{FFFF}') {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// Eight-level sparkline of a series, scaled between its own min and max.
pub fn sparkline(values: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let (Some(&lo), Some(&hi)) = (values.iter().min(), values.iter().max()) else {
        return String::new();
    };
    values
        .iter()
        .map(|&v| {
            let i = if hi == lo {
                0
            } else {
                ((v - lo) as u128 * 7 / (hi - lo) as u128) as usize
            };
            BARS[i]
        })
        .collect()
}

/// `+1.5 MiB`, `-512 B`, `0 B`.
pub fn signed_bytes(d: i64) -> String {
    let sign = match d.signum() {
        1 => "+",
        -1 => "-",
        _ => "",
    };
    format!("{sign}{}", human_bytes(d.unsigned_abs()))
}
