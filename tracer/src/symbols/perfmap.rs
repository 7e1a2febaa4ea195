//! V8's perf map (`node --perf-basic-prof`): one line per code object,
//! `<start hex> <size hex> <name>`, appended while the process runs
//! (V8 `PerfBasicLogger`, the format perf(1) reads from /tmp/perf-PID.map).
use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
};

use crate::report::FrameKind;

/// Never read more than this from one perf map: a process that runs for days
/// with --perf-basic-prof writes hundreds of MiB, and the report must not OOM.
pub const MAX_PERF_MAP_BYTES: u64 = 256 << 20;

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
    consumed: u64,
    entries: Vec<Entry>,
    names: String,
    pub malformed_lines: u64,
    /// Bytes of an incomplete last line (node killed mid-write, or a file cut short).
    pub partial_tail: u64,
    pub capped: bool,
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
            consumed: 0,
            entries: Vec::new(),
            names: String::new(),
            malformed_lines: 0,
            partial_tail: 0,
            capped: false,
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
        if self.consumed >= self.limit {
            self.capped = true;
            return false;
        }
        let mut buf = Vec::new();
        let read = self
            .file
            .seek(SeekFrom::Start(self.consumed))
            .and_then(|_| {
                (&mut self.file)
                    .take(self.limit - self.consumed)
                    .read_to_end(&mut buf)
            });
        if read.is_err() {
            return false;
        }
        if self.consumed + buf.len() as u64 >= self.limit {
            self.capped = true;
        }
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.partial_tail = (buf.len() - complete) as u64;
        let before = self.entries.len();
        for line in buf[..complete].split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            match std::str::from_utf8(line).ok().and_then(parse_line) {
                Some((start, size, name)) => {
                    let order = self.entries.len() as u32;
                    self.entries.push(Entry {
                        start,
                        size,
                        order,
                        name_start: self.names.len() as u32,
                        name_len: name.len() as u32,
                    });
                    self.names.push_str(name);
                }
                None => self.malformed_lines += 1,
            }
        }
        self.consumed += complete as u64;
        if self.entries.len() != before {
            self.entries.sort_unstable_by_key(|e| (e.start, e.order));
            true
        } else {
            false
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
        let (file, line) = parse_location(name);
        Some(JsSymbol {
            name: name.to_string(),
            file,
            line,
            kind: kind_of(name),
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
        out
    }
}

/// `<start hex> <size hex> <name>`; hex with or without `0x`; the name may contain spaces.
fn parse_line(line: &str) -> Option<(u64, u64, &str)> {
    let line = line.trim_end_matches('\r');
    let (start, rest) = line.split_once(' ')?;
    let (size, name) = rest.split_once(' ')?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let (start, size) = (hex(start)?, hex(size)?);
    let name = name.trim();
    (!name.is_empty() && start.checked_add(size).is_some()).then_some((start, size, name))
}

/// V8 names JS code `<kind>:<tier><function> <script>:<line>:<column>`
/// (e.g. `JS:*handleRequest /app/app.js:42:20`; older V8: `LazyCompile:*f /a.js:42`).
fn parse_location(name: &str) -> (Option<String>, Option<u32>) {
    let Some((_, loc)) = name.rsplit_once(' ') else {
        return (None, None);
    };
    let mut parts = loc.rsplitn(3, ':');
    let last = parts.next();
    let mid = parts.next();
    let head = parts.next();
    let num = |s: Option<&str>| s.and_then(|s| s.parse::<u32>().ok());
    match (num(last), num(mid), head) {
        // file:line:column
        (Some(_), Some(line), Some(file)) if !file.is_empty() => {
            (Some(file.to_string()), Some(line))
        }
        // file:line
        (Some(line), None, _) if mid.is_some_and(|m| !m.is_empty()) => {
            let file = match head {
                Some(h) => format!("{h}:{}", mid.unwrap_or_default()),
                None => mid.unwrap_or_default().to_string(),
            };
            (Some(file), Some(line))
        }
        _ => (None, None),
    }
}

/// JS functions versus V8's own generated code (builtins, bytecode handlers,
/// IC stubs), which the perf map lists too.
fn kind_of(name: &str) -> FrameKind {
    const JS: &[&str] = &[
        "JS:",
        "LazyCompile:",
        "Function:",
        "Script:",
        "Eval:",
        "InterpretedFunction:",
    ];
    if JS.iter().any(|p| name.starts_with(p)) {
        FrameKind::Js
    } else {
        FrameKind::Native
    }
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
              0x3000 10 LazyCompile:~handleRequest /app/app.js:42\n",
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
}
