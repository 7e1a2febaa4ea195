//! The symbolization benchmark: a report of many stacks of a real node process,
//! built from real text addresses of its binary, symbolized after the first parse.
use std::time::{Duration, Instant};

use super::{SymbolError, Symbolizer};
use crate::{
    report::raw::{RawProcess, RawStack},
    report::{
        build::{assemble, Meta},
        Mode,
    },
};

#[derive(Clone, Debug)]
pub struct BenchResult {
    /// Capturing the process: reading maps, opening and parsing every module.
    pub capture: Duration,
    /// Symbolizing and classifying every stack into a Report.
    pub symbolize: Duration,
    pub stacks: usize,
    pub frames: usize,
    pub unique_addresses: usize,
    /// Frames that got a symbol.
    pub named_frames: usize,
}

/// Builds `stacks` synthetic stacks of `depth` frames from the function
/// addresses of the executable of `pid` (e.g. node) and times a full report
/// assembly over them. Used by `cargo run --release --example symbench`.
pub fn bench_symbolize(pid: u32, stacks: usize, depth: usize) -> Result<BenchResult, SymbolError> {
    let mut sym = Symbolizer::new();
    let t0 = Instant::now();
    sym.capture(pid)?;
    let capture = t0.elapsed();

    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|e| SymbolError::NoProcess { pid, source: e })?;
    let exe = exe
        .to_string_lossy()
        .trim_end_matches(" (deleted)")
        .to_string();
    let proc = sym.procs.get(&pid).expect("captured above");
    // Runtime address of each function: the inverse of Symbolizer::lookup.
    let mut addrs: Vec<u64> = Vec::new();
    for m in proc
        .maps
        .iter()
        .filter(|m| m.entry.path() == Some(exe.as_str()))
    {
        let Some(module) = &m.module else { continue };
        addrs.extend(module.function_addresses().filter_map(|v| {
            let off = module.vaddr_to_file_offset(v)?;
            let rt = off.checked_sub(m.entry.offset)? + m.entry.start;
            (rt < m.entry.end).then_some(rt)
        }));
    }
    if addrs.is_empty() {
        return Err(SymbolError::Elf {
            path: exe.into(),
            reason: "no function symbols in its executable mappings".into(),
        });
    }
    // A fixed LCG: the same "random" stacks every run, so figures compare.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        addrs[(seed >> 33) as usize % addrs.len()]
    };
    let raw: Vec<RawStack> = (0..stacks)
        .map(|_| RawStack {
            ips: (0..depth).map(|_| next()).collect(),
            live_bytes: 4096,
            live_allocs: 1,
            total_bytes: 4096,
            total_allocs: 1,
            ..RawStack::default()
        })
        .collect();
    let mut unique: Vec<u64> = raw.iter().flat_map(|s| s.ips.iter().copied()).collect();
    unique.sort_unstable();
    unique.dedup();
    let process = RawProcess {
        pid,
        stacks: raw,
        ..RawProcess::default()
    };
    let meta = Meta {
        mode: Mode::Malloc,
        ..Meta::default()
    };
    let t1 = Instant::now();
    let report = assemble(meta, vec![process], &mut sym);
    let symbolize = t1.elapsed();
    let frames: Vec<_> = report.processes[0]
        .stacks
        .iter()
        .flat_map(|s| s.frames.iter())
        .collect();
    Ok(BenchResult {
        capture,
        symbolize,
        stacks,
        frames: frames.len(),
        unique_addresses: unique.len(),
        named_frames: frames.iter().filter(|f| f.symbol.is_some()).count(),
    })
}
