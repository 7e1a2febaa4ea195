/* SPDX-License-Identifier: GPL-2.0 */
/* V8's JS frames, decoded one frame at a time for the stack walker: the
 * frame's JSFunction -> SharedFunctionInfo, and the bytecode offset of an
 * interpreted frame, packed in one ips[] word (offheap.h, "V8"). Userspace
 * resolves the word to a name, file and line while the process lives
 * (tracer/src/symbols/v8/, whose mod.rs states the contract; its frame.rs
 * is this decoder's twin, step for step).
 *
 * Include after offheap.h and the libbpf headers, once per object: it
 * defines the v8_procs map and the global function v8_frame(). */
#ifndef OFFHEAP_V8_BPF_H
#define OFFHEAP_V8_BPF_H

/* Per-process V8 layouts, filled by userspace from the node binary's
 * v8dbg_* symbols when it adds a target that maps V8, and deleted with the
 * target. Key: tgid. A process without an entry has no JS frames decoded. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, OFFHEAP_MAX_TARGETS);
	__type(key, __u32);
	__type(value, struct v8_proc_config);
} v8_procs SEC(".maps");

/* V8's x64 tagging without pointer compression (include/v8-internal.h),
 * which node always uses and userspace checks in the metadata: a heap
 * object pointer ends in 0b01, a Smi has bit 0 clear and its value in the
 * upper 32 bits. */
static __always_inline int v8_is_object(__u64 v)
{
	return (v & 3) == 1;
}

static __always_inline int v8_is_smi(__u64 v)
{
	return (v & 1) == 0;
}

/* Whether `tagged` points to a BytecodeArray: its map is the one learned
 * (cfg->bytecode_array_map), or has that instance type, and is learned. */
static __always_inline int v8_is_bytecode_array(struct v8_proc_config *cfg, __u64 tagged)
{
	__u64 map;
	__u16 type;

	if (!v8_is_object(tagged) ||
	    bpf_probe_read_user(&map, sizeof(map), (void *)(tagged - 1 + cfg->off_map)))
		return 0;
	if (map && map == cfg->bytecode_array_map)
		return 1;
	if (!v8_is_object(map) ||
	    bpf_probe_read_user(&type, sizeof(type), (void *)(map - 1 + cfg->off_instance_type)) ||
	    type != cfg->type_bytecode_array)
		return 0;
	cfg->bytecode_array_map = map;
	return 1;
}

/* Whether `map` is a JSFunction's map: one learned, or one whose instance
 * type is in the JSFunction range (then learned). */
static __always_inline int v8_is_js_function_map(struct v8_proc_config *cfg, __u64 map)
{
	__u32 slot = (map >> 3) % OFFHEAP_V8_LEARNED_MAPS;
	__u16 type;

	if (!v8_is_object(map))
		return 0;
	if (cfg->js_function_maps[slot] == map)
		return 1;
	if (bpf_probe_read_user(&type, sizeof(type), (void *)(map - 1 + cfg->off_instance_type)) ||
	    type < cfg->type_js_function_first || type > cfg->type_js_function_last)
		return 0;
	cfg->js_function_maps[slot] = map;
	return 1;
}

#define V8_FRAME_WORDS (OFFHEAP_V8_FRAME_BYTES / 8)
#define V8_FUNCTION_WORDS (OFFHEAP_V8_JS_FUNCTION_BYTES / 8)

/* The walker's copy of the user stack (struct stack_scratch's words). */
struct v8_stack_copy {
	__u64 words[OFFHEAP_STACK_WINDOW / 8];
};

/* v8_frame()'s `where`: bit 63 set when the walker found pc in anonymous
 * executable memory; bits 16..55, where the OFFHEAP_V8_FRAME_BYTES below
 * fp start in the walker's copy (bytes from its start; all ones: not in
 * it); bits 0..15, the bytes of the copy that are valid. Packed without a
 * branch, and checked by v8_frame(): a comparison in the walker's bpf_loop
 * callback made the verifier process 4000 more instructions per program
 * (the callback is checked several times). */
#define V8_WHERE_JIT (1ULL << 63)
#define V8_WHERE_OFF_SHIFT 16
#define V8_WHERE_OFF_MASK ((1ULL << 40) - 1)
#define V8_WHERE_LEN_MASK 0xffffULL

static __always_inline __u64 v8_where(__u64 fp, __u64 copy_base, __u64 copy_len, int jit)
{
	__u64 off = fp - OFFHEAP_V8_FRAME_BYTES - copy_base;

	/* An offset past 40 bits (fp below the copy wraps around) saturates. */
	off = (off | (0 - (off >> 40))) & V8_WHERE_OFF_MASK;
	return (jit ? V8_WHERE_JIT : 0) | off << V8_WHERE_OFF_SHIFT | (copy_len & V8_WHERE_LEN_MASK);
}

/* The word at byte offset `off` of a copy of `words` words; 0 outside it
 * (userspace refuses layouts that put a slot outside: metadata.rs). */
static __always_inline __u64 v8_word(const __u64 *copy, __u32 words, __s32 off)
{
	__u32 i = (__u32)off / 8;

	if (off < 0 || i >= words)
		return 0;
	return copy[i];
}

/* The ips[] word for the frame whose code holds `pc` and whose frame
 * pointer is `fp`, or 0 when it is not a JS frame (keep pc then). For a
 * frame record at F ([F] saved fp, [F+8] return address) that is pc = [F+8]
 * and fp = [F]: the frame of the function the return address is in. `jit`:
 * the walker found pc in anonymous executable memory (V8's Sparkplug,
 * Maglev and TurboFan code); pcs in V8's builtins (cfg) are tried as well,
 * since interpreted frames run in the interpreter's builtins. `copy` and
 * `where` (v8_where()): the walker's copy of the stack, which usually holds
 * the frame's slots (they lie just below the frame record it just read), or
 * NULL and any `where`: the slots are then read here. `cfg` may be NULL
 * (no V8: 0).
 *
 * A global function (a BPF-to-BPF call with its own 136-byte stack frame):
 * the verifier checks it once per program, about 1250 instructions
 * processed, whatever the number of call sites, and each caller sees one
 * unknown return value instead of every path through the decoder (an
 * inlined first version multiplied the states of the rest of the program:
 * 6400 instructions processed for two call sites in the test program, 1400
 * as a global function).
 *
 * Cost at run time: nothing for pcs outside V8's code, nor for builtins
 * other than the interpreter's; for a JS frame, one bpf_probe_read_user of
 * the JSFunction, plus the frame's slots when `copy` lacks them, plus the
 * BytecodeArray's map for a JIT frame. Interpreted frames are told by their
 * pc (the interpreter's code: cfg->interp_*), the rest by the BytecodeArray
 * slot; JSFunction maps and the BytecodeArray map, once checked by their
 * instance type, are remembered in cfg. The SFI's own type is checked by
 * userspace when it resolves the word. */
__noinline __u64 v8_frame(struct v8_proc_config *cfg, __u64 pc, __u64 fp,
			    const struct v8_stack_copy *copy, __u64 where)
{
	int jit = !!(where & V8_WHERE_JIT);
	__u64 at = (where >> V8_WHERE_OFF_SHIFT) & V8_WHERE_OFF_MASK;
	__u64 len = where & V8_WHERE_LEN_MASK;
	__u64 frame[V8_FRAME_WORDS];
	__u64 func[V8_FUNCTION_WORDS];
	__u64 tier, offset = 0;

	if (!cfg)
		return 0;
	__u64 base = 0;
	if (pc >= cfg->builtins_start && pc < cfg->builtins_end)
		base = cfg->builtins_start;
	else if (pc >= cfg->remap_start && pc < cfg->remap_end)
		base = cfg->remap_start;
	if (!jit && !base)
		return 0;
	/* The interpreter's own code: the frame is interpreted. */
	__u64 off = pc - base;
	int interp = base && ((off >= cfg->interp_lo && off < cfg->interp_hi) ||
			      (cfg->handlers_lo && off >= cfg->handlers_lo));
	/* The frame's slots, from the walker's copy when it holds them. */
	__u64 i = at / 8;
	barrier_var(i);
	if (copy && !(at & 7) && len <= OFFHEAP_STACK_WINDOW && len >= OFFHEAP_V8_FRAME_BYTES &&
	    at <= len - OFFHEAP_V8_FRAME_BYTES && i <= (OFFHEAP_STACK_WINDOW - OFFHEAP_V8_FRAME_BYTES) / 8)
		__builtin_memcpy(frame, &copy->words[i], sizeof(frame));
	else if (fp < OFFHEAP_V8_FRAME_BYTES ||
		 bpf_probe_read_user(frame, sizeof(frame), (void *)(fp - OFFHEAP_V8_FRAME_BYTES)))
		return 0;
	/* Slot offsets are negative, from fp: frame[] starts at fp - BYTES. */
#define V8_SLOT(off) v8_word(frame, V8_FRAME_WORDS, OFFHEAP_V8_FRAME_BYTES + (off))
	/* Typed frames (entry, exit, stub, construct...) hold a Smi marker where
	 * JS frames hold their context (StackFrame::ComputeType). */
	if (!v8_is_object(V8_SLOT(cfg->fp_context)))
		return 0;
	__u64 offset_slot = V8_SLOT(cfg->fp_bytecode_offset);
	/* In the builtins, only the interpreter's frames are taken (their offset
	 * slot is a Smi): a builtin with JS linkage (Array.prototype.map) keeps
	 * its pc, which node's symbol table names. */
	if (!jit && !v8_is_smi(offset_slot))
		return 0;
	__u64 jsf = V8_SLOT(cfg->fp_function);
	if (!v8_is_object(jsf) || bpf_probe_read_user(func, sizeof(func), (void *)(jsf - 1)))
		return 0;
	__u64 map = v8_word(func, V8_FUNCTION_WORDS, cfg->off_map);
	if (!v8_is_js_function_map(cfg, map))
		return 0;
	/* The SFI's own type is checked when userspace resolves it. */
	__u64 sfi = v8_word(func, V8_FUNCTION_WORDS, cfg->off_shared);
	if (!v8_is_object(sfi))
		return 0;
	/* Ignition and Sparkplug frames hold the BytecodeArray; Ignition's then
	 * has the offset as a Smi where Sparkplug's has the feedback vector
	 * (InterpreterFrameConstants, BaselineFrameConstants). */
	int bytecode = interp || v8_is_bytecode_array(cfg, V8_SLOT(cfg->fp_bytecode_array));
#undef V8_SLOT
	if (bytecode && v8_is_smi(offset_slot)) {
		/* The slot holds offset + kHeaderSize - kHeapObjectTag
		 * (InterpretedFrame::GetBytecodeOffset). */
		__s64 raw = (__s64)offset_slot >> 32;
		raw -= cfg->bytecode_offset_bias;
		offset = raw < 0 ? 0 : (__u64)raw;
		if (offset > OFFHEAP_V8_OFFSET_MAX)
			offset = OFFHEAP_V8_OFFSET_MAX;
		tier = OFFHEAP_V8_TIER_INTERPRETED;
	} else if (bytecode) {
		tier = OFFHEAP_V8_TIER_BASELINE;
	} else if (jit) {
		tier = OFFHEAP_V8_TIER_OPTIMIZED;
	} else {
		return 0;
	}
	sfi -= 1;
	if (sfi >> 47)
		return 0;
	return OFFHEAP_V8_FRAME_TAG | tier << OFFHEAP_V8_TIER_SHIFT |
	       offset << OFFHEAP_V8_OFFSET_SHIFT | ((sfi >> 3) & OFFHEAP_V8_SFI_MASK);
}

#endif /* OFFHEAP_V8_BPF_H */
