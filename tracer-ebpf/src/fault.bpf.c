// SPDX-License-Identifier: GPL-2.0
/*
 * Resident mode: which code made a target's pages resident.
 *
 * - resident_fault_enter (tp_btf page_fault_user) and
 *   resident_kernel_fault_enter (page_fault_kernel, on user addresses): one
 *   fault_event per page fault of a target, with a frame-pointer stack walked
 *   by walk.bpf.c and stored by hash in hashed_stacks. Userspace
 *   keeps the first one per page (first-touch attribution) and checks
 *   residency itself in /proc/PID/pagemap, so pages given back by munmap,
 *   madvise or a brk shrink stop counting without any bookkeeping here.
 * - resident_mmap_exit / resident_mremap_exit (syscalls/sys_exit_*): one
 *   map_event per anonymous mapping created or moved, with a raw copy of the
 *   user stack. Allocator-made mappings are created inside glibc, which has
 *   no frame pointers, so bpf_get_stackid yields one frame there; userspace
 *   unwinds the copy with .eh_frame CFI instead (accounting/unwind.rs).
 *
 * Program names carry a `resident_` prefix: malloc mode (vm.bpf.c) attaches
 * its own programs to the same syscall tracepoints.
 */

#define OFFHEAP_PF_PROT 0x1   /* arch/x86/include/asm/trap_pf.h X86_PF_PROT */
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

/* A glibc thread arena (see OFFHEAP_GLIBC_HEAP_MAX): first-touch pages. */
static __always_inline int arena_mapping(__u32 prot, __u32 flags, __u64 len)
{
	return prot == 0 && (flags & OFFHEAP_MAP_NORESERVE) &&
	       (len == OFFHEAP_GLIBC_HEAP_MAX || len == 2 * OFFHEAP_GLIBC_HEAP_MAX);
}

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
 * or replaced). */
static __always_inline void clear_touched(struct fault_skip_range *r, __u32 lo, __u32 hi)
{
	__u32 p0 = lo >> 12, p1 = (hi + 4095) >> 12;
	__u32 w;

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
	struct stack_scratch *sc;
	struct unwind_cache *cache;
	__u64 ip, sp_word, span;
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
	/* A walk that dies within two frames started in code without frame
	 * pointers (glibc's malloc writing a fresh arena page, a syscall
	 * wrapper): send the raw stack for the CFI unwinder instead. The same
	 * when the stack cannot be stored (hashed_stacks full), so that no
	 * stack is lost. */
	regs = user_regs();
	sc = bpf_map_lookup_elem(&stack_scratch, &zero);
	cache = bpf_map_lookup_elem(&unwind_cache_cpu, &zero);
	if (!sc || !cache)
		return send_fault_stack(ctx, tgid, address, error_code);
	/* The user registers: for a kernel-mode fault, where the syscall that
	 * wrote the page was made. */
	ip = PT_REGS_IP(regs);
	/* The walk of walk.bpf.c, not bpf_get_stackid: ~4 ns a frame instead
	 * of ~63, on the hottest path of resident mode. */
	span = STACK_FIRST_COPY;
	/* A walk that stopped within two frames and could not finish there met
	 * code the tables do not cover (a module loaded since, or over their
	 * cap): the raw stack goes to the userspace CFI unwinder instead. */
	if (walk_user_stack(sc, cache, tgid, ip, PT_REGS_SP(regs), PT_REGS_FP(regs), stack_limit(),
			    &span, &sp_word, WALK_AT_IP) < 3 &&
	    (sc->stack.flags & OFFHEAP_STACK_TRUNCATED))
		return send_fault_stack(ctx, tgid, address, error_code);
	id = intern_stack(&sc->stack);
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
	e->ip = ip;
	e->error_code = error_code;
	e->stack_id = id;
	e->sp_word = sp_word;
	e->async_stack = thread_async_stack();
	e->_pad = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* BTF-typed raw tracepoints (TP_PROTO(unsigned long address, struct pt_regs
 * *regs, unsigned long error_code), arch/x86/include/asm/trace/exceptions.h):
 * cheaper per fault than the perf tracepoint, and detached without the
 * grace period perf_trace_event_unreg waits for under event_mutex (~80 ms
 * per event here, serialized). */
SEC("tp_btf/page_fault_user")
int BPF_PROG(resident_fault_enter, unsigned long address, struct pt_regs *regs,
	     unsigned long error_code)
{
	return on_fault(ctx, address, error_code, 0);
}

SEC("tp_btf/page_fault_kernel")
int BPF_PROG(resident_kernel_fault_enter, unsigned long address, struct pt_regs *regs,
	     unsigned long error_code)
{
	return on_fault(ctx, address, error_code, 1);
}

SEC("tracepoint/syscalls/sys_exit_mmap")
int resident_mmap_exit(struct offheap_sys_exit_ctx *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct map_event *e;
	struct pt_regs *regs;
	__u32 flags;
	int arena;

	if (!is_fault_target(tgid))
		return 0;
	if ((__u64)ctx->ret >= (__u64)-OFFHEAP_MAX_ERRNO)
		return 0;
	/* The syscall arguments are still in the saved registers at exit: the
	 * x86-64 syscall path only writes the return value back (rax). */
	regs = user_regs();
	flags = regs->r10;
	if (!(flags & OFFHEAP_MAP_ANONYMOUS)) {
		/* A file mapped executable: code (ld.so, dlopen of an addon),
		 * whose unwind tables userspace loads when it hears of it. */
		if (regs->rdx & OFFHEAP_PROT_EXEC)
			send_exec_map(tgid, ctx->ret, regs->rsi);
		return 0;
	}
	e = capture(tgid, OFFHEAP_EV_MMAP, OFFHEAP_STACK_COPY_PAGES);
	if (!e)
		return 0;
	e->addr = ctx->ret;
	e->len = regs->rsi;
	e->prot = regs->rdx;
	e->flags = flags;
	arena = arena_mapping(e->prot, flags, e->len);
	/* The walker's stack too, taken now: its JS frames are decoded while
	 * they are live. Userspace decodes the raw copy's later, when a GC may
	 * have moved the JSFunctions it points to (a scavenge moves young ones
	 * and the old copies' pages get reused): it puts the walk's JS words
	 * into its unwind of the copy (accounting/resident/live_js.rs). */
	if (!arena) {
		struct stack_key key;

		take_syscall_stack(&key, tgid);
		e->stack_id = key.stack_id;
	}
	e->old_addr = 0;
	e->old_len = 0;
	send(ctx, e);
	mark_range(tgid, e->addr, e->addr + e->len, arena);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_mremap")
int resident_mremap_exit(struct offheap_sys_exit_ctx *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct map_event *e;
	struct pt_regs *regs;

	if (!is_fault_target(tgid))
		return 0;
	if ((__u64)ctx->ret >= (__u64)-OFFHEAP_MAX_ERRNO)
		return 0;
	regs = user_regs();
	e = capture(tgid, OFFHEAP_EV_MREMAP, OFFHEAP_STACK_COPY_PAGES);
	if (!e)
		return 0;
	e->addr = ctx->ret;
	e->old_addr = regs->rdi;
	e->old_len = regs->rsi;
	e->len = regs->rdx;
	e->flags = regs->r10;
	e->prot = 0;
	send(ctx, e);
	/* Pages keep their attribution where they move (accounting does the same). */
	if (in_tracked_mapping(tgid, e->old_addr))
		mark_range(tgid, e->addr, e->addr + e->len, 0);
	return 0;
}
