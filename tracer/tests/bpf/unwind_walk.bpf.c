// SPDX-License-Identifier: GPL-2.0
/* Test-only (tracer/tests/unwind_bpf.rs): a uprobe that walks the user stack
 * with include/unwind.bpf.h alone, one frame per bpf_loop step, and sends the
 * pcs through a ring buffer. Not the walker of the product (the lead's
 * walk.bpf.c is); it shows the lookup and the step work in the kernel and
 * what they cost the verifier. */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "offheap.h"
#include "unwind.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define WALK_MAX 32

/* How a walk ended (walk_event.end). */
#define WALK_COMPLETE 1   /* an END row: the outermost frame */
#define WALK_DEPTH 3      /* WALK_MAX frames */
#define WALK_NO_MAPPING 4 /* a pc in no executable mapping */
#define WALK_CANNOT (-1)  /* a STOP row or unreadable memory */
#define WALK_BACKWARDS (-2)

struct walk_event {
	__u32 tgid;
	__u32 nr;
	__s32 end;
	__u32 _pad;
	__u64 pcs[WALK_MAX];
	__u8 classes[WALK_MAX];   /* enum unwind_class of each frame */
};

struct walk_scratch {
	struct walk_event ev;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct walk_scratch);
} walk_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} walk_events SEC(".maps");

struct walk_ctx {
	struct unwind_cursor c;
	struct unwind_regs r;
	__u32 tgid;
	__u32 leaf;
	__s32 end;
	__u32 _pad;
};

static long walk_one(__u64 i, struct walk_ctx *x)
{
	__u32 zero = 0;
	struct walk_scratch *sc = bpf_map_lookup_elem(&walk_scratch, &zero);

	if (!sc)
		return 1;
	__u32 n = sc->ev.nr;
	if (n >= WALK_MAX) {
		x->end = WALK_DEPTH;
		return 1;
	}
	sc->ev.pcs[n] = x->r.pc;
	int class = unwind_find(x->tgid, x->r.pc, x->leaf, &x->c);
	sc->ev.classes[n] = class;
	sc->ev.nr = n + 1;
	if (class == UNWIND_NONE) {
		x->end = WALK_NO_MAPPING;
		return 1;
	}
	__u64 sp = x->r.sp;
	int err = unwind_step(class == UNWIND_JIT ? UNWIND_FP : class, &x->c, &x->r, NULL);
	if (err == 1) {
		x->end = WALK_COMPLETE;
		return 1;
	}
	if (err < 0) {
		x->end = WALK_CANNOT;
		return 1;
	}
	/* The stack grows down: a caller's frame is above (a signal frame's
	 * interrupted context is too, on the same stack). */
	if (x->r.sp <= sp) {
		x->end = WALK_BACKWARDS;
		return 1;
	}
	x->leaf = err == 2;
	return 0;
}

SEC("uprobe")
int unwind_walk(struct pt_regs *ctx)
{
	__u32 zero = 0;
	struct walk_scratch *sc = bpf_map_lookup_elem(&walk_scratch, &zero);

	if (!sc)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct walk_ctx x = {
		.r = { .pc = PT_REGS_IP(ctx), .sp = PT_REGS_SP(ctx), .bp = PT_REGS_FP(ctx) },
		.tgid = tgid,
		.leaf = 1,
	};
	sc->ev.tgid = tgid;
	sc->ev.nr = 0;
	sc->ev.end = 0;
	bpf_loop(WALK_MAX, walk_one, &x, 0);
	sc->ev.end = x.end;
	bpf_ringbuf_output(&walk_events, &sc->ev, sizeof(sc->ev), 0);
	return 0;
}
