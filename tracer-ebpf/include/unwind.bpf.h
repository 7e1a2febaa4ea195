/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Unwinding user stacks with the tables built from the modules' .eh_frame by
 * tracer/src/probes/unwind (whose top comment is the contract): which module a
 * pc lies in, the rule of its row, and the step to the caller.
 *
 * Include after bpf_helpers.h and offheap.h, in one compilation unit (this
 * header defines the two maps). A walker does, per frame:
 *
 *   int class = unwind_find(tgid, regs.pc, leaf, &cursor);
 *   NONE: the pc is in no executable mapping: the stack ends, truncated.
 *   JIT:  V8's code: the caller's JIT frame decoder (frame pointers).
 *   FP, TABLE: err = unwind_step(class, &cursor, &regs);
 *         0: regs are the caller's, whose pc is a return address (leaf = 0);
 *         2: regs are the interrupted context of a signal frame (leaf = 1);
 *         1: the outermost frame (the stack is complete); < 0: cannot go on.
 *
 * `leaf`: the pc is where the thread is stopped (the first frame, or the
 * frame a signal interrupted), looked up as is; every other pc is a return
 * address, which may be the first byte after the function of the call (a
 * call to a noreturn function ends it), so pc - 1 is looked up.
 *
 * Costs (verifier, per call site: see tracer/src/probes/unwind/mod.rs) are
 * kept down by doing the row search in a bpf_loop callback, checked once.
 */
#ifndef OFFHEAP_UNWIND_BPF_H
#define OFFHEAP_UNWIND_BPF_H

struct unwind_table_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	/* Tables of any size share the outer map (BPF_F_INNER_MAP, kernel >=
	 * 5.10); userspace writes each through mmap (BPF_F_MMAPABLE). */
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	/* union unwind_entry, declared by its 8-byte member: clang's BTF keeps a
	 * union only reached through a pointer as a forward declaration, which
	 * libbpf and aya cannot size. */
	__type(value, struct unwind_row);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, OFFHEAP_MAX_UNWIND_MODULES);
	__type(key, __u32);
	__array(values, struct unwind_table_inner);
} unwind_tables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, OFFHEAP_MAX_UNWIND_MAPPINGS);
	__type(key, struct unwind_mapping_key);
	__type(value, struct unwind_mapping);
} unwind_mappings SEC(".maps");

enum unwind_class {
	UNWIND_FP = 0,     /* frame pointers: no table, or its row says so */
	UNWIND_TABLE = 1,  /* cursor->row is the rule */
	UNWIND_JIT = 2,    /* anonymous executable memory (V8) */
	UNWIND_NONE = 3,   /* in no executable mapping of the process */
	UNWIND_GAP = 4,    /* in a table, but no FDE covers it: frame pointers, a guess */
};

/* User registers of one frame. */
struct unwind_regs {
	__u64 pc;
	__u64 sp;
	__u64 bp;
};

/* Carried by the walker from frame to frame (64 bytes): the last mapping
 * found (consecutive frames are mostly in one module, so most frames skip
 * the trie) and the row of the last TABLE answer. Zero it before a walk. */
struct unwind_cursor {
	struct unwind_mapping map;
	struct unwind_row row;
	__u32 tgid;
	__u32 _pad;
};

/* State of the row search (a bpf_loop callback). */
struct unwind_search {
	void *table;
	__u32 lo;
	__u32 hi;
	__u32 off;
	__u32 _pad;
};

/* One binary-search step over a page's rows: finds the first row whose pc
 * is above `off`, so lo - 1 is the row covering it. */
static long unwind_search_step(__u64 i, struct unwind_search *s)
{
	if (s->lo >= s->hi)
		return 1;
	__u32 mid = s->lo + (s->hi - s->lo) / 2;
	union unwind_entry *e = bpf_map_lookup_elem(s->table, &mid);

	if (!e) {
		s->hi = s->lo;
		return 1;
	}
	if (e->row.pc <= s->off)
		s->lo = mid + 1;
	else
		s->hi = mid;
	return 0;
}

/* Finds the mapping of pc in c->map: from the cache, or the trie. Returns the
 * mapping's kind; a process with no entries at all (not loaded) is FP. */
static __always_inline __u32 unwind_mapping_of(__u32 tgid, __u64 pc, struct unwind_cursor *c)
{
	if (c->tgid == tgid && pc >= c->map.start && pc < c->map.end)
		return c->map.kind;
	struct unwind_mapping_key key = {
		.prefixlen = 96,
		.tgid_be = __builtin_bswap32(tgid),
		.addr_be = __builtin_bswap64(pc),
	};
	struct unwind_mapping *m = bpf_map_lookup_elem(&unwind_mappings, &key);

	if (!m)
		return OFFHEAP_UNWIND_MAP_FP;
	__builtin_memcpy(&c->map, m, sizeof(c->map));
	c->tgid = tgid;
	return c->map.kind;
}

/* What to do at pc (see the top of this file); for TABLE, c->row.
 *
 * A global function: the verifier checks it once per program, on its own,
 * whatever the state of its callers (it sees its arguments as unknown
 * scalars and c as 64 bytes of memory), instead of once per path that
 * reaches each call. */
__attribute__((noinline)) int unwind_find(__u32 tgid, __u64 pc, int leaf, struct unwind_cursor *c)
{
	if (!c)
		return UNWIND_NONE;
	__u32 kind = unwind_mapping_of(tgid, pc, c);

	if (kind == OFFHEAP_UNWIND_MAP_NONE)
		return UNWIND_NONE;
	if (kind == OFFHEAP_UNWIND_MAP_JIT)
		return UNWIND_JIT;
	if (kind != OFFHEAP_UNWIND_MAP_TABLE)
		return UNWIND_FP;
	__u64 off = pc - (leaf ? 0 : 1) - c->map.bias;
	__u64 page = off >> OFFHEAP_UNWIND_PAGE_SHIFT;
	if (page >= c->map.npages)
		return UNWIND_FP;
	__u32 module = c->map.module;
	void *table = bpf_map_lookup_elem(&unwind_tables, &module);
	if (!table)
		return UNWIND_FP;
	__u32 p = page;
	union unwind_entry *pe = bpf_map_lookup_elem(table, &p);
	if (!pe)
		return UNWIND_FP;
	struct unwind_search s = {
		.table = table,
		.lo = pe->page.first,
		.hi = pe->page.first + pe->page.count,
		.off = off,
	};
	__u32 first = s.lo;
	bpf_loop(OFFHEAP_UNWIND_SEARCH_STEPS, unwind_search_step, &s, 0);
	if (s.lo == first)
		return UNWIND_FP;
	__u32 at = s.lo - 1;
	union unwind_entry *e = bpf_map_lookup_elem(table, &at);
	if (!e)
		return UNWIND_FP;
	/* The table's gap rows: cfa 1 (the frame-pointer step has no offset). */
	if (e->row.kind == OFFHEAP_UNWIND_ROW_FP)
		return e->row.cfa == 1 ? UNWIND_GAP : UNWIND_FP;
	c->row = e->row;
	return UNWIND_TABLE;
}

/* A copy of user memory the walker already holds: `len` bytes at user
 * address `base` in `words` (OFFHEAP_STACK_WINDOW bytes at most). */
struct unwind_window {
	const __u64 *words;
	__u64 base;
	__u64 len;
};

/* Reads the user word at addr: from the copy when it holds it (the usual
 * case: a frame's CFA lies just above the frame record the walker copied),
 * else with bpf_probe_read_user (~40 ns here). `win` may be NULL.
 *
 * Reading from a copy cost the verifier 24k-42k instructions inside a
 * bpf_loop callback (vstat, kernel 6.18); called from a global function,
 * which the verifier checks once, it costs a few hundred. */
static __always_inline int unwind_read(const struct unwind_window *win, __u64 addr, __u64 *out)
{
	if (win && win->words && addr >= win->base && win->len <= OFFHEAP_STACK_WINDOW &&
	    addr - win->base <= win->len - 8 && win->len >= 8) {
		*out = win->words[((addr - win->base) / 8) & (OFFHEAP_STACK_WINDOW / 8 - 1)];
		return 0;
	}
	return bpf_probe_read_user(out, sizeof(*out), (void *)addr) < 0 ? -1 : 0;
}

/* Moves r to the caller of the frame unwind_find classified (FP or TABLE).
 * Returns 0, 2 (signal frame: the next pc is a leaf), 1 (outermost frame)
 * or < 0 (a STOP row, or memory that cannot be read).
 *
 * Every kind is brought to one form, so that the verifier sees three reads
 * rather than one per kind and word: CFA = (base + off), dereferenced and
 * plus `add` for the kinds that keep it in memory; the return address at
 * ra_at; the caller's %rbp at bp_at (0: unchanged). */
static __always_inline int unwind_step(int class, const struct unwind_cursor *c,
				       struct unwind_regs *r, const struct unwind_window *win)
{
	__u8 kind = class == UNWIND_TABLE ? c->row.kind : OFFHEAP_UNWIND_ROW_FP;
	__u64 base = r->sp, add = 0, cfa, ra, bp = r->bp;
	__s64 off = c->row.cfa;
	__u32 rbp = c->row.rbp;
	int deref = 0, ret = 0;

	switch (kind) {
	case OFFHEAP_UNWIND_ROW_FP:
		base = r->bp;
		off = 16;
		rbp = 2;
		break;
	case OFFHEAP_UNWIND_ROW_RSP:
		break;
	case OFFHEAP_UNWIND_ROW_RBP:
		base = r->bp;
		break;
	case OFFHEAP_UNWIND_ROW_PLT:
		/* rbp holds the entry byte from which its push has run. */
		off += (r->pc & 15) >= rbp ? 8 : 0;
		rbp = 0;
		break;
	case OFFHEAP_UNWIND_ROW_DEREF_RSP:
		deref = 1;
		add = 8;
		break;
	case OFFHEAP_UNWIND_ROW_DRAP:
		base = r->bp;
		deref = 1;
		rbp = 0;
		break;
	case OFFHEAP_UNWIND_ROW_SIGNAL:
		/* The new rsp is the ucontext's, rip and rbp are beside it. */
		off = OFFHEAP_UNWIND_UC_RSP;
		deref = 1;
		rbp = 0;
		ret = 2;
		break;
	case OFFHEAP_UNWIND_ROW_END:
		return 1;
	default:
		return -1;
	}
	cfa = base + off;
	if (deref) {
		if (unwind_read(win, cfa, &cfa))
			return -1;
		cfa += add;
	}
	__u64 ra_at = ret == 2 ? r->sp + OFFHEAP_UNWIND_UC_RIP : cfa - 8;
	__u64 bp_at = ret == 2 ? r->sp + OFFHEAP_UNWIND_UC_RBP
		    : kind == OFFHEAP_UNWIND_ROW_DRAP ? r->bp
		    : rbp ? cfa - 8 * (__u64)rbp : 0;
	if (unwind_read(win, ra_at, &ra))
		return -1;
	if (bp_at && unwind_read(win, bp_at, &bp))
		return -1;
	r->pc = ra;
	r->sp = cfa;
	r->bp = bp;
	return ret;
}

#endif /* OFFHEAP_UNWIND_BPF_H */
