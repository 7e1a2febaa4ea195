// SPDX-License-Identifier: GPL-2.0
/* libuv's threadpool: memory allocated by work running on a worker thread
 * carries the stack that queued the work (offheap.h, enum threadpool_kind).
 * Included by offheap.bpf.c (maps and helpers live there).
 *
 * - uv_queue_work (the queuing thread, once per queued request): the stack,
 *   walked by walk.bpf.c and stored in hashed_stacks, goes to queued_work
 *   under the request's struct uv__work.
 * - uv__queue_work (the worker, as the request starts): the worker's slot
 *   takes that stack as its link (inflight_slot.async_stack), and the entry
 *   goes: a request runs once.
 * - uv_async_send from worker() itself (the worker, as the request ends):
 *   the link is cleared, before the worker takes its next request, which
 *   may be fs or dns work of no queued stack.
 * While linked, every stack key the thread makes (malloc.bpf.c, vm.bpf.c,
 * fault.bpf.c) carries the link, read from the thread's slot: no probe per
 * allocation. Userspace joins the two stacks (accounting::join_queued).
 *
 * One function for the three (the cookie tells which), run by malloc.bpf.c's
 * alloc_enter: see OFFHEAP_COOKIE_THREADPOOL. */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, OFFHEAP_MAX_QUEUED_WORK);
	__type(key, struct work_key);
	__type(value, __s32);
} queued_work SEC(".maps");

/* uv_queue_work(loop, req, work_cb, after_work_cb): libuv refuses a NULL
 * work_cb (UV_EINVAL) before queuing anything. */
static __always_inline int threadpool_queue(struct pt_regs *ctx, __u32 tgid,
					    struct inflight_slot *slot)
{
	__u64 req = PT_REGS_PARM2(ctx);
	struct stack_key key = {};

	if (!req || !PT_REGS_PARM3(ctx))
		return 0;
	take_uprobe_stack(ctx, &key, tgid, slot);
	if (key.stack_id < 0)
		return 0;
	struct work_key wk = { .tgid = tgid, .work = req + OFFHEAP_UV_WORK_REQ_OFFSET };
	__s32 link = key.stack_id + 1;
	/* ANY: a request queued again (after its completion) replaces its
	 * old entry, which nothing would look up any more. */
	bpf_map_update_elem(&queued_work, &wk, &link, BPF_ANY);
	return 0;
}

/* uv__queue_work(struct uv__work *w), called by worker() for the request
 * it starts. A request queued before tracing started has no entry: the
 * thread then runs unlinked (counted), never with a previous request's
 * link. */
static __always_inline int threadpool_run(struct pt_regs *ctx, __u32 tgid,
					  struct inflight_slot *slot)
{
	struct work_key wk = { .tgid = tgid, .work = PT_REGS_PARM1(ctx) };
	__s32 *link = bpf_map_lookup_elem(&queued_work, &wk);

	slot->async_sp = PT_REGS_SP(ctx);
	if (!link) {
		slot->async_stack = 0;
		count(OFFHEAP_CTR_WORK_UNLINKED);
		return 0;
	}
	slot->async_stack = *link;
	bpf_map_delete_elem(&queued_work, &wk);
	return 0;
}

/* uv_async_send(async): worker() calls it right after w->work(w) returns,
 * at the stack depth of that call (the %rsp uv__queue_work was entered
 * with: worker pushes nothing between the two calls). A call from deeper
 * in the stack (a lower %rsp: the x86-64 stack grows down) is made by the
 * work itself and ends nothing. */
static __always_inline int threadpool_done(struct pt_regs *ctx, struct inflight_slot *slot)
{
	if (slot->async_stack && PT_REGS_SP(ctx) >= slot->async_sp)
		slot->async_stack = 0;
	return 0;
}

/* A threadpool probe of `kind` (enum threadpool_kind), from alloc_enter. */
static __always_inline int threadpool_enter(struct pt_regs *ctx, __u32 kind)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct inflight_slot *slot = thread_slot(0);

	if (!slot) {
		/* Nothing to end on a thread that never ran linked work. */
		if (kind == OFFHEAP_TP_DONE || !target_flags(tgid))
			return 0;
		slot = thread_slot(1);
		if (!slot) {
			count(OFFHEAP_CTR_INFLIGHT_FULL);
			return 0;
		}
	}
	switch (kind) {
	case OFFHEAP_TP_QUEUE:
		return threadpool_queue(ctx, tgid, slot);
	case OFFHEAP_TP_RUN:
		return threadpool_run(ctx, tgid, slot);
	case OFFHEAP_TP_DONE:
		return threadpool_done(ctx, slot);
	default:
		return 0;
	}
}
