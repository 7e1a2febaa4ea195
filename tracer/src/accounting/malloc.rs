//! Malloc mode's model of every target: the kernel's per-stack totals
//! (`stack_stats`, updated atomically by the uprobes), their frames
//! (`hashed_stacks`) and distributions (`size_hist`, `lifetime_hist`), plus
//! each process's self-made mappings (the `events` ring's vm records, kept
//! here as a `VmSpace`). One pass over the maps serves every target; the
//! deletions keep those maps from growing with processes that came and went,
//! or with stacks evicted by a cap.
//!
//! The address space a process reserved (PROT_NONE mappings) is memory only
//! where it was committed later, by mprotect, which malloc mode does not
//! follow: at each read the pages of every reservation that are resident are
//! asked of the kernel (/proc/PID/pagemap) and handed on per stack as
//! `RawStack::reserved_resident`. V8 reserves and commits its heap pages so
//! (MemoryAllocator -> VirtualMemory -> OS::Allocate with kNoAccess, then
//! SetPermissions), which no mmap call shows.
use std::collections::{HashMap, HashSet};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, MapError},
    Ebpf,
};
use tracer_common::{
    maps, AllocInfo, AllocKey, StackIps, StackKey, StackStats, VmEvent, STACK_TRUNCATED,
};

use super::{dist, vm::VmSpace};
use crate::{
    proc::pages::{self, Pagemap, PAGE},
    report::raw::RawStack,
};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("BPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("reading BPF map {0}")]
    Map(&'static str, #[source] MapError),
}

/// Resolves stack ids into return addresses, innermost first.
pub struct StackResolver<'a> {
    hashed: BpfHashMap<&'a MapData, i32, StackIps>,
}

impl<'a> StackResolver<'a> {
    pub fn new(ebpf: &'a Ebpf) -> Result<Self, ReadError> {
        let map = ebpf
            .map(maps::HASHED_STACKS)
            .ok_or(ReadError::MissingMap(maps::HASHED_STACKS))?;
        let hashed =
            BpfHashMap::try_from(map).map_err(|e| ReadError::Map(maps::HASHED_STACKS, e))?;
        Ok(StackResolver { hashed })
    }

    /// The frames of a stack (empty when it could not be stored).
    pub fn ips(&self, key: &StackKey) -> Vec<u64> {
        self.stack(key).0
    }

    /// The frames of a stack, and whether its walk was truncated (a stack
    /// that could not be stored is: no frame at all).
    pub fn stack(&self, key: &StackKey) -> (Vec<u64>, bool) {
        if key.stack_id < 0 {
            return (Vec::new(), true);
        }
        match self.hashed.get(&key.stack_id, 0) {
            Ok(s) => (s.frames().to_vec(), s.flags & STACK_TRUNCATED != 0),
            Err(_) => (Vec::new(), true),
        }
    }
}

/// A raw stack and the BPF keys it was merged from (none for stacks made
/// only of self-made mappings, which live here, not in the kernel).
#[derive(Clone, Debug, Default)]
pub struct KeyedStack {
    pub stack: RawStack,
    pub keys: Vec<StackKey>,
}

/// Every malloc-mode target's self-made mappings.
#[derive(Default)]
pub struct MallocModel {
    spaces: HashMap<u32, VmSpace>,
    /// Resident bytes of each process's reservations per stack, as last
    /// read: kept when the process is gone (its last figures stand).
    reserved: HashMap<u32, HashMap<StackKey, u64>>,
}

impl MallocModel {
    /// Starts modelling `pid` (its `targets` entry and uprobes are the
    /// caller's).
    pub fn add(&mut self, pid: u32) {
        self.spaces.insert(pid, VmSpace::default());
    }

    pub fn contains(&self, pid: u32) -> bool {
        self.spaces.contains_key(&pid)
    }

    /// Applies one mapping event of the ring buffer to its process.
    pub fn apply(&mut self, ev: &VmEvent) {
        if let Some(s) = self.spaces.get_mut(&ev.hdr.tgid) {
            s.apply(ev);
        }
    }

    /// Every target's stacks, merged by frames, from one pass over
    /// `stack_stats` and the histograms; `pids`: the targets to read.
    pub fn read(
        &mut self,
        ebpf: &Ebpf,
        pids: &HashSet<u32>,
    ) -> Result<HashMap<u32, Vec<KeyedStack>>, ReadError> {
        let map = ebpf
            .map(maps::STACK_STATS)
            .ok_or(ReadError::MissingMap(maps::STACK_STATS))?;
        let stats: BpfHashMap<_, StackKey, StackStats> =
            BpfHashMap::try_from(map).map_err(|e| ReadError::Map(maps::STACK_STATS, e))?;
        let mut by_pid: HashMap<u32, Vec<(StackKey, StackStats)>> = HashMap::new();
        for entry in stats.iter() {
            // An entry deleted while iterating is skipped, not fatal.
            let Ok((k, v)) = entry else { continue };
            if pids.contains(&k.tgid) {
                by_pid.entry(k.tgid).or_default().push((k, v));
            }
        }
        let resolver = StackResolver::new(ebpf)?;
        let mut hists = dist::read_all(ebpf, pids, &by_pid)?;
        let mut out = HashMap::new();
        for &pid in pids {
            let stats = by_pid.remove(&pid).unwrap_or_default();
            let mut keys: HashMap<Vec<u64>, Vec<StackKey>> = HashMap::new();
            for (k, _) in &stats {
                keys.entry(resolver.ips(k)).or_default().push(*k);
            }
            let mut merged: HashMap<Vec<u64>, RawStack> = HashMap::new();
            merge_into(&mut merged, &resolver, stats);
            if let Some(space) = self.spaces.get(&pid) {
                merge_into(&mut merged, &resolver, space.stack_stats());
                if let Some(now) = resident_reservations(pid, space) {
                    self.reserved.insert(pid, now);
                }
            }
            for (key, bytes) in self.reserved.get(&pid).into_iter().flatten() {
                let ips = resolver.ips(key);
                let e = merged.entry(ips.clone()).or_insert_with(|| RawStack {
                    ips,
                    ..RawStack::default()
                });
                *e.reserved_resident.get_or_insert(0) += bytes;
            }
            if let Some((sizes, lifetimes)) = hists.remove(&pid) {
                dist::fill(&mut merged, &resolver, sizes, lifetimes);
            }
            let list = merged
                .into_iter()
                .map(|(ips, stack)| KeyedStack {
                    keys: keys.remove(&ips).unwrap_or_default(),
                    stack,
                })
                .collect();
            out.insert(pid, list);
        }
        Ok(out)
    }

    /// Stops modelling `pid` and deletes everything the kernel kept about it.
    /// Deletion failures are ignored: the entry is gone or will be
    /// overwritten.
    pub fn remove(&mut self, ebpf: &mut Ebpf, pid: u32) {
        self.spaces.remove(&pid);
        self.reserved.remove(&pid);
        let _ = delete_stats_where(ebpf, |k| k.tgid == pid);
        let _ = delete_allocs_where(ebpf, |k, _| k.tgid == pid);
        let _ = dist::forget(ebpf, |k| k.tgid == pid);
    }

    /// Deletes evicted stacks' keys and the outstanding allocations that
    /// point at them: a later free(3) of such a block then finds no
    /// `allocs` entry and changes nothing, instead of subtracting from a
    /// re-created, smaller entry.
    pub fn evict(&self, ebpf: &mut Ebpf, keys: &HashSet<StackKey>) -> Result<(), ReadError> {
        if keys.is_empty() {
            return Ok(());
        }
        delete_stats_where(ebpf, |k| keys.contains(k))?;
        delete_allocs_where(ebpf, |_, v| keys.contains(&v.stack))?;
        dist::forget(ebpf, |k| keys.contains(k))?;
        Ok(())
    }
}

/// Resident bytes of `pid`'s reservations per creating stack, None when the
/// process is gone (pagemap of a dead process reads as nothing resident).
fn resident_reservations(pid: u32, space: &VmSpace) -> Option<HashMap<StackKey, u64>> {
    let mut pagemap = Pagemap::open(pid).ok()?;
    let mut out: HashMap<StackKey, u64> = HashMap::new();
    for m in space.reservations() {
        *out.entry(m.stack).or_default() += pagemap.count_resident(m.start, m.end) * PAGE;
    }
    // Exited between the two reads: the previous figures stand.
    pages::rss_bytes(pid).ok()?;
    Some(out)
}

/// Adds stats into per-frame-list stacks: keys whose frames are equal (for
/// instance malloc and calloc called from one return address) are one stack.
pub fn merge_into(
    out: &mut HashMap<Vec<u64>, RawStack>,
    resolver: &StackResolver<'_>,
    stats: impl IntoIterator<Item = (StackKey, StackStats)>,
) {
    for (key, s) in stats {
        let (ips, truncated) = resolver.stack(&key);
        let e = out.entry(ips.clone()).or_insert_with(|| RawStack {
            ips,
            ..RawStack::default()
        });
        e.truncated |= truncated;
        e.live_bytes += s.live_bytes;
        e.live_allocs += s.live_allocs;
        e.total_bytes += s.total_bytes;
        e.total_allocs += s.total_allocs;
    }
}

/// Deletes the `stack_stats` entries whose key matches.
fn delete_stats_where(ebpf: &mut Ebpf, pred: impl Fn(&StackKey) -> bool) -> Result<(), ReadError> {
    let map = ebpf
        .map_mut(maps::STACK_STATS)
        .ok_or(ReadError::MissingMap(maps::STACK_STATS))?;
    let mut stats: BpfHashMap<_, StackKey, StackStats> =
        BpfHashMap::try_from(map).map_err(|e| ReadError::Map(maps::STACK_STATS, e))?;
    let doomed: Vec<StackKey> = stats.keys().flatten().filter(|k| pred(k)).collect();
    for k in doomed {
        let _ = stats.remove(&k);
    }
    Ok(())
}

/// Deletes the `allocs` entries (outstanding blocks) that match.
fn delete_allocs_where(
    ebpf: &mut Ebpf,
    pred: impl Fn(&AllocKey, &AllocInfo) -> bool,
) -> Result<(), ReadError> {
    let map = ebpf
        .map_mut(maps::ALLOCS)
        .ok_or(ReadError::MissingMap(maps::ALLOCS))?;
    let mut allocs: BpfHashMap<_, AllocKey, AllocInfo> =
        BpfHashMap::try_from(map).map_err(|e| ReadError::Map(maps::ALLOCS, e))?;
    let doomed: Vec<AllocKey> = allocs
        .iter()
        .flatten()
        .filter(|(k, v)| pred(k, v))
        .map(|(k, _)| k)
        .collect();
    for k in doomed {
        let _ = allocs.remove(&k);
    }
    Ok(())
}
