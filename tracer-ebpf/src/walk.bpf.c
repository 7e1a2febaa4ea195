// SPDX-License-Identifier: GPL-2.0
/* The one user-stack walker, for every mode: malloc mode's uprobes and
 * mapping tracepoints, resident mode's page faults. Stacks are stored by hash
 * in `hashed_stacks` under an id. Included by offheap.bpf.c (the maps live
 * there).
 *
 * The walk follows the frame-pointer chain over one bulk copy of the stack
 * instead of calling bpf_get_stackid. Measured on this project's machines
 * (kernel 6.18, bpf_stats): the kernel's walk (perf_callchain_user, two
 * __get_user per frame) costs about 63 ns a frame, 1.5 us for node's typical
 * 23-frame malloc stack; one bpf_probe_read_user of up to
 * OFFHEAP_STACK_WINDOW bytes above %rsp and a walk inside the copy cost about
 * 4 ns a frame.
 *
 * Frames: ips[0] is where the walk starts (enum walk_start), then the return
 * address of each frame on the %rbp chain. */

/* x86-64 user registers as saved on kernel entry (the kernel's struct
 * pt_regs has the UAPI <asm/ptrace.h> layout). */
static __always_inline struct pt_regs *user_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

/* The main thread's stack ends a little above mm->start_stack (argv and the
 * environment); every thread's frames lie below it. */
static __always_inline __u64 stack_limit(void)
{
	struct task_struct *task = bpf_get_current_task_btf();

	return BPF_CORE_READ(task, mm, start_stack);
}

static __always_inline __u64 stack_hash_step(__u64 h, __u64 ip)
{
	/* Multiply (high bits from low) then fold (low bits from high): every
	 * bit of every frame reaches the slot bits. */
	h = (h ^ ip) * 0x9e3779b97f4a7c15ULL;
	return h ^ (h >> 32);
}

#define STACK_HASH_SEED 0xcbf29ce484222325ULL
#define STACK_SLOT_MASK ((1 << OFFHEAP_STACK_ID_BITS) - 1)

/* Stores s (nr, hash and ips filled) in hashed_stacks and returns its id, or
 * a negative error (the map is full, or every slot tried holds another
 * stack). */
static __always_inline long intern_stack(struct stack_ips *s)
{
	__u64 home = s->hash & (((__u64)1 << stack_hash_bits) - 1);

	for (__u32 k = 0; k < OFFHEAP_STACK_HASH_PROBES; k++) {
		__s32 id = (__s32)((home + k) & STACK_SLOT_MASK);
		struct stack_ips *cur = bpf_map_lookup_elem(&hashed_stacks, &id);

		if (!cur) {
			long err = bpf_map_update_elem(&hashed_stacks, &id, s, BPF_NOEXIST);
			if (!err)
				return id;
			/* EEXIST: another CPU stored a stack here first. */
			if (err != -EEXIST)
				return err;
			cur = bpf_map_lookup_elem(&hashed_stacks, &id);
			if (!cur)
				continue;
		}
		/* A 64-bit hash and the depth both equal: the same stack. */
		if (cur->hash == s->hash && cur->nr == s->nr)
			return id;
	}
	return -ENOSPC;
}

/* Copies up to `want` bytes (at most OFFHEAP_STACK_WINDOW) of user memory at
 * addr into sc->words; returns how many bytes it copied. A copy that runs past
 * the end of the stack's mapping fails as a whole, so `limit` (an address
 * known to be readable up to, or 0) bounds it first, and a failed copy is
 * retried up to the end of addr's page.
 *
 * A global (not inlined) function, so that the verifier checks it once, apart
 * from its callers: inlined into walk_frame, the precise bounds it needs for
 * the copy's length made the verifier explore the bpf_loop callback once per
 * frame depth (162k instructions processed for malloc_enter, ~225 ms of
 * BPF_PROG_LOAD; 6.5k as a global function). */
__noinline __u64 read_window(struct stack_scratch *sc, __u64 addr, __u64 limit, __u64 want)
{
	__u64 len = want;

	if (!sc)
		return 0;
	if (limit > addr && limit - addr < len)
		len = limit - addr;
	if (len > OFFHEAP_STACK_WINDOW)
		len = OFFHEAP_STACK_WINDOW;
	barrier_var(len);
	if (len <= OFFHEAP_STACK_WINDOW && bpf_probe_read_user(sc->words, len, (void *)addr) == 0)
		return len;
	len = 4096 - (addr & 4095);
	if (len > want)
		len = want;
	barrier_var(len);
	if (len > OFFHEAP_STACK_WINDOW)
		return 0;
	if (bpf_probe_read_user(sc->words, len, (void *)addr) < 0)
		return 0;
	return len;
}

/* State of one walk, passed to walk_frame by bpf_loop. */
struct walk_state {
	__u64 base;    /* user address of words[0] */
	__u64 win;     /* bytes of the copy that are valid */
	__u64 fp;      /* the next frame record to read */
	__u64 limit;   /* see read_window */
	__u64 hash;
	__u32 nr;
	struct stack_scratch *sc;
};

/* One frame of the walk; returns 1 to stop. A bpf_loop callback, so the
 * verifier checks it once rather than once per possible depth. */
static long walk_frame(__u64 i, struct walk_state *w)
{
	struct stack_scratch *sc = w->sc;
	__u64 fp = w->fp;

	/* A frame record is two words: the caller's %rbp, then the return
	 * address. A misaligned one is not a frame. */
	if (!sc || !fp || (fp & 7))
		return 1;
	__u64 off = fp - w->base;
	if (fp < w->base || w->win < 16 || off > w->win - 16) {
		w->base = fp;
		w->win = read_window(sc, fp, w->limit, OFFHEAP_STACK_WINDOW);
		off = 0;
	}
	if (w->win < 16 || off > OFFHEAP_STACK_WINDOW - 16)
		return 1;
	__u64 next = sc->words[off / 8];
	__u64 ret = sc->words[off / 8 + 1];
	__u32 nr = w->nr;

	if (nr >= OFFHEAP_MAX_STACK_DEPTH)
		return 1;
	sc->stack.ips[nr] = ret;
	w->nr = nr + 1;
	w->hash = stack_hash_step(w->hash, ret);
	/* The x86-64 stack grows down: a caller's frame lies above its callee's.
	 * A saved %rbp that does not is code built without frame pointers using
	 * %rbp for data (glibc's __libc_start_call_main, start_thread): the
	 * chain ends there. */
	if (next <= fp)
		return 1;
	w->fp = next;
	return 0;
}

/* Where a walk starts. */
enum walk_start {
	/* ips[0] is the interrupted instruction itself (a page fault). */
	WALK_AT_IP = 0,
	/* At a function's first instruction (a uprobe), or at the `syscall` of
	 * a libc stub that pushes nothing (glibc's mmap, munmap, mremap, brk,
	 * madvise: glibc 2.36, objdump): [sp] is the return address into the
	 * caller, and %rbp is still the caller's, so the frame-pointer chain
	 * starts at the caller's caller. ips[0] is [sp], the caller; the probed
	 * function or stub itself is not a frame of the stack. */
	WALK_AT_CALL = 1,
};

/* Walks the user stack whose registers are (ip, sp, fp) into sc->stack (nr,
 * hash, ips; see the top of this file) and returns its depth. `limit`: see
 * read_window. `*span`: in, how many bytes above sp to copy first (the walk
 * copies more where a frame lies past them); out, how far above sp the last
 * frame record ends. `sp_word` receives [sp] (0 when unreadable). */
static __always_inline __u32 walk_user_stack(struct stack_scratch *sc, __u64 ip, __u64 sp,
					     __u64 fp, __u64 limit, __u64 *span, __u64 *sp_word,
					     enum walk_start start)
{
	struct walk_state w = {
		.base = sp,
		.fp = fp,
		.limit = limit,
		.sc = sc,
	};

	w.win = read_window(sc, sp, limit, *span);
	/* A window shorter than a word: not even sp's page was readable. */
	*sp_word = w.win >= 8 ? sc->words[0] : 0;
	if (start == WALK_AT_CALL && w.win < 8)
		count(OFFHEAP_CTR_READ_FAILED);
	/* A zero return address is no caller (a function entered by a jump
	 * from the outermost frame): the stack is then the walk from ip. */
	if (start == WALK_AT_CALL && *sp_word)
		ip = *sp_word;
	w.hash = stack_hash_step(STACK_HASH_SEED, ip);
	sc->stack.ips[0] = ip;
	/* Loaded back from the map, the depth is a number the verifier does not
	 * know: a known constant would make it check walk_frame once per depth
	 * (each call's state differs) and exceed its instruction limit. */
	sc->stack.nr = 1;
	w.nr = *(volatile __u64 *)&sc->stack.nr;
	bpf_loop(OFFHEAP_MAX_STACK_DEPTH - 1, walk_frame, &w, 0);
	sc->stack.nr = w.nr;
	sc->stack.hash = w.hash;
	*span = w.fp > sp ? w.fp + 16 - sp : 0;
	return w.nr;
}

/* How much of the stack a walk copies first when there is no previous walk
 * to size it on (tracepoints: any thread). */
#define STACK_FIRST_COPY 4096

/* Fills key with the user stack of the current task at a syscall made by a
 * leaf libc stub (WALK_AT_CALL). For tracepoint programs only: they run with
 * preemption off (perf_syscall_enter/exit and the page-fault tracepoints
 * disable it around the BPF run), so the per-CPU scratch is theirs for the
 * whole walk. */
static __always_inline void take_syscall_stack(struct stack_key *key, __u32 tgid)
{
	__u32 zero = 0;
	struct stack_scratch *sc = bpf_map_lookup_elem(&stack_scratch, &zero);
	struct pt_regs *regs = user_regs();
	__u64 span = STACK_FIRST_COPY, sp_word;

	key->tgid = tgid;
	key->stack_id = -1;
	if (!sc) {
		count(OFFHEAP_CTR_STACK_ID_FAILED);
		return;
	}
	walk_user_stack(sc, PT_REGS_IP(regs), PT_REGS_SP(regs), PT_REGS_FP(regs), stack_limit(),
			&span, &sp_word,
			WALK_AT_CALL);
	long id = intern_stack(&sc->stack);
	if (id < 0)
		count(OFFHEAP_CTR_STACK_ID_FAILED);
	key->stack_id = id;
}

/* How much of the stack a uprobe's walk copies first: what the thread's
 * previous walk spanned, and some slack. Measured on node's allocation loop,
 * a malloc stack spans 3.6 KiB on average (4% under 2 KiB, 74% under 4 KiB):
 * one fixed window either copied too much or needed a second copy a quarter
 * of the time, while a thread's consecutive calls mostly come from similar
 * depths. A frame past the copy is not lost: the walk copies again there. */
#define STACK_SPAN_SLACK 512

/* Fills key with the user stack at a uprobe on a function's first
 * instruction (WALK_AT_CALL), walked in the thread's slot: its scratch, its
 * cached stack_limit(), its previous walk's span and its recent stack ids. */
static __always_inline void take_uprobe_stack(struct pt_regs *ctx, struct stack_key *key,
					      __u32 tgid, struct inflight_slot *slot)
{
	struct stack_scratch *sc = &slot->scratch;
	__u64 sp_word;

	key->tgid = tgid;
	if (!slot->stack_limit)
		slot->stack_limit = stack_limit();
	__u64 sp = PT_REGS_SP(ctx);
	__u64 want = slot->stack_span ? slot->stack_span + STACK_SPAN_SLACK : OFFHEAP_STACK_WINDOW;
	walk_user_stack(sc, PT_REGS_IP(ctx), sp, PT_REGS_FP(ctx), slot->stack_limit, &want,
			&sp_word, WALK_AT_CALL);
	slot->stack_span = want;
	struct stack_id_cache_entry *c =
		&slot->stack_ids[(sc->stack.hash >> 32) & (STACK_ID_CACHE - 1)];
	if (c->hash == sc->stack.hash && c->nr == sc->stack.nr && c->nr) {
		key->stack_id = c->id;
		return;
	}
	long id = intern_stack(&sc->stack);
	if (id < 0) {
		count(OFFHEAP_CTR_STACK_ID_FAILED);
	} else {
		c->hash = sc->stack.hash;
		c->nr = sc->stack.nr;
		c->id = id;
	}
	key->stack_id = id;
}
