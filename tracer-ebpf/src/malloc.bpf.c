// SPDX-License-Identifier: GPL-2.0
/* Malloc mode: one uprobe program (alloc_enter) and one uretprobe program
 * (alloc_exit) for the whole malloc family, and a uprobe on free, attached per
 * PID to the allocator the target really uses. Each attach point carries its
 * function's enum alloc_kind as the attach cookie (bpf_get_attach_cookie,
 * kernel 5.15), which tells alloc_enter how to read the arguments: one
 * program to verify instead of nine. Included by offheap.bpf.c (maps and
 * helpers live there).
 *
 * Per thread, `inflight` holds the outermost traced call: its arguments and the
 * stack taken at entry (where [sp] still holds the return address into the
 * caller). A traced call made inside another one (glibc's reallocarray calls
 * realloc; aligned_alloc and memalign share one address) only bumps `depth`,
 * so each user call is counted once, by its outermost function.
 *
 * C++'s operator new and delete (Itanium C++ ABI mangled names, attached in
 * the module that defines them: libstdc++, libc++, or an executable linked
 * with one statically) are entry points too: a block from `new` is counted
 * under the stack of new's caller and the size it asked for, once, whatever
 * new does underneath. A throwing operator new gets no return probe (see
 * joins_pending_new); a nothrow one is an outer call like malloc; a delete
 * is counted by free_enter. */

/* A request that cannot succeed: calloc/reallocarray overflow, which makes
 * the allocator fail with ENOMEM and leave the old block alone. */
#define OFFHEAP_SIZE_OVERFLOW (~0ULL)

static __always_inline __u64 array_size(__u64 nmemb, __u64 size)
{
	__u64 product = nmemb * size;

	/* Both below 2^32: the product fits. Otherwise check by division;
	 * barrier_var keeps clang from turning the check into a 128-bit
	 * multiply, which BPF lacks. */
	if (!((nmemb | size) >> 32))
		return product;
	barrier_var(product);
	if (nmemb && product / nmemb != size)
		return OFFHEAP_SIZE_OVERFLOW;
	return product;
}

/* A throwing operator new (OFFHEAP_KIND_NEW) is never given a return probe:
 * a uretprobe replaces the return address on the user stack with the
 * kernel's trampoline ([uprobes] mapping, no unwind info), so a
 * std::bad_alloc thrown through it finds no frame to unwind and the process
 * ends in std::terminate (_Unwind_RaiseException returns
 * _URC_END_OF_STACK; seen with bpftrace on libstdc++ 12). Its entry takes
 * the stack and size and leaves the call pending at depth 1; the block comes
 * from the allocation new makes itself (libstdc++'s and libc++'s new call
 * malloc or aligned_alloc in a loop with the new_handler), whose return
 * records it under new's stack and size (alloc_exit_any).
 *
 * A call entering while new is pending is part of it when it is
 * - new[] tail-calling new (libstdc++ jumps from operator new[] to operator
 *   new): the same sp and size; only the function being run changes;
 * - new's own allocation: called from inside the new function that runs
 *   now (the return address at [sp] is in [fn_start, fn_end)), lower on the
 *   stack;
 * - any call made inside that allocation (depth 2 and up).
 * Anything else means new is over without its allocation being seen: it
 * threw (__cxa_allocate_exception mallocs the exception: that is the first
 * call it sees), or its new_handler allocated. The call is then counted as
 * an outermost one of its own, and new as unfinished. Returns 1 when the
 * call is part of the pending new (and accounts for it). */
static __always_inline int joins_pending_new(struct pt_regs *ctx, struct inflight *cur,
					     __u32 kind, __u64 size, __u64 out_ptr,
					     __u64 fn_len)
{
	__u64 sp = PT_REGS_SP(ctx);

	if (sp > cur->sp)
		return 0;
	if (cur->depth > 1) {
		if (kind != OFFHEAP_KIND_NEW)
			cur->depth++;
		return 1;
	}
	if (kind == OFFHEAP_KIND_NEW) {
		if (sp != cur->sp || size != cur->size)
			return 0;
		cur->fn_start = PT_REGS_IP(ctx);
		cur->fn_end = cur->fn_start + fn_len;
		return 1;
	}
	__u64 ret = 0;

	if (sp == cur->sp || bpf_probe_read_user(&ret, sizeof(ret), (void *)sp) < 0)
		return 0;
	if (ret < cur->fn_start || ret >= cur->fn_end)
		return 0;
	cur->depth = 2;
	cur->out_ptr = out_ptr;
	return 1;
}

static __always_inline int alloc_enter_kind(struct pt_regs *ctx, __u32 kind, __u64 size,
					    __u64 old_ptr, __u64 out_ptr, __u64 fn_len)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	__u64 sp = PT_REGS_SP(ctx);

	struct inflight_slot *slot = thread_slot(0);

	if (slot && slot->call.depth && slot->call.kind == OFFHEAP_KIND_NEW) {
		if (joins_pending_new(ctx, &slot->call, kind, size, out_ptr, fn_len))
			return 0;
		if (slot->call.depth == 1)
			count(OFFHEAP_CTR_NEW_UNFINISHED);
		slot->call.depth = 0;
	} else if (call_in_progress(slot, sp)) {
		/* Nested. Only this thread ever touches its own slot. A new
		 * inside a nothrow new has no return probe to undo a depth. */
		if (kind != OFFHEAP_KIND_NEW)
			slot->call.depth++;
		return 0;
	}
	if (!slot) {
		/* The thread's first traced call. A thread with a slot has
		 * passed this check already: the targets lookup is paid once
		 * per thread, not per call. (The uprobes are attached per
		 * process anyway.) */
		if (!(target_flags(tgid) & OFFHEAP_TARGET_MALLOC))
			return 0;
		slot = thread_slot(1);
		if (!slot) {
			count(OFFHEAP_CTR_INFLIGHT_FULL);
			return 0;
		}
	}
	struct inflight *cur = &slot->call;
	cur->sp = sp;
	cur->size = size;
	cur->old_ptr = old_ptr;
	cur->out_ptr = out_ptr;
	cur->kind = kind;
	cur->fn_start = PT_REGS_IP(ctx);
	cur->fn_end = cur->fn_start + fn_len;
	/* An allocation: an address a delete left here may be handed out
	 * again (see free_enter). */
	cur->deleting = 0;
	take_uprobe_stack(ctx, &cur->stack, tgid, slot);
	cur->stack.async_stack = slot->async_stack;
	cur->depth = 1;
	return 0;
}

/* `allocs` entries are kept after a free, marked free (ts_ns 0), and reused
 * in place when the allocator hands the address out again, which it soon
 * does (glibc's tcache is LIFO): 86% of the allocations of node's
 * allocation loop found their address's entry. A lookup costs 25-75 ns
 * here, a hash update ~200 ns and a delete ~130 ns (BPF_PROG_TEST_RUN, this
 * project's machines): the bucket lock. Free entries take room from live
 * ones, so there are at most `max_free_allocs` of them (set at load, a
 * quarter of the map); past that, a free deletes its entry. */
const volatile __s64 max_free_allocs = OFFHEAP_MAX_ALLOCS / 4;
/* Entries marked free now (approximately: the agent deletes some). */
__s64 free_allocs;

/* Retires the allocation `info` describes: marks its entry free and takes
 * it out of its stack's live counts. Returns 0 when it was free already, or
 * another thread retired it first (a compare-and-swap on ts_ns decides;
 * only the winner does the accounting). */
static __always_inline int retire(struct alloc_info *info, int freed)
{
	__u64 born = info->ts_ns;
	__u64 size = info->size;
	struct stack_key stack = info->stack;

	if (!born || __sync_val_compare_and_swap(&info->ts_ns, born, 0) != born)
		return 0;
	__sync_fetch_and_add(&free_allocs, 1);
	struct stack_stats *st = bpf_map_lookup_elem(&stack_stats, &stack);
	if (!st)
		return 1;
	__sync_fetch_and_add(&st->live_bytes, -size);
	__sync_fetch_and_add(&st->live_allocs, -1);
	if (freed)
		hist_add(&lifetime_hist, &st->lifetimes, &stack, bpf_ktime_get_ns() - born);
	return 1;
}

/* Drops an outstanding allocation; returns 1 when it was known. `freed`:
 * the program saw the block go (free, realloc), so its lifetime is known. */
static __always_inline int forget(__u32 tgid, __u64 addr, int freed)
{
	struct alloc_key k = { .tgid = tgid, .addr = addr };
	struct alloc_info *info = bpf_map_lookup_elem(&allocs, &k);

	if (!info || !retire(info, freed))
		return 0;
	/* Too many free entries: delete this one. No thread can be reusing
	 * it meanwhile: the uprobe runs before free's body, so the allocator
	 * cannot have handed the address out again yet. */
	if (free_allocs > max_free_allocs && bpf_map_delete_elem(&allocs, &k) == 0)
		__sync_fetch_and_add(&free_allocs, -1);
	return 1;
}

static __always_inline void remember(__u32 tgid, __u64 addr, __u64 size, struct stack_key *stack)
{
	struct alloc_key k = { .tgid = tgid, .addr = addr };
	struct stack_stats *st = stats_of(stack);

	if (!st)
		return;
	__sync_fetch_and_add(&st->total_bytes, size);
	__sync_fetch_and_add(&st->total_allocs, 1);
	hist_add(&size_hist, &st->sizes, stack, size);

	__u64 now = bpf_ktime_get_ns();
	struct alloc_info *cur = bpf_map_lookup_elem(&allocs, &k);
	if (cur) {
		/* A live entry means the previous owner was freed by a path we
		 * did not see: retire it rather than keep it live forever.
		 * Then the entry is free and ours: the allocator handed the
		 * address to this thread, after any free of it. */
		retire(cur, 0);
		cur->size = size;
		cur->stack = *stack;
		cur->ts_ns = now;
		__sync_fetch_and_add(&free_allocs, -1);
	} else {
		struct alloc_info info = {
			.size = size,
			.ts_ns = now,
			.stack = *stack,
		};
		/* BPF_ANY: a free entry another thread just deleted or made is
		 * as good as none. */
		if (bpf_map_update_elem(&allocs, &k, &info, BPF_ANY) < 0) {
			/* Untracked: counting it live would leave it live
			 * forever. */
			count(OFFHEAP_CTR_ALLOCS_FULL);
			return;
		}
	}
	__sync_fetch_and_add(&st->live_bytes, size);
	__sync_fetch_and_add(&st->live_allocs, 1);
}

/* The block a call of `kind` returned: its return value, or for
 * posix_memalign (which returns an int error number and writes the block to
 * *memptr only on success, 0) what it wrote. 0 for none. */
static __always_inline __u64 returned_block(struct pt_regs *ctx, __u32 kind, __u64 out_ptr)
{
	__u64 addr = PT_REGS_RC(ctx);

	if (kind != OFFHEAP_KIND_POSIX_MEMALIGN)
		return addr;
	if ((int)addr != 0)
		return 0;
	if (bpf_probe_read_user(&addr, sizeof(addr), (void *)out_ptr) < 0) {
		count(OFFHEAP_CTR_READ_FAILED);
		return 0;
	}
	return addr;
}

static __always_inline int alloc_exit_any(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct inflight_slot *slot = thread_slot(0);

	if (!slot || !slot->call.depth)
		return 0;
	struct inflight *cur = &slot->call;
	struct inflight in;
	__u64 addr;

	if (cur->depth > 1) {
		cur->depth--;
		if (cur->depth > 1 || cur->kind != OFFHEAP_KIND_NEW)
			return 0;
		/* The allocation a pending operator new made has returned
		 * (see joins_pending_new); this probe's cookie is that
		 * allocation's kind. Its block is new's, counted with new's
		 * size and stack. NULL: new goes on (it calls the new_handler
		 * and tries again, or throws), still pending. */
		addr = returned_block(ctx, (__u32)bpf_get_attach_cookie(ctx), cur->out_ptr);
		if (!addr)
			return 0;
		in = *cur;
		cur->depth = 0;
	} else {
		in = *cur;
		cur->depth = 0;
		addr = returned_block(ctx, in.kind, in.out_ptr);
		/* C17 7.22.3.5 and glibc: on success the old block is gone
		 * (possibly at the same address); realloc(p, 0) frees p and
		 * returns NULL; on failure the old block is untouched. */
		if ((in.kind == OFFHEAP_KIND_REALLOC || in.kind == OFFHEAP_KIND_REALLOCARRAY) &&
		    in.old_ptr && (addr || in.size == 0))
			forget(tgid, in.old_ptr, 1);
	}
	if (addr)
		remember(tgid, addr, in.size, &in.stack);
	return 0;
}

/* Size of a pvalloc: glibc hands out whole pages, rounding the request up to
 * the page size (ALIGN_UP(bytes, pagesize) in malloc.c), and so do we. */
static __always_inline __u64 page_round_up(__u64 size)
{
	__u64 page = page_size ? page_size : 4096;

	return (size + page - 1) / page * page;
}

/* The entry of every malloc-family function, and of libuv's threadpool
 * functions (a cookie with OFFHEAP_COOKIE_THREADPOOL: threadpool.bpf.c). */
SEC("uprobe")
int alloc_enter(struct pt_regs *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u32 kind = cookie;
	if (kind & OFFHEAP_COOKIE_THREADPOOL)
		return threadpool_enter(ctx, kind & ~OFFHEAP_COOKIE_THREADPOOL);
	__u64 a1 = PT_REGS_PARM1(ctx), a2 = PT_REGS_PARM2(ctx), a3 = PT_REGS_PARM3(ctx);
	__u64 size, old_ptr = 0, out_ptr = 0, fn_len = 0;

	switch (kind) {
	case OFFHEAP_KIND_MALLOC:   /* malloc(size) */
	case OFFHEAP_KIND_VALLOC:   /* valloc(size) */
	case OFFHEAP_KIND_NEW_NOTHROW: /* operator new(size, [align,] nothrow) */
		size = a1;
		break;
	case OFFHEAP_KIND_NEW:      /* operator new(size [, align]) */
		size = a1;
		fn_len = cookie >> 32;
		break;
	case OFFHEAP_KIND_CALLOC:   /* calloc(nmemb, size) */
		size = array_size(a1, a2);
		break;
	case OFFHEAP_KIND_REALLOC:  /* realloc(ptr, size) */
		size = a2;
		old_ptr = a1;
		break;
	case OFFHEAP_KIND_REALLOCARRAY:   /* reallocarray(ptr, nmemb, size) */
		size = array_size(a2, a3);
		old_ptr = a1;
		break;
	case OFFHEAP_KIND_POSIX_MEMALIGN: /* posix_memalign(memptr, align, size) */
		size = a3;
		out_ptr = a1;
		break;
	case OFFHEAP_KIND_ALIGNED_ALLOC:  /* aligned_alloc(align, size) */
	case OFFHEAP_KIND_MEMALIGN:       /* memalign(align, size) */
		size = a2;
		break;
	case OFFHEAP_KIND_PVALLOC:  /* pvalloc(size) */
		size = page_round_up(a1);
		break;
	default:
		return 0;
	}
	return alloc_enter_kind(ctx, kind, size, old_ptr, out_ptr, fn_len);
}

SEC("uretprobe")
int alloc_exit(struct pt_regs *ctx)
{
	return alloc_exit_any(ctx);
}

/* free, and every operator delete (cookie OFFHEAP_KIND_DELETE). A delete
 * accounts for the block and leaves its address in `deleting`: the free it
 * then calls (libstdc++'s and libc++'s delete call free; a sized delete calls
 * the unsized one first) finds it there and counts nothing again. */
SEC("uprobe")
int free_enter(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 kind = bpf_get_attach_cookie(ctx);
	__u64 addr = PT_REGS_PARM1(ctx);

	if (!addr)
		return 0;
	struct inflight_slot *slot = thread_slot(0);
	/* A thread with a slot is a target's (see alloc_enter_kind). */
	if (!slot && !(target_flags(tgid) & OFFHEAP_TARGET_MALLOC))
		return 0;
	/* glibc's realloc(p, 0) calls __libc_free, which is free's address:
	 * the outer realloc accounts for p at its return. */
	if (call_in_progress(slot, PT_REGS_SP(ctx)))
		return 0;
	if (slot && slot->call.deleting == addr) {
		if (kind != OFFHEAP_KIND_DELETE)
			slot->call.deleting = 0;
		return 0;
	}
	if (kind == OFFHEAP_KIND_DELETE) {
		if (!slot)
			slot = thread_slot(1);
		if (slot)
			slot->call.deleting = addr;
		else
			count(OFFHEAP_CTR_INFLIGHT_FULL);
	}
	if (!forget(tgid, addr, 1))
		count(OFFHEAP_CTR_FREE_UNKNOWN);
	return 0;
}
