//! Program names, exactly as the programs are named in the BPF object, and
//! where each attaches (tracer-ebpf/src/*.bpf.c).

/// The uprobe program of every malloc-family function but free; the
/// attach cookie (`MallocProbe::cookie`) tells it which one it is. It runs
/// the threadpool probes too (`THREADPOOL_ENTER`).
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

/// The uprobe program of libuv's threadpool functions, in every mode:
/// malloc mode's entry program, which runs threadpool.bpf.c for a cookie
/// with `COOKIE_THREADPOOL` (`ThreadpoolProbe::cookie`). One program, so
/// that the stack walker in it is verified once.
pub const THREADPOOL_ENTER: &str = ALLOC_ENTER;

/// C `OFFHEAP_COOKIE_THREADPOOL`.
pub const COOKIE_THREADPOOL: u64 = 1 << 16;

/// One traced libuv function: its symbol, its `enum threadpool_kind`
/// (in its attach cookie, `cookie`) and whether the threadpool cannot be
/// followed without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadpoolProbe {
    pub symbol: &'static str,
    pub kind: u32,
    pub required: bool,
}

impl ThreadpoolProbe {
    /// The attach cookie: `COOKIE_THREADPOOL` and the kind.
    pub const fn cookie(&self) -> u64 {
        COOKIE_THREADPOOL | self.kind as u64
    }
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
