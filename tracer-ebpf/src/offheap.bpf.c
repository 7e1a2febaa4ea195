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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, OFFHEAP_MAX_INFLIGHT);
	__type(key, __u64);
	__type(value, struct inflight);
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
	__type(key, struct stack_key);
	__type(value, struct stack_stats);
} stack_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, OFFHEAP_MAX_STACK_TRACES);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, OFFHEAP_MAX_STACK_DEPTH * sizeof(__u64));
} stack_traces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, OFFHEAP_MAX_STACK_FALLBACK);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __s32);
	__type(value, struct stack_ips);
} stack_fallback SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stack_ips);
} stack_scratch SEC(".maps");

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

static __always_inline void count(enum counter c)
{
	__u32 k = c;
	__u64 *v = bpf_map_lookup_elem(&counters, &k);

	/* Per-CPU slot: no other CPU writes it, a plain increment is enough. */
	if (v)
		(*v)++;
}

/* The target's flags, or 0 when the tgid is not traced. */
static __always_inline __u32 target_flags(__u32 tgid)
{
	struct target_info *t = bpf_map_lookup_elem(&targets, &tgid);

	return t ? t->flags : 0;
}

/* The user stack of a stack that collided in stack_traces, stored under a
 * hash-derived id in stack_fallback (see OFFHEAP_STACK_ID_FALLBACK). */
static __always_inline long stack_id_fallback(void *ctx)
{
	__u32 zero = 0;
	struct stack_ips *buf = bpf_map_lookup_elem(&stack_scratch, &zero);

	if (!buf)
		return -1;
	long n = bpf_get_stack(ctx, buf->ips, sizeof(buf->ips), BPF_F_USER_STACK);
	if (n <= 0)
		return n < 0 ? n : -1;
	buf->nr = n / sizeof(__u64);

	/* FNV-1a over the frames. */
	__u64 h = 14695981039346656037ULL;
	for (int i = 0; i < OFFHEAP_MAX_STACK_DEPTH; i++) {
		if (i >= buf->nr)
			break;
		h ^= buf->ips[i];
		h *= 1099511628211ULL;
	}
	__s32 id = OFFHEAP_STACK_ID_FALLBACK | (__s32)(h & (OFFHEAP_STACK_ID_FALLBACK - 1));
	/* EEXIST: the same stack was stored before (a 30-bit collision between
	 * two colliding stacks is the accepted, vanishing risk). */
	long err = bpf_map_update_elem(&stack_fallback, &id, buf, BPF_NOEXIST);
	if (err < 0 && err != -17 /* EEXIST */)
		return err;
	return id;
}

/* Fills key with the user stack of the current task. `sp` is the user stack
 * pointer at a function's first instruction (or at the `syscall` instruction
 * of a leaf libc wrapper): [sp] holds the return address into the direct
 * caller, the one frame the frame-pointer walk misses because the callee has
 * not pushed %rbp yet. */
static __always_inline void take_stack(void *ctx, struct stack_key *key, __u32 tgid, __u64 sp)
{
	long id = bpf_get_stackid(ctx, &stack_traces, BPF_F_USER_STACK);

	if (id == -17 /* EEXIST: the bucket holds another stack */)
		id = stack_id_fallback(ctx);
	key->tgid = tgid;
	key->stack_id = id;
	key->caller = 0;
	if (id < 0)
		count(OFFHEAP_CTR_STACK_ID_FAILED);
	if (sp && bpf_probe_read_user(&key->caller, sizeof(key->caller), (void *)sp) < 0) {
		key->caller = 0;
		count(OFFHEAP_CTR_READ_FAILED);
	}
}

/* The stats of a stack, created zeroed on first use. */
static __always_inline struct stack_stats *stats_of(struct stack_key *key)
{
	struct stack_stats *st = bpf_map_lookup_elem(&stack_stats, key);

	if (st)
		return st;
	struct stack_stats zero = {};
	/* NOEXIST: another CPU may have created it in between; then look it up. */
	bpf_map_update_elem(&stack_stats, key, &zero, BPF_NOEXIST);
	st = bpf_map_lookup_elem(&stack_stats, key);
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

/* Counts one sample of v for a stack. */
static __always_inline void hist_add(void *map, struct stack_key *stack, __u64 v)
{
	struct hist_key k = {};

	k.stack = *stack;
	k.bucket = hist_bucket(v);
	__u64 *n = bpf_map_lookup_elem(map, &k);
	if (!n) {
		__u64 zero = 0;
		/* NOEXIST: another CPU may have created it in between. */
		bpf_map_update_elem(map, &k, &zero, BPF_NOEXIST);
		n = bpf_map_lookup_elem(map, &k);
		if (!n) {
			count(OFFHEAP_CTR_HIST_FULL);
			return;
		}
	}
	__sync_fetch_and_add(n, 1);
}

/* The thread's traced call in progress, if any. An entry whose outermost
 * call has already returned without its uretprobe firing (longjmp out of the
 * allocator, a thread that died inside it) is stale: a call really nested in
 * it runs deeper in the stack, at a lower %rsp (the x86-64 stack grows down),
 * or at the same %rsp when the outer call tail-calls it (glibc's
 * reallocarray jumps to realloc). A call from higher up the stack proves the
 * entry stale; it is dropped, else it would hide every later call. */
static __always_inline struct inflight *inflight_of(__u64 *pid_tgid, __u64 sp)
{
	struct inflight *cur = bpf_map_lookup_elem(&inflight, pid_tgid);

	if (cur && sp > cur->sp) {
		bpf_map_delete_elem(&inflight, pid_tgid);
		return NULL;
	}
	return cur;
}

#include "malloc.bpf.c"
#include "vm.bpf.c"
#include "lifecycle.bpf.c"
#include "fault.bpf.c"
