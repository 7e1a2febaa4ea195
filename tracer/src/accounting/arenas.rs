//! Malloc mode: what glibc's arenas hold beyond the live blocks. glibc keeps
//! freed chunks resident for reuse (a hole between two live chunks cannot be
//! given back; free(3) only trims the top of a heap past M_TRIM_THRESHOLD),
//! so a process can keep RSS it no longer uses: fragmentation, not a leak.
//!
//! The arenas are the main one's `[heap]` (brk) and each thread arena's
//! heaps: mappings aligned to HEAP_MAX_SIZE, read-write from the start and
//! PROT_NONE for the rest of the HEAP_MAX_SIZE (glibc malloc/arena.c
//! new_heap/grow_heap). Their resident pages come from pagemap; the live
//! blocks in them from `allocs` (malloc mode's outstanding blocks), each
//! counted as the chunk glibc made for it (malloc/malloc.c request2size:
//! the request plus the 8-byte size field, rounded up to 16, at least 32).
//! A block allocated before tracing started is not in `allocs` and would
//! look free: the difference is therefore taken relative to the first
//! interval, so what it says is "freed memory glibc came to hold while
//! traced".
use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd},
};

use aya::{maps::Map, Ebpf};
use aya_obj::generated::{bpf_attr, bpf_cmd};
use tracer_common::{maps, AllocInfo, AllocKey};

use crate::proc::{
    self,
    pages::{Pagemap, PAGE},
};

/// glibc's HEAP_MAX_SIZE on 64-bit (2 * DEFAULT_MMAP_THRESHOLD_MAX): a
/// thread arena's heap is a mapping of this size, aligned to it.
pub const GLIBC_HEAP_MAX: u64 = 64 << 20;
/// glibc's chunk geometry on 64-bit (SIZE_SZ, MALLOC_ALIGNMENT, MINSIZE).
const SIZE_SZ: u64 = 8;
const ALIGN: u64 = 16;
const MIN_CHUNK: u64 = 32;
/// Entries asked for per BPF_MAP_LOOKUP_BATCH call: at least the longest
/// bucket of the hash map (else ENOSPC), and few calls for a full map.
const BATCH: u32 = 8192;

/// One interval's arena figures of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaFigures {
    /// Resident bytes of every arena.
    pub resident_bytes: u64,
    /// Bytes of those that no live traced block holds, less what was so at
    /// the process's first interval (at least 0).
    pub free_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArenaError {
    #[error("BPF map allocs is missing from the object")]
    MissingMap,
    #[error("reading BPF map allocs in batches")]
    Batch(#[source] std::io::Error),
}

/// The chunk glibc makes for a request of `size` bytes.
pub fn chunk_bytes(size: u64) -> u64 {
    ((size + SIZE_SZ + ALIGN - 1) & !(ALIGN - 1)).max(MIN_CHUNK)
}

/// The arenas of a process (address ranges, sorted), from its mappings.
pub fn arena_ranges(maps: &[proc::Mapping]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for (i, m) in maps.iter().enumerate() {
        if m.name.as_deref() == Some("[heap]") {
            out.push((m.start, m.end));
            continue;
        }
        if m.name.is_some() || &m.perms[..2] != b"rw" || m.start % GLIBC_HEAP_MAX != 0 {
            continue;
        }
        let whole = m.end - m.start == GLIBC_HEAP_MAX;
        let rest_reserved = maps.get(i + 1).is_some_and(|n| {
            n.name.is_none()
                && n.is_reservation()
                && n.start == m.end
                && n.end == m.start + GLIBC_HEAP_MAX
        });
        if whole || rest_reserved {
            out.push((m.start, m.end));
        }
    }
    out.sort_unstable();
    out
}

/// First-interval differences, per process, and the reading itself.
#[derive(Debug, Default)]
pub struct Arenas {
    first_free: HashMap<u32, u64>,
}

impl Arenas {
    /// The figures of every pid of `live` that uses glibc's malloc (others
    /// are left out). Pids absent now are forgotten.
    pub fn read(
        &mut self,
        ebpf: &Ebpf,
        live: &[u32],
    ) -> Result<HashMap<u32, ArenaFigures>, ArenaError> {
        self.first_free.retain(|p, _| live.contains(p));
        let mut ranges: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
        for &pid in live {
            let Ok(maps) = proc::maps::read(pid) else {
                continue;
            };
            if uses_glibc_malloc(&maps) {
                ranges.insert(pid, arena_ranges(&maps));
            }
        }
        if ranges.is_empty() {
            return Ok(HashMap::new());
        }
        let mut live_chunks: HashMap<u32, u64> = HashMap::new();
        for_each_alloc(ebpf, |k, v| {
            // ts_ns 0: freed, the entry kept for reuse (malloc.bpf.c).
            if v.ts_ns == 0 {
                return;
            }
            if let Some(r) = ranges.get(&k.tgid) {
                if contains(r, k.addr) {
                    *live_chunks.entry(k.tgid).or_default() += chunk_bytes(v.size);
                }
            }
        })?;
        let mut out = HashMap::new();
        for (pid, r) in ranges {
            let Ok(mut pagemap) = Pagemap::open(pid) else {
                continue;
            };
            let resident: u64 = r
                .iter()
                .map(|&(s, e)| pagemap.count_resident(s, e) * PAGE)
                .sum();
            let free = resident.saturating_sub(live_chunks.get(&pid).copied().unwrap_or(0));
            let first = *self.first_free.entry(pid).or_insert(free);
            out.insert(
                pid,
                ArenaFigures {
                    resident_bytes: resident,
                    free_bytes: free.saturating_sub(first),
                },
            );
        }
        Ok(out)
    }
}

/// glibc's malloc serves the process: libc is mapped and no other allocator
/// that replaces malloc (the ones malloc mode knows) is.
fn uses_glibc_malloc(maps: &[proc::Mapping]) -> bool {
    let names: Vec<&str> = maps
        .iter()
        .filter_map(|m| m.path())
        .map(|p| p.rsplit('/').next().unwrap_or(p))
        .collect();
    names.iter().any(|n| n.starts_with("libc.so"))
        && !names.iter().any(|n| {
            ["libjemalloc", "libtcmalloc", "libmimalloc"]
                .iter()
                .any(|a| n.starts_with(a))
        })
}

fn contains(ranges: &[(u64, u64)], addr: u64) -> bool {
    let i = ranges.partition_point(|&(s, _)| s <= addr);
    i > 0 && addr < ranges[i - 1].1
}

/// Calls `f` for every entry of `allocs`, a few thousand per bpf(2) call
/// (BPF_MAP_LOOKUP_BATCH, Linux 5.6): entry by entry would take two calls
/// each, a second for a million blocks. aya has no batch operations.
fn for_each_alloc(ebpf: &Ebpf, mut f: impl FnMut(&AllocKey, &AllocInfo)) -> Result<(), ArenaError> {
    let Some(Map::HashMap(data)) = ebpf.map(maps::ALLOCS) else {
        return Err(ArenaError::MissingMap);
    };
    let fd = data.fd().as_fd().as_raw_fd();
    let mut keys = vec![AllocKey::default(); BATCH as usize];
    let mut values = vec![AllocInfo::default(); BATCH as usize];
    // The hash map's batch cursor is a bucket index (kernel/bpf/hashtab.c).
    let mut cursor: u32 = 0;
    let mut first = true;
    loop {
        let mut attr: bpf_attr = crate::probes::sys::zeroed_attr();
        let mut next: u32 = 0;
        attr.batch.in_batch = if first {
            0
        } else {
            &cursor as *const u32 as u64
        };
        attr.batch.out_batch = &mut next as *mut u32 as u64;
        attr.batch.keys = keys.as_mut_ptr() as u64;
        attr.batch.values = values.as_mut_ptr() as u64;
        attr.batch.count = BATCH;
        attr.batch.map_fd = fd as u32;
        // The pointers in attr point to buffers of `count` keys and values
        // that outlive the call.
        let err = crate::probes::sys::bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr).err();
        // SAFETY: the kernel wrote back the number of entries it filled.
        let n = unsafe { attr.batch.count } as usize;
        for (k, v) in keys.iter().zip(&values).take(n) {
            f(k, v);
        }
        match err {
            None => {}
            // ENOENT: the last batch (possibly with entries) was read.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(ArenaError::Batch(e)),
        }
        cursor = next;
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_as_glibc_makes_them() {
        assert_eq!(chunk_bytes(0), 32);
        assert_eq!(chunk_bytes(24), 32);
        assert_eq!(chunk_bytes(25), 48);
        assert_eq!(chunk_bytes(1000), 1008);
        assert_eq!(chunk_bytes(1 << 20), (1 << 20) + 16);
    }

    #[test]
    fn heap_and_thread_heaps_are_arenas() {
        let text = "\
55d000000000-55d000100000 rw-p 00000000 00:00 0                          [heap]
7f0004000000-7f0004400000 rw-p 00000000 00:00 0
7f0004400000-7f0008000000 ---p 00000000 00:00 0
7f000c000000-7f0010000000 rw-p 00000000 00:00 0
7f0010000000-7f0010040000 rw-p 00000000 00:00 0
7f0010200000-7f0010300000 rw-p 00000000 00:00 0
7f0010300000-7f0010400000 ---p 00000000 00:00 0
";
        let maps = proc::maps::parse(text);
        assert_eq!(
            arena_ranges(&maps),
            vec![
                (0x55d000000000, 0x55d000100000),
                (0x7f0004000000, 0x7f0004400000),
                (0x7f000c000000, 0x7f0010000000),
            ],
            "a 64 MiB-aligned piece without the rest reserved is not a heap"
        );
        let r = arena_ranges(&maps);
        assert!(contains(&r, 0x7f0004000010));
        assert!(!contains(&r, 0x7f0004400000));
        assert!(!contains(&r, 0x10));
    }
}
