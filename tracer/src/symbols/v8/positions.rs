//! Source positions: script offsets to line:column, and bytecode offsets to
//! script offsets, as V8 computes them.

/// Offsets of the line terminators of a source, as V8's
/// `String::CalculateLineEnds(include_ending_line = true)` makes them: LF,
/// CR not followed by LF, U+2028 and U+2029 end a line (ECMA-262
/// LineTerminatorSequence), and one end past the last character closes the
/// last line.
pub fn line_ends(src: &[u16]) -> Vec<u32> {
    let is_terminator = |c: u16, next: Option<u16>| match c {
        0x0a | 0x2028 | 0x2029 => true,
        0x0d => next != Some(0x0a),
        _ => false,
    };
    let mut ends: Vec<u32> = src
        .iter()
        .enumerate()
        .filter(|&(i, &c)| is_terminator(c, src.get(i + 1).copied()))
        .map(|(i, _)| i as u32)
        .collect();
    ends.push(src.len() as u32);
    ends
}

/// 1-based (line, column) of a script offset, as `Script::GetPositionInfo`
/// plus one (what stack traces and the perf map print). None past the end.
pub fn line_column(line_ends: &[u32], pos: u32) -> Option<(u32, u32)> {
    let line = line_ends.partition_point(|&end| end < pos);
    if line >= line_ends.len() {
        return None;
    }
    let start = if line == 0 {
        0
    } else {
        line_ends[line - 1] + 1
    };
    Some((line as u32 + 1, pos.saturating_sub(start) + 1))
}

/// One VLQ of a source position table: base-128 groups, low first, high
/// bit = more; then zig-zag (src/base/vlq.h, VLQDecode).
fn vlq(table: &[u8], at: &mut usize) -> Option<i64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *table.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(((v >> 1) as i64) ^ -((v & 1) as i64));
        }
    }
    None
}

/// The script offset of the bytecode at `offset`, from a BytecodeArray's
/// source position table (src/codegen/source-position-table.cc): pairs of
/// (code offset delta, source position delta), the first relative to
/// (kFunctionEntryBytecodeOffset = -1, 0); a negative code delta marks an
/// expression position and encodes -(delta) - 1. The answer is the last
/// entry at or before `offset` (`AbstractCode::SourcePosition`), its
/// SourcePosition's script offset (bits 1..30, stored plus one).
pub fn bytecode_script_offset(table: &[u8], offset: u32) -> Option<u32> {
    let mut at = 0;
    let mut code: i64 = -1;
    let mut source: i64 = 0;
    let mut found = None;
    while at < table.len() {
        let d = vlq(table, &mut at)?;
        code += if d >= 0 { d } else { -(d + 1) };
        source += vlq(table, &mut at)?;
        if code > i64::from(offset) {
            break;
        }
        found = Some(source);
    }
    let raw = found? as u64;
    // SourcePosition: IsExternalField bit 0 (a native/external file), then
    // ScriptOffsetField (30 bits), then InliningIdField.
    if raw & 1 != 0 {
        return None;
    }
    (((raw >> 1) & ((1 << 30) - 1)) as u32).checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    #[test]
    fn lines_end_like_v8() {
        // "a\nb\r\nc\rd\u{2028}e": ends at 1 (LF), 4 (the LF of CRLF), 6
        // (lone CR), 8 (LS), then one past the end.
        let src = units("a\nb\r\nc\rd\u{2028}e");
        let ends = line_ends(&src);
        assert_eq!(ends, vec![1, 4, 6, 8, 10]);
        assert_eq!(line_column(&ends, 0), Some((1, 1)));
        assert_eq!(line_column(&ends, 1), Some((1, 2)));
        assert_eq!(line_column(&ends, 2), Some((2, 1)));
        assert_eq!(line_column(&ends, 5), Some((3, 1)));
        assert_eq!(line_column(&ends, 9), Some((5, 1)));
        assert_eq!(line_column(&ends, 10), Some((5, 2)));
        assert_eq!(line_column(&ends, 11), None);
        assert_eq!(line_ends(&[]), vec![0]);
    }

    fn zigzag(v: i64) -> Vec<u8> {
        let mut u = ((v << 1) ^ (v >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            let b = (u & 0x7f) as u8;
            u >>= 7;
            if u == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    #[test]
    fn bytecode_offsets_to_script_offsets() {
        // Entries (code offset, script offset): (0, 10) statement,
        // (5, 300) expression, (12, 20) statement. Source positions are
        // stored as (offset + 1) << 1.
        let pos = |o: i64| (o + 1) << 1;
        let mut t = Vec::new();
        t.extend(zigzag(1)); // -1 -> 0
        t.extend(zigzag(pos(10)));
        t.extend(zigzag(-(5 + 1))); // expression, delta 5
        t.extend(zigzag(pos(300) - pos(10)));
        t.extend(zigzag(7));
        t.extend(zigzag(pos(20) - pos(300)));
        assert_eq!(bytecode_script_offset(&t, 0), Some(10));
        assert_eq!(bytecode_script_offset(&t, 4), Some(10));
        assert_eq!(bytecode_script_offset(&t, 5), Some(300));
        assert_eq!(bytecode_script_offset(&t, 11), Some(300));
        assert_eq!(bytecode_script_offset(&t, 99), Some(20));
        assert_eq!(bytecode_script_offset(&[], 3), None);
        assert_eq!(bytecode_script_offset(&[0x80], 3), None);
    }
}
