//! Malloc mode for many processes: per-PID uprobes on each target's
//! allocator, the shared `stack_stats`/`allocs` maps read once per tick for
//! every target, and the deletions that keep those maps (and the agent)
//! from growing with processes that came and went or stacks evicted by caps.
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
};

use aya::maps::{HashMap as BpfHashMap, MapError};
use tracer_common::{
    maps, AllocInfo, AllocKey, StackKey, StackStats, VmEvent, TARGET_MALLOC, TARGET_VM,
};

use crate::{
    accounting::{
        dist,
        malloc::{merge_into, ReadError, StackResolver},
        vm::VmSpace,
        RawStack,
    },
    probes::{allocator, Probes},
};

#[derive(Debug, thiserror::Error)]
pub enum MallocError {
    #[error(transparent)]
    Allocator(#[from] allocator::AllocatorError),
    #[error(transparent)]
    Probe(#[from] crate::probes::ProbeError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("BPF map {0}: {1}")]
    Map(&'static str, MapError),
}

/// A raw stack and the BPF keys it was merged from (none for stacks made
/// only of self-made mappings, which live in the agent).
#[derive(Clone, Debug, Default)]
pub struct KeyedStack {
    pub stack: RawStack,
    pub keys: Vec<StackKey>,
}

#[derive(Default)]
pub struct MallocTargets {
    spaces: HashMap<u32, VmSpace>,
}

impl MallocTargets {
    /// The allocator of `pid`: from its mappings once the dynamic linker
    /// mapped it, else (an EXEC event handled before ld.so ran) what its
    /// executable will bind to.
    fn allocator_of(pid: u32) -> Result<allocator::Allocator, allocator::AllocatorError> {
        allocator::for_pid(pid).or_else(|e| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|_| e)?;
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let preload = env
                .split(|&b| b == 0)
                .find_map(|v| v.strip_prefix(b"LD_PRELOAD="))
                .map(|v| String::from_utf8_lossy(v).into_owned());
            let exe: PathBuf = PathBuf::from(format!("/proc/{pid}/root"))
                .join(exe.strip_prefix("/").unwrap_or(&exe));
            allocator::for_exec(&exe, preload.as_deref())
        })
    }

    /// Starts counting `pid`: its `targets` entry first (the lifecycle
    /// programs report its exit from then on), then its uprobes.
    pub fn add(&mut self, probes: &mut Probes, pid: u32) -> Result<String, MallocError> {
        let alloc = Self::allocator_of(pid)?;
        alloc.check_required()?;
        probes.add_target(pid, TARGET_MALLOC | TARGET_VM)?;
        if let Err(e) = probes.attach_malloc(pid, &alloc) {
            probes.detach_malloc(pid);
            let _ = probes.remove_target(pid);
            return Err(e.into());
        }
        self.spaces.insert(pid, VmSpace::default());
        Ok(alloc.module)
    }

    /// Stops counting `pid` and deletes everything kept about it, in the
    /// kernel and here. Deletion failures are ignored: the entry is gone or
    /// will be overwritten.
    pub fn remove(&mut self, probes: &mut Probes, pid: u32) {
        let _ = probes.remove_target(pid);
        probes.detach_malloc(pid);
        self.spaces.remove(&pid);
        let _ = delete_stats_where(probes, |k| k.tgid == pid);
        let _ = delete_allocs_where(probes, |k, _| k.tgid == pid);
        let _ = dist::forget(probes.ebpf_mut(), |k| k.tgid == pid);
    }

    pub fn apply(&mut self, ev: &VmEvent) {
        if let Some(s) = self.spaces.get_mut(&ev.hdr.tgid) {
            s.apply(ev);
        }
    }

    /// Every target's stacks, merged by frames, from one pass over
    /// `stack_stats`.
    pub fn read(&self, probes: &Probes) -> Result<HashMap<u32, Vec<KeyedStack>>, MallocError> {
        let ebpf = probes.ebpf();
        let map = ebpf
            .map(maps::STACK_STATS)
            .ok_or(ReadError::MissingMap(maps::STACK_STATS))?;
        let stats: BpfHashMap<_, StackKey, StackStats> =
            BpfHashMap::try_from(map).map_err(|e| MallocError::Map(maps::STACK_STATS, e))?;
        let mut by_pid: HashMap<u32, Vec<(StackKey, StackStats)>> = HashMap::new();
        for entry in stats.iter() {
            // An entry deleted while iterating is skipped, not fatal.
            let Ok((k, v)) = entry else { continue };
            if self.spaces.contains_key(&k.tgid) {
                by_pid.entry(k.tgid).or_default().push((k, v));
            }
        }
        let resolver = StackResolver::new(ebpf)?;
        let mut out = HashMap::new();
        for (&pid, space) in &self.spaces {
            let mut keys: HashMap<Vec<u64>, Vec<StackKey>> = HashMap::new();
            let stats = by_pid.remove(&pid).unwrap_or_default();
            for (k, _) in &stats {
                keys.entry(resolver.ips(k)).or_default().push(*k);
            }
            let mut merged: HashMap<Vec<u64>, RawStack> = HashMap::new();
            merge_into(&mut merged, &resolver, stats);
            merge_into(&mut merged, &resolver, space.stack_stats());
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

    /// Deletes evicted stacks' keys and the outstanding allocations that
    /// point at them: a later free(3) of such a block then finds no
    /// `allocs` entry and changes nothing, instead of subtracting from a
    /// re-created, smaller entry.
    pub fn evict(&self, probes: &mut Probes, keys: &HashSet<StackKey>) -> Result<(), MallocError> {
        if keys.is_empty() {
            return Ok(());
        }
        delete_stats_where(probes, |k| keys.contains(k))?;
        delete_allocs_where(probes, |_, v| keys.contains(&v.stack))?;
        dist::forget(probes.ebpf_mut(), |k| keys.contains(k))?;
        Ok(())
    }
}

/// Deletes the `stack_stats` entries whose key matches.
fn delete_stats_where(
    probes: &mut Probes,
    pred: impl Fn(&StackKey) -> bool,
) -> Result<(), MallocError> {
    let map = probes
        .ebpf_mut()
        .map_mut(maps::STACK_STATS)
        .ok_or(ReadError::MissingMap(maps::STACK_STATS))?;
    let mut stats: BpfHashMap<_, StackKey, StackStats> =
        BpfHashMap::try_from(map).map_err(|e| MallocError::Map(maps::STACK_STATS, e))?;
    let doomed: Vec<StackKey> = stats.keys().flatten().filter(|k| pred(k)).collect();
    for k in doomed {
        let _ = stats.remove(&k);
    }
    Ok(())
}

/// Deletes the `allocs` entries (outstanding blocks) that match.
fn delete_allocs_where(
    probes: &mut Probes,
    pred: impl Fn(&AllocKey, &AllocInfo) -> bool,
) -> Result<(), MallocError> {
    let map = probes
        .ebpf_mut()
        .map_mut(maps::ALLOCS)
        .ok_or(ReadError::MissingMap(maps::ALLOCS))?;
    let mut allocs: BpfHashMap<_, AllocKey, AllocInfo> =
        BpfHashMap::try_from(map).map_err(|e| MallocError::Map(maps::ALLOCS, e))?;
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
