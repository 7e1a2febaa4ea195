//! JS function names without node flags (issue 14): V8's JS frames decoded
//! by the BPF stack walker into one word each, and resolved here, from the
//! live process's heap, to the name, file and line V8's perf map would give.
//!
//! # Contract with the BPF walker
//!
//! **Config map.** `v8_procs` (defined in `tracer-ebpf/include/v8.bpf.h`):
//! `BPF_MAP_TYPE_HASH`, key `__u32` tgid, value `struct v8_proc_config`
//! (offheap.h, "V8"; `tracer_common::V8ProcConfig`, 144 bytes), at most
//! `OFFHEAP_MAX_TARGETS` entries. Userspace writes it when it adds a target,
//! right after `Symbolizer::capture(pid)`: `Symbolizer::v8_config(pid)`
//! gives the value (None: the process runs no V8 offheap can walk, and
//! stderr and the report's warnings say once why, e.g. "pid 42:
//! /usr/bin/node: V8 11.3.244.8 lacks metadata off_fp_function: its JS frames
//! will be unnamed ([JIT]); to name them, run node with --perf-basic-prof
//! --interpreted-frames-native-stack (NODE_OPTIONS)"). Delete the entry with the target (exit, exec). The decoder itself
//! writes the entry's learned-map fields (`bytecode_array_map`,
//! `js_function_maps`): userspace writes them as 0.
//!
//! **Call.** The walker looks the entry up once per walk and keeps the
//! pointer in its walk state (NULL: no V8 in that process; v8_frame()
//! returns 0 for it), then for every frame record at F (`next` = [F], `ret`
//! = [F+8]), and for the WALK_AT_CALL frame 0 (`ret` = [sp], `next` = %rbp),
//! calls the global function
//!
//! ```c
//! __u64 v8_frame(struct v8_proc_config *cfg, __u64 pc, __u64 fp,
//!                const struct v8_stack_copy *copy, __u64 where);
//! ```
//!
//! with `pc = ret`, `fp = next` (the frame of the function the return address
//! is in), `copy` = the walker's stack copy (`sc->words`, cast) and `where =
//! v8_where(next, w->base, w->win, jit)`, `jit` being 1 when pc lies in
//! anonymous executable memory (the pc -> mapping lookup). `where` tells the
//! decoder whether the copy holds the 48 bytes of frame slots below `fp`
//! (else it reads them: one more bpf_probe_read_user). A nonzero result
//! replaces `ret` in `ips[]` and in the stack hash; 0 keeps `ret`. The
//! decoder tells V8's builtins from other code itself (cfg), so it may be
//! called for every frame. Keep the call site free of branches on the
//! result, e.g. `m = 0 - (word != 0); ret = (word & m) | (ret & ~m);`: tried
//! in walk_frame (walk.bpf.c as of 7efa3b6, jit = 1), that costs 1490
//! instructions processed more for alloc_enter (6348 -> 7838), 1492 for
//! resident_fault_enter (4329 -> 5821), and loads with aya 0.14 and the
//! tracer's knobs; a comparison at the call site instead cost 5500. A
//! bpf_loop callback that calls it and has stack locals must zero them first
//! (kernel 6.18: "verifier bug: stack slot 1, total slots 0" otherwise, when
//! precision is backtracked into an earlier pass of the callback; seen in
//! tests/fixtures/v8/js_stacks.bpf.c).
//!
//! **Encoding** (offheap.h): bit 63 set = JS frame (user pcs are below 2^56);
//! bits 61-62 the tier (0 Ignition, 1 Sparkplug, 2 Maglev/TurboFan, 3
//! unused); bits 44-60 the bytecode offset of an interpreted frame,
//! saturating at 0x1ffff (a function with more than 128 KiB of bytecode:
//! its call line is then the one of offset 0x1ffff); bits 0-43 the
//! SharedFunctionInfo's address >> 3 (an SFI at or above 2^47 is not
//! encoded: the frame keeps its pc). Other tiers carry offset 0: an
//! optimized function's frames are one word whatever the call site.
//! `JsFrameTag::decode` reads it back.
//!
//! **Cost.** `v8_frame` is a global BPF function: the verifier checks it once
//! per program, about 1250 instructions processed (274 instructions), and
//! each call site sees one unknown result (an inlined first version
//! multiplied the states of its caller: 6400 instructions processed for two
//! call sites in the test program, against 1400). Stack: its own frame of
//! 136 bytes (two copies of 48 bytes and locals) in the BPF-to-BPF call
//! chain. At run time, for a JS frame: one bpf_probe_read_user of the
//! JSFunction (48 bytes) when the
//! slots come from the walker's copy, plus the frame's slots when they do
//! not, plus the BytecodeArray's map for a JIT frame (Sparkplug or
//! optimized); interpreted frames are told by their pc (the interpreter's
//! trampolines and bytecode handlers, from node's symbol table), and
//! JSFunction maps are remembered. Measured on this VM (tests/v8_bpf.rs,
//! bpf_ktime_get_ns around 16 walks of 18-19 JS frames): 115-155 ns per JS
//! frame with the slots from the copy, 255-290 ns without. Native frames:
//! a few compares (pc outside V8's code).
//!
//! **Resolution, before the process can die.** Resident mode's drain
//! resolves the JS words of each stack as it arrives (`Symbolizer::
//! js_observer`); malloc mode's, when a tick's report first symbolizes the
//! stack (within one interval). Words are kept for the process's lifetime in
//! the Symbolizer, so `symbolize(pid, word)` names them
//! after an exit (an OOM post-mortem) until `forget(pid)`. Resolution reads
//! the SFI (name, script, start position), the Script (name, line ends:
//! V8's when it computed them, else computed from its source) and, for an
//! interpreted frame, the bytecode's source position table; SFIs and Scripts
//! are cached by address and re-validated on every hit (`resolve.rs`).
//! A word names the SFI at that address when first seen: if a GC compaction
//! later puts another function's SFI there, stacks holding the word keep the
//! first name (the kernel, which aggregates stacks by their words, has
//! merged them anyway); V8 compacts only fragmented old-space pages, where
//! long-lived SFIs rarely move.
//!
//! **Frames.** A resolved frame is `report::Frame { symbol: "JS:<marker>
//! <name> <script>:<line>:<column>", file: script, line, kind: Js }` with the
//! function's start line and column, exactly what node 20 and 22 write in
//! their perf map for the same code, so that stacks read, and `diff`
//! matches them, the same whichever source named them (node 18's perf map
//! writes `LazyCompile:~name file:line`: the same name, file and line). The line of the call an interpreted frame was
//! making is `JsFrame::call_line` (V8's own stack trace positions; not in
//! the report model yet). Builtins with JS linkage (Array.prototype.map) keep
//! their pc and their node symbol (`Builtins_ArrayMap`). V8 code that is
//! not a JS function (stubs, regexps) stays `[JIT]` without a perf map.
//!
//! Layouts come from the node binary's `v8dbg_*` symbols (`metadata.rs`);
//! node 18.20.8 (V8 10.2), 20 (11.3) and 22.23.5 (12.4) are tested.
mod frame;
mod function;
mod heap;
mod memory;
mod metadata;
mod positions;
mod process;
mod resolve;
mod script;
mod walk;

pub use frame::{decode_frame, proc_config, JsFrameTag, Taken, Tier};
pub use heap::{Heap, HeapError};
pub use memory::{Memory, ProcessMemory};
pub use metadata::{MetadataError, StringTags, V8Metadata, V8Version};
pub use process::{JsObserver, JsProcess};
pub use resolve::{JsFrame, JsFunction, ResolveError, ResolveStats, V8Resolver};
pub use script::LineEnds;
pub use walk::{reference_walk, RawStackFrames, WalkedFrame};

/// The environment variable that turns the decoding of JS frames off
/// (`OFFHEAP_V8_FRAMES=off`): JIT frames then keep their pcs and are named
/// by the perf map alone, as before the decoder. An escape hatch, and how
/// tests/e2e/js_frames.rs gets the perf map's names for the same run.
pub const DISABLE_ENV: &str = "OFFHEAP_V8_FRAMES";

/// Whether JS frames are decoded (`DISABLE_ENV` is not `off`).
pub fn decoding_enabled() -> bool {
    std::env::var_os(DISABLE_ENV).is_none_or(|v| v != "off")
}
