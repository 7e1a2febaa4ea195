//! The Report model: what every mode produces and every output renders.
//!
//! JSON contract `offheap.report.v1`: later versions add fields, never rename or
//! remove these. Optional fields that a mode does not fill are omitted or null.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::proc::limits::{FlagSource, MemoryLimits, SizeFlag};

pub const SCHEMA: &str = "offheap.report.v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Exact: uprobes on every malloc-family call of the target (slow, precise).
    Malloc,
    /// Cheap: page faults and mapping changes; `live_bytes` are resident bytes.
    #[default]
    Resident,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Malloc => "malloc",
            Mode::Resident => "resident",
        }
    }
}

/// Where memory lives, as a Node engineer thinks of it. Rules: `classify.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    V8Heap,
    ArrayBuffers,
    NativeAddon,
    NodeNative,
    Other,
}

impl Bucket {
    pub const ALL: [Bucket; 5] = [
        Bucket::V8Heap,
        Bucket::ArrayBuffers,
        Bucket::NativeAddon,
        Bucket::NodeNative,
        Bucket::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::V8Heap => "v8_heap",
            Bucket::ArrayBuffers => "array_buffers",
            Bucket::NativeAddon => "native_addon",
            Bucket::NodeNative => "node_native",
            Bucket::Other => "other",
        }
    }

    pub fn is_off_heap(self) -> bool {
        self != Bucket::V8Heap
    }
}

/// Bytes per bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buckets {
    pub v8_heap: u64,
    pub array_buffers: u64,
    pub native_addon: u64,
    pub node_native: u64,
    pub other: u64,
}

impl Buckets {
    pub fn get(&self, b: Bucket) -> u64 {
        match b {
            Bucket::V8Heap => self.v8_heap,
            Bucket::ArrayBuffers => self.array_buffers,
            Bucket::NativeAddon => self.native_addon,
            Bucket::NodeNative => self.node_native,
            Bucket::Other => self.other,
        }
    }

    pub fn get_mut(&mut self, b: Bucket) -> &mut u64 {
        match b {
            Bucket::V8Heap => &mut self.v8_heap,
            Bucket::ArrayBuffers => &mut self.array_buffers,
            Bucket::NativeAddon => &mut self.native_addon,
            Bucket::NodeNative => &mut self.node_native,
            Bucket::Other => &mut self.other,
        }
    }

    pub fn off_heap(&self) -> u64 {
        self.array_buffers + self.native_addon + self.node_native + self.other
    }

    pub fn total(&self) -> u64 {
        self.v8_heap + self.off_heap()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    /// Machine code of a mapped ELF module.
    #[default]
    Native,
    /// A JavaScript function, named by V8's perf map.
    Js,
    /// JIT code with no perf map entry: shown as `[JIT]` with its address.
    Jit,
    /// No code: the point where a stack of work run on libuv's threadpool
    /// (the worker's frames, above) goes on with the stack that queued the
    /// work (below): the frame `[libuv threadpool]` (`Frame::async_marker`).
    Async,
}

/// The name of the `FrameKind::Async` frame.
pub const ASYNC_FRAME: &str = "[libuv threadpool]";

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    /// Hex address, e.g. "0x7f3a12345678".
    pub addr: String,
    pub symbol: Option<String>,
    /// Path of the module (ELF file or perf map) the address falls in.
    pub module: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    #[serde(default)]
    pub kind: FrameKind,
    /// The package of the addon this frame's module belongs to (the
    /// symbolizer applies classify/addon.rs). Not in the JSON: a stack says
    /// it once, as `StackReport::addon`.
    #[serde(skip)]
    pub addon: Option<String>,
}

impl Frame {
    pub fn unknown(addr: u64) -> Frame {
        Frame {
            addr: format!("{addr:#x}"),
            ..Frame::default()
        }
    }

    /// The frame of `tracer_common::ASYNC_MARKER` in a stack (see
    /// `FrameKind::Async`).
    pub fn async_marker() -> Frame {
        Frame {
            addr: format!("{:#x}", tracer_common::ASYNC_MARKER),
            symbol: Some(ASYNC_FRAME.to_string()),
            kind: FrameKind::Async,
            ..Frame::default()
        }
    }

    /// A short human name: symbol, else `module+0x…`, else the address.
    pub fn display_name(&self) -> String {
        match (&self.symbol, &self.module) {
            (Some(s), _) => s.clone(),
            (None, Some(m)) => format!("{}@{}", m.rsplit('/').next().unwrap_or(m), self.addr),
            (None, None) => self.addr.clone(),
        }
    }
}

/// The frames that tell a person who allocated: from the first frame past
/// the allocator machinery (libc, the loader, libstdc++'s operator new),
/// which is the same for every stack and names no culprit. For one-line
/// summaries (live view, OOM log line); reports keep every frame.
pub fn telling_frames(frames: &[Frame]) -> &[Frame] {
    let machinery = |f: &Frame| {
        let module = f.module.as_deref().unwrap_or("");
        let file = module.rsplit('/').next().unwrap_or(module);
        file.starts_with("libc.so") || file.starts_with("ld-linux") || file.starts_with("libstdc++")
    };
    let start = frames.iter().position(|f| !machinery(f)).unwrap_or(0);
    &frames[start..]
}

/// For a stack of threadpool work: the frame that tells who queued the
/// work, past the `[libuv threadpool]` marker: the first JS frame of the
/// queuing stack outside node's own library (scripts `node:zlib`,
/// `node:internal/...`), else its first JS frame, else its first frame.
/// None for other stacks. One-line summaries show it after the marker, as
/// the allocating frames cannot say it.
pub fn queued_by(frames: &[Frame]) -> Option<&Frame> {
    let at = frames.iter().position(|f| f.kind == FrameKind::Async)?;
    let queued = &frames[at + 1..];
    let js = || queued.iter().filter(|f| f.kind == FrameKind::Js);
    let nodes_own = |f: &&Frame| f.symbol.as_deref().is_some_and(|s| s.contains(" node:"));
    js().find(|f| !nodes_own(f))
        .or_else(|| js().next())
        .or_else(|| queued.first())
}

/// Which rule attributed a stack's resident bytes (resident mode only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    /// Pages of a mapping that serves one allocation, charged to the stack that created it.
    Mapping,
    /// Pages of a shared arena, charged to the stack that first touched them.
    FirstTouch,
}

/// Quantiles of a distribution (sizes in bytes, lifetimes in nanoseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StackReport {
    pub bucket: Option<Bucket>,
    pub live_bytes: u64,
    pub live_allocs: u64,
    pub total_bytes: u64,
    pub total_allocs: u64,
    /// Innermost (the allocation call) first, outward.
    pub frames: Vec<Frame>,
    /// The walk stopped before the outermost frame (an address in no
    /// mapping, memory it could not read, code it could not unwind, or the
    /// depth limit): the stack's outer callers are missing. False: it was
    /// unwound to where the thread started.
    #[serde(default)]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<Attribution>,
    /// Growth of live_bytes over the last window, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_bytes_per_sec: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizes: Option<Quantiles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetimes_ns: Option<Quantiles>,
    /// The package of the native addon the stack passes through, from its
    /// innermost frame that belongs to one (rules: classify/addon.rs), e.g.
    /// `@img/sharp-linux-x64`. Absent when none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addon: Option<String>,
}

/// One point of a process's time series.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Seconds since tracing started.
    pub t_secs: f64,
    pub rss_bytes: u64,
    pub buckets: Buckets,
    /// Traffic: connections the process accepted since the previous point
    /// (for the first point, since tracing of it started). None until
    /// tracing records traffic; the chart draws requests/s from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_connections: Option<u64>,
    /// Traffic: bytes the process received on sockets since the previous
    /// point. None until tracing records traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_bytes: Option<u64>,
    /// Malloc mode, glibc's malloc: resident bytes of the arenas (`[heap]`
    /// and the thread arenas' heaps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arena_resident_bytes: Option<u64>,
    /// Malloc mode, glibc's malloc: of `arena_resident_bytes`, the bytes no
    /// live block holds (freed memory glibc keeps), beyond what was so at
    /// the first point (blocks allocated before tracing cannot be told from
    /// freed ones). See accounting/arenas.rs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arena_free_bytes: Option<u64>,
}

/// Resident bytes already present when tracing started, per mapping kind
/// (resident mode), so that nothing is silently dropped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PreexistingLine {
    /// e.g. "heap", "anon", "stack", "file:/usr/bin/node".
    pub kind: String,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub rss_bytes: u64,
    pub buckets: Buckets,
    pub stacks: Vec<StackReport>,
    /// True when the process exited (or was killed) before the report was written.
    #[serde(default)]
    pub exited: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<SeriesPoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preexisting: Vec<PreexistingLine>,
    /// Human-readable statement of how buckets + preexisting reconcile with RSS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciliation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// What bounds the process's memory (node's heap flags, the host's
    /// memory, the cgroup's limit), read while it lived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<MemoryLimits>,
    /// What its memory does and what to do about it (report/verdict/mod.rs
    /// documents the object). Absent in reports written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<super::verdict::Verdict>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OomInfo {
    pub pid: u32,
    pub comm: String,
    pub anon_rss_bytes: u64,
    pub file_rss_bytes: u64,
    pub shmem_rss_bytes: u64,
    pub total_vm_bytes: u64,
    pub cgroup: Option<String>,
    pub memory_limit_bytes: Option<u64>,
    pub memory_usage_bytes: Option<u64>,
    /// Seconds since the Unix epoch.
    pub time_unix_secs: f64,
}

/// What the tracer itself cost when the report was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentCost {
    /// The tracer's resident set.
    pub rss_bytes: u64,
    /// Kernel memory pinned by its BPF maps (fdinfo `memlock`), charged to
    /// its memory cgroup.
    pub bpf_map_bytes: u64,
    /// User plus system CPU time since it started.
    pub cpu_seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub mode: Mode,
    pub duration_secs: f64,
    /// Sum of every counter that means data was lost (see `counters`).
    pub dropped_events: u64,
    /// Every BPF-side error counter by name, lossy or not.
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    pub processes: Vec<ProcessReport>,
    pub oom: Option<OomInfo>,
    /// Warnings met while building the report (missing perf map, truncated file...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// GNU build-id (hex) of each module path that appears in a frame, when known.
    /// Kept here, once per module, rather than on every frame.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub build_ids: BTreeMap<String, String>,
    /// The tracer's own cost (absent in reports written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentCost>,
}

impl Report {
    /// The same report (meta, warnings, build ids, OOM record) with other
    /// processes.
    pub fn with_processes(&self, processes: Vec<ProcessReport>) -> Report {
        Report {
            schema: self.schema.clone(),
            mode: self.mode,
            duration_secs: self.duration_secs,
            dropped_events: self.dropped_events,
            counters: self.counters.clone(),
            processes,
            oom: self.oom.clone(),
            warnings: self.warnings.clone(),
            build_ids: self.build_ids.clone(),
            agent: self.agent,
        }
    }

    pub fn new(mode: Mode) -> Report {
        Report {
            schema: SCHEMA.to_string(),
            mode,
            duration_secs: 0.0,
            dropped_events: 0,
            counters: BTreeMap::new(),
            processes: Vec::new(),
            oom: None,
            warnings: Vec::new(),
            build_ids: BTreeMap::new(),
            agent: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(symbol: &str, module: &str, kind: FrameKind) -> Frame {
        Frame {
            addr: "0x1".into(),
            symbol: Some(symbol.into()),
            module: Some(module.into()),
            kind,
            ..Frame::default()
        }
    }

    #[test]
    fn telling_frames_skip_allocator_machinery() {
        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let native = [
            frame("__GI___mmap64", libc, FrameKind::Native),
            frame("malloc", libc, FrameKind::Native),
            frame(
                "node::NodeArrayBufferAllocator::Allocate",
                "/usr/bin/node",
                FrameKind::Native,
            ),
        ];
        assert_eq!(
            telling_frames(&native)[0].symbol.as_deref(),
            Some("node::NodeArrayBufferAllocator::Allocate")
        );
        let mut mixed = native.to_vec();
        mixed.push(frame(
            "JS:^handleRequest /app/app.js:42:3",
            "/tmp/perf-1.map",
            FrameKind::Js,
        ));
        assert_eq!(telling_frames(&mixed).len(), 2, "JS frames are kept");
        let only_libc = [frame("malloc", libc, FrameKind::Native)];
        assert_eq!(telling_frames(&only_libc).len(), 1);
    }
}
