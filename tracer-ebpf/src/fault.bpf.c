// SPDX-License-Identifier: GPL-2.0
/*
 * Resident mode: which code made a target's pages resident.
 *
 * - resident_fault_enter (raw tracepoints page_fault_user and
 *   page_fault_kernel, on user addresses): one
 *   fault_event per page fault of a target, with a frame-pointer stack walked
 *   by walk.bpf.c and stored by hash in hashed_stacks. Userspace
 *   keeps the first one per page (first-touch attribution) and checks
 *   residency itself in /proc/PID/pagemap, so pages given back by munmap,
 *   madvise or a brk shrink stop counting without any bookkeeping here.
 * - resident_map_exit (syscalls/sys_exit_mmap and sys_exit_mremap): one
 *   map_event per anonymous mapping created or moved, with the same walker's
 *   stack (its hashed_stacks id).
 * - Either walk that dies within two frames met code the unwind tables do
 *   not cover yet (a module mapped since they were loaded, or past their
 *   cap), and so did a mapping's walk that stepped such code on a guess
 *   (walked_stack_id): the event then carries a raw copy of the user stack
 *   instead, which userspace unwinds with .eh_frame CFI
 *   (accounting/unwind.rs), so that no stack is lost.
 *
 * Program names carry a `resident_` prefix: malloc mode (vm.bpf.c) attaches
 * its own programs to the same syscall tracepoints.
 */

#define OFFHEAP_PF_PROT 0x1   /* arch/x86/include/asm/trap_pf.h X86_PF_PROT */
#define OFFHEAP_PF_USER 0x4   /* X86_PF_USER: the fault was in user mode */
#define OFFHEAP_PF_INSTR 0x10 /* X86_PF_INSTR: instruction fetch */
#define OFFHEAP_MAX_MARK_GRANULES 4096 /* 8 GiB per mapping; beyond, walks */
#define OFFHEAP_MAX_ERRNO 4095 /* include/linux/err.h: IS_ERR_VALUE */
/* Faults are many: copy less, enough to unwind out of glibc into node. */
#define OFFHEAP_FAULT_STACK_COPY_PAGES 2

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, OFFHEAP_FAULT_EVENTS_BYTES);
} fault_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, OFFHEAP_MAX_FAULT_PAGES);
	__type(key, struct fault_page_key);
	__type(value, __u8);
} fault_pages SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, OFFHEAP_MAX_SKIP_GRANULES);
	__type(key, struct fault_page_key);
	__type(value, struct fault_skip_range);
} fault_skip SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fault_config);
} fault_config SEC(".maps");

/* A map_event is too big for the 512-byte BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct map_event);
} fault_scratch SEC(".maps");

/* Tracepoint records, from /sys/kernel/tracing/events/.../format. */
struct offheap_sys_exit_ctx {
	__u64 common;
	__s32 syscall_nr;
	__s32 _pad;
	__s64 ret;
};

static __always_inline int is_fault_target(__u32 tgid)
{
	return target_flags(tgid) & OFFHEAP_TARGET_FAULTS;
}

/* Fills the scratch map_event with the registers and a raw copy of the user
 * stack, page by page from the page of sp up, stopping at the first page that
 * cannot be read (the top of the stack, or a page that is not resident:
 * bpf_probe_read_user does not fault pages in). */
static __always_inline struct map_event *capture(__u32 tgid, __u32 syscall, __u32 pages)
{
	__u32 zero = 0;
	struct map_event *e = bpf_map_lookup_elem(&fault_scratch, &zero);
	struct pt_regs *regs;
	__u64 base;
	__u32 i;

	if (!e)
		return 0;
	regs = user_regs();
	e->hdr.kind = OFFHEAP_EV_MAP_STACK;
	e->hdr.tgid = tgid;
	e->hdr.ts_ns = bpf_ktime_get_ns();
	e->syscall = syscall;
	e->ip = regs->rip;
	e->sp = regs->rsp;
	e->bp = regs->rbp;
	base = e->sp & ~4095ULL;
	e->stack_base = base;
	e->stack_len = 0;
	e->async_stack = thread_async_stack();
	e->stack_id = -1;
	for (i = 0; i < OFFHEAP_STACK_COPY_PAGES && i < pages; i++) {
		/* The page of sp itself is unreadable when the fault is the stack
		 * growing into it: the record then carries the registers only. */
		if (bpf_probe_read_user(&e->stack[i * 4096], 4096, (void *)(base + i * 4096)))
			break;
		e->stack_len += 4096;
	}
	return e;
}

static __always_inline void send(void *ctx, struct map_event *e)
{
	__u64 size = offsetof(struct map_event, stack) + e->stack_len;

	/* Keep the compiler from checking a copy: the verifier must see the
	 * bound on the very register passed as the size. */
	barrier_var(size);
	if (size > sizeof(*e))
		return;
	if (bpf_ringbuf_output(&fault_events, e, size, 0))
		count(OFFHEAP_CTR_EVENTS_LOST);
}

/* An EXEC_MAP record on the `events` ring (see vm.bpf.c). */
static __always_inline void send_exec_map(__u32 tgid, __u64 addr, __u64 len)
{
	struct vm_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);

	if (!ev) {
		count(OFFHEAP_CTR_EVENTS_LOST);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->hdr.kind = OFFHEAP_EV_EXEC_MAP;
	ev->hdr.tgid = tgid;
	ev->hdr.ts_ns = bpf_ktime_get_ns();
	ev->addr = addr;
	ev->len = len;
	bpf_ringbuf_submit(ev, 0);
}

struct mark_ctx {
	__u32 tgid;
	__u32 clear;
	__u64 start;
	__u64 end;
};

/* Clears the touched bits of the pages of [lo, hi) (bytes in the granule):
 * a new mapping there has none resident yet (its earlier pages were unmapped
 * or replaced). A global function, checked once with unknown bounds: inlined
 * into mark_range's bpf_loop callback, its eight words' branches took about
 * a quarter of resident_map_exit's verification (10k of 44k instructions). */
__noinline int clear_touched(struct fault_skip_range *r, __u32 lo, __u32 hi)
{
	__u32 p0 = lo >> 12, p1 = (hi + 4095) >> 12;
	__u32 w;

	if (!r)
		return 0;
	for (w = 0; w < OFFHEAP_GRANULE_PAGES / 64; w++) {
		__u32 a = w * 64, b = a + 64;
		__u64 mask;

		if (p1 <= a || p0 >= b)
			continue;
		a = p0 > a ? p0 - a : 0;
		b = p1 < b ? p1 - w * 64 : 64;
		mask = (b - a == 64 ? ~0ULL : ((1ULL << (b - a)) - 1)) << a;
		__sync_fetch_and_and(&r->touched[w], ~mask);
	}
	return 0;
}

static long mark_granule(__u64 i, void *arg)
{
	struct mark_ctx *c = arg;
	struct fault_page_key key = {};
	struct fault_skip_range *r;
	__u64 g = (c->start >> OFFHEAP_GRANULE_SHIFT) + i;
	__u64 gs = g << OFFHEAP_GRANULE_SHIFT;
	__u64 ge = gs + (1ULL << OFFHEAP_GRANULE_SHIFT);
	__u32 lo, hi, new_lo, new_hi;

	key.tgid = c->tgid;
	key.page = g;
	if (c->clear) {
		bpf_map_delete_elem(&fault_skip, &key);
		return 0;
	}
	new_lo = lo = (c->start > gs ? c->start : gs) - gs;
	new_hi = hi = (c->end < ge ? c->end : ge) - gs;
	r = bpf_map_lookup_elem(&fault_skip, &key);
	if (!r) {
		/* A new entry: no page touched yet. */
		struct fault_skip_range v = {};

		v.lo = lo;
		v.hi = hi;
		if (!bpf_map_update_elem(&fault_skip, &key, &v, BPF_NOEXIST))
			return 0;
		/* Another CPU made it meanwhile: merge into theirs. */
		r = bpf_map_lookup_elem(&fault_skip, &key);
		if (!r)
			return 0;
	}
	/* Updated in place, so that the pages other CPUs mark meanwhile stay
	 * marked; [lo, hi) in one 8-byte store, which a fault on another CPU
	 * reads whole. */
	if (r->hi >= lo && r->lo <= hi) {
		if (r->lo < lo)
			lo = r->lo;
		if (r->hi > hi)
			hi = r->hi;
	}
	*(volatile __u64 *)&r->lo = (__u64)hi << 32 | lo;
	clear_touched(r, new_lo, new_hi);
	return 0;
}

/* Marks (or clears) [start, end) in fault_skip. */
static __always_inline void mark_range(__u32 tgid, __u64 start, __u64 end, __u32 clear)
{
	struct mark_ctx c = { .tgid = tgid, .clear = clear, .start = start, .end = end };
	__u64 n;

	if (end <= start)
		return;
	n = ((end - 1) >> OFFHEAP_GRANULE_SHIFT) - (start >> OFFHEAP_GRANULE_SHIFT) + 1;
	if (n > OFFHEAP_MAX_MARK_GRANULES)
		n = OFFHEAP_MAX_MARK_GRANULES;
	bpf_loop(n, mark_granule, &c, 0);
}

/* Whether addr lies in a tracked mapping; if so, marks its page touched. */
static __always_inline int in_tracked_mapping(__u32 tgid, __u64 addr)
{
	struct fault_page_key key = {};
	struct fault_skip_range *r;
	__u64 off, page;

	key.tgid = tgid;
	key.page = addr >> OFFHEAP_GRANULE_SHIFT;
	r = bpf_map_lookup_elem(&fault_skip, &key);
	if (!r)
		return 0;
	off = addr & ((1ULL << OFFHEAP_GRANULE_SHIFT) - 1);
	if (off < r->lo || off >= r->hi)
		return 0;
	page = off >> 12;
	__sync_fetch_and_or(&r->touched[(page >> 6) & (OFFHEAP_GRANULE_PAGES / 64 - 1)],
			    1ULL << (page & 63));
	return 1;
}

/* Kernel-mode faults on user addresses are the kernel writing into user
 * memory for a syscall (read(2) into a fresh buffer): the user stack is the
 * syscall's caller, the right first toucher. */
#define OFFHEAP_USER_ADDR_END 0x0000800000000000ULL /* x86-64 4-level TASK_SIZE_MAX */

/* The current thread's user stack by the walker (walk.bpf.c's
 * walk_current), stored in hashed_stacks: its id; or -1 when the walk met
 * code the tables do not cover yet (it stopped within two frames without
 * reaching the stack's end; or, when `strict`, it stepped a file's code
 * on a guess: a process whose tables are still being loaded, a module
 * mapped a moment ago), or the
 * stack could not be stored (hashed_stacks full): the caller sends a raw
 * copy for the userspace CFI unwinder instead, which reads the modules
 * itself. Mappings are strict: they are few, and their bytes are exact.
 * Faults are not: they are many, and a raw copy is 8 KiB of the ring (a
 * process whose tables could not be loaded at all would flood it).
 * `*sp_word`: as walk_user_stack's. The walk of walk.bpf.c, not
 * bpf_get_stackid: ~4 ns a frame instead of ~63, on the hottest path of
 * resident mode. */
static __always_inline long walked_stack_id(__u32 tgid, struct pt_regs *regs,
					    enum walk_start start, int strict, __u64 *sp_word)
{
	__u32 nr;
	struct stack_scratch *sc = walk_current(tgid, regs, start, &nr, sp_word);
	long id;

	if (!sc || (nr < 3 && (sc->stack.flags & OFFHEAP_STACK_TRUNCATED)))
		return -1;
	if (strict && sc->walk.guessed)
		return -1;
	id = intern_stack(&sc->stack);
	return id < 0 ? -1 : id;
}

static __always_inline int send_fault_stack(void *ctx, __u32 tgid, __u64 address,
					    __u64 error_code)
{
	struct map_event *m = capture(tgid, 0, OFFHEAP_FAULT_STACK_COPY_PAGES);

	if (!m)
		return 0;
	m->hdr.kind = OFFHEAP_EV_FAULT_STACK;
	m->addr = address;
	m->flags = error_code;
	m->len = 0;
	m->old_addr = 0;
	m->old_len = 0;
	m->prot = 0;
	send(ctx, m);
	return 0;
}

static __always_inline int on_fault(void *ctx, __u64 address, __u64 error_code, int kernel)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct fault_event *e;
	struct pt_regs *regs;
	struct fault_page_key key;
	struct fault_config *cfg;
	__u64 sp_word;
	__u32 zero = 0;
	__u8 one = 1;
	long id;

	if (!is_fault_target(tgid))
		return 0;
	/* Code pages are file-backed: they are reported per file, not per stack. */
	if (error_code & OFFHEAP_PF_INSTR)
		return 0;
	if (kernel && address >= OFFHEAP_USER_ADDR_END)
		return 0;
	/* Pages of a mapping created while tracing are charged to its creation
	 * stack: no stack needed here. */
	if (in_tracked_mapping(tgid, address))
		return 0;
	/* Sampling first, and by the page itself: a refaulted page gets the
	 * same answer every time, so no page is more likely to be sampled than
	 * another, and the 1 - 1/N pages not sampled cost no map update. The
	 * multiplicative hash spreads the pages of one contiguous allocation
	 * evenly (Knuth's 2^64/phi). */
	key.page = address & ~4095ULL;
	cfg = bpf_map_lookup_elem(&fault_config, &zero);
	if (cfg && cfg->sample_every > 1 &&
	    ((key.page >> 12) * 0x9e3779b97f4a7c15ULL >> 32) % cfg->sample_every)
		return 0;
	/* Refaults (after madvise(DONTNEED) or reclaim) change no first toucher:
	 * skip them before the costly part. */
	key.tgid = tgid;
	key._pad = 0;
	if (bpf_map_lookup_elem(&fault_pages, &key))
		return 0;
	bpf_map_update_elem(&fault_pages, &key, &one, BPF_ANY);
	/* The user registers: for a kernel-mode fault, where the syscall that
	 * wrote the page was made. */
	regs = user_regs();
	id = walked_stack_id(tgid, regs, WALK_AT_IP, 0, &sp_word);
	if (id < 0)
		return send_fault_stack(ctx, tgid, address, error_code);
	e = bpf_ringbuf_reserve(&fault_events, sizeof(*e), 0);
	if (!e) {
		count(OFFHEAP_CTR_EVENTS_LOST);
		return 0;
	}
	e->hdr.kind = OFFHEAP_EV_FAULT;
	e->hdr.tgid = tgid;
	e->hdr.ts_ns = bpf_ktime_get_ns();
	e->address = address;
	e->ip = PT_REGS_IP(regs);
	e->error_code = error_code;
	e->stack_id = id;
	e->sp_word = sp_word;
	e->async_stack = thread_async_stack();
	e->_pad = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* One raw tracepoint program for page_fault_user and page_fault_kernel
 * (TP_PROTO(unsigned long address, struct pt_regs *regs, unsigned long
 * error_code), arch/x86/include/asm/trace/exceptions.h): a raw tracepoint is
 * named at attach, so the walker it carries is verified once for both
 * (~35 ms of BPF_PROG_LOAD each, as two tp_btf programs). Cheaper per fault
 * than the perf tracepoint, and detached without the grace period
 * perf_trace_event_unreg waits for under event_mutex (~80 ms per event
 * here, serialized). Which one fired is the error code's: the CPU sets
 * X86_PF_USER for a fault in user mode, the one trace_page_fault_entries
 * (arch/x86/mm/fault.c) sends to page_fault_user. */
SEC("raw_tp")
int BPF_PROG(resident_fault_enter, unsigned long address, struct pt_regs *regs,
	     unsigned long error_code)
{
	return on_fault(ctx, address, error_code, !(error_code & OFFHEAP_PF_USER));
}

/* The stack of a mapping syscall: the walker's from the user registers at
 * the syscall (WALK_AT_CALL: glibc's mmap and mremap are stubs that push
 * nothing, see walk.bpf.c), or the raw copy when that walk died at once. */
static __always_inline struct map_event *capture_map(__u32 tgid, __u32 syscall)
{
	__u64 sp_word;
	long id = walked_stack_id(tgid, user_regs(), WALK_AT_CALL, 1, &sp_word);
	struct map_event *e = capture(tgid, syscall, id < 0 ? OFFHEAP_STACK_COPY_PAGES : 0);

	if (e)
		e->stack_id = id;
	return e;
}

/* One program for syscalls/sys_exit_mmap and sys_exit_mremap (their records
 * have one layout), and one place in it for each of the walk, the stack copy
 * and the marking, whichever the syscall: the verifier checks a bpf_loop
 * callback at each call of bpf_loop, so a walk per syscall doubled the
 * walker's share (53k instructions processed with two, ~120 ms to load). */
SEC("tracepoint/syscalls/sys_exit_mmap")
int resident_map_exit(struct offheap_sys_exit_ctx *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct map_event *e;
	struct pt_regs *regs;
	__u32 kind, clear = 0;
	int mark = 1;

	if (!is_fault_target(tgid))
		return 0;
	if ((__u64)ctx->ret >= (__u64)-OFFHEAP_MAX_ERRNO)
		return 0;
	/* The syscall arguments are still in the saved registers at exit: the
	 * x86-64 syscall path only writes the return value back (rax). */
	regs = user_regs();
	switch (ctx->syscall_nr) {
	case OFFHEAP_NR_MMAP:
		if (!(regs->r10 & OFFHEAP_MAP_ANONYMOUS)) {
			/* A file mapped executable: code (ld.so, dlopen of an
			 * addon), whose unwind tables userspace loads when it
			 * hears of it. */
			if (regs->rdx & OFFHEAP_PROT_EXEC)
				send_exec_map(tgid, ctx->ret, regs->rsi);
			return 0;
		}
		kind = OFFHEAP_EV_MMAP;
		break;
	case OFFHEAP_NR_MREMAP:
		kind = OFFHEAP_EV_MREMAP;
		break;
	default:
		return 0;
	}
	e = capture_map(tgid, kind);
	if (!e)
		return 0;
	e->addr = ctx->ret;
	if (kind == OFFHEAP_EV_MMAP) {
		e->len = regs->rsi;
		e->prot = regs->rdx;
		e->flags = regs->r10;
		e->old_addr = 0;
		e->old_len = 0;
		/* glibc's arena reservations are cleared, not marked: their
		 * pages are malloc's, charged to the stacks that touch them. */
		clear = e->prot == 0 && (e->flags & OFFHEAP_MAP_NORESERVE) &&
			(e->len == OFFHEAP_GLIBC_HEAP_MAX || e->len == 2 * OFFHEAP_GLIBC_HEAP_MAX);
	} else {
		e->old_addr = regs->rdi;
		e->old_len = regs->rsi;
		e->len = regs->rdx;
		e->flags = regs->r10;
		e->prot = 0;
		/* Pages keep their attribution where they move (accounting
		 * does the same). */
		mark = in_tracked_mapping(tgid, e->old_addr);
	}
	send(ctx, e);
	if (mark)
		mark_range(tgid, e->addr, e->addr + e->len, clear);
	return 0;
}
