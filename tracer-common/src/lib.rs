//! Mirror of `tracer-ebpf/include/offheap.h`, the ABI between the BPF programs
//! and userspace. The C header is the source of truth; `tests/abi_layout.rs`
//! compiles it and fails when a size or an offset here drifts from it.
#![no_std]

/// Map names, exactly as the maps are named in the BPF object.
pub mod maps {
    pub const TARGETS: &str = "targets";
    pub const ALLOCS: &str = "allocs";
    pub const INFLIGHT: &str = "inflight";
    pub const STACK_STATS: &str = "stack_stats";
    pub const COUNTERS: &str = "counters";
    pub const EVENTS: &str = "events";
    pub const VM_INFLIGHT: &str = "vm_inflight";
    pub const FAULT_STATS: &str = "fault_stats";
    /// Every stack, walked in BPF (walk.bpf.c) and stored by hash.
    pub const HASHED_STACKS: &str = "hashed_stacks";
    pub const STACK_SCRATCH: &str = "stack_scratch";
    /// Malloc mode: allocations per (stack, size bucket).
    pub const SIZE_HIST: &str = "size_hist";
    /// Malloc mode: freed allocations per (stack, lifetime bucket), in ns.
    pub const LIFETIME_HIST: &str = "lifetime_hist";
    /// Resident mode (fault.bpf.c): ring buffer of `FaultEvent` and `MapEvent`.
    pub const FAULT_EVENTS: &str = "fault_events";
    pub const FAULT_SCRATCH: &str = "fault_scratch";
    pub const FAULT_PAGES: &str = "fault_pages";
    pub const FAULT_SKIP: &str = "fault_skip";
    pub const FAULT_CONFIG: &str = "fault_config";
    /// V8 frame decoding: `V8ProcConfig` per tgid (include/v8.bpf.h).
    pub const V8_PROCS: &str = "v8_procs";
    /// Unwind tables (tracer/src/probes/unwind): LPM trie of
    /// (tgid, address prefix) -> `UnwindMapping`.
    pub const UNWIND_MAPPINGS: &str = "unwind_mappings";
    /// Unwind tables: array of maps, one `UnwindEntry` array per module.
    pub const UNWIND_TABLES: &str = "unwind_tables";
    /// Bumped when what a target's addresses mean changed: the walkers'
    /// unwind caches go stale.
    pub const UNWIND_EPOCH: &str = "unwind_epoch";
    /// libuv threadpool requests queued and not started: `WorkKey` -> i32,
    /// 1 + the queuing stack's id (threadpool.bpf.c).
    pub const QUEUED_WORK: &str = "queued_work";
    /// Traffic (traffic.bpf.c): `TrafficCounts` per tgid, per CPU.
    pub const TRAFFIC: &str = "traffic";
}

mod counters;
/// Program names, exactly as the programs are named in the BPF object.
pub mod programs;
pub use counters::{Counter, COUNTER_MAX};

/// C `enum threadpool_kind`.
pub mod threadpool_kind {
    pub const QUEUE: u32 = 1;
    pub const RUN: u32 = 2;
    pub const DONE: u32 = 3;
}

pub const UV_WORK_REQ_OFFSET: u64 = 88;
pub const MAX_QUEUED_WORK: u32 = 16384;

/// Key of `queued_work`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WorkKey {
    pub tgid: u32,
    pub _pad: u32,
    pub work: u64,
}

pub const MAX_TARGETS: u32 = 4096;
pub const MAX_ALLOCS: u32 = 1 << 20;
pub const MAX_STACK_STATS: u32 = 65536;
pub const MAX_INFLIGHT: u32 = 16384;
pub const MAX_STACK_DEPTH: usize = 127;
pub const EVENTS_BYTES: u32 = 4 << 20;
pub const COMM_LEN: usize = 16;
pub const MAX_HASHED_STACKS: u32 = 65536;
pub const STACK_WINDOW: usize = 8192;
pub const STACK_HASH_PROBES: u32 = 32;
pub const MAX_HIST: u32 = 262144;
pub const HIST_SUB_BITS: u32 = 3;
pub const HIST_BUCKETS: u32 = 496;

/// Key of `size_hist` and `lifetime_hist`: one log-linear bucket of a stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HistKey {
    pub stack: StackKey,
    pub bucket: u32,
}

/// The bucket of a value, as `hist_bucket` in offheap.bpf.c computes it.
pub const fn hist_bucket(v: u64) -> u32 {
    if v < (1 << HIST_SUB_BITS) {
        return v as u32;
    }
    let e = 63 - v.leading_zeros();
    let sub = ((v >> (e - HIST_SUB_BITS)) & ((1 << HIST_SUB_BITS) - 1)) as u32;
    ((e - HIST_SUB_BITS + 1) << HIST_SUB_BITS) + sub
}

/// The smallest value of a bucket (the inverse of `hist_bucket`, rounding down).
pub const fn hist_lower_bound(bucket: u32) -> u64 {
    let sub_count = 1 << HIST_SUB_BITS;
    if bucket < sub_count {
        return bucket as u64;
    }
    let e = (bucket >> HIST_SUB_BITS) + HIST_SUB_BITS - 1;
    let sub = (bucket & (sub_count - 1)) as u64;
    (sub_count as u64 + sub) << (e - HIST_SUB_BITS)
}

/// Bits of a stack id: the home slot of its hash in `hashed_stacks`.
pub const STACK_ID_BITS: u32 = 30;
/// `StackIps::flags`: the walk stopped before the outermost frame.
pub const STACK_TRUNCATED: u32 = 1 << 0;

pub const TARGET_MALLOC: u32 = 1 << 0;
pub const TARGET_VM: u32 = 1 << 1;
pub const TARGET_FAULTS: u32 = 1 << 2;
/// The kernel adds a target's forked children as targets with its flags.
pub const TARGET_FOLLOW: u32 = 1 << 3;

/// Value of `traffic` (per CPU): what a target received since its entry was
/// made.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounts {
    pub accepted: u64,
    pub received_bytes: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetInfo {
    pub flags: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    pub tgid: u32,
    /// The stack's id in `hashed_stacks`; < 0: not stored (counted).
    pub stack_id: i32,
    /// Threadpool work (threadpool.bpf.c): 1 + the `hashed_stacks` id of
    /// the stack that queued the work the thread was running; 0: none.
    pub async_stack: i32,
}

impl StackKey {
    /// The `hashed_stacks` id of the queuing stack, if any.
    pub fn queued_by(&self) -> Option<i32> {
        (self.async_stack > 0).then(|| self.async_stack - 1)
    }
}

/// An `ips[]` word that is no frame: where a stack of threadpool work (the
/// worker's frames, innermost first) goes on with the stack that queued
/// the work. Userspace puts it there when it joins the two (never BPF);
/// it reads as the frame `[libuv threadpool]`, `FrameKind::Async`. Bit 63
/// is set, as in a JS word (no return address has it), with the tier bits
/// at 3, which no JS word uses.
pub const ASYNC_MARKER: u64 = u64::MAX;

/// Value of `hashed_stacks`: a user stack, innermost first, and its hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackIps {
    pub nr: u32,
    /// `STACK_TRUNCATED`.
    pub flags: u32,
    pub hash: u64,
    pub ips: [u64; MAX_STACK_DEPTH],
}

impl StackIps {
    pub fn frames(&self) -> &[u64] {
        &self.ips[..(self.nr as usize).min(MAX_STACK_DEPTH)]
    }
}

/// Histogram buckets counted in a stack's own `stack_stats` entry (see
/// struct inline_hist in offheap.h).
pub const INLINE_BUCKETS: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InlineHist {
    /// 1 + the bucket of `count[i]`; 0: the slot is free.
    pub bucket: [u64; INLINE_BUCKETS],
    pub count: [u64; INLINE_BUCKETS],
}

impl InlineHist {
    /// The (bucket, count) pairs counted here.
    pub fn buckets(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.bucket
            .iter()
            .zip(self.count.iter())
            .filter(|(b, n)| **b != 0 && **n != 0)
            .map(|(b, n)| ((b - 1) as u32, *n))
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    pub live_bytes: u64,
    pub live_allocs: u64,
    pub total_bytes: u64,
    pub total_allocs: u64,
    /// Malloc mode's first size buckets (the rest are in `size_hist`).
    pub sizes: InlineHist,
    /// Malloc mode's first lifetime buckets (the rest are in `lifetime_hist`).
    pub lifetimes: InlineHist,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllocKey {
    pub tgid: u32,
    pub _pad: u32,
    pub addr: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocInfo {
    pub size: u64,
    pub ts_ns: u64,
    pub stack: StackKey,
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocKind {
    Malloc = 1,
    Calloc = 2,
    Realloc = 3,
    Reallocarray = 4,
    PosixMemalign = 5,
    AlignedAlloc = 6,
    Memalign = 7,
    Valloc = 8,
    Pvalloc = 9,
    Free = 10,
    /// A throwing `operator new`/`new[]`: entry probe only (malloc.bpf.c).
    New = 11,
    /// A nothrow `operator new`/`new[]`.
    NewNothrow = 12,
    /// Any `operator delete`/`delete[]`.
    Delete = 13,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inflight {
    pub size: u64,
    pub old_ptr: u64,
    pub out_ptr: u64,
    pub kind: u32,
    pub depth: u32,
    pub stack: StackKey,
    pub sp: u64,
    pub fn_start: u64,
    pub fn_end: u64,
    pub deleting: u64,
}

pub mod event_kind {
    pub const MMAP: u32 = 1;
    pub const MUNMAP: u32 = 2;
    pub const MREMAP: u32 = 3;
    pub const BRK: u32 = 4;
    pub const MADVISE: u32 = 5;
    pub const EXEC: u32 = 6;
    pub const EXIT: u32 = 7;
    pub const OOM_VICTIM: u32 = 8;
    pub const FORK: u32 = 9;
    /// A target mapped a file executable (an addon's dlopen): `VmEvent`.
    pub const EXEC_MAP: u32 = 10;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    pub tgid: u32,
    pub ts_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmEvent {
    pub hdr: EventHeader,
    pub addr: u64,
    pub len: u64,
    pub old_addr: u64,
    pub old_len: u64,
    pub flags: u32,
    pub prot: u32,
    pub stack: StackKey,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEvent {
    pub hdr: EventHeader,
    pub child_tgid: u32,
    pub exit_code: i32,
    pub comm: [u8; COMM_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomEvent {
    pub hdr: EventHeader,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    pub uid: u32,
    pub oom_score_adj: i16,
    pub _pad: u16,
    pub comm: [u8; COMM_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmArgs {
    pub addr: u64,
    pub len: u64,
    pub old_len: u64,
    pub flags: u32,
    pub prot: u32,
    pub syscall: u32,
    pub _pad: u32,
    pub stack: StackKey,
}

pub const FAULT_EVENTS_BYTES: u32 = 8 << 20;
pub const MAX_FAULT_PAGES: u32 = 131072;
pub const STACK_COPY_PAGES: usize = 5;
pub const STACK_COPY_BYTES: usize = STACK_COPY_PAGES * 4096;

/// `hdr.kind` of the resident-mode records in `fault_events`.
pub mod resident_event_kind {
    pub const FAULT: u32 = 32;
    pub const MAP_STACK: u32 = 33;
    /// A `MapEvent` for a page fault whose frame-pointer walk died at once:
    /// `addr` is the faulting address, `flags` the error code.
    pub const FAULT_STACK: u32 = 34;
}

/// x86 page-fault error code bits (arch/x86/include/asm/trap_pf.h).
pub mod pf {
    pub const PROT: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const USER: u32 = 1 << 2;
    pub const INSTR: u32 = 1 << 4;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultConfig {
    pub sample_every: u32,
    pub _pad: u32,
}

/// Log2 of the bytes of one `fault_skip` granule (offheap.h).
pub const GRANULE_SHIFT: u32 = 21;
/// Pages of one granule: bits of `FaultSkipRange::touched`.
pub const GRANULE_PAGES: usize = 1 << (GRANULE_SHIFT - 12);

/// Value of `fault_skip` (key: `FaultPageKey` with page = the granule
/// number): the tracked part [lo, hi) of the granule, in bytes, and the
/// pages that faulted there (bit p of `touched`: page p of the granule).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultSkipRange {
    pub lo: u32,
    pub hi: u32,
    pub touched: [u64; GRANULE_PAGES / 64],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FaultPageKey {
    pub tgid: u32,
    pub _pad: u32,
    pub page: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultEvent {
    pub hdr: EventHeader,
    pub address: u64,
    pub ip: u64,
    pub error_code: u32,
    pub stack_id: i32,
    pub sp_word: u64,
    /// As `StackKey::async_stack`, for the faulting thread.
    pub async_stack: i32,
    pub _pad: u32,
}

/// The fixed part of C `struct map_event`; `stack_len` bytes of the raw user
/// stack follow it (C `stack[]`, at offset `size_of::<MapEvent>()`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapEvent {
    pub hdr: EventHeader,
    pub addr: u64,
    pub len: u64,
    pub old_addr: u64,
    pub old_len: u64,
    pub flags: u32,
    pub prot: u32,
    pub syscall: u32,
    pub stack_len: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub stack_base: u64,
    /// As `StackKey::async_stack`, for the thread.
    pub async_stack: i32,
    /// hashed_stacks id of the BPF walk; < 0: the raw copy follows instead.
    pub stack_id: i32,
}

const _: () = assert!(core::mem::size_of::<FaultEvent>() == 56);
const _: () = assert!(core::mem::size_of::<MapEvent>() == 104);

// ---- V8: JS frames (include/v8.bpf.h) ----

pub const V8_FRAME_BYTES: u32 = 48;
pub const V8_JS_FUNCTION_BYTES: u32 = 48;
pub const V8_LEARNED_MAPS: usize = 8;
/// Bit 63 of an `ips[]` word: a JS frame, encoded as the C header says.
pub const V8_FRAME_TAG: u64 = 1 << 63;
pub const V8_TIER_SHIFT: u32 = 61;
pub const V8_TIER_MASK: u64 = 3;
pub const V8_OFFSET_SHIFT: u32 = 44;
pub const V8_OFFSET_MAX: u64 = 0x1ffff;
pub const V8_SFI_MASK: u64 = (1 << 44) - 1;

/// C `enum v8_tier`.
pub mod v8_tier {
    pub const INTERPRETED: u64 = 0;
    pub const BASELINE: u64 = 1;
    pub const OPTIMIZED: u64 = 2;
}

/// Value of `v8_procs` (key: u32 tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V8ProcConfig {
    pub builtins_start: u64,
    pub builtins_end: u64,
    pub remap_start: u64,
    pub remap_end: u64,
    pub interp_lo: u32,
    pub interp_hi: u32,
    pub handlers_lo: u32,
    pub _pad: u32,
    pub fp_context: i16,
    pub fp_function: i16,
    pub fp_bytecode_array: i16,
    pub fp_bytecode_offset: i16,
    pub off_map: u16,
    pub off_instance_type: u16,
    pub off_shared: u16,
    pub bytecode_offset_bias: u16,
    pub type_js_function_first: u16,
    pub type_js_function_last: u16,
    pub type_shared_function_info: u16,
    pub type_bytecode_array: u16,
    /// Learned and written by the BPF decoder; userspace writes 0.
    pub bytecode_array_map: u64,
    /// Likewise.
    pub js_function_maps: [u64; V8_LEARNED_MAPS],
}

const _: () = assert!(core::mem::size_of::<V8ProcConfig>() == 144);

// ---- unwind tables (see the section of offheap.h) ----------------------------

pub const MAX_UNWIND_MAPPINGS: u32 = 65536;
pub const MAX_UNWIND_MODULES: u32 = 1024;
pub const UNWIND_PAGE_SHIFT: u32 = 12;
pub const UNWIND_SEARCH_STEPS: u32 = 13;
pub const UNWIND_UC_RBP: i16 = 120;
pub const UNWIND_UC_RSP: i16 = 160;
pub const UNWIND_UC_RIP: i16 = 168;

/// Key of `unwind_mappings`: `tgid_be` and `addr_be` are big-endian, as an
/// LPM trie compares bytes in order; `prefixlen` counts bits of both.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnwindMappingKey {
    pub prefixlen: u32,
    pub tgid_be: u32,
    pub addr_be: u64,
}

/// `enum unwind_mapping_kind`.
pub mod unwind_map_kind {
    pub const FP: u32 = 0;
    pub const TABLE: u32 = 1;
    pub const JIT: u32 = 2;
    pub const NONE: u32 = 3;
}

/// Value of `unwind_mappings`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    pub module: u32,
    pub npages: u32,
    pub kind: u32,
    pub _pad: u32,
}

/// `enum unwind_row_kind`.
pub mod unwind_row_kind {
    pub const FP: u8 = 0;
    pub const RSP: u8 = 1;
    pub const RBP: u8 = 2;
    pub const PLT: u8 = 3;
    pub const DEREF_RSP: u8 = 4;
    pub const DRAP: u8 = 5;
    pub const SIGNAL: u8 = 6;
    pub const END: u8 = 7;
    pub const STOP: u8 = 8;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnwindRow {
    pub pc: u32,
    pub kind: u8,
    pub rbp: u8,
    pub cfa: i16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindPage {
    pub first: u32,
    pub count: u32,
}

/// One entry of a module's table (C `union unwind_entry`): a page-index
/// entry or a row, by position.
#[repr(C)]
#[derive(Clone, Copy)]
pub union UnwindEntry {
    pub row: UnwindRow,
    pub page: UnwindPage,
}

const _: () = assert!(core::mem::size_of::<UnwindEntry>() == 8);
const _: () = assert!(core::mem::size_of::<UnwindMapping>() == 40);

/// `aya::Pod` for the types userspace reads from or writes to maps.
#[cfg(feature = "user")]
mod pod {
    use super::*;
    macro_rules! pod {
        ($($t:ty),*) => { $( unsafe impl aya::Pod for $t {} )* };
    }
    pod!(
        TargetInfo,
        TrafficCounts,
        StackKey,
        StackStats,
        AllocKey,
        AllocInfo,
        Inflight,
        VmArgs,
        VmEvent,
        StackIps,
        ProcEvent,
        OomEvent,
        FaultConfig,
        FaultPageKey,
        FaultSkipRange,
        HistKey,
        WorkKey,
        V8ProcConfig,
        UnwindMappingKey,
        UnwindMapping,
        UnwindEntry
    );
}
