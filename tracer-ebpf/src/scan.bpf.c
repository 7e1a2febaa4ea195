// SPDX-License-Identifier: GPL-2.0
/* The walker's answers for frames that neither a table row nor frame
 * pointers can step, and for addresses the tables put in no mapping:
 * stack scanning (scan_step, as Breakpad's), the caller's %rbp saved by a
 * scanned frame (saved_bp), whether an address follows a call instruction
 * (after_call) and whether the kernel maps it as code now (mapped_since).
 * Included by walk.bpf.c after read_window; the walk state (struct
 * walk_state, struct stack_scratch) is offheap.bpf.c's. */

/* Stack scanning: how many words above a frame's sp are searched for its
 * return address, and how many frames of one walk may be found so. */
#define SCAN_WORDS 64
#define SCAN_MAX 16
/* Words this close to the stack pointer are stack addresses (scan_step). */
#define STACK_NEAR (8ULL << 20)

/* Word idx of the walk's copy, the index masked for the verifier (which
 * may not keep a bound checked before: barrier_var keeps the mask). */
static __always_inline __u64 copy_word(const struct stack_scratch *sc, __u32 idx)
{
	barrier_var(idx);
	return sc->words[idx & (OFFHEAP_STACK_WINDOW / 8 - 1)];
}

/* Whether the 8 bytes before addr end with a call instruction, which makes
 * addr a return address (the Intel SDM's CALL encodings): E8 rel32;
 * FF /2 with a register (2 bytes, 3 with REX.B), [reg+disp8] (3 bytes),
 * [reg+disp32] or [rip+disp32] (6 bytes). */
__noinline int after_call(__u64 addr)
{
	__u8 b[8];

	if (addr < 4096 || addr >= (1ULL << 47))
		return 0;
	if (bpf_probe_read_user(b, sizeof(b), (const void *)(addr - 8)) < 0)
		return 0;
	if (b[3] == 0xe8)
		return 1;
	if (b[6] == 0xff && (b[7] & 0xf8) == 0xd0)
		return 1;
	if (b[5] == 0x41 && b[6] == 0xff && (b[7] & 0xf8) == 0xd0)
		return 1;
	if (b[5] == 0xff && (b[6] & 0xf8) == 0x50 && b[6] != 0x54)
		return 1;
	if (b[2] == 0xff && (b[3] == 0x15 || ((b[3] & 0xf8) == 0x90 && b[3] != 0x94)))
		return 1;
	return 0;
}

/* saved_bp's and scan_step's bpf_loop contexts, on the caller's BPF stack.
 * As bpf_loop callbacks, their word loops are checked once: as counted
 * loops the verifier walked all 64 iterations, in every program that
 * carries the walker (12.3k instructions processed for scan_step and 4.8k
 * for saved_bp, about half of each such program's total). */
struct saved_bp_ctx {
	struct stack_scratch *sc;
	__u64 off;
	__u64 slot;
	__u64 bp; /* out: the word found, or 0 */
};

static long saved_bp_word(__u64 j, struct saved_bp_ctx *c)
{
	struct stack_scratch *sc = c->sc;
	__u64 v, ra;

	if (!sc)
		return 1;
	v = copy_word(sc, (c->off + j * 8) / 8);
	if (v <= c->slot || v - c->slot > FRAME_MAX || (v & 7))
		return 0;
	if (bpf_probe_read_user(&ra, sizeof(ra), (const void *)(v + 8)) < 0 || !after_call(ra))
		return 0;
	c->bp = v;
	return 1;
}

/* The caller's %rbp among the `n` words at off that a frame scanned over
 * (scan_step) holds below its return address at `slot`: the function saved
 * it there if it used %rbp. It is the one that points at a frame record
 * above: a word there that a call precedes. Sets regs.bp; returns 1 when
 * found. Global: the verifier checks it once per program. */
__noinline int saved_bp(struct stack_scratch *sc, __u64 off, int n, __u64 slot)
{
	struct saved_bp_ctx c = { .sc = sc, .off = off, .slot = slot };

	if (!sc || n <= 0)
		return 0;
	bpf_loop(n < SCAN_WORDS ? n : SCAN_WORDS, saved_bp_word, &c, 0);
	if (!c.bp)
		return 0;
	sc->walk.regs.bp = c.bp;
	return 1;
}

struct scan_ctx {
	struct stack_scratch *sc;
	__u64 off;
	__u64 sp;
	__u64 record;
	__u64 at;    /* out: the offset of the word found */
	__u64 word;  /* out: that word, or 0 when none was found */
	__u64 saved; /* out: the word below it (record) */
};

/* One word of scan_step's search; returns 1 to stop (found, or past the
 * copy). */
static long scan_word(__u64 i, struct scan_ctx *c)
{
	struct stack_scratch *sc = c->sc;

	if (!sc)
		return 1;
	struct walk_state *w = &sc->walk;
	__u64 at = c->off + i * 8;
	if (at + 8 > w->win || at > OFFHEAP_STACK_WINDOW - 8)
		return 1;
	__u32 idx = at / 8;
	__u64 word = copy_word(sc, idx);
	__u64 slot = w->base + at;
	__u64 saved = 0;
	if (c->record) {
		if (at < 8)
			return 0;
		saved = copy_word(sc, idx - 1);
		if (saved && (saved <= slot || saved - slot > FRAME_MAX || (saved & 7)))
			return 0;
	}
	/* A word pointing into the thread's own stack is data, never a
	 * return address (thread stacks are 8 MiB; it passed after_call
	 * when the bytes before it happened to look like a call). */
	if (word - (c->sp - STACK_NEAR) < 2 * STACK_NEAR)
		return 0;
	if (!after_call(word))
		return 0;
	c->at = at;
	c->word = word;
	c->saved = saved;
	return 1;
}

/* The caller of a frame that neither a table row nor frame pointers can
 * step (code with neither .eh_frame nor frame pointers: libvips' C code in
 * sharp's prebuilt binaries, say): the first word above its sp that is a
 * return address (after_call), as Breakpad's stack scanning does. %rbp is
 * then unknown (the frames scanned over may have used it, and saved the
 * caller's where nothing says): until a row restores it, a step that needs
 * it is taken only when the return address it finds passes after_call too
 * (walk_one). A frame whose code keeps a frame record (`record`: frame
 * pointers, or a row with CFA = rbp + 16) has its return address right
 * above its caller's %rbp: the word below a candidate must then be a frame
 * pointer further up the stack (or 0, the outermost), which rules out most
 * stale return addresses left in locals, and gives %rbp back. Returns 0
 * with regs.pc and regs.sp set, or -1. A global function, checked once. */
__noinline int scan_step(struct stack_scratch *sc, __u64 sp, int record)
{
	if (!sc)
		return -1;
	struct walk_state *w = &sc->walk;

	if (w->scans >= SCAN_MAX || (sp & 7))
		return -1;
	if (sp < w->base || w->win < SCAN_WORDS * 8 || sp - w->base > w->win - SCAN_WORDS * 8) {
		w->base = sp;
		w->win = read_window(sc, sp, w->limit, SCAN_WORDS * 8);
		w->reread = 1;
	}
	struct scan_ctx c = { .sc = sc, .off = sp - w->base, .sp = sp, .record = record };
	bpf_loop(SCAN_WORDS, scan_word, &c, 0);
	/* after_call refuses 0: a word found is never 0. */
	if (!c.word)
		return -1;
	__u64 slot = w->base + c.at;
	w->regs.pc = c.word;
	w->regs.sp = slot + 8;
	w->scans++;
	w->scanned = 1;
	w->regs.bp = c.saved;
	w->bp_lost = !record && !saved_bp(sc, c.off, (c.at - c.off) / 8, slot);
	return 0;
}

/* bpf_find_vma's callback: the flags of the mapping found. */
struct vma_facts {
	__u64 flags; /* vm_flags */
	__u64 file;  /* a file is mapped there */
};

static long vma_facts_cb(struct task_struct *task, struct vm_area_struct *vma,
			 struct vma_facts *f)
{
	f->flags = vma->vm_flags;
	f->file = vma->vm_file != NULL;
	return 0;
}

/* mapped_since's answers. */
enum mapped {
	MAPPED_NOT_CODE = 0,
	/* Code: anonymous (V8's JIT code), or not known which (EBUSY). */
	MAPPED_CODE = 1,
	/* Code of a file the tables do not cover yet (a module mapped since
	 * they were loaded): frame pointers are only a guess there. */
	MAPPED_FILE_CODE = 2,
	/* Taken for code on the bytes before it, the kernel unable to tell
	 * (EBUSY): an answer for this walk, never cached. */
	MAPPED_CODE_BUSY = 3,
};

/* For a pc the tables put in no executable mapping: whether it is in one
 * after all, mapped since userspace last loaded the process's tables (an
 * addon's dlopen: its code runs before userspace hears of the mapping); and
 * for a pc they put in anonymous memory, whether that is code. The
 * kernel's own answer (bpf_find_vma, Linux 5.17), asked only then: the stack
 * ends at a pc only when it is in no mapping, or in one that is not code. A
 * mmap lock the walk cannot take (EBUSY: another thread maps or unmaps, or
 * the fault being traced holds it) is answered by the bytes before pc: a
 * return address follows a call (after_call), and JIT code's do (answering
 * "not code" cut JIT frames off resident mode's fault stacks; "code" let
 * heap words and small integers through), and the answer holds for that
 * walk only (MAPPED_CODE_BUSY: not cached). Except for a pc found by
 * scanning (`scanned`), which passed after_call already: there, EBUSY is
 * "not code". A scanned word of another thread's stack or a heap (anonymous
 * memory, which the tables give to JIT code) was otherwise taken whenever
 * libvips' threads held the lock mapping their buffers, and then cached:
 * sharp's malloc-mode stacks (tests/e2e/addon_npm.rs) got frames in no
 * module. An address within 8 MiB of the stack pointer is the stack
 * itself. */
static __always_inline int mapped_since(__u64 pc, __u64 sp, int scanned)
{
	/* An address this close to the stack pointer is the stack itself. */
	if (pc - (sp - STACK_NEAR) < 2 * STACK_NEAR)
		return 0;
	struct vma_facts f = {};
	long err = bpf_find_vma(bpf_get_current_task_btf(), pc, vma_facts_cb, &f, 0);

	if (err == -EBUSY) {
		count(OFFHEAP_CTR_VMA_BUSY);
		return !scanned && after_call(pc) ? MAPPED_CODE_BUSY : MAPPED_NOT_CODE;
	}
	if (err || !(f.flags & OFFHEAP_VM_EXEC))
		return MAPPED_NOT_CODE;
	return f.file ? MAPPED_FILE_CODE : MAPPED_CODE;
}
