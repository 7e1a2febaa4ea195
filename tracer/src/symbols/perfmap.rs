//! V8's perf map (`node --perf-basic-prof`): one line per code object,
//! `<start hex> <size hex> <name>`, appended while the process runs
//! (V8 `PerfBasicLogger`, the format perf(1) reads from /tmp/perf-PID.map).
//!
//! The traced process writes this file, so nothing in it is trusted to be
//! small: it is read in chunks as it grows (never a whole line or file at
//! once), each name is cut at [`MAX_SYMBOL_BYTES`], and reading stops at
//! [`MAX_PERF_MAP_BYTES`] read, [`MAX_PERF_MAP_ENTRIES`] entries or
//! [`MAX_PERF_MAP_NAME_BYTES`] of names. What one map can cost is then about
//! 1 Mi entries x 32 B + 32 MiB of names = 64 MiB, whatever the file holds.
use std::{fs::File, os::unix::fs::FileExt};

use super::v8name;
use crate::report::FrameKind;

/// Never read more than this from one perf map: a process that runs for days
/// with --perf-basic-prof writes hundreds of MiB.
pub const MAX_PERF_MAP_BYTES: u64 = 256 << 20;

/// Longest name kept; longer ones end in [`TRUNCATED_MARKER`]. V8's own
/// names are far shorter (a function name plus a script path); 1 KiB keeps
/// any real one whole.
pub const MAX_SYMBOL_BYTES: usize = 1024;

/// Appended to a name cut at [`MAX_SYMBOL_BYTES`].
pub const TRUNCATED_MARKER: &str = "…[truncated]";

/// Most entries kept from one map. A node process has tens of thousands of
/// live code objects; the map keeps every one ever compiled, so a long run
/// gets to hundreds of thousands. The DaemonSet's agent holds one map per
/// node process within a 512 MiB limit: 1 Mi entries of 32 bytes is 32 MiB.
pub const MAX_PERF_MAP_ENTRIES: usize = 1 << 20;

/// Most bytes of names kept from one map (V8 names average under 100 bytes,
/// so this holds some 300k of them).
pub const MAX_PERF_MAP_NAME_BYTES: usize = 32 << 20;

/// How much of a line is kept while it is read: the two hex fields (at most
/// `0x` + 16 digits each, two spaces) and the longest name kept, plus one
/// UTF-8 sequence that the cut may split.
const LINE_KEEP: usize = 2 * 18 + 2 + MAX_SYMBOL_BYTES + 4;

/// Bytes read per read(2).
const CHUNK: usize = 64 << 10;

#[derive(Clone, Copy, Debug)]
struct Entry {
    start: u64,
    size: u64,
    /// Line order: a later line for the same address wins (code space is reused after GC).
    order: u32,
    name_start: u32,
    name_len: u32,
}

/// A perf map file kept open, so it can be re-read after the process died or
/// after its container's /tmp went away.
pub struct PerfMap {
    /// The path as the process sees it, e.g. `/tmp/perf-1.map` in a container.
    pub path: String,
    file: File,
    limit: u64,
    /// Bytes read from the file so far.
    pos: u64,
    /// The line being read: its first LINE_KEEP bytes, and its length so far.
    line: Vec<u8>,
    line_len: u64,
    entries: Vec<Entry>,
    names: String,
    pub malformed_lines: u64,
    /// Names cut at MAX_SYMBOL_BYTES.
    pub long_names: u64,
    /// Bytes of an incomplete last line (node killed mid-write, or a file cut short).
    pub partial_tail: u64,
    /// Stopped at the read limit.
    pub capped: bool,
    /// Stopped at MAX_PERF_MAP_ENTRIES or MAX_PERF_MAP_NAME_BYTES.
    pub full: bool,
}

/// What a perf map entry says about an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsSymbol {
    pub name: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub kind: FrameKind,
}

impl PerfMap {
    pub fn open(file: File, path: String) -> PerfMap {
        PerfMap::with_limit(file, path, MAX_PERF_MAP_BYTES)
    }

    pub fn with_limit(file: File, path: String, limit: u64) -> PerfMap {
        let mut m = PerfMap {
            path,
            file,
            limit,
            pos: 0,
            line: Vec::new(),
            line_len: 0,
            entries: Vec::new(),
            names: String::new(),
            malformed_lines: 0,
            long_names: 0,
            partial_tail: 0,
            capped: false,
            full: false,
        };
        m.reload();
        m
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reads what was appended since the last read. Returns true if entries were added.
    pub fn reload(&mut self) -> bool {
        let before = self.entries.len();
        let mut buf = vec![0u8; CHUNK];
        while !self.full {
            if self.pos >= self.limit {
                self.capped = true;
                break;
            }
            let want = CHUNK.min((self.limit - self.pos) as usize);
            let n = match self.file.read_at(&mut buf[..want], self.pos) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            self.pos += n as u64;
            self.take(&buf[..n]);
        }
        self.partial_tail = self.line_len;
        if self.entries.len() != before {
            self.entries.sort_unstable_by_key(|e| (e.start, e.order));
            true
        } else {
            false
        }
    }

    /// Feeds bytes read: complete lines are parsed, the rest is kept (its
    /// first LINE_KEEP bytes) until its newline arrives.
    fn take(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.full {
            let (part, done) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], Some(i + 1)),
                None => (bytes, None),
            };
            let room = LINE_KEEP.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            self.line_len += part.len() as u64;
            let Some(next) = done else { return };
            let line = std::mem::take(&mut self.line);
            let cut = self.line_len > line.len() as u64;
            self.line_len = 0;
            if !line.is_empty() {
                self.add_line(&line, cut);
            }
            bytes = &bytes[next..];
        }
    }

    fn add_line(&mut self, line: &[u8], cut: bool) {
        let Some((start, size, name)) = parse_line(line, cut) else {
            self.malformed_lines += 1;
            return;
        };
        let (name, long) = bounded_name(name);
        if long {
            self.long_names += 1;
        }
        if self.entries.len() >= MAX_PERF_MAP_ENTRIES
            || self.names.len() + name.len() > MAX_PERF_MAP_NAME_BYTES
        {
            self.full = true;
            return;
        }
        let order = self.entries.len() as u32;
        self.entries.push(Entry {
            start,
            size,
            order,
            name_start: self.names.len() as u32,
            name_len: name.len() as u32,
        });
        self.names.push_str(name);
        if long {
            self.names.push_str(TRUNCATED_MARKER);
            self.entries.last_mut().expect("just pushed").name_len += TRUNCATED_MARKER.len() as u32;
        }
    }

    /// The newest code object containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<JsSymbol> {
        let idx = self.entries.partition_point(|e| e.start <= addr);
        // Code objects rarely overlap; a short look back finds the ones that do.
        let e = self.entries[..idx]
            .iter()
            .rev()
            .take(64)
            .filter(|e| addr < e.start.saturating_add(e.size.max(1)))
            .max_by_key(|e| e.order)?;
        let name = &self.names[e.name_start as usize..(e.name_start + e.name_len) as usize];
        let (file, line) = v8name::location(name);
        Some(JsSymbol {
            name: name.to_string(),
            file,
            line,
            kind: v8name::kind_of(name),
        })
    }

    /// Problems worth telling the user, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.capped {
            out.push(format!(
                "perf map {} truncated: read only its first {} bytes",
                self.path, self.limit
            ));
        }
        if self.full {
            out.push(format!(
                "perf map {} truncated: kept only its first {} entries ({} bytes of names)",
                self.path,
                self.entries.len(),
                self.names.len()
            ));
        }
        if self.partial_tail > 0 {
            out.push(format!(
                "perf map {} truncated: last line incomplete ({} bytes ignored)",
                self.path, self.partial_tail
            ));
        }
        if self.malformed_lines > 0 {
            out.push(format!(
                "perf map {} malformed: {} lines skipped",
                self.path, self.malformed_lines
            ));
        }
        if self.long_names > 0 {
            out.push(format!(
                "perf map {}: {} names longer than {MAX_SYMBOL_BYTES} bytes cut short",
                self.path, self.long_names
            ));
        }
        out
    }
}

/// `<start hex> <size hex> <name>`; hex with or without `0x`; the name is
/// the rest of the line, spaces included. `cut`: the line was longer than
/// what was kept, so its end may split a UTF-8 sequence.
fn parse_line(line: &[u8], cut: bool) -> Option<(u64, u64, &str)> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut fields = line.splitn(3, |&b| b == b' ');
    let hex = |s: &[u8]| {
        let s = std::str::from_utf8(s).ok()?;
        u64::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
    };
    let start = hex(fields.next()?)?;
    let size = hex(fields.next()?)?;
    let name = fields.next()?;
    let name = match std::str::from_utf8(name) {
        Ok(s) => s,
        // Only an incomplete last sequence, and only where we cut the line.
        Err(e) if cut && e.error_len().is_none() => {
            std::str::from_utf8(&name[..e.valid_up_to()]).ok()?
        }
        Err(_) => return None,
    };
    let name = if cut { name.trim_start() } else { name.trim() };
    (!name.is_empty() && start.checked_add(size).is_some()).then_some((start, size, name))
}

/// The name cut to MAX_SYMBOL_BYTES (on a character boundary), and whether it was.
fn bounded_name(name: &str) -> (&str, bool) {
    if name.len() <= MAX_SYMBOL_BYTES {
        return (name, false);
    }
    let mut end = MAX_SYMBOL_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    (&name[..end], true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn map_of(text: &[u8], limit: u64) -> PerfMap {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(text).unwrap();
        PerfMap::with_limit(f, "/tmp/perf-1.map".into(), limit)
    }

    #[test]
    fn node20_lines() {
        let m = map_of(
            b"7f20167c5b80 160 JS:*myLeakyFunction /tmp/pmtest/a.js:1:25\n\
              18c4000 300 Builtin:DeoptimizationEntry_Eager\n\
              0x3000 10 LazyCompile:~handleRequest /app/app.js:42\n\
              7f7fbc006a80 80 JS:*get foo /var/tmp/oh dir with space/app.js:1:18\n",
            1 << 20,
        );
        let s = m.lookup(0x7f20167c5b80 + 0x15f).unwrap();
        assert_eq!(s.name, "JS:*myLeakyFunction /tmp/pmtest/a.js:1:25");
        assert_eq!(
            (s.file.as_deref(), s.line, s.kind),
            (Some("/tmp/pmtest/a.js"), Some(1), FrameKind::Js)
        );
        assert!(m.lookup(0x7f20167c5b80 + 0x160).is_none());
        let b = m.lookup(0x18c4000).unwrap();
        assert_eq!((b.kind, b.file), (FrameKind::Native, None));
        let l = m.lookup(0x3005).unwrap();
        assert_eq!((l.file.as_deref(), l.line), (Some("/app/app.js"), Some(42)));
        let g = m.lookup(0x7f7fbc006a80).unwrap();
        assert_eq!(
            (g.name.as_str(), g.file.as_deref(), g.line),
            (
                "JS:*get foo /var/tmp/oh dir with space/app.js:1:18",
                Some("/var/tmp/oh dir with space/app.js"),
                Some(1)
            )
        );
        assert!(m.problems().is_empty());
    }

    #[test]
    fn later_entry_wins_on_reused_code_space() {
        let m = map_of(
            b"1000 100 JS:~old /a.js:1:1\n1000 100 JS:~new /a.js:2:1\n",
            1 << 20,
        );
        assert_eq!(m.lookup(0x1010).unwrap().name, "JS:~new /a.js:2:1");
    }

    #[test]
    fn garbage_and_truncation_are_reported_not_fatal() {
        let m = map_of(
            b"zzzz 10 nope\n\xff\xfe\n1000 10 JS:~ok /a.js:3:1\n1000\n  \n2000 10 JS:~cut /a.j",
            1 << 20,
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m.malformed_lines, 4);
        assert_eq!(m.partial_tail, 20);
        assert_eq!(
            m.problems(),
            vec![
                "perf map /tmp/perf-1.map truncated: last line incomplete (20 bytes ignored)"
                    .to_string(),
                "perf map /tmp/perf-1.map malformed: 4 lines skipped".to_string(),
            ]
        );
    }

    #[test]
    fn size_cap_stops_reading() {
        let mut text = Vec::new();
        for i in 0..1000u64 {
            text.extend_from_slice(
                format!("{:x} 10 JS:~f{i} /a.js:{i}:1\n", 0x1000 + i * 0x10).as_bytes(),
            );
        }
        let m = map_of(&text, 4096);
        assert!(m.capped && m.len() < 1000 && !m.is_empty());
        assert!(m.problems()[0].contains("truncated: read only its first 4096 bytes"));
    }

    #[test]
    fn grows_incrementally() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"1000 10 JS:~a /a.js:1:1\n2000 10 JS:~b /a")
            .unwrap();
        let mut m = PerfMap::open(File::open(f.path()).unwrap(), "p".into());
        assert!(m.lookup(0x2000).is_none());
        f.write_all(b".js:2:1\n").unwrap();
        assert!(m.reload());
        assert_eq!(m.lookup(0x2000).unwrap().line, Some(2));
        assert_eq!(m.partial_tail, 0);
        assert!(!m.reload());
    }

    #[test]
    fn a_huge_name_is_cut_at_1_kib_with_a_marker() {
        // 10 MB on one line, then a normal one: both kept, the first cut.
        let mut text = b"1000 100 JS:~".to_vec();
        text.extend(std::iter::repeat_n(b'x', 10_000_000));
        text.extend_from_slice(b" /a.js:1:1\n2000 10 JS:~next /b.js:2:1\n");
        let m = map_of(&text, 1 << 30);
        let s = m.lookup(0x1000).unwrap();
        assert_eq!(s.name.len(), MAX_SYMBOL_BYTES + TRUNCATED_MARKER.len());
        assert!(s.name.starts_with("JS:~xxx") && s.name.ends_with("x…[truncated]"));
        assert_eq!((s.kind, s.file, s.line), (FrameKind::Js, None, None));
        assert_eq!(m.lookup(0x2000).unwrap().name, "JS:~next /b.js:2:1");
        // What is kept is bounded, not the 10 MB.
        assert!(m.names.len() < 2 * MAX_SYMBOL_BYTES, "{}", m.names.len());
        assert_eq!(
            m.problems(),
            vec!["perf map /tmp/perf-1.map: 1 names longer than 1024 bytes cut short"]
        );
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        // 'é' is 2 bytes: after the 5 bytes of `JS:~x`, one straddles byte 1024.
        let name = format!("JS:~x{}", "é".repeat(1019));
        let m = map_of(format!("1000 10 {name}\n").as_bytes(), 1 << 20);
        let s = m.lookup(0x1000).unwrap().name;
        let kept = s.strip_suffix(TRUNCATED_MARKER).unwrap();
        assert_eq!(kept.len(), MAX_SYMBOL_BYTES - 1);
        assert!(name.starts_with(kept));
        // And a line cut while reading (beyond LINE_KEEP) in mid-sequence.
        let long = format!("1000 10 JS:~{}\n", "é".repeat(5000));
        let m = map_of(long.as_bytes(), 1 << 20);
        assert!(m.lookup(0x1000).unwrap().name.ends_with("é…[truncated]"));
    }

    #[test]
    fn an_incomplete_huge_line_is_not_buffered() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"1000 10 JS:~a /a.js:1:1\n3000 10 JS:~")
            .unwrap();
        f.write_all(&vec![b'y'; 3 << 20]).unwrap();
        let mut m = PerfMap::open(File::open(f.path()).unwrap(), "p".into());
        assert_eq!(m.len(), 1);
        assert_eq!(m.partial_tail, (3 << 20) + 12);
        assert!(m.line.len() <= LINE_KEEP);
        // Completed later: read on from where it stopped, not from its start.
        f.write_all(b" /c.js:3:1\n").unwrap();
        assert!(m.reload());
        assert!(m.lookup(0x3000).unwrap().name.ends_with("yyy…[truncated]"));
        assert_eq!(m.pos, f.as_file().metadata().unwrap().len());
    }

    #[test]
    fn entry_and_name_caps_stop_reading() {
        let mut text = Vec::new();
        let n = MAX_PERF_MAP_ENTRIES + 10;
        for i in 0..n as u64 {
            text.extend_from_slice(format!("{:x} 1 f\n", i).as_bytes());
        }
        let m = map_of(&text, u64::MAX);
        assert_eq!(m.len(), MAX_PERF_MAP_ENTRIES);
        assert!(m.full);
        assert_eq!(
            m.problems(),
            vec![format!(
                "perf map /tmp/perf-1.map truncated: kept only its first {MAX_PERF_MAP_ENTRIES} entries ({MAX_PERF_MAP_ENTRIES} bytes of names)"
            )]
        );
        // Names: 40000 names of 1 KiB reach 32 MiB first.
        let mut text = Vec::new();
        let name = "n".repeat(MAX_SYMBOL_BYTES);
        for i in 0..40_000u64 {
            text.extend_from_slice(format!("{:x} 1 {name}\n", i).as_bytes());
        }
        let m = map_of(&text, u64::MAX);
        assert_eq!(m.len(), MAX_PERF_MAP_NAME_BYTES / MAX_SYMBOL_BYTES);
        assert!(m.full);
    }
}
