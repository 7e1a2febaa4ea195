//! What the BPF object is sized and set with before it loads: the maps of
//! the active mode at full size, the other mode's at one entry, and the
//! knobs tests set from the environment.
use tracer_common::maps;

use crate::report::Mode;

/// The id bits of `hashed_stacks`: a home slot has at most this many.
const STACK_HASH_BITS: u32 = tracer_common::STACK_ID_BITS;

/// Entries of `hashed_stacks` in resident mode. Its stacks are first-touch
/// fault stacks, sampled 1 in 8 pages, and mapping stacks (one per mmap
/// site); a fault or mapping whose stack finds the map full sends its raw
/// stack to userspace instead, so a smaller map loses nothing. At ~1 KiB an entry
/// this bounds the map at 8 MiB (issue 11's 32 MiB budget for resident mode).
const RESIDENT_HASHED_STACKS: u32 = 8192;
/// Bytes of the `events` ring buffer in resident mode: it carries only
/// exec/exit/fork/OOM records there (mappings go to `fault_events`).
const RESIDENT_EVENTS_BYTES: u32 = 256 << 10;
/// Resident mode's LRU sets: pages already reported (`fault_pages`, of
/// sampled pages: 65536 of them stand for 2 GiB first touched at 1 in 8;
/// an evicted page is only reported again), and granules of tracked mappings
/// (`fault_skip`, 2 MiB each: 64 GiB of mappings). Preallocated, ~88 B a
/// `fault_pages` entry and ~152 B a `fault_skip` one (its touched-page
/// bits): 10.25 MiB together, half of the defaults in offheap.h.
const RESIDENT_FAULT_PAGES: u32 = 65536;
const RESIDENT_FAULT_SKIP: u32 = 32768;

/// Sizes and knobs fixed before load.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub mode: Mode,
    pub max_allocs: u32,
    pub max_stack_stats: u32,
    /// Bits of a stack's hash that pick its home slot in `hashed_stacks`
    /// (30; fewer make distinct stacks share home slots).
    pub stack_hash_bits: u32,
    /// Lifecycle's `watch_exec` knob: report every exec and OOM victim on
    /// the host, not only those of targets (`watch`).
    pub watch_exec: bool,
    /// A process whose unwind tables are loaded while the programs verify
    /// (`record --pid`'s target): building node's takes ~20 ms, and putting
    /// them in place waits out an RCU grace period (`unwind::loader`), which
    /// may end after `Probes::load` returns (`Probes::add_target` waits).
    pub early_tables: Option<u32>,
}

impl LoadConfig {
    /// The defaults of `mode`, with test knobs from the environment:
    /// $OFFHEAP_STACK_HASH_BITS shrinks the home-slot bits of
    /// `hashed_stacks` (0: every stack starts at the same slot and probes for
    /// a free one), $OFFHEAP_MAX_ALLOCS resizes `allocs`, to fill it with
    /// freed entries.
    pub fn from_env(mode: Mode) -> LoadConfig {
        let mut c = LoadConfig {
            mode,
            max_allocs: tracer_common::MAX_ALLOCS,
            max_stack_stats: tracer_common::MAX_STACK_STATS,
            stack_hash_bits: STACK_HASH_BITS,
            watch_exec: false,
            early_tables: None,
        };
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
        if let Some(n) = env("OFFHEAP_MAX_ALLOCS").filter(|n| *n > 0) {
            c.max_allocs = n;
        }
        if let Some(bits) = env("OFFHEAP_STACK_HASH_BITS") {
            c.stack_hash_bits = bits.min(STACK_HASH_BITS);
        }
        c
    }

    /// max_entries of every map whose size depends on the mode: the other
    /// mode's maps shrink to one entry (a ring buffer to one page), so that
    /// a mode pins only the kernel memory it uses.
    pub(super) fn map_sizes(&self) -> Vec<(&'static str, u32)> {
        let page = page_size() as u32;
        match self.mode {
            Mode::Malloc => vec![
                (maps::ALLOCS, self.max_allocs),
                (maps::STACK_STATS, self.max_stack_stats),
                (maps::FAULT_EVENTS, page),
                (maps::FAULT_PAGES, 1),
                (maps::FAULT_SKIP, 1),
            ],
            Mode::Resident => vec![
                (maps::ALLOCS, 1),
                (maps::STACK_STATS, 1),
                (maps::SIZE_HIST, 1),
                (maps::LIFETIME_HIST, 1),
                (maps::VM_INFLIGHT, 1),
                (maps::HASHED_STACKS, RESIDENT_HASHED_STACKS),
                (maps::EVENTS, RESIDENT_EVENTS_BYTES),
                (maps::FAULT_PAGES, RESIDENT_FAULT_PAGES),
                (maps::FAULT_SKIP, RESIDENT_FAULT_SKIP),
            ],
        }
    }
}

pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}
