//! Reads malloc mode's per-stack totals (`stack_stats`, updated atomically by
//! the uprobes) and turns stack keys into return addresses (`stack_traces`).
use std::collections::HashMap;

use aya::{
    maps::{HashMap as BpfHashMap, MapData, MapError, StackTraceMap},
    Ebpf,
};
use tracer_common::{maps, StackIps, StackKey, StackStats, STACK_ID_HASHED};

use super::RawStack;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("BPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("reading BPF map {0}: {1}")]
    Map(&'static str, MapError),
}

/// Every (stack, stats) the kernel counted for one tgid.
pub fn read_stack_stats(
    ebpf: &Ebpf,
    tgid: u32,
) -> Result<HashMap<StackKey, StackStats>, ReadError> {
    let map = ebpf
        .map(maps::STACK_STATS)
        .ok_or(ReadError::MissingMap(maps::STACK_STATS))?;
    let stats: BpfHashMap<_, StackKey, StackStats> =
        BpfHashMap::try_from(map).map_err(|e| ReadError::Map(maps::STACK_STATS, e))?;
    let mut out = HashMap::new();
    for entry in stats.iter() {
        // An entry deleted while iterating is skipped, not fatal.
        let Ok((k, v)) = entry else { continue };
        if k.tgid == tgid {
            out.insert(k, v);
        }
    }
    Ok(out)
}

/// Resolves stack keys into return addresses, innermost first.
pub struct StackResolver<'a> {
    traces: StackTraceMap<&'a MapData>,
    hashed: BpfHashMap<&'a MapData, i32, StackIps>,
}

impl<'a> StackResolver<'a> {
    pub fn new(ebpf: &'a Ebpf) -> Result<Self, ReadError> {
        let map = ebpf
            .map(maps::STACK_TRACES)
            .ok_or(ReadError::MissingMap(maps::STACK_TRACES))?;
        let traces =
            StackTraceMap::try_from(map).map_err(|e| ReadError::Map(maps::STACK_TRACES, e))?;
        let map = ebpf
            .map(maps::HASHED_STACKS)
            .ok_or(ReadError::MissingMap(maps::HASHED_STACKS))?;
        let hashed =
            BpfHashMap::try_from(map).map_err(|e| ReadError::Map(maps::HASHED_STACKS, e))?;
        Ok(StackResolver { traces, hashed })
    }

    /// The frame-pointer walk of a stack id, from whichever map holds it.
    fn walk(&self, id: i32) -> Vec<u64> {
        if id < 0 {
            Vec::new()
        } else if id & STACK_ID_HASHED != 0 {
            self.hashed
                .get(&id, 0)
                .map(|s| s.frames().to_vec())
                .unwrap_or_default()
        } else {
            self.traces
                .get(&(id as u32), 0)
                .map(|t| t.frames().iter().map(|f| f.ip).collect())
                .unwrap_or_default()
        }
    }

    /// The frames of a key: `[caller] + walk[1..]` when the probe read the
    /// caller at [sp] (walk[0] is then the probed function or the syscall
    /// stub itself, whose frame the walk cannot see past), else the walk.
    pub fn ips(&self, key: &StackKey) -> Vec<u64> {
        let walk = self.walk(key.stack_id);
        if key.caller == 0 {
            return walk;
        }
        std::iter::once(key.caller)
            .chain(walk.into_iter().skip(1))
            .collect()
    }
}

/// Adds stats into per-frame-list stacks: keys whose frames are equal (for
/// instance malloc and calloc called from one return address) are one stack.
pub fn merge_into(
    out: &mut HashMap<Vec<u64>, RawStack>,
    resolver: &StackResolver<'_>,
    stats: impl IntoIterator<Item = (StackKey, StackStats)>,
) {
    for (key, s) in stats {
        let ips = resolver.ips(&key);
        let e = out.entry(ips.clone()).or_insert_with(|| RawStack {
            ips,
            ..RawStack::default()
        });
        e.live_bytes += s.live_bytes;
        e.live_allocs += s.live_allocs;
        e.total_bytes += s.total_bytes;
        e.total_allocs += s.total_allocs;
    }
}
