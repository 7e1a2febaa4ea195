// SPDX-License-Identifier: GPL-2.0
/* The one compilation unit: maps shared by every program, then the programs
 * (one #include per file below, so that all programs share the maps of one
 * object). */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "offheap.h"

char LICENSE[] SEC("license") = "GPL";

/* Knobs set by userspace before load (aya EbpfLoader::set_global). */
const volatile __u64 page_size = 4096;
/* Bits of a stack's hash that pick its home slot in hashed_stacks (at most
 * 30). Tests lower it to make every stack collide. */
const volatile __u32 stack_hash_bits = 30;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, OFFHEAP_MAX_TARGETS);
	__type(key, __u32);
	__type(value, struct target_info);
} targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, OFFHEAP_CTR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

#include "unwind.bpf.h"
#include "v8.bpf.h"

/* How recent pcs unwind (walk.bpf.c, frame_class): the answer of
 * unwind_find for a return address, kept so that the frames a walk meets
 * again and again (most of them: a thread allocates from the same few
 * sites) cost a compare instead of a trie and table search. Valid for
 * `tgid` while `epoch` is the current unwind_epoch. */
#define UNWIND_CACHE 1024

struct unwind_cache_entry {
	__u64 pc;
	__u32 tgid;
	__u16 epoch;
	__u8 cls;         /* enum unwind_class */
	__u8 _pad;
	struct unwind_row row;   /* the rule, for UNWIND_TABLE */
};

/* State of one walk. It lives in the scratch (stack_scratch.walk), not on
 * the BPF stack: walk_one is a global function, and the verifier forgets
 * what the memory a global function was given holds (pointers become plain
 * numbers), while it keeps the type of a map value pointer it is passed. */
struct walk_state {
	struct unwind_regs regs;   /* of the frame recorded last (ips[nr - 1]) */
	__u64 base;    /* user address of sc->words[0] */
	__u64 win;     /* bytes of the copy that are valid */
	__u64 limit;   /* see read_window */
	__u64 top;     /* highest stack address a frame record was read at */
	__u64 hash;
	__u32 nr;
	__u32 flags;   /* OFFHEAP_STACK_* */
	__u32 tgid;
	__u32 epoch;
	/* The frame recorded last is where the thread stopped (the first frame
	 * of a page fault, or one a signal interrupted): its pc is looked up as
	 * is, and never cached. */
	__u32 leaf;
	__u32 reread;  /* the walk copied again at a frame outside its first copy */
	__u16 scans;   /* frames found by scanning (walk.bpf.c's scan_step) */
	__u16 bp_lost; /* %rbp may not be the frame's since a scan */
	/* A frame in a file's code that no table covered yet was stepped with
	 * frame pointers (walk.bpf.c's unmapped_class). */
	__u32 guessed;
	/* The frame walk_one steps now is such code (its step is checked). */
	__u32 guess;
	/* The frame recorded last was found by scanning (scan.bpf.c's
	 * mapped_since is strict for it). */
	__u32 scanned;
	struct unwind_cursor cursor;
};

/* Scratch for a stack walk: too big for the 512-byte BPF stack. Not ABI:
 * userspace never reads it. */
struct stack_scratch {
	struct stack_ips stack;
	__u64 words[OFFHEAP_STACK_WINDOW / 8];   /* the copy the walk reads */
	struct walk_state walk;
};

/* A walker's unwind cache (24 KiB): the thread's own for uprobes (in its
 * inflight slot), the CPU's for tracepoints (unwind_cache_cpu). Apart from
 * the scratch: a per-CPU map value is at most 32 KiB. */
struct unwind_cache {
	struct unwind_cache_entry e[UNWIND_CACHE];
};

/* Bumped (by userspace, or lifecycle.bpf.c on a target's exec) whenever what
 * an address of a target means may have changed: every unwind cache entry
 * of an older epoch is stale. An array of one: its lookup is inlined. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} unwind_epoch SEC(".maps");

/* A thread's recent stacks and their ids in hashed_stacks (take_uprobe_stack):
 * a thread allocates from the same few sites over and over, and an id found
 * here saves a hashed_stacks lookup (25-75 ns). Entries stay right because
 * nothing deletes from hashed_stacks. Direct-mapped by the stack's hash. */
#define STACK_ID_CACHE 64

struct stack_id_cache_entry {
	__u64 hash;
	__u32 nr;
	__s32 id;
};

/* Value of `inflight`: the thread's traced call (struct inflight, the ABI)
 * and the thread's own scratch for the uprobe stack walk. Per thread, not per
 * CPU: uprobe programs run preemptible (migrate_disable and rcu_read_lock
 * only: bpf_prog_run_array_uprobe, include/linux/bpf.h), so another thread's
 * program could run on this CPU in the middle of a walk and overwrite a
 * per-CPU buffer. */
struct inflight_slot {
	struct inflight call;
	struct stack_id_cache_entry stack_ids[STACK_ID_CACHE];
	/* mm->start_stack, read once per thread (see take_uprobe_stack); 0
	 * until then. Stale after an exec, which costs a walk speed, never
	 * frames: read_window falls back when a copy fails. */
	__u64 stack_limit;
	/* Bytes the thread's previous stack walk spanned (take_uprobe_stack). */
	__u64 stack_span;
	/* The threadpool work the thread runs (threadpool.bpf.c): the
	 * stack_key.async_stack of its stacks (0: none), and %rsp as it
	 * started. */
	__s32 async_stack;
	__u32 _pad;
	__u64 async_sp;
	struct stack_scratch scratch;
	struct unwind_cache cache;
};

/* Task-local storage: the slot hangs off the thread's task_struct, so finding
 * it costs a pointer walk, not a hash lookup (three per malloc/free pair),
 * and it goes when the thread does (bpf_task_storage_free, called as the
 * task is freed). Allocated on the thread's first traced call, zeroed: idle,
 * at depth 0. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct inflight_slot);
} inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, OFFHEAP_MAX_ALLOCS);
	/* Not preallocated: a million entries would pin ~100 MiB of kernel
	 * memory up front, and most targets have far fewer live blocks. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct alloc_key);
	__type(value, struct alloc_info);
} allocs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, OFFHEAP_MAX_STACK_STATS);
	/* Not preallocated: ~300 bytes per stack with the inline histogram
	 * buckets, and an entry is created once per stack. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct stack_key);
	__type(value, struct stack_stats);
} stack_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, OFFHEAP_MAX_HASHED_STACKS);
	/* Not preallocated: 1 KiB per entry, filled as stacks appear. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __s32);
	__type(value, struct stack_ips);
} hashed_stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	/* Tracepoint programs only (take_syscall_stack, the fault walk):
	 * they run with preemption off, so a per-CPU buffer is theirs for the
	 * whole run. */
	__type(value, struct stack_scratch);
} stack_scratch SEC(".maps");

/* The unwind cache of tracepoint walks, per CPU like their scratch. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct unwind_cache);
} unwind_cache_cpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, OFFHEAP_EVENTS_BYTES);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, OFFHEAP_MAX_INFLIGHT);
	__type(key, __u64);
	__type(value, struct vm_args);
} vm_inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, OFFHEAP_MAX_HIST);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct hist_key);
	__type(value, __u64);
} size_hist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, OFFHEAP_MAX_HIST);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct hist_key);
	__type(value, __u64);
} lifetime_hist SEC(".maps");

/* ---- helpers shared by the program files ------------------------------------ */

#include "maps.bpf.h"
#include "walk.bpf.c"

/* The stats of a stack, created zeroed on first use. */
static __always_inline struct stack_stats *stats_of(struct stack_key *key)
{
	struct stack_stats zero = {};
	struct stack_stats *st = lookup_or_init(&stack_stats, key, &zero);

	if (!st)
		count(OFFHEAP_CTR_STACK_STATS_FULL);
	return st;
}

/* The log-linear bucket of v (see struct hist_key). The log2 is found by
 * halving: no clz instruction in BPF. */
static __always_inline __u32 hist_bucket(__u64 v)
{
	__u64 x = v;
	__u32 e = 0;

	if (v < (1 << OFFHEAP_HIST_SUB_BITS))
		return v;
	if (x >> 32) { x >>= 32; e += 32; }
	if (x >> 16) { x >>= 16; e += 16; }
	if (x >> 8) { x >>= 8; e += 8; }
	if (x >> 4) { x >>= 4; e += 4; }
	if (x >> 2) { x >>= 2; e += 2; }
	if (x >> 1) { e += 1; }
	__u32 sub = (v >> (e - OFFHEAP_HIST_SUB_BITS)) & ((1 << OFFHEAP_HIST_SUB_BITS) - 1);
	return ((e - OFFHEAP_HIST_SUB_BITS + 1) << OFFHEAP_HIST_SUB_BITS) + sub;
}

/* Counts one sample of v for a stack: in the stack's inline slots when v's
 * bucket has one or a slot is free (see struct inline_hist), else in `map`. */
static __always_inline void hist_add(void *map, struct inline_hist *h, struct stack_key *stack,
				     __u64 v)
{
	__u64 bucket = hist_bucket(v);

	for (int i = 0; i < OFFHEAP_INLINE_BUCKETS; i++) {
		__u64 cur = h->bucket[i];

		if (!cur) {
			/* Returns the old value: 0 when this CPU claimed the
			 * slot, else the bucket another CPU claimed it for. */
			cur = __sync_val_compare_and_swap(&h->bucket[i], 0, bucket + 1);
			if (!cur)
				cur = bucket + 1;
		}
		if (cur == bucket + 1) {
			__sync_fetch_and_add(&h->count[i], 1);
			return;
		}
	}

	struct hist_key k = {};

	k.stack = *stack;
	k.bucket = bucket;
	__u64 zero = 0;
	__u64 *n = lookup_or_init(map, &k, &zero);
	if (!n) {
		count(OFFHEAP_CTR_HIST_FULL);
		return;
	}
	__sync_fetch_and_add(n, 1);
}

/* Whether the thread's slot holds a traced call in progress, for a call at
 * `sp`; inflight_of returns that call. A thread keeps its slot between
 * calls, idle at depth 0.
 * An entry whose outermost call has already returned without its uretprobe
 * firing (longjmp out of the allocator) is stale: a call really nested in
 * it runs deeper in the stack, at a lower %rsp (the x86-64 stack grows down),
 * or at the same %rsp when the outer call tail-calls it (glibc's
 * reallocarray jumps to realloc). A call from higher up the stack proves the
 * entry stale; it goes idle, else it would hide every later call.
 * An operator new at depth 1 runs no allocator code yet: until it calls
 * malloc (depth 2), a free or a syscall in the thread is not the allocator's
 * (malloc.bpf.c: joins_pending_new). */
static __always_inline int call_in_progress(struct inflight_slot *slot, __u64 sp)
{
	if (!slot || !slot->call.depth)
		return 0;
	int pending_new = slot->call.kind == OFFHEAP_KIND_NEW && slot->call.depth == 1;
	if (sp > slot->call.sp) {
		if (pending_new)
			count(OFFHEAP_CTR_NEW_UNFINISHED);
		slot->call.depth = 0;
		return 0;
	}
	return !pending_new;
}

/* The current thread's slot; NULL when it has none and `create` is 0, or
 * when one could not be made. */
static __always_inline struct inflight_slot *thread_slot(int create)
{
	return bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), NULL,
				    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

static __always_inline struct inflight *inflight_of(__u64 sp)
{
	struct inflight_slot *slot = thread_slot(0);

	return call_in_progress(slot, sp) ? &slot->call : NULL;
}

/* The stack_key.async_stack of the current thread's stacks now. */
static __always_inline __s32 thread_async_stack(void)
{
	struct inflight_slot *slot = thread_slot(0);

	return slot ? slot->async_stack : 0;
}

#include "threadpool.bpf.c"
#include "malloc.bpf.c"
#include "vm.bpf.c"
#include "lifecycle.bpf.c"
#include "fault.bpf.c"
#include "traffic.bpf.c"
