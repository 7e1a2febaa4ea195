//! Reads the BPF-side error counters (`counters`, per-CPU) and sums the lossy
//! ones into the report's `dropped_events`.
use std::collections::BTreeMap;

use aya::{maps::PerCpuArray, Ebpf};
use tracer_common::{maps, Counter};

use super::malloc::ReadError;

/// Every counter by name, summed over CPUs, and the sum of the lossy ones.
pub fn read(ebpf: &Ebpf) -> Result<(BTreeMap<String, u64>, u64), ReadError> {
    let map = ebpf
        .map(maps::COUNTERS)
        .ok_or(ReadError::MissingMap(maps::COUNTERS))?;
    let arr: PerCpuArray<_, u64> =
        PerCpuArray::try_from(map).map_err(|e| ReadError::Map(maps::COUNTERS, e))?;
    let mut out = BTreeMap::new();
    let mut dropped = 0;
    for c in Counter::ALL {
        let v: u64 = arr
            .get(&(c as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .map_err(|e| ReadError::Map(maps::COUNTERS, e))?;
        if c.is_drop() {
            dropped += v;
        }
        out.insert(c.name().to_string(), v);
    }
    Ok((out, dropped))
}
