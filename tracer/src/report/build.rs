//! Assembles a `Report` from raw per-process stacks: symbolize every frame,
//! classify every stack into a bucket, sum the buckets, sort, and judge each
//! process (`verdict`), so that every report carries its verdict.
use std::collections::BTreeMap;

use crate::{
    classify,
    report::{
        raw::RawProcess, verdict, AgentCost, Bucket, Buckets, Frame, Mode, ProcessReport, Report,
        StackReport,
    },
};

/// Resolves one return address of a process into frames (more than one when
/// the address is inside inlined code; innermost first).
pub trait Symbolize {
    fn symbolize(&mut self, pid: u32, addr: u64) -> Vec<Frame>;
    /// Warnings collected while symbolizing (truncated perf map, unreadable
    /// module...), each given once.
    fn take_warnings(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// What stays true of one process for as long as it is traced (its perf
    /// map was refused, or is missing): given again for every report of it,
    /// so a report made later (watch's /report) still says it.
    fn process_warnings(&mut self, _pid: u32) -> Vec<String> {
        Vec::new()
    }
}

/// A symbolizer that names nothing: frames carry only their addresses.
pub struct NoSymbols;

impl Symbolize for NoSymbols {
    fn symbolize(&mut self, _pid: u32, addr: u64) -> Vec<Frame> {
        vec![Frame::unknown(addr)]
    }
}

/// What a report says besides its processes; the tracing core makes it once
/// per report (`core::Tracer::meta`).
#[derive(Clone, Debug, Default)]
pub struct Meta {
    pub mode: Mode,
    pub duration_secs: f64,
    pub counters: BTreeMap<String, u64>,
    pub dropped_events: u64,
    pub agent: Option<AgentCost>,
    /// Said in the report's `warnings`, first.
    pub warnings: Vec<String>,
}

pub fn assemble(meta: Meta, processes: Vec<RawProcess>, sym: &mut dyn Symbolize) -> Report {
    let mut report = Report::new(meta.mode);
    report.duration_secs = meta.duration_secs;
    report.counters = meta.counters;
    report.dropped_events = meta.dropped_events;
    report.agent = meta.agent;
    let mut warnings = meta.warnings;
    for p in processes {
        let pid = p.pid;
        let mut p = assemble_process(p, sym);
        p.verdict = Some(verdict::judge(&p, report.mode));
        report.processes.push(p);
        warnings.extend(sym.process_warnings(pid));
    }
    warnings.extend(sym.take_warnings());
    for w in warnings {
        if !report.warnings.contains(&w) {
            report.warnings.push(w);
        }
    }
    let truncated = report
        .processes
        .iter()
        .flat_map(|p| &p.stacks)
        .filter(|s| s.truncated)
        .count();
    report
        .counters
        .insert(STACKS_TRUNCATED.to_string(), truncated as u64);
    report
}

/// Counter in every report: stacks whose walk stopped before the outermost
/// frame (`StackReport::truncated`).
pub const STACKS_TRUNCATED: &str = "stacks_truncated";

fn assemble_process(p: RawProcess, sym: &mut dyn Symbolize) -> ProcessReport {
    // Symbolize each unique address once: big reports repeat the same frames
    // thousands of times.
    let mut cache: std::collections::HashMap<(u64, bool), Vec<Frame>> =
        std::collections::HashMap::new();
    let mut buckets = Buckets::default();
    let mut stacks: Vec<StackReport> = p
        .stacks
        .into_iter()
        .filter_map(|s| {
            let mut frames: Vec<Frame> = s
                .ips
                .iter()
                .enumerate()
                .flat_map(|(i, &ip)| {
                    let is_return = !(i == 0 && s.leaf_is_ip);
                    cache
                        .entry((ip, is_return))
                        .or_insert_with(|| {
                            // A JS word (the V8 walk's) is no address.
                            let js = ip & tracer_common::V8_FRAME_TAG != 0;
                            let lookup = if is_return && !js {
                                ip.saturating_sub(1)
                            } else {
                                ip
                            };
                            let mut frames = sym.symbolize(p.pid, lookup);
                            // Report the address as captured, not the lookup address.
                            for f in &mut frames {
                                f.addr = format!("{ip:#x}");
                            }
                            frames
                        })
                        .clone()
                })
                .collect();
            if s.folded_stacks > 0 && frames.is_empty() {
                frames.push(Frame {
                    addr: "0x0".into(),
                    symbol: Some(format!(
                        "[{} smaller stacks, folded by the stack cap]",
                        s.folded_stacks
                    )),
                    ..Frame::default()
                });
            }
            let bucket = s.bucket.unwrap_or_else(|| classify::classify(&frames));
            // Malloc mode's reserved address space counts where V8 committed
            // its heap in it; a stack that only reserved (a thread stack's
            // mapping) has nothing to show.
            let reserved = match (s.reserved_resident, bucket) {
                (Some(r), Bucket::V8Heap) => r,
                (Some(_), _) if s.total_allocs == 0 && s.live_allocs == 0 => return None,
                _ => 0,
            };
            let live_bytes = s.live_bytes + reserved;
            *buckets.get_mut(bucket) += live_bytes;
            let addon = classify::addon_of(&frames).map(str::to_string);
            Some(StackReport {
                bucket: Some(bucket),
                live_bytes,
                live_allocs: s.live_allocs,
                total_bytes: s.total_bytes,
                total_allocs: s.total_allocs,
                frames,
                truncated: s.truncated,
                attribution: s.attribution,
                growth_bytes_per_sec: s.growth_bytes_per_sec,
                sizes: s.sizes,
                lifetimes_ns: s.lifetimes_ns,
                addon,
            })
        })
        .collect();
    stacks.sort_by(|a, b| {
        b.live_bytes
            .cmp(&a.live_bytes)
            .then(b.total_bytes.cmp(&a.total_bytes))
    });
    ProcessReport {
        pid: p.pid,
        comm: p.comm,
        exe: p.exe,
        rss_bytes: p.rss_bytes,
        buckets,
        stacks,
        exited: p.exited,
        series: p.series,
        preexisting: p.preexisting,
        reconciliation: p.reconciliation,
        cgroup: p.cgroup,
        limits: p.limits,
        verdict: None,
    }
}
