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
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, OFFHEAP_EVENTS_BYTES);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, OFFHEAP_MAX_INFLIGHT);
	__type(key, __u64);
	__type(value, struct vm_args);
} vm_inflight SEC(".maps");

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

/* Fills key with the user stack of the current task. `sp` is the user stack
 * pointer at a function's first instruction (or at the `syscall` instruction
 * of a leaf libc wrapper): [sp] holds the return address into the direct
 * caller, the one frame the frame-pointer walk misses because the callee has
 * not pushed %rbp yet. */
static __always_inline void take_stack(void *ctx, struct stack_key *key, __u32 tgid, __u64 sp)
{
	long id = bpf_get_stackid(ctx, &stack_traces, BPF_F_USER_STACK);

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

#include "malloc.bpf.c"
#include "vm.bpf.c"
