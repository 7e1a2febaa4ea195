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

/// Program names, exactly as the programs are named in the BPF object.
pub mod programs {
    /// The uprobe program of every malloc-family function but free; the
    /// attach cookie (`MallocProbe::kind`) tells it which one it is.
    pub const ALLOC_ENTER: &str = "alloc_enter";
    /// The uretprobe program of every malloc-family function but free.
    pub const ALLOC_EXIT: &str = "alloc_exit";
    /// The uprobe program of free (no return probe).
    pub const FREE_ENTER: &str = "free_enter";

    /// One traced function of the malloc family: its symbol, its
    /// `enum alloc_kind` (the attach cookie), and whether tracing cannot
    /// start without it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MallocProbe {
        pub symbol: &'static str,
        pub kind: super::AllocKind,
        pub required: bool,
    }

    impl MallocProbe {
        /// The programs attached to this function: the entry uprobe, and
        /// the uretprobe (None for free and delete, which return nothing to
        /// count, and for a throwing operator new: a uretprobe would break
        /// the exceptions thrown through it, see malloc.bpf.c).
        pub const fn programs(&self) -> (&'static str, Option<&'static str>) {
            match self.kind {
                super::AllocKind::Free | super::AllocKind::Delete => (FREE_ENTER, None),
                super::AllocKind::New => (ALLOC_ENTER, None),
                _ => (ALLOC_ENTER, Some(ALLOC_EXIT)),
            }
        }

        /// Whether this is a C++ allocation function (operator new or
        /// delete), probed in the module that defines them.
        pub const fn is_cxx(&self) -> bool {
            matches!(
                self.kind,
                super::AllocKind::New | super::AllocKind::NewNothrow | super::AllocKind::Delete
            )
        }

        /// The attach cookie: the kind, and for a throwing operator new the
        /// length of its function in the high 32 bits (offheap.h, enum
        /// alloc_kind). None when that length is needed and unknown: such a
        /// new could never be matched with the allocation it makes.
        pub const fn cookie(&self, fn_len: u64) -> Option<u64> {
            match self.kind {
                super::AllocKind::New if fn_len == 0 || fn_len > u32::MAX as u64 => None,
                super::AllocKind::New => Some(self.kind as u64 | fn_len << 32),
                _ => Some(self.kind as u64),
            }
        }
    }

    const fn probe(symbol: &'static str, kind: super::AllocKind, required: bool) -> MallocProbe {
        MallocProbe {
            symbol,
            kind,
            required,
        }
    }

    /// The attach table of malloc mode. glibc, jemalloc, tcmalloc and mimalloc
    /// all define the required ones; the others are attached when present.
    /// The C++ ones (`is_cxx`) are the Itanium C++ ABI names of operator new
    /// and delete on LP64 (`m` is size_t), which libstdc++ and libc++ both
    /// define.
    pub const MALLOC_FAMILY: [MallocProbe; 30] = {
        use super::AllocKind::*;
        [
            probe("malloc", Malloc, true),
            probe("calloc", Calloc, true),
            probe("realloc", Realloc, true),
            probe("free", Free, true),
            probe("reallocarray", Reallocarray, false),
            probe("posix_memalign", PosixMemalign, false),
            probe("aligned_alloc", AlignedAlloc, false),
            probe("memalign", Memalign, false),
            probe("valloc", Valloc, false),
            probe("pvalloc", Pvalloc, false),
            probe("_Znwm", New, false),
            probe("_Znam", New, false),
            probe("_ZnwmSt11align_val_t", New, false),
            probe("_ZnamSt11align_val_t", New, false),
            probe("_ZnwmRKSt9nothrow_t", NewNothrow, false),
            probe("_ZnamRKSt9nothrow_t", NewNothrow, false),
            probe("_ZnwmSt11align_val_tRKSt9nothrow_t", NewNothrow, false),
            probe("_ZnamSt11align_val_tRKSt9nothrow_t", NewNothrow, false),
            probe("_ZdlPv", Delete, false),
            probe("_ZdaPv", Delete, false),
            probe("_ZdlPvm", Delete, false),
            probe("_ZdaPvm", Delete, false),
            probe("_ZdlPvSt11align_val_t", Delete, false),
            probe("_ZdaPvSt11align_val_t", Delete, false),
            probe("_ZdlPvmSt11align_val_t", Delete, false),
            probe("_ZdaPvmSt11align_val_t", Delete, false),
            probe("_ZdlPvRKSt9nothrow_t", Delete, false),
            probe("_ZdaPvRKSt9nothrow_t", Delete, false),
            probe("_ZdlPvSt11align_val_tRKSt9nothrow_t", Delete, false),
            probe("_ZdaPvSt11align_val_tRKSt9nothrow_t", Delete, false),
        ]
    };

    /// Where a system-wide program attaches.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Attach {
        /// A perf tracepoint (category, event), for records whose fields a
        /// BTF raw tracepoint does not carry.
        TracePoint(&'static str, &'static str),
        /// A BTF-typed raw tracepoint (tp_btf): cheaper per event, and
        /// detached without the serialized grace period of a perf
        /// tracepoint.
        BtfTracePoint(&'static str),
        /// A raw tracepoint, named at attach: one program can serve
        /// several, and is verified once (tp_btf names its tracepoint at
        /// load).
        RawTracePoint(&'static str),
    }

    /// One system-wide program and where it attaches.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Hook {
        pub program: &'static str,
        pub attach: Attach,
    }

    const fn btf(program: &'static str, name: &'static str) -> Hook {
        Hook {
            program,
            attach: Attach::BtfTracePoint(name),
        }
    }

    const fn raw(program: &'static str, name: &'static str) -> Hook {
        Hook {
            program,
            attach: Attach::RawTracePoint(name),
        }
    }

    const fn perf(program: &'static str, category: &'static str, name: &'static str) -> Hook {
        Hook {
            program,
            attach: Attach::TracePoint(category, name),
        }
    }

    /// lifecycle.bpf.c, in every mode. mark_victim needs the perf record's
    /// RSS fields.
    pub const LIFECYCLE: [Hook; 4] = [
        btf("sched_process_exec", "sched_process_exec"),
        btf("sched_process_exit", "sched_process_exit"),
        btf("sched_process_fork", "sched_process_fork"),
        perf("mark_victim", "oom", "mark_victim"),
    ];

    /// vm.bpf.c: malloc mode's mapping changes.
    pub const MALLOC_VM: [Hook; 2] = [
        btf("vm_sys_enter", "sys_enter"),
        btf("vm_sys_exit", "sys_exit"),
    ];

    /// fault.bpf.c: resident mode. One program serves both page faults,
    /// and one both syscall exits (each loaded once: each carries the
    /// stack walker). The syscall exits stay perf tracepoints: a raw
    /// sys_exit would run for every syscall of the host, in the DaemonSet's
    /// mode.
    pub const RESIDENT: [Hook; 4] = [
        raw("resident_fault_enter", "page_fault_user"),
        raw("resident_fault_enter", "page_fault_kernel"),
        perf("resident_map_exit", "syscalls", "sys_exit_mmap"),
        perf("resident_map_exit", "syscalls", "sys_exit_mremap"),
    ];

    /// threadpool.bpf.c: the uprobe program of libuv's threadpool
    /// functions, in every mode; the cookie (`ThreadpoolProbe::kind`) tells
    /// it which one it is.
    pub const THREADPOOL_ENTER: &str = "threadpool_enter";

    /// One traced libuv function: its symbol, its `enum threadpool_kind`
    /// (the attach cookie) and whether the threadpool cannot be followed
    /// without it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ThreadpoolProbe {
        pub symbol: &'static str,
        pub kind: u32,
        pub required: bool,
    }

    /// The attach table of libuv's threadpool, probed in the module that
    /// defines `uv_queue_work` (node itself when it bundles libuv, as the
    /// official builds do; libuv.so or libnode.so otherwise).
    /// `uv__queue_work` is static: it needs the module's .symtab. All are
    /// required: without the run probe no work is linked, without the done
    /// probe a link would outlive its work.
    pub const THREADPOOL: [ThreadpoolProbe; 3] = [
        ThreadpoolProbe {
            symbol: "uv_queue_work",
            kind: super::threadpool_kind::QUEUE,
            required: true,
        },
        ThreadpoolProbe {
            symbol: "uv__queue_work",
            kind: super::threadpool_kind::RUN,
            required: true,
        },
        ThreadpoolProbe {
            symbol: "uv_async_send",
            kind: super::threadpool_kind::DONE,
            required: true,
        },
    ];

    /// traffic.bpf.c, in every mode: bytes received on sockets (a BTF raw
    /// tracepoint, run only by socket reads) and connections accepted. The
    /// accept stays a perf tracepoint: a raw sys_exit would run for every
    /// syscall of the host; this one runs for accept4 only, at the price of
    /// a grace period when it detaches.
    pub const TRAFFIC: [Hook; 2] = [
        btf("traffic_sock_recv", "sock_recv_length"),
        perf("traffic_accept4_exit", "syscalls", "sys_exit_accept4"),
    ];

    /// `const volatile` knobs in .rodata, set before load.
    pub const KNOB_PAGE_SIZE: &str = "page_size";
    /// Bits of a stack's hash that pick its home slot in `hashed_stacks`.
    pub const KNOB_STACK_HASH_BITS: &str = "stack_hash_bits";
    /// `const volatile __s64`: how many `allocs` entries may stay marked
    /// free for reuse (malloc.bpf.c); set to a quarter of the map.
    pub const KNOB_MAX_FREE_ALLOCS: &str = "max_free_allocs";
    /// `const volatile bool` (lifecycle.bpf.c): report every exec and OOM
    /// victim on the host, not only those of targets (`watch`).
    pub const KNOB_WATCH_EXEC: &str = "watch_exec";
}

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

/// Indexes into the per-CPU `counters` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    AllocsFull = 0,
    StackStatsFull = 1,
    StackIdFailed = 2,
    InflightFull = 3,
    EventsLost = 4,
    FreeUnknown = 5,
    ReadFailed = 6,
    FaultStatsFull = 7,
    OomKills = 8,
    HistFull = 9,
    TargetsFull = 10,
    NewUnfinished = 11,
    WorkUnlinked = 12,
}

pub const COUNTER_MAX: u32 = 13;

impl Counter {
    pub const ALL: [Counter; COUNTER_MAX as usize] = [
        Counter::AllocsFull,
        Counter::StackStatsFull,
        Counter::StackIdFailed,
        Counter::InflightFull,
        Counter::EventsLost,
        Counter::FreeUnknown,
        Counter::ReadFailed,
        Counter::FaultStatsFull,
        Counter::OomKills,
        Counter::HistFull,
        Counter::TargetsFull,
        Counter::NewUnfinished,
        Counter::WorkUnlinked,
    ];

    /// Name used in reports and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::AllocsFull => "allocs_map_full",
            Counter::StackStatsFull => "stack_stats_map_full",
            Counter::StackIdFailed => "stack_id_failed",
            Counter::InflightFull => "inflight_map_full",
            Counter::EventsLost => "events_lost",
            Counter::FreeUnknown => "free_of_untracked",
            Counter::ReadFailed => "user_read_failed",
            Counter::FaultStatsFull => "fault_stats_map_full",
            Counter::OomKills => "oom_kills",
            Counter::HistFull => "histogram_map_full",
            Counter::TargetsFull => "targets_map_full",
            Counter::NewUnfinished => "operator_new_unfinished",
            Counter::WorkUnlinked => "threadpool_work_unlinked",
        }
    }

    /// Whether the counter means data was lost (as opposed to informational).
    pub const fn is_drop(self) -> bool {
        !matches!(
            self,
            Counter::FreeUnknown
                | Counter::OomKills
                | Counter::NewUnfinished
                | Counter::WorkUnlinked
        )
    }
}

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
