//! pprof output: a gzipped `perftools.profiles.Profile` protobuf, readable by
//! `go tool pprof`, Pyroscope/Grafana and speedscope.
//!
//! The messages are prost derives written by hand (no protoc on the build
//! machines); tags follow github.com/google/pprof/proto/profile.proto exactly.
//! Each sample carries four values, in this order: inuse_space (live bytes),
//! inuse_objects (live allocations), alloc_space (total bytes), alloc_objects
//! (total allocations); `inuse_space` is the default. Samples are labelled
//! with `bucket` and `comm` (strings) and `pid` (number). Locations keep their
//! real addresses, leaf first as pprof expects (the model's order too).
//! Mappings are one per (process, module); their `build_id` comes from
//! `Report::build_ids` and is empty when unknown. Their address range is not
//! in the model, so `memory_start`/`memory_limit` are 0: every location is
//! already symbolized (`has_functions`), so no consumer needs the range.
use std::{collections::HashMap, io::Write};

use flate2::{write::GzEncoder, Compression};
use prost::Message;

use super::{Frame, FrameKind, RenderError, Report};

#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

/// A location is its process, address and (function, line) of each inlined frame.
type LocationKey = (u32, u64, Vec<(u64, i64)>);

/// Interns strings, functions, mappings and locations into their tables.
#[derive(Default)]
struct Tables {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64, i64), u64>,
    mappings: HashMap<(u32, String), u64>,
    locations: HashMap<LocationKey, u64>,
}

impl Tables {
    fn new() -> Tables {
        let mut t = Tables::default();
        // profile.proto: string_table[0] must be "".
        t.string("");
        t
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn value_type(&mut self, ty: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.string(ty),
            unit: self.string(unit),
        }
    }

    fn mapping(&mut self, pid: u32, module: &str, build_id: Option<&str>) -> u64 {
        if let Some(&id) = self.mappings.get(&(pid, module.to_string())) {
            return id;
        }
        let id = self.profile.mapping.len() as u64 + 1;
        let filename = self.string(module);
        let build_id = self.string(build_id.unwrap_or(""));
        self.profile.mapping.push(Mapping {
            id,
            filename,
            build_id,
            has_functions: true,
            ..Mapping::default()
        });
        self.mappings.insert((pid, module.to_string()), id);
        id
    }

    fn function(&mut self, f: &Frame) -> u64 {
        let name = self.string(&function_name(f));
        let system_name = self.string(f.symbol.as_deref().unwrap_or(""));
        // JS functions are named with their script; native ones with the
        // source file when DWARF gave it, else their module.
        let file = f.file.as_deref().or(f.module.as_deref()).unwrap_or("");
        let filename = self.string(file);
        let key = (name, system_name, filename);
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        self.profile.function.push(Function {
            id,
            name,
            system_name,
            filename,
            start_line: 0,
        });
        self.functions.insert(key, id);
        id
    }

    /// One location for an address: `frames` are the functions inlined at it,
    /// innermost first, the last being the real caller (profile.proto: "the
    /// last entry represents the caller into which the preceding entries
    /// were inlined").
    fn location(&mut self, pid: u32, frames: &[Frame], report: &Report) -> u64 {
        let f = &frames[0];
        let address = parse_addr(&f.addr);
        let line: Vec<Line> = frames
            .iter()
            .map(|g| Line {
                function_id: self.function(g),
                line: i64::from(g.line.unwrap_or(0)),
            })
            .collect();
        let key = (
            pid,
            address,
            line.iter().map(|l| (l.function_id, l.line)).collect(),
        );
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let mapping_id = match &f.module {
            Some(m) => {
                let bid = report.build_ids.get(m).map(String::as_str);
                self.mapping(pid, m, bid)
            }
            None => 0,
        };
        if let Some(m) = mapping_id.checked_sub(1) {
            let m = &mut self.profile.mapping[m as usize];
            m.has_filenames |= frames.iter().any(|g| g.file.is_some());
            m.has_line_numbers |= frames.iter().any(|g| g.line.is_some());
            m.has_inline_frames |= frames.len() > 1;
        }
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            mapping_id,
            address,
            line,
            is_folded: false,
        });
        self.locations.insert(key, id);
        id
    }
}

/// Splits a stack (innermost first) into the frames of each address. The
/// symbolizer expands an address inside inlined code into several frames
/// with that same address and different functions; equal address AND equal
/// function is recursion through one call site, two real frames.
fn by_address(frames: &[Frame]) -> Vec<&[Frame]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=frames.len() {
        let split = i == frames.len() || {
            let (a, b) = (&frames[i - 1], &frames[i]);
            a.addr != b.addr || a.module != b.module || a.symbol == b.symbol
        };
        if split {
            out.push(&frames[start..i]);
            start = i;
        }
    }
    out
}

/// pprof shows `name`; unsymbolized frames keep their module and address so
/// that two of them are never merged into one function.
fn function_name(f: &Frame) -> String {
    match (f.kind, &f.symbol) {
        (_, Some(s)) => s.clone(),
        (FrameKind::Jit, None) => format!("[JIT] {}", f.addr),
        (_, None) => f.display_name(),
    }
}

fn parse_addr(s: &str) -> u64 {
    let hex = s.trim_start_matches("0x").trim_start_matches("0X");
    u64::from_str_radix(hex, 16).unwrap_or(0)
}

/// Builds the (uncompressed) profile message.
pub fn profile(report: &Report) -> Profile {
    let mut t = Tables::new();
    let types = [
        ("inuse_space", "bytes"),
        ("inuse_objects", "count"),
        ("alloc_space", "bytes"),
        ("alloc_objects", "count"),
    ];
    t.profile.sample_type = types.iter().map(|(a, b)| t.value_type(a, b)).collect();
    t.profile.default_sample_type = t.string("inuse_space");
    t.profile.period_type = Some(t.value_type("space", "bytes"));
    t.profile.period = 1;
    t.profile.duration_nanos = (report.duration_secs * 1e9) as i64;
    let comment = format!("offheap {} mode", report.mode.as_str());
    let comment = t.string(&comment);
    t.profile.comment.push(comment);
    let (k_bucket, k_pid, k_comm) = (t.string("bucket"), t.string("pid"), t.string("comm"));
    for p in &report.processes {
        // pprof takes the first mapping as the main binary ("File: node").
        if !p.exe.is_empty() {
            let bid = report.build_ids.get(&p.exe).map(String::as_str);
            t.mapping(p.pid, &p.exe, bid);
        }
        let comm = t.string(&p.comm);
        for s in &p.stacks {
            let location_id = by_address(&s.frames)
                .into_iter()
                .map(|group| t.location(p.pid, group, report))
                .collect();
            let mut label = vec![
                Label {
                    key: k_pid,
                    num: i64::from(p.pid),
                    ..Label::default()
                },
                Label {
                    key: k_comm,
                    str: comm,
                    ..Label::default()
                },
            ];
            if let Some(b) = s.bucket {
                let str = t.string(b.as_str());
                label.push(Label {
                    key: k_bucket,
                    str,
                    ..Label::default()
                });
            }
            let v = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
            t.profile.sample.push(Sample {
                location_id,
                value: vec![
                    v(s.live_bytes),
                    v(s.live_allocs),
                    v(s.total_bytes),
                    v(s.total_allocs),
                ],
                label,
            });
        }
    }
    t.profile
}

/// The gzipped protobuf, as `go tool pprof` reads it. Compressed at the
/// fastest level, as Go's own profile writer does (gzip.BestSpeed in
/// github.com/google/pprof/profile.Write): deflate is otherwise most of the
/// time spent on a big report.
pub fn render(report: &Report) -> Result<Vec<u8>, RenderError> {
    let raw = profile(report).encode_to_vec();
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&raw)
        .and_then(|_| gz.finish())
        .map_err(|source| RenderError::Io {
            format: "pprof",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Bucket, Mode, ProcessReport, StackReport};
    use std::io::Read;

    fn frame(addr: &str, sym: Option<&str>, module: &str) -> Frame {
        Frame {
            addr: addr.into(),
            symbol: sym.map(String::from),
            module: Some(module.into()),
            ..Frame::default()
        }
    }

    #[test]
    fn roundtrip_keeps_values_order_and_tables() {
        let mut r = Report::new(Mode::Malloc);
        r.build_ids.insert("/usr/bin/node".into(), "abcd".into());
        r.processes.push(ProcessReport {
            pid: 7,
            comm: "node".into(),
            stacks: vec![StackReport {
                bucket: Some(Bucket::ArrayBuffers),
                live_bytes: 4096,
                live_allocs: 2,
                total_bytes: 8192,
                total_allocs: 5,
                frames: vec![
                    frame("0x1000", Some("malloc"), "/lib/libc.so.6"),
                    frame("0x2000", None, "/usr/bin/node"),
                ],
                ..StackReport::default()
            }],
            ..ProcessReport::default()
        });
        let gz = render(&r).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        let p = Profile::decode(&raw[..]).unwrap();
        assert_eq!(p.string_table[0], "");
        assert_eq!(p.sample[0].value, vec![4096, 2, 8192, 5]);
        assert_eq!(p.sample[0].location_id, vec![1, 2]);
        assert_eq!(p.location[1].address, 0x2000);
        let m = &p.mapping[(p.location[1].mapping_id - 1) as usize];
        assert_eq!(p.string_table[m.build_id as usize], "abcd");
        assert_eq!(p.string_table[m.filename as usize], "/usr/bin/node");
        let f = &p.function[(p.location[1].line[0].function_id - 1) as usize];
        assert_eq!(p.string_table[f.name as usize], "node@0x2000");
    }

    #[test]
    fn inlined_frames_share_a_location_recursion_does_not() {
        let frames = vec![
            frame("0x10", Some("inlined_helper"), "/a.so"),
            frame("0x10", Some("caller"), "/a.so"),
            frame("0x20", Some("rec"), "/a.so"),
            frame("0x20", Some("rec"), "/a.so"),
            frame("0x30", Some("main"), "/a.so"),
        ];
        let groups: Vec<usize> = by_address(&frames).iter().map(|g| g.len()).collect();
        assert_eq!(groups, vec![2, 1, 1, 1]);
        let mut r = Report::new(Mode::Malloc);
        r.processes.push(ProcessReport {
            pid: 1,
            stacks: vec![StackReport {
                live_bytes: 1,
                frames,
                ..StackReport::default()
            }],
            ..ProcessReport::default()
        });
        let p = profile(&r);
        assert_eq!(p.sample[0].location_id, vec![1, 2, 2, 3]);
        let names: Vec<&str> = p.location[0]
            .line
            .iter()
            .map(|l| p.string_table[p.function[l.function_id as usize - 1].name as usize].as_str())
            .collect();
        assert_eq!(names, ["inlined_helper", "caller"]);
        assert!(p.mapping[0].has_inline_frames);
    }
}
