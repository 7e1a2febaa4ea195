// SPDX-License-Identifier: GPL-2.0
/* The one user-stack walker, for every mode: malloc mode's uprobes and
 * mapping tracepoints, resident mode's page faults. Stacks are stored by hash
 * in `hashed_stacks` under an id. Included by offheap.bpf.c (the maps live
 * there).
 *
 * Per frame, the walker asks how the frame's code unwinds (frame_class: an
 * unwind cache hit, else unwind_find over the tables built from the modules'
 * .eh_frame, include/unwind.bpf.h), then steps to the caller:
 * - frame pointers (code that keeps them, and V8's JIT code): the frame
 *   record [rbp] = caller's rbp, [rbp+8] = return address, read from one bulk
 *   copy of the stack. Measured on this project's machines (kernel 6.18,
 *   bpf_stats): the kernel's walk (perf_callchain_user) costs about 63 ns a
 *   frame, a walk inside one copy about 4 ns;
 * - a table row (code built without frame pointers: glibc, libstdc++, zlib,
 *   most addons): CFA from rsp or rbp, return address and rbp at CFA - 8n
 *   (unwind_step);
 * - a pc in no executable mapping of the process ends the stack, and the
 *   stack says it was truncated (OFFHEAP_STACK_TRUNCATED): no garbage frame
 *   is ever recorded.
 * A frame in V8's code (JIT, or the interpreter's builtins) is recorded as
 * the JS function it runs (v8_frame, include/v8.bpf.h), not as its pc.
 *
 * Frames: ips[0] is where the walk starts (enum walk_start), then the return
 * address of each caller. */

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

/* How much a walk copies at a frame record outside its copy. */
#define STACK_REREAD 2048

/* A frame record further than this above the stack pointer is data in
 * %rbp, not a frame (a heap pointer of code without frame pointers: a
 * worker thread's stack lies below mm->start_stack, so the stack's end
 * cannot bound it there). Frames of 1 MiB of locals are not walked. */
#define FRAME_MAX (1ULL << 20)

/* Stores ip at ips[at], masked for the verifier, which may not have kept a
 * bound the code checked before (the compiler reloads the index, or drops
 * the mask as redundant: barrier_var stops it). Depth 127 = 0x7f: a store one
 * past ips[] would still land inside the scratch. */
#define STORE_IP(sc, at, ip)                                                        \
	do {                                                                        \
		__u32 __at = (at);                                                  \
		barrier_var(__at);                                                  \
		(sc)->stack.ips[__at & OFFHEAP_MAX_STACK_DEPTH] = (ip);             \
	} while (0)
_Static_assert((OFFHEAP_MAX_STACK_DEPTH & (OFFHEAP_MAX_STACK_DEPTH + 1)) == 0,
	       "ips[] indexes are masked with the depth: it must be 2^n - 1");
#define STACK_SLOT_MASK ((1 << OFFHEAP_STACK_ID_BITS) - 1)

/* intern_stack's bpf_loop context, on the caller's BPF stack. A bpf_loop
 * callback is checked once: as a counted loop over the 32 slots, the
 * verifier walked every iteration's branches (about 8k instructions
 * processed in each program that interns a stack). */
struct intern_ctx {
	struct stack_ips *s;
	__u64 home;
	long id; /* out: the stack's id, or a negative error */
};

/* Slot k after the stack's home: 1 (stop) once c->id is the answer. */
static long intern_probe(__u64 k, struct intern_ctx *c)
{
	struct stack_ips *s = c->s;

	if (!s)
		return 1;
	__s32 id = (__s32)((c->home + k) & STACK_SLOT_MASK);
	struct stack_ips *cur = bpf_map_lookup_elem(&hashed_stacks, &id);

	if (!cur) {
		long err = bpf_map_update_elem(&hashed_stacks, &id, s, BPF_NOEXIST);
		if (!err) {
			c->id = id;
			return 1;
		}
		/* EEXIST: another CPU stored a stack here first. */
		if (err != -EEXIST) {
			c->id = err;
			return 1;
		}
		cur = bpf_map_lookup_elem(&hashed_stacks, &id);
		if (!cur)
			return 0;
	}
	/* A 64-bit hash (over frames and flags) and the depth both equal: the
	 * same stack. */
	if (cur->hash == s->hash && cur->nr == s->nr) {
		c->id = id;
		return 1;
	}
	return 0;
}

/* Stores s (nr, flags, hash and ips filled) in hashed_stacks and returns its
 * id, or a negative error (the map is full, or every slot tried holds
 * another stack). */
static __always_inline long intern_stack(struct stack_ips *s)
{
	struct intern_ctx c = {
		.s = s,
		.home = s->hash & (((__u64)1 << stack_hash_bits) - 1),
		.id = -ENOSPC,
	};

	bpf_loop(OFFHEAP_STACK_HASH_PROBES, intern_probe, &c, 0);
	return c.id;
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

#include "scan.bpf.c"

/* A pc no table entry covers: mapped since the tables were loaded, it is
 * taken with frame pointers (and not cached: the tables come). In a file's
 * code that is a guess (glibc has none): the walk records it (w->guessed),
 * and walk_one checks the step (w->guess); V8's new JIT code keeps them. */
static __always_inline int unmapped_class(struct walk_state *w, __u64 pc)
{
	int m = mapped_since(pc, w->regs.sp, w->scanned);

	if (m == MAPPED_FILE_CODE) {
		w->guessed = 1;
		w->guess = 1;
	}
	return m ? UNWIND_FP : UNWIND_NONE;
}

/* How the frame recorded last unwinds (enum unwind_class; for TABLE, its row
 * is in w->cursor.row). Return addresses come from the unwind cache when
 * they can (see UNWIND_CACHE); a pc no entry covers, see unmapped_class. */
static __always_inline int frame_class(struct walk_state *w, struct unwind_cache *cache)
{
	__u64 pc = w->regs.pc;

	if (w->leaf) {
		int cls = unwind_find(w->tgid, pc, 1, &w->cursor);
		if (cls == UNWIND_JIT && !mapped_since(pc, w->regs.sp, w->scanned))
			return UNWIND_NONE;
		return cls == UNWIND_NONE ? unmapped_class(w, pc) : cls;
	}
	struct unwind_cache_entry *e =
		&cache->e[(stack_hash_step(0, pc) >> 32) & (UNWIND_CACHE - 1)];
	if (e->pc == pc && e->tgid == w->tgid && e->epoch == (__u16)w->epoch) {
		w->cursor.row = e->row;
		return e->cls;
	}
	int cls = unwind_find(w->tgid, pc, 0, &w->cursor);
	if (cls == UNWIND_NONE)
		return unmapped_class(w, pc);
	/* The tables take all anonymous memory for V8's code (it makes pages
	 * executable after they were read): a return address there must be in
	 * code now, not in a thread's stack or a heap (a scanned or garbage
	 * word). Not cached: the page may become code; nor is an answer the
	 * kernel could not give (MAPPED_CODE_BUSY). */
	if (cls == UNWIND_JIT) {
		int m = mapped_since(pc, w->regs.sp, w->scanned);
		if (m == MAPPED_NOT_CODE)
			return UNWIND_NONE;
		if (m == MAPPED_CODE_BUSY)
			return cls;
	}
	e->pc = pc;
	e->tgid = w->tgid;
	e->epoch = w->epoch;
	e->cls = cls;
	e->row = w->cursor.row;
	return cls;
}

/* The frame-pointer step of the frame recorded last, from the copy (copied
 * again at the frame record when it lies outside). Returns 0, 1 when the
 * chain ends where a thread starts (%rbp 0), or -1 (truncated). */
static __always_inline int fp_step(struct walk_state *w, struct stack_scratch *sc)
{
	__u64 fp = w->regs.bp;

	if (!fp)
		return 1;
	/* A frame record is two words, and a caller's frame lies above its
	 * callee's (the x86-64 stack grows down): a %rbp that is misaligned or
	 * below the stack pointer is data, not a frame (code without frame
	 * pointers using it, glibc's __libc_start_call_main). */
	if ((fp & 7) || fp < w->regs.sp || fp - w->regs.sp > FRAME_MAX)
		return -1;
	__u64 off = fp - w->base;
	if (fp < w->base || w->win < 16 || off > w->win - 16) {
		w->base = fp;
		w->win = read_window(sc, fp, w->limit, STACK_REREAD);
		w->reread = 1;
		off = 0;
	}
	if (w->win < 16 || off > OFFHEAP_STACK_WINDOW - 16)
		return -1;
	w->regs.bp = sc->words[off / 8];
	w->regs.pc = sc->words[off / 8 + 1];
	w->regs.sp = fp + 16;
	/* The next walk's first copy spans the frames of this one's: those of
	 * its first copy only, where frames are dense. Frames far above
	 * (main(), the C library's start-up, which the tables now reach) are
	 * read by small copies: sizing the first copy on them made it the
	 * whole stack, 8 KiB a walk. */
	if (!w->reread && fp + 16 > w->top)
		w->top = fp + 16;
	return 0;
}

/* Whether pc is in V8's embedded builtins, in node's text or V8's copy. */
static __always_inline int in_v8_builtins(const struct v8_proc_config *v8, __u64 pc)
{
	return (pc >= v8->builtins_start && pc < v8->builtins_end) ||
	       (pc >= v8->remap_start && pc < v8->remap_end);
}

/* One frame of the walk; returns 1 to stop. It finishes the frame recorded
 * last (its class; a V8 frame becomes its JS word; the hash), then steps to
 * the caller and records it.
 *
 * A global function, checked once by the verifier with unknown arguments:
 * inside the bpf_loop callback, the class of a frame (cache, tables, V8)
 * times the kinds of step made the verifier explore the callback for every
 * combination of the states of successive frames, past its limit of a
 * million instructions. `sc` and `v8` come as arguments: a global function
 * sees the walk state as plain memory, whose pointers it cannot follow. */
__noinline int walk_one(struct stack_scratch *sc, struct unwind_cache *cache,
			struct v8_proc_config *v8)
{
	if (!sc || !cache)
		return 1;
	struct walk_state *w = &sc->walk;
	__u32 nr = w->nr;

	if (nr == 0 || nr > OFFHEAP_MAX_STACK_DEPTH)
		return 1;
	w->guess = 0;
	int cls = frame_class(w, cache);
	w->scanned = 0;
	if (cls == UNWIND_NONE) {
		/* Not code of the process: the walk went wrong before it. */
		w->nr = nr - 1;
		w->flags |= OFFHEAP_STACK_TRUNCATED;
		return 1;
	}
	/* A JS frame replaces its pc (without a branch on the result: see
	 * v8.bpf.h's v8_where). */
	__u64 pc = w->regs.pc;
	int in_v8 = v8 && (cls == UNWIND_JIT || in_v8_builtins(v8, pc));
	__u64 word = in_v8 ? v8_frame(v8, pc, w->regs.bp, (const void *)sc->words,
				      v8_where(w->regs.bp, w->base, w->win, cls == UNWIND_JIT))
			   : 0;
	__u64 m = 0 - (__u64)(word != 0);
	__u64 ip = (word & m) | (w->regs.pc & ~m);
	STORE_IP(sc, nr - 1, ip);
	w->hash = stack_hash_step(w->hash, ip);
	if (nr >= OFFHEAP_MAX_STACK_DEPTH) {
		w->flags |= OFFHEAP_STACK_TRUNCATED;
		return 1;
	}
	/* A table frame reads its words from the walk's copy where it holds
	 * them, else one read each (the C library's start-up frames, far above
	 * the frames a walk copies first: one bigger copy there cost more than
	 * the few words it served). */
	struct unwind_window win = { .words = sc->words, .base = w->base, .len = w->win };
	__u64 sp = w->regs.sp;
	__u8 kind = w->cursor.row.kind;
	int needs_bp = cls != UNWIND_TABLE || kind == OFFHEAP_UNWIND_ROW_FP ||
		       kind == OFFHEAP_UNWIND_ROW_RBP || kind == OFFHEAP_UNWIND_ROW_DRAP;
	/* After a scan %rbp is not this frame's: a step on it would follow
	 * whatever the code scanned over left there (a heap pointer, whose
	 * words can be code pointers too). Its frame record is found by
	 * scanning instead. */
	int step = w->bp_lost && needs_bp ? -1
		 : cls == UNWIND_TABLE	  ? unwind_step(cls, &w->cursor, &w->regs, &win)
					  : fp_step(w, sc);
	if (step == 0 && cls == UNWIND_TABLE && kind == OFFHEAP_UNWIND_ROW_RSP && w->cursor.row.rbp)
		w->bp_lost = 0; /* the row restored the caller's %rbp */
	if (step == 1 || (step >= 0 && !w->regs.pc))
		return 1;
	/* A step on a guess (frame pointers assumed in a file's code no table
	 * covers yet) must have found a return address: one a call precedes.
	 * Else %rbp was data, and the stack ends here, truncated. Code without
	 * frame pointers leaves anything in %rbp: glibc's
	 * __libc_start_call_main, before the tables of a process that just
	 * started were loaded, led to a word in no module (tests/fixtures/
	 * guess_lib.c makes such a %rbp). Not for a table's gaps (UNWIND_GAP):
	 * with those checked too (the caller then scanned for, or the stack
	 * ended), about half of the runs of sharp's malloc-mode test
	 * (tests/e2e/addon_npm.rs) got stacks through words of thread stacks,
	 * frames in no module; none in 10 runs without. Not understood yet. */
	if (step == 0 && w->guess && !after_call(w->regs.pc)) {
		w->flags |= OFFHEAP_STACK_TRUNCATED;
		return 1;
	}
	/* Frame records: frame-pointer code, or a row with CFA = rbp + 16;
	 * not code no FDE covers (UNWIND_GAP), whose frame pointers are only
	 * assumed. */
	int record = cls == UNWIND_FP || (cls == UNWIND_TABLE && kind == OFFHEAP_UNWIND_ROW_RBP &&
					  w->cursor.row.cfa == 16);
	if (step < 0 && scan_step(sc, sp, record) < 0) {
		w->flags |= OFFHEAP_STACK_TRUNCATED;
		return 1;
	}
	/* 2: a signal frame; the caller is the interrupted context, a leaf. */
	w->leaf = step == 2;
	STORE_IP(sc, nr, w->regs.pc);
	w->nr = nr + 1;
	return 0;
}

/* The bpf_loop callback's context: what walk_one needs, on the BPF stack
 * (its pointers keep their types there, as nothing else is given it). */
struct walk_ctx {
	struct stack_scratch *sc;
	struct unwind_cache *cache;
	struct v8_proc_config *v8;
};

/* The fast path of a frame, inline in the callback: a return address the
 * cache knows unwinds with frame pointers, outside V8's builtins, which is
 * most frames of most stacks (node's own code, JIT code aside). Returns 0
 * (the caller recorded), 1 (stop) or -1 (not such a frame: walk_one's). The
 * callback through walk_one alone cost ~30 ns a frame more (bpf_stats, the
 * bench's allocation loop: 985 ns per malloc against 440 for the
 * frame-pointer walker before the tables). */
static __always_inline int fast_frame(struct walk_ctx *c, struct stack_scratch *sc,
				      struct unwind_cache *cache)
{
	struct walk_state *w = &sc->walk;
	__u64 pc = w->regs.pc;
	__u32 nr = w->nr;

	if (w->leaf || w->bp_lost || nr == 0 || nr >= OFFHEAP_MAX_STACK_DEPTH)
		return -1;
	struct unwind_cache_entry *e =
		&cache->e[(stack_hash_step(0, pc) >> 32) & (UNWIND_CACHE - 1)];
	if (e->pc != pc || e->tgid != w->tgid || e->epoch != (__u16)w->epoch ||
	    e->cls != UNWIND_FP)
		return -1;
	struct v8_proc_config *v8 = c->v8;
	if (v8 && in_v8_builtins(v8, pc))
		return -1;
	STORE_IP(sc, nr - 1, pc);
	w->hash = stack_hash_step(w->hash, pc);
	w->scanned = 0;
	__u64 sp = w->regs.sp;
	int step = fp_step(w, sc);
	if (step < 0)
		step = scan_step(sc, sp, 1) < 0 ? -1 : 0;
	if (step != 0 || !w->regs.pc) {
		if (step < 0)
			w->flags |= OFFHEAP_STACK_TRUNCATED;
		return 1;
	}
	STORE_IP(sc, nr, w->regs.pc);
	w->nr = nr + 1;
	return 0;
}

/* The bpf_loop callback: one frame per call. */
static long walk_frame(__u64 i, struct walk_ctx *c)
{
	struct stack_scratch *sc = c->sc;
	struct unwind_cache *cache = c->cache;

	if (!sc || !cache)
		return 1;
	int fast = fast_frame(c, sc, cache);
	if (fast == 0)
		return 0;
	if (fast > 0)
		return 1;
	/* bpf_loop wants 0 or 1 from its callback, and proven so: the
	 * comparison stays 64-bit only as an explicit branch. */
	long stop = walk_one(sc, cache, c->v8);

	barrier_var(stop);
	if (stop)
		return 1;
	return 0;
}

/* Where a walk starts. */
enum walk_start {
	/* ips[0] is the interrupted instruction itself (a page fault). */
	WALK_AT_IP = 0,
	/* At a function's first instruction (a uprobe), or at the `syscall` of
	 * a libc stub that pushes nothing (glibc's mmap, munmap, mremap, brk,
	 * madvise: glibc 2.36, objdump): [sp] is the return address into the
	 * caller, and %rbp is still the caller's. ips[0] is [sp], the caller;
	 * the probed function or stub itself is not a frame of the stack. */
	WALK_AT_CALL = 1,
};

/* Walks the user stack of process `tgid` whose registers are (ip, sp, fp)
 * into sc->stack (nr, flags, hash, ips; see the top of this file) and
 * returns its depth. `limit`: see read_window. `*span`: in, how many bytes
 * above sp to copy first (the walk copies more where a frame lies past
 * them); out, how far above sp the last frame record ends. `sp_word`
 * receives [sp] (0 when unreadable). */
static __always_inline __u32 walk_user_stack(struct stack_scratch *sc, struct unwind_cache *cache,
					     __u32 tgid, __u64 ip, __u64 sp, __u64 fp, __u64 limit,
					     __u64 *span, __u64 *sp_word, enum walk_start start)
{
	__u32 zero = 0;
	__u32 *epoch = bpf_map_lookup_elem(&unwind_epoch, &zero);
	struct walk_state *w = &sc->walk;
	struct walk_ctx ctx = {
		.sc = sc,
		.cache = cache,
		.v8 = bpf_map_lookup_elem(&v8_procs, &tgid),
	};

	__builtin_memset(w, 0, sizeof(*w));
	w->regs.pc = ip;
	w->regs.sp = sp;
	w->regs.bp = fp;
	w->base = sp;
	w->limit = limit;
	w->hash = STACK_HASH_SEED;
	w->tgid = tgid;
	w->epoch = epoch ? *epoch : 0;
	w->leaf = start == WALK_AT_IP;
	w->win = read_window(sc, sp, limit, *span);
	/* A window shorter than a word: not even sp's page was readable. */
	*sp_word = w->win >= 8 ? sc->words[0] : 0;
	if (start == WALK_AT_CALL && w->win < 8)
		count(OFFHEAP_CTR_READ_FAILED);
	/* A zero return address is no caller (a function entered by a jump
	 * from the outermost frame): the stack is then the walk from ip. */
	if (start == WALK_AT_CALL && *sp_word) {
		w->regs.pc = *sp_word;
		w->regs.sp = sp + 8;
	}
	STORE_IP(sc, 0, w->regs.pc);
	w->nr = 1;
	bpf_loop(OFFHEAP_MAX_STACK_DEPTH, walk_frame, &ctx, 0);
	sc->stack.nr = w->nr;
	sc->stack.flags = w->flags;
	sc->stack.hash = stack_hash_step(w->hash, w->flags);
	*span = w->top > sp ? w->top - sp : 0;
	return w->nr;
}

/* How much of the stack a walk copies first when there is no previous walk
 * to size it on (tracepoints: any thread). */
#define STACK_FIRST_COPY 4096

/* Walks the current task's user stack from its user registers `regs` in the
 * per-CPU scratch and cache, and returns the scratch (the stack in
 * sc->stack, the walk's state in sc->walk), or NULL without them. For
 * tracepoint programs only: they run with preemption off
 * (perf_syscall_enter/exit and the page-fault tracepoints disable it around
 * the BPF run), so the scratch is theirs for the whole walk. `*nr`: the
 * stack's depth (set when the scratch is returned); `sp_word`: as
 * walk_user_stack's. */
static __always_inline struct stack_scratch *walk_current(__u32 tgid, struct pt_regs *regs,
							  enum walk_start start, __u32 *nr,
							  __u64 *sp_word)
{
	__u32 zero = 0;
	struct stack_scratch *sc = bpf_map_lookup_elem(&stack_scratch, &zero);
	struct unwind_cache *cache = bpf_map_lookup_elem(&unwind_cache_cpu, &zero);
	__u64 span = STACK_FIRST_COPY;

	*sp_word = 0;
	if (!sc || !cache)
		return NULL;
	*nr = walk_user_stack(sc, cache, tgid, PT_REGS_IP(regs), PT_REGS_SP(regs),
			      PT_REGS_FP(regs), stack_limit(), &span, sp_word, start);
	return sc;
}

/* Fills key with the user stack of the current task at a syscall made by a
 * leaf libc stub (WALK_AT_CALL), from a tracepoint program. */
static __always_inline void take_syscall_stack(struct stack_key *key, __u32 tgid)
{
	__u64 sp_word;
	__u32 nr;
	struct stack_scratch *sc = walk_current(tgid, user_regs(), WALK_AT_CALL, &nr, &sp_word);

	key->tgid = tgid;
	key->stack_id = -1;
	if (!sc) {
		count(OFFHEAP_CTR_STACK_ID_FAILED);
		return;
	}
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
	walk_user_stack(sc, &slot->cache, tgid, PT_REGS_IP(ctx), sp, PT_REGS_FP(ctx),
			slot->stack_limit, &want, &sp_word, WALK_AT_CALL);
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
