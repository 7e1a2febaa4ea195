/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/*
 * The ABI between the BPF programs and userspace: map names and sizes, keys,
 * values, ring-buffer events and error counters. This file is the single source
 * of truth; tracer-common/src/lib.rs mirrors it and
 * tracer-common/tests/abi_layout.rs fails when the two drift.
 *
 * It must compile both for `-target bpf` and for the host (the layout test
 * includes it from a plain C program), so it only uses <linux/types.h> types.
 */
#ifndef OFFHEAP_H
#define OFFHEAP_H

#include <linux/types.h>

/* ---- sizes ---------------------------------------------------------------- */

/* Default map sizes; userspace may override max_entries before load. */
#define OFFHEAP_MAX_TARGETS 4096
#define OFFHEAP_MAX_ALLOCS (1 << 20)
#define OFFHEAP_MAX_STACK_STATS 65536
#define OFFHEAP_MAX_INFLIGHT 16384
#define OFFHEAP_MAX_STACK_DEPTH 127
#define OFFHEAP_EVENTS_BYTES (4 << 20)
#define OFFHEAP_COMM_LEN 16
/* Entries of hashed_stacks: every stack, walked in BPF by walk.bpf.c (malloc
 * mode's uprobes and mapping tracepoints, resident mode's faults). */
#define OFFHEAP_MAX_HASHED_STACKS 65536
/* Bytes of user stack copied at once by the BPF frame-pointer walk
 * (walk.bpf.c); frames outside it cost one more copy. */
#define OFFHEAP_STACK_WINDOW 8192
/* Slots tried after a stack's home slot in hashed_stacks before giving up. */
#define OFFHEAP_STACK_HASH_PROBES 32
/* Entries of size_hist and of lifetime_hist: (stack, bucket) pairs. */
#define OFFHEAP_MAX_HIST 262144

/* ---- map and program names (mirrored as Rust constants) ------------------- */
/* Maps: targets, allocs, inflight, stack_stats, counters, events, vm_inflight,
 * hashed_stacks, stack_scratch, size_hist, lifetime_hist, resident mode's
 * fault_* maps, v8_procs (include/v8.bpf.h), unwind_mappings and
 * unwind_tables (include/unwind.bpf.h), queued_work (threadpool.bpf.c).
 * Programs: alloc_enter / alloc_exit /
 * free_enter (the malloc family, told apart by their attach cookie: enum
 * alloc_kind; alloc_enter also runs libuv's threadpool probes,
 * threadpool.bpf.c, cookie OFFHEAP_COOKIE_THREADPOOL | enum
 * threadpool_kind), vm_sys_enter / vm_sys_exit (vm.bpf.c), resident_*
 * (fault.bpf.c), and the lifecycle programs. */

/* ---- targets -------------------------------------------------------------- */

/* Value of the `targets` hash (key: __u32 tgid). Probes return at once for a
 * tgid that is not in this map. */
struct target_info {
	__u32 flags;   /* OFFHEAP_TARGET_* */
	__u32 _pad;
};

#define OFFHEAP_TARGET_MALLOC (1u << 0)   /* malloc-family uprobes feed stack_stats */
#define OFFHEAP_TARGET_VM (1u << 1)       /* mmap/munmap/mremap/brk/madvise events */
#define OFFHEAP_TARGET_FAULTS (1u << 2)   /* resident mode: user page faults */
#define OFFHEAP_TARGET_FOLLOW (1u << 3)   /* children forked by the target become targets */

/* ---- malloc mode ---------------------------------------------------------- */

/* A stack as counted: the id of its frames in `hashed_stacks` (key: __s32
 * id), for one process. The id is the home slot of the stack's 64-bit hash
 * (its low OFFHEAP_STACK_ID_BITS bits), or one of the
 * OFFHEAP_STACK_HASH_PROBES slots after it when that slot holds a different
 * stack (a different `hash` or `nr`): no two stacks share an id. */
struct stack_key {
	__u32 tgid;
	__s32 stack_id;   /* < 0: the stack could not be stored (counted) */
	/* Work run on libuv's threadpool (threadpool.bpf.c): 1 + the
	 * hashed_stacks id of the stack that queued the work this thread was
	 * running; 0: none (the thread ran no queued work then). The stack as
	 * reported is stack_id's frames, a `[libuv threadpool]` marker, then
	 * this stack's frames. 1 + so that a zeroed key means "none". */
	__s32 async_stack;
};

#define OFFHEAP_STACK_ID_BITS 30

/* Value of `hashed_stacks`: a user stack, innermost first, and its hash. */
struct stack_ips {
	__u32 nr;        /* valid entries in ips */
	__u32 flags;     /* OFFHEAP_STACK_* */
	__u64 hash;      /* over ips[0..nr) and flags (walk.bpf.c, stack_hash_step) */
	__u64 ips[OFFHEAP_MAX_STACK_DEPTH];
};

/* stack_ips.flags: the walk stopped before the outermost frame (an address
 * in no executable mapping, memory it could not read, a frame pointer below
 * the stack pointer, CFI it cannot follow, or the depth limit). A stack
 * without it ended where the thread started (_start, the thread's start
 * routine: CFI says the return address is undefined, or it is 0). */
#define OFFHEAP_STACK_TRUNCATED (1u << 0)

/* The first OFFHEAP_INLINE_BUCKETS distinct histogram buckets a stack's
 * samples fall in (see struct hist_key), counted in the stack's own
 * `stack_stats` entry, which the program has just looked up anyway. A
 * size_hist/lifetime_hist update is one more hash lookup, most often a cache
 * miss: dropping both maps' updates cut malloc mode's programs by about
 * 200 ns per malloc/free pair (bpf_stats, node's allocation loop). Most
 * stacks allocate one size, or a few; only the buckets past the first ones go
 * to the maps. bucket[i] is 1 + the bucket counted in count[i] (0: the slot
 * is free); a slot is claimed once, by compare-and-swap, and never changes. */
#define OFFHEAP_INLINE_BUCKETS 8

struct inline_hist {
	__u64 bucket[OFFHEAP_INLINE_BUCKETS];   /* 64-bit: BPF has no 32-bit cmpxchg before -mcpu=v3 */
	__u64 count[OFFHEAP_INLINE_BUCKETS];
};

/* Value of `stack_stats` (key: struct stack_key). Updated with atomic adds. */
struct stack_stats {
	__u64 live_bytes;
	__u64 live_allocs;
	__u64 total_bytes;
	__u64 total_allocs;
	struct inline_hist sizes;       /* malloc mode: see size_hist */
	struct inline_hist lifetimes;   /* malloc mode: see lifetime_hist */
};

/* Key and value of `allocs`: one outstanding allocation. */
struct alloc_key {
	__u32 tgid;
	__u32 _pad;
	__u64 addr;
};

struct alloc_info {
	__u64 size;
	__u64 ts_ns;          /* bpf_ktime_get_ns() at allocation, for lifetimes;
	                       * 0: freed, the entry kept for reuse */
	struct stack_key stack;
};

/* Distributions per stack (malloc mode): `size_hist` counts allocations by
 * size, `lifetime_hist` freed allocations by nanoseconds from allocation to
 * free. Key: struct hist_key; value: __u64 count, added to atomically.
 * Buckets are log-linear, as in HDR histograms: values below 8 have a bucket
 * each; above, each power of two [2^e, 2^(e+1)) is cut in 8 equal parts, so
 * bucket = (e - 2) * 8 + the 3 bits after the leading one. The lower bound of
 * a bucket is within 12.5% of every value in it, and exact for powers of two
 * (the sizes allocators favour). */
#define OFFHEAP_HIST_SUB_BITS 3
#define OFFHEAP_HIST_BUCKETS 496   /* bucket of 2^64 - 1, plus one */

struct hist_key {
	struct stack_key stack;
	__u32 bucket;
};

/* Which traced function a thread is inside (inflight.kind); also the attach
 * cookie of the alloc_enter / free_enter uprobe on that function: the kind in
 * its low 32 bits and, for OFFHEAP_KIND_NEW, the function's length in bytes
 * in its high 32 (malloc.bpf.c checks that new's allocation is made by new). */
enum alloc_kind {
	OFFHEAP_KIND_MALLOC = 1,
	OFFHEAP_KIND_CALLOC = 2,
	OFFHEAP_KIND_REALLOC = 3,
	OFFHEAP_KIND_REALLOCARRAY = 4,
	OFFHEAP_KIND_POSIX_MEMALIGN = 5,
	OFFHEAP_KIND_ALIGNED_ALLOC = 6,
	OFFHEAP_KIND_MEMALIGN = 7,
	OFFHEAP_KIND_VALLOC = 8,
	OFFHEAP_KIND_PVALLOC = 9,
	OFFHEAP_KIND_FREE = 10,
	/* C++ (Itanium C++ ABI, libstdc++ and libc++ alike): every operator new
	 * takes the size first, whatever its alignment or nothrow arguments;
	 * every operator delete takes the block first. */
	OFFHEAP_KIND_NEW = 11,          /* throwing new/new[]: entry probe only */
	OFFHEAP_KIND_NEW_NOTHROW = 12,  /* nothrow new/new[]: entry and return probes */
	OFFHEAP_KIND_DELETE = 13,       /* delete/delete[], sized or aligned: free_enter */
};

/* The outermost traced call a thread is in (part of the thread's `inflight`
 * task-local storage). `depth` counts nested traced calls so that glibc's
 * reallocarray -> realloc, and mmap/brk done by the allocator itself, are
 * counted once, by the outermost call. */
struct inflight {
	__u64 size;
	__u64 old_ptr;   /* realloc/reallocarray: the block being resized */
	__u64 out_ptr;   /* posix_memalign: where the result is written */
	__u32 kind;      /* enum alloc_kind */
	__u32 depth;
	struct stack_key stack;
	__u64 sp;        /* user stack pointer at the outermost entry */
	/* An operator new still running (kind OFFHEAP_KIND_NEW): the new
	 * function it is in now, [fn_start, fn_end). */
	__u64 fn_start;
	__u64 fn_end;
	/* The block an operator delete has accounted for, until its own free. */
	__u64 deleting;
};

/* ---- virtual memory events (ring buffer `events`) -------------------------- */

enum event_kind {
	OFFHEAP_EV_MMAP = 1,     /* anonymous private mapping created */
	OFFHEAP_EV_MUNMAP = 2,
	OFFHEAP_EV_MREMAP = 3,
	OFFHEAP_EV_BRK = 4,      /* break moved from addr to addr + len (len signed) */
	OFFHEAP_EV_MADVISE = 5,  /* pages given back: DONTNEED / FREE / REMOVE */
	OFFHEAP_EV_EXEC = 6,
	OFFHEAP_EV_EXIT = 7,
	OFFHEAP_EV_OOM_VICTIM = 8,
	OFFHEAP_EV_FORK = 9,
	OFFHEAP_EV_EXEC_MAP = 10, /* a target mapped a file executable (dlopen): struct vm_event */
};

struct event_header {
	__u32 kind;      /* enum event_kind */
	__u32 tgid;
	__u64 ts_ns;
};

/* MMAP: [addr, addr+len). MUNMAP/MADVISE: [addr, addr+len) given back.
 * MREMAP: old [old_addr, old_addr+old_len) became [addr, addr+len).
 * BRK: old break old_addr, new break addr. */
struct vm_event {
	struct event_header hdr;
	__u64 addr;
	__u64 len;
	__u64 old_addr;
	__u64 old_len;
	__u32 flags;     /* mmap flags, or madvise advice */
	__u32 prot;
	struct stack_key stack;
};

/* EXEC / EXIT / FORK. For FORK, tgid is the parent and child_tgid the child. */
struct proc_event {
	struct event_header hdr;
	__u32 child_tgid;
	__s32 exit_code;
	char comm[OFFHEAP_COMM_LEN];
};

/* OOM_VICTIM, from the oom/mark_victim tracepoint; sizes in KiB as the
 * tracepoint reports them. */
struct oom_event {
	struct event_header hdr;
	__u64 total_vm_kb;
	__u64 anon_rss_kb;
	__u64 file_rss_kb;
	__u64 shmem_rss_kb;
	__u64 pgtables_kb;
	__u32 uid;
	__s16 oom_score_adj;
	__u16 _pad;
	char comm[OFFHEAP_COMM_LEN];
};

/* Value of `vm_inflight` (key: __u64 pid_tgid): syscall arguments kept from
 * sys_enter_* to sys_exit_*. */
struct vm_args {
	__u64 addr;
	__u64 len;
	__u64 old_len;
	__u32 flags;
	__u32 prot;
	__u32 syscall;   /* enum event_kind of the syscall in flight */
	__u32 _pad;
	struct stack_key stack;
};

/* ---- error counters (`counters`, a per-CPU array) --------------------------- */

enum counter {
	OFFHEAP_CTR_ALLOCS_FULL = 0,      /* allocs map full: an allocation was not tracked */
	OFFHEAP_CTR_STACK_STATS_FULL = 1, /* stack_stats full: a stack was not counted */
	OFFHEAP_CTR_STACK_ID_FAILED = 2,  /* a stack could not be stored in hashed_stacks */
	OFFHEAP_CTR_INFLIGHT_FULL = 3,    /* inflight/vm_inflight full */
	OFFHEAP_CTR_EVENTS_LOST = 4,      /* ring buffer reserve failed */
	OFFHEAP_CTR_FREE_UNKNOWN = 5,     /* free of an address not in allocs (allocated before tracing) */
	OFFHEAP_CTR_READ_FAILED = 6,      /* bpf_probe_read_user failed */
	OFFHEAP_CTR_FAULT_STATS_FULL = 7, /* resident mode: fault_stats full */
	OFFHEAP_CTR_OOM_KILLS = 8,        /* oom/mark_victim fired, for any process (informational) */
	OFFHEAP_CTR_HIST_FULL = 9,        /* size_hist/lifetime_hist full: a sample was not counted */
	OFFHEAP_CTR_TARGETS_FULL = 10,    /* targets full: a followed child was not traced */
	OFFHEAP_CTR_NEW_UNFINISHED = 11,  /* an operator new whose allocation was not seen
	                                   * (it threw, or its new_handler allocated) */
	OFFHEAP_CTR_WORK_UNLINKED = 12,   /* threadpool work run whose queuing stack is not
	                                   * known (queued before tracing, or evicted):
	                                   * its allocations carry no queuing stack */
	OFFHEAP_CTR_VMA_BUSY = 13,        /* the walker could not ask the kernel whether a pc is
	                                   * code (bpf_find_vma: EBUSY, the mmap lock was
	                                   * taken): the bytes before it decided, for that
	                                   * walk only (informational) */
	OFFHEAP_CTR_MAX = 14,
};


/* ---- libuv's threadpool (threadpool.bpf.c) ---------------------------------- */
/* Work queued with uv_queue_work (node's ThreadPoolWork: zlib, crypto jobs;
 * N-API async work) runs on a worker thread, whose stack ends at libuv's
 * worker() <- start_thread: the JS that asked for it is on the queuing
 * thread. Three libuv functions, probed by malloc mode's entry program
 * (alloc_enter) with OFFHEAP_COOKIE_THREADPOOL and the function's enum
 * threadpool_kind in their attach cookie: one program, so that the stack
 * walker it carries is verified once for both (12.4k instructions
 * processed, against 8.7k + 10.3k as two programs). */
#define OFFHEAP_COOKIE_THREADPOOL (1U << 16)
enum threadpool_kind {
	/* uv_queue_work(loop, req, work_cb, after_work_cb), on the queuing
	 * thread: its stack, in queued_work under the request's uv__work. */
	OFFHEAP_TP_QUEUE = 1,
	/* uv__queue_work(struct uv__work *w), libuv's static function that
	 * worker() calls for a uv_queue_work request (and only for those:
	 * w->work of fs, dns... requests is another function): the worker
	 * thread is linked to the queuing stack until ... */
	OFFHEAP_TP_RUN = 2,
	/* ... uv_async_send, which worker() calls right after w->work(w)
	 * returns, from the same stack depth (libuv src/threadpool.c,
	 * 1.x: uv_async_send(&w->loop->wq_async)). A call from deeper in the
	 * stack is the work's own (an addon's thread-safe function) and ends
	 * nothing. */
	OFFHEAP_TP_DONE = 3,
};

/* offsetof(uv_work_t, work_req) on LP64, libuv 1.x (include/uv.h:
 * UV_REQ_FIELDS = data, type, reserved[6]: 64 bytes; then loop, work_cb,
 * after_work_cb; then work_req, the struct uv__work that worker() runs).
 * uv__queue_work begins `lea -0x58(%rdi), ...` in node 18, 20 and 22. */
#define OFFHEAP_UV_WORK_REQ_OFFSET 88
/* Requests queued and not yet started, per process (an LRU set: a request
 * cancelled before it ran is never looked up again). */
#define OFFHEAP_MAX_QUEUED_WORK 16384

/* Key of `queued_work` (value: __s32, 1 + the queuing stack's id). */
struct work_key {
	__u32 tgid;
	__u32 _pad;
	__u64 work;   /* the request's struct uv__work (req + OFFHEAP_UV_WORK_REQ_OFFSET) */
};

/* ---- traffic (traffic.bpf.c; read by tracer/src/accounting/traffic.rs) ------ */

/* Value of `traffic` (a per-CPU hash, key: __u32 tgid): what a target has
 * received since its entry was made, on this CPU; userspace sums the CPUs
 * and takes the difference at each interval. Added to atomically: a
 * tracepoint program may be preempted (it runs with migration disabled
 * only), so another program on this CPU could run in between. */
struct traffic_counts {
	__u64 accepted;         /* accept4(2) calls that returned a connection */
	__u64 received_bytes;   /* bytes returned by sock_recvmsg (read, recv*) */
};

/* ---- resident mode (fault.bpf.c; read by tracer/src/accounting/resident.rs) -- */
/* Maps: fault_events (ring buffer), fault_scratch (per-CPU buffer for a raw
 * stack copy). Kept apart from `events` so that resident mode has one owner
 * of its maps; fault stacks go to hashed_stacks. */

#define OFFHEAP_FAULT_EVENTS_BYTES (8 << 20)
/* Pages already reported per target (an LRU set): a page is reported on its
 * first fault only, as first-touch attribution needs nothing more. */
#define OFFHEAP_MAX_FAULT_PAGES 131072
/* Raw user stack copied at mmap/mremap exit, in whole pages from the page of
 * sp up: at least 16 KiB above sp. */
#define OFFHEAP_STACK_COPY_PAGES 5
#define OFFHEAP_STACK_COPY_BYTES (OFFHEAP_STACK_COPY_PAGES * 4096)

enum resident_event_kind {
	OFFHEAP_EV_FAULT = 32,      /* struct fault_event */
	OFFHEAP_EV_MAP_STACK = 33,  /* struct map_event (mmap or mremap) */
	OFFHEAP_EV_FAULT_STACK = 34, /* struct map_event for a fault whose
	                               * frame-pointer walk died at once */
};

/* Parts of 2 MiB granules covered by mappings created while tracing (mapping
 * attribution): faults there need no stack, the mapping's creation stack is
 * charged. One [lo, hi) byte range per granule, merged when contiguous; a
 * miss only costs a stack walk. Key: struct fault_page_key with page = the
 * granule number (address >> 21). Each entry also marks the pages of the
 * granule that faulted since a mapping covered them (`touched`): the pages a
 * process made resident there, known after its exit, when its pagemap can no
 * longer be read (a command shorter than one interval). */
#define OFFHEAP_GRANULE_SHIFT 21
#define OFFHEAP_GRANULE_PAGES (1 << (OFFHEAP_GRANULE_SHIFT - 12))
#define OFFHEAP_MAX_SKIP_GRANULES 65536
/* glibc thread arenas: PROT_NONE + MAP_NORESERVE mappings of HEAP_MAX_SIZE
 * (64 MiB on 64-bit) or twice it (malloc/arena.c:new_heap). Shared memory:
 * first-touch attribution. accounting/resident/mod.rs uses the same rule. */
#define OFFHEAP_GLIBC_HEAP_MAX (64ULL << 20)

/* Value of `fault_config` (an array of one), set by userspace after load. */
struct fault_config {
	/* Take the stack of 1 in N first-touch pages (chosen at random, so that
	 * each sampled page stands for N: an unbiased estimate). 0 or 1: all. */
	__u32 sample_every;
	__u32 _pad;
};

struct fault_skip_range {
	__u32 lo;
	__u32 hi;
	/* Bit p: page p of the granule faulted while a mapping covered it
	 * (set by the fault programs, cleared for a new mapping's pages). */
	__u64 touched[OFFHEAP_GRANULE_PAGES / 64];
};

struct fault_page_key {
	__u32 tgid;
	__u32 _pad;
	__u64 page;
};

/* One user page fault of a target (exceptions/page_fault_user). */
struct fault_event {
	struct event_header hdr;
	__u64 address;
	__u64 ip;
	__u32 error_code;   /* x86 PF_* bits: 1 present, 2 write, 4 user */
	__s32 stack_id;     /* hashed_stacks id of the frame-pointer walk; < 0 none */
	/* [sp] at the fault: the return address of a leaf function that has no
	 * frame (glibc memset/memcpy), which the frame-pointer walk skips. */
	__u64 sp_word;
	__s32 async_stack;  /* as struct stack_key's, for the faulting thread */
	__u32 _pad;
};

/* A mapping created (mmap) or moved (mremap) by a target, with the stack at
 * the syscall's exit: the BPF walker's (stack_id), or when that walk died at
 * once (code the unwind tables do not cover yet), a raw copy of the user
 * stack for the userspace CFI unwinder. The same for FAULT_STACK, a fault
 * whose walk died so. Variable length: only the fixed part and `stack_len`
 * bytes of stack[] are sent. */
struct map_event {
	struct event_header hdr;
	/* FAULT_STACK: addr is the faulting address, flags the error code. */
	__u64 addr;        /* result: new mapping start */
	__u64 len;         /* new length */
	__u64 old_addr;    /* mremap only */
	__u64 old_len;     /* mremap only */
	__u32 flags;       /* mmap flags (MAP_*), or mremap flags */
	__u32 prot;        /* mmap prot; 0 for mremap */
	__u32 syscall;     /* OFFHEAP_EV_MMAP or OFFHEAP_EV_MREMAP */
	__u32 stack_len;   /* bytes of stack[] that were readable (whole pages) */
	__u64 ip;          /* user registers at the syscall */
	__u64 sp;
	__u64 bp;
	__u64 stack_base;  /* user address of stack[0]: sp rounded down to its page */
	__s32 async_stack; /* as struct stack_key's, for the thread */
	__s32 stack_id;    /* hashed_stacks id of the walk; < 0: stack[] has the copy */
	__u8 stack[OFFHEAP_STACK_COPY_BYTES];
};

/* ---- V8: JS frames (include/v8.bpf.h; read by tracer/src/symbols/v8/) ------ */
/* The per-frame decoder of V8's JS frames that the stack walker calls for a
 * frame whose pc lies in V8 code. The contract, in full, is the doc comment
 * of tracer/src/symbols/v8/mod.rs. Map: v8_procs (key: __u32 tgid, value:
 * struct v8_proc_config), filled by userspace from the node binary's
 * v8dbg_* symbols when a target that maps V8 is added, deleted with it. */

/* Bytes below a frame pointer copied at once: every JS frame slot the
 * decoder reads (src/execution/frame-constants.h: context or frame-type
 * marker at fp-8, JSFunction at fp-16, BytecodeArray at fp-32, bytecode
 * offset at fp-40 in V8 10-12) lies in [fp - OFFHEAP_V8_FRAME_BYTES, fp). */
#define OFFHEAP_V8_FRAME_BYTES 48
/* Bytes of a JSFunction copied at once: its map and `shared` lie in them. */
#define OFFHEAP_V8_JS_FUNCTION_BYTES 48

/* JSFunction maps the decoder remembers per process (v8_proc_config). */
#define OFFHEAP_V8_LEARNED_MAPS 8

/* A JS frame in stack_ips.ips[] (instead of its pc):
 *   bit 63       1: a JS frame (user pcs are below 2^56 on x86-64)
 *   bits 61..62  tier (enum v8_tier)
 *   bits 44..60  bytecode offset, interpreted frames only; saturates at
 *                OFFHEAP_V8_OFFSET_MAX (0 for other tiers)
 *   bits 0..43   the SharedFunctionInfo's untagged address >> 3 (heap
 *                objects are 8-aligned; addresses >= 2^47 are not encoded) */
#define OFFHEAP_V8_FRAME_TAG (1ULL << 63)
#define OFFHEAP_V8_TIER_SHIFT 61
#define OFFHEAP_V8_TIER_MASK 3ULL
#define OFFHEAP_V8_OFFSET_SHIFT 44
#define OFFHEAP_V8_OFFSET_MAX 0x1ffffULL
#define OFFHEAP_V8_SFI_MASK ((1ULL << 44) - 1)

enum v8_tier {
	OFFHEAP_V8_TIER_INTERPRETED = 0,  /* Ignition: BytecodeArray and offset in the frame */
	OFFHEAP_V8_TIER_BASELINE = 1,     /* Sparkplug: BytecodeArray, no offset slot */
	OFFHEAP_V8_TIER_OPTIMIZED = 2,    /* Maglev or TurboFan code */
	/* 3: unused. A builtin with JS linkage (Array.prototype.map) is left
	 * as its pc: node's symbol table names it (Builtins_ArrayMap), as the
	 * perf map does (Builtin:ArrayMap). */
};

/* Value of `v8_procs`: where a process's V8 keeps what the decoder reads. */
struct v8_proc_config {
	/* V8's embedded builtins in the process: [start, end) in node's text,
	 * and the copy V8 >= 12 maps into its code range and runs instead
	 * (Isolate::Init, short builtin calls: a second mapping of the same
	 * file pages); remap_start = remap_end = 0 when there is none. */
	__u64 builtins_start;
	__u64 builtins_end;
	__u64 remap_start;
	__u64 remap_end;
	/* Where in the builtins (offsets from their start, in either copy) the
	 * interpreter's code lies: its entry trampolines [interp_lo,
	 * interp_hi), and the bytecode handlers, the last builtins of the blob,
	 * from handlers_lo to the end (Builtins::kFirstBytecodeHandler). A
	 * frame whose pc is there is interpreted, without reading its
	 * BytecodeArray. All 0: unknown (node's symbol table lacks them). */
	__u32 interp_lo;
	__u32 interp_hi;
	__u32 handlers_lo;
	__u32 _pad;
	__s16 fp_context;       /* frame slots, bytes from fp (negative) */
	__s16 fp_function;
	__s16 fp_bytecode_array;
	__s16 fp_bytecode_offset;
	__u16 off_map;          /* HeapObject::map */
	__u16 off_instance_type; /* Map::instance_type (u16) */
	__u16 off_shared;       /* JSFunction::shared */
	__u16 bytecode_offset_bias; /* BytecodeArray header size - heap object tag */
	__u16 type_js_function_first;
	__u16 type_js_function_last;
	__u16 type_shared_function_info;
	__u16 type_bytecode_array;
	/* The map every BytecodeArray has (a read-only root, one per process
	 * since node's read-only heap is shared by its isolates): written by
	 * the decoder once it has seen one, so that a frame's BytecodeArray is
	 * then told by one read of its map instead of two. 0 until then, and
	 * whenever userspace (re)writes the entry. */
	__u64 bytecode_array_map;
	/* Maps of JSFunctions seen (a handful per context: strict, sloppy,
	 * arrow, method, class constructor...), likewise learned, in the slot
	 * (map >> 3) % OFFHEAP_V8_LEARNED_MAPS, to skip reading their type. */
	__u64 js_function_maps[OFFHEAP_V8_LEARNED_MAPS];
};

/* ---- unwind tables ---------------------------------------------------------- */
/* Built and loaded by tracer/src/probes/unwind (its top comment is the
 * contract), looked up by include/unwind.bpf.h. Two maps:
 * - unwind_mappings, an LPM trie: which module a pc of a process lies in, and
 *   its load bias; also "JIT" (anonymous executable memory) and "in no
 *   executable mapping" (the per-process catch-all entry). Entries are
 *   allocated as inserted (an LPM trie is never preallocated).
 * - unwind_tables, an array of maps: slot `module` holds that module's table,
 *   an array sized to it (BPF_F_INNER_MAP): entries [0, npages) are the page
 *   index (union unwind_entry.page), then the rows (union unwind_entry.row),
 *   sorted by pc. One table per build-id, shared by every process. */

/* Prefixes in unwind_mappings (all processes); a mapping takes one per
 * power-of-two block it splits into, ~2 * log2(pages) at most. */
#define OFFHEAP_MAX_UNWIND_MAPPINGS 65536
/* Tables loaded at once (slots of unwind_tables). */
#define OFFHEAP_MAX_UNWIND_MODULES 1024
/* A table's page index has one entry per 4 KiB of the module's code. */
#define OFFHEAP_UNWIND_PAGE_SHIFT 12
/* Binary-search steps over one page's rows: a page holds at most 4096 rows
 * (one per byte) plus the row that covers its start: ceil(log2(4098)). */
#define OFFHEAP_UNWIND_SEARCH_STEPS 13

/* Key of unwind_mappings. LPM tries match data bytes in order, so tgid and
 * addr are big-endian; prefixlen counts bits of (tgid, addr): 32 + the
 * address bits a prefix fixes. */
struct unwind_mapping_key {
	__u32 prefixlen;
	__u32 tgid_be;
	__u64 addr_be;
};

enum unwind_mapping_kind {
	OFFHEAP_UNWIND_MAP_FP = 0,     /* a module without a table: frame pointers */
	OFFHEAP_UNWIND_MAP_TABLE = 1,  /* a module with a table: unwind_tables[module] */
	OFFHEAP_UNWIND_MAP_JIT = 2,    /* anonymous executable memory (V8's code) */
	OFFHEAP_UNWIND_MAP_NONE = 3,   /* the process's catch-all: no executable mapping */
};

/* Value of unwind_mappings. */
struct unwind_mapping {
	__u64 start;     /* the mapping [start, end) (whole, not just this prefix) */
	__u64 end;
	__u64 bias;      /* pc - bias = offset of pc in the module's table */
	__u32 module;    /* slot in unwind_tables (kind TABLE) */
	__u32 npages;    /* entries of the table's page index */
	__u32 kind;      /* enum unwind_mapping_kind */
	__u32 _pad;
};

/* How a row finds the caller (x86-64). The return address is at CFA - 8
 * except for SIGNAL; `rbp` is where the caller's %rbp is: 0 unchanged,
 * n: at CFA - 8n. */
enum unwind_row_kind {
	OFFHEAP_UNWIND_ROW_FP = 0,        /* CFA = rbp + 16, rbp at CFA - 16: the frame-pointer step */
	OFFHEAP_UNWIND_ROW_RSP = 1,       /* CFA = rsp + cfa */
	OFFHEAP_UNWIND_ROW_RBP = 2,       /* CFA = rbp + cfa */
	OFFHEAP_UNWIND_ROW_PLT = 3,       /* CFA = rsp + cfa + ((pc & 15) >= rbp ? 8 : 0); rbp unchanged */
	OFFHEAP_UNWIND_ROW_DEREF_RSP = 4, /* CFA = [rsp + cfa] + 8 (hand-written asm keeping rsp in memory) */
	OFFHEAP_UNWIND_ROW_DRAP = 5,      /* CFA = [rbp + cfa], caller's rbp = [rbp] (gcc stack realignment) */
	OFFHEAP_UNWIND_ROW_SIGNAL = 6,    /* rsp points at a ucontext: registers saved in it (__restore_rt) */
	OFFHEAP_UNWIND_ROW_END = 7,       /* return address undefined: the outermost frame (_start, thread start) */
	OFFHEAP_UNWIND_ROW_STOP = 8,      /* CFI the tables cannot express: the stack ends here (counted) */
};

/* glibc's __restore_rt CFI: the interrupted registers in the ucontext at rsp
 * (uc_mcontext.gregs at offset 40, kernel struct sigcontext order). */
#define OFFHEAP_UNWIND_UC_RBP 120
#define OFFHEAP_UNWIND_UC_RSP 160
#define OFFHEAP_UNWIND_UC_RIP 168

struct unwind_row {
	__u32 pc;        /* offset in the table (pc - bias) where the row starts */
	__u8 kind;       /* enum unwind_row_kind */
	__u8 rbp;
	__s16 cfa;
};

/* Page p of a table: the rows to search for a pc in [p << 12, (p+1) << 12)
 * are entries [first, first + count) (absolute indexes in the table): the
 * row covering the page's start, then the rows starting in it. */
struct unwind_page {
	__u32 first;
	__u32 count;
};

union unwind_entry {
	struct unwind_row row;
	struct unwind_page page;
};

#endif /* OFFHEAP_H */
