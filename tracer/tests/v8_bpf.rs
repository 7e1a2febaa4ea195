//! The BPF V8 frame decoder (tracer-ebpf/include/v8.bpf.h) in the real
//! kernel, before the real walker exists: a test-only object
//! (fixtures/v8/js_stacks.bpf.c) with uprobes on malloc/calloc of one node
//! process, a minimal frame-pointer walk calling `v8_frame()` on every frame,
//! and a ring buffer of the stacks; userspace resolves the JS frames with
//! `V8Resolver` while the process still runs. On node 18, 20 and 22, with no
//! node flags.
mod symbols_support;
mod v8_support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use aya::{
    maps::{HashMap as BpfHashMap, RingBuf},
    programs::{uprobe::UProbeScope, UProbe},
    EbpfLoader,
};
use offheap::{
    report::{build::Symbolize, Frame, FrameKind},
    symbols::{
        v8::{JsFrameTag, Tier},
        Symbolizer,
    },
};
use symbols_support::{field, workdir, Proc};
use tracer_common::V8ProcConfig;
use v8_support::*;

/// The fixture's JS frames from leaf out (tracer/tests/fixtures/v8/stack.js),
/// as `v8_frames.rs` checks them on the reference walk.
const NAMES: [&str; 10] = [
    "leaf",
    "cb",
    "manyLocals",
    "namedExpr",
    "run",
    "Holder",
    "obj.method",
    "viaArrow",
    "top",
    "",
];
/// leaf() allocates this many Buffers of 64 KiB (stack.js's argv[2]).
const BUFFERS: usize = 16;
const SIZE: u64 = 65536;
const DEPTH: usize = 64;
const JIT_RANGES: usize = 16;

/// C `struct js_stack` of js_stacks.bpf.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct JsStack {
    tgid: u32,
    nr: u32,
    size: u64,
    js: u64,
    walk_ns: u64,
    ips: [u64; DEPTH],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct JitRange {
    start: u64,
    end: u64,
}
// SAFETY: plain old data, laid out as the C struct.
unsafe impl aya::Pod for JitRange {}

/// Compiles the test object into `dir` (clang-19 as tracer/build.rs does).
fn build_object(dir: &Path) -> PathBuf {
    let out = dir.join("js_stacks.bpf.o");
    let o = Command::new("clang-19")
        .args([
            "-target",
            "bpf",
            "-O2",
            "-g",
            "-Wall",
            "-Werror",
            "-D__TARGET_ARCH_x86",
        ])
        .arg(format!(
            "-I{}",
            workspace().join("tracer-ebpf/include").display()
        ))
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg("-c")
        .arg(workspace().join("tracer/tests/fixtures/v8/js_stacks.bpf.c"))
        .arg("-o")
        .arg(&out)
        .output()
        .expect("clang-19 (cargo xtask setup)");
    assert!(
        o.status.success(),
        "clang: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Anonymous executable mappings, and reservations of 64 MiB and more
/// (V8's code range, where later JIT pages appear), merged: the stand-in
/// for the walker's pc -> mapping lookup.
fn jit_ranges(pid: u32) -> [JitRange; JIT_RANGES] {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut ranges: Vec<JitRange> = Vec::new();
    for l in maps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let anon = f.len() < 6 || f[5].starts_with("[anon");
        let (s, e) = f[0].split_once('-').unwrap();
        let (s, e) = (
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
        );
        if !anon || !(f[1].contains('x') || e - s >= 64 << 20) {
            continue;
        }
        match ranges.last_mut() {
            Some(r) if r.end == s => r.end = e,
            _ => ranges.push(JitRange { start: s, end: e }),
        }
    }
    assert!(
        ranges.len() <= JIT_RANGES,
        "{ranges:?}",
        ranges = ranges.len()
    );
    let mut out = [JitRange::default(); JIT_RANGES];
    out[..ranges.len()].copy_from_slice(&ranges);
    out
}

/// The libc node maps (the probes' target).
fn libc_of(pid: u32) -> PathBuf {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            p.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("libc.so"))
        })
        .map(PathBuf::from)
        .expect("node maps no libc")
}

/// What one traced run gives.
struct Run {
    /// Per stack of a 64 KiB allocation in leaf: the resolved JS frames.
    stacks: Vec<Vec<(JsFrameTag, offheap::symbols::v8::JsFrame)>>,
    /// JS frames the decoder found, over all 64 KiB stacks.
    js_frames: u64,
    /// Time of those stacks' walks (bpf_ktime_get_ns around each).
    walk_ns: u64,
    /// Each stack symbolized by the Symbolizer after the process exited.
    post_mortem: Vec<Vec<Frame>>,
    /// The reference walk's JS frames, taken by ptrace while leaf blocks.
    reference: Vec<(JsFrameTag, offheap::symbols::v8::JsFrame)>,
    /// bpf_stats of the two programs: (runs, ns).
    runs: u64,
    run_ns: u64,
    verified_insns: Option<u32>,
}

/// Starts stack.js under `node`, attaches the test programs to it (decoder
/// on or off), lets leaf allocate and block, then drains and resolves.
fn traced_run(node: &Node, obj: &Path, script: &Path, decode: bool, window: bool) -> Run {
    let meta = metadata(&node.bin);
    let mut p = Proc::spawn(
        Command::new(&node.bin)
            .arg(script)
            .arg(BUFFERS.to_string())
            .current_dir(script.parent().unwrap()),
    );
    let pid: u32 = field(&p.line(), "ready").parse().unwrap();
    // The Symbolizer, as the tracer will use it: it finds V8 among the
    // process's modules and makes the decoder's config.
    let mut sym = Symbolizer::new();
    sym.capture(pid).unwrap();
    let cfg = sym.v8_config(pid).expect("node runs V8");
    assert_eq!(cfg, config_for(&meta, pid, &node.bin));
    let jit = jit_ranges(pid);
    let mut bpf = EbpfLoader::new()
        .override_global("want_size", &SIZE, true)
        .override_global("decode", &u32::from(decode), true)
        .override_global("use_window", &u32::from(window), true)
        .override_global("jit", &jit, true)
        .load_file(obj)
        .unwrap();
    let mut procs: BpfHashMap<_, u32, V8ProcConfig> =
        BpfHashMap::try_from(bpf.map_mut("v8_procs").unwrap()).unwrap();
    procs.insert(pid, cfg, 0).unwrap();
    let libc = libc_of(pid);
    for (prog, sym) in [("malloc_enter", "malloc"), ("calloc_enter", "calloc")] {
        let u: &mut UProbe = bpf.program_mut(prog).unwrap().try_into().unwrap();
        u.load().unwrap();
        let scope = UProbeScope::OneProcess(std::num::NonZeroU32::new(pid).unwrap());
        u.attach(sym, &libc, scope).unwrap();
    }
    // bpf_stats count while this fd is open (BPF_ENABLE_STATS).
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
    // stack.js waits for one byte before calling top().
    p.send_bytes(b"g");
    assert_eq!(p.line(), "started");
    wait_in_syscall(pid, libc::SYS_read as u64);
    let mut runs = 0;
    let mut run_ns = 0;
    let mut verified_insns = None;
    for prog in ["malloc_enter", "calloc_enter"] {
        let u: &UProbe = bpf.program(prog).unwrap().try_into().unwrap();
        let info = u.info().unwrap();
        runs += info.run_count();
        run_ns += info.run_time().as_nanos() as u64;
        verified_insns = verified_insns.max(info.verified_instruction_count());
    }
    drop(stats);
    // Resolve now, while the process lives (the point of the design).
    let mut resolver = resolver_for(&meta, pid);
    let mut ring = RingBuf::try_from(bpf.map_mut("stacks").unwrap()).unwrap();
    let mut stacks = Vec::new();
    let mut js_frames = 0;
    let mut walk_ns = 0;
    let mut words = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), std::mem::size_of::<JsStack>());
        // SAFETY: the ring buffer record is a `struct js_stack`, copied out unaligned.
        let s: JsStack = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        assert_eq!((s.tgid, s.size), (pid, SIZE));
        js_frames += s.js;
        walk_ns += s.walk_ns;
        let frames: Vec<_> = s.ips[..s.nr as usize]
            .iter()
            .filter_map(|&w| JsFrameTag::decode(w))
            .map(|t| (t, resolver.resolve(&t).unwrap_or_else(|e| panic!("{e}"))))
            .collect();
        assert_eq!(frames.len() as u64, s.js);
        stacks.push(frames);
        // Resident mode's drain does this when a stack is first seen.
        sym.js_observer(pid)
            .expect("node's V8 layout")
            .observe(&s.ips[..s.nr as usize]);
        words.push(s.ips[..s.nr as usize].to_vec());
    }
    drop(ring);
    let reference = walk_stopped(&cfg, pid)
        .iter()
        .filter_map(|f| JsFrameTag::decode(f.word))
        .map(|t| (t, resolver.resolve(&t).unwrap()))
        .collect();
    p.send_bytes(b"x");
    assert_eq!(p.line(), "done");
    // Named after the process exited: what an OOM post-mortem does.
    assert!(p.child.wait().unwrap().success());
    let post_mortem: Vec<Vec<Frame>> = words
        .iter()
        .map(|w| w.iter().flat_map(|&a| sym.symbolize(pid, a)).collect())
        .collect();
    // Non-JS code in V8's JIT memory (stubs) stays [JIT] without a perf map,
    // and the warning says just that.
    let stubs = post_mortem
        .iter()
        .flatten()
        .filter(|f: &&Frame| f.kind == FrameKind::Jit)
        .count();
    let warnings = sym.take_warnings();
    // Without the decoder, the JS frames are JIT code too.
    let expect = if decode {
        format!(
            "pid {pid}: no perf map /tmp/perf-{pid}.map found: V8 code that is not a JS \
             function (stubs, regexps) shows as [JIT]; run node with --perf-basic-prof to name it"
        )
    } else {
        format!(
            "pid {pid}: no perf map /tmp/perf-{pid}.map found, JS frames show as [JIT]; \
             run node with --perf-basic-prof"
        )
    };
    assert_eq!(warnings, if stubs > 0 { vec![expect] } else { vec![] });
    Run {
        post_mortem,
        stacks,
        js_frames,
        walk_ns,
        reference,
        runs,
        run_ns,
        verified_insns,
    }
}

#[test]
fn bpf_decoder_names_the_js_frames_of_malloc_stacks() {
    let _lock = require_bpf();
    let dir = workdir("bpf");
    let obj = build_object(&dir);
    let script = dir.join("stack.js");
    std::fs::copy(
        workspace().join("tracer/tests/fixtures/v8/stack.js"),
        &script,
    )
    .unwrap();
    let path = script.to_str().unwrap();
    for node in node_versions() {
        let v = node.major;
        let run = traced_run(&node, &obj, &script, true, false);
        // Every 64 KiB allocation of the process was leaf's, each one a
        // Buffer.alloc: node's `alloc` (node:buffer), then the fixture's
        // frames in order, at leaf's one allocation site.
        assert_eq!(run.stacks.len(), BUFFERS, "node {v}");
        for stack in &run.stacks {
            let names: Vec<&str> = stack
                .iter()
                .map(|(_, f)| f.function.name.as_str())
                .collect();
            let at = names
                .iter()
                .position(|&n| n == "leaf")
                .unwrap_or_else(|| panic!("node {v}: no leaf in {names:?}"));
            assert_eq!(names[at..at + NAMES.len()], NAMES, "node {v}: {names:?}");
            let (_, alloc) = &stack[at - 1];
            assert_eq!(alloc.function.name, "alloc", "node {v}: {names:?}");
            assert_eq!(alloc.function.script.as_deref(), Some("node:buffer"));
            for (_, f) in &stack[at..at + NAMES.len()] {
                assert_eq!(f.function.script.as_deref(), Some(path), "node {v}");
            }
            let (tag, leaf) = &stack[at];
            assert_eq!(
                (leaf.function.line, leaf.function.column),
                (Some(14), Some(14))
            );
            // Called 16 times in a row, leaf may have been sent to Sparkplug.
            match tag.tier {
                Tier::Interpreted => {
                    assert_eq!(
                        (leaf.call_line, leaf.call_column),
                        (Some(15), Some(48)),
                        "node {v}"
                    )
                }
                Tier::Baseline => assert_eq!(leaf.call_line, None),
                t => panic!("node {v}: leaf {t:?}"),
            }
        }
        // After the process exited, the Symbolizer names the same frames as
        // V8's perf map would, and the native ones from node's symbols.
        for (frames, stack) in run.post_mortem.iter().zip(&run.stacks) {
            let js: Vec<&Frame> = frames.iter().filter(|f| f.kind == FrameKind::Js).collect();
            assert_eq!(js.len(), stack.len(), "node {v}");
            for (f, (tag, resolved)) in js.iter().zip(stack) {
                assert_eq!(
                    **f,
                    resolved.to_report_frame(tag.encode().unwrap()),
                    "node {v}"
                );
            }
            let leaf = js
                .iter()
                .position(|f| f.symbol.as_deref().is_some_and(|s| s.contains("leaf ")))
                .unwrap();
            let want = format!("leaf {path}:14:14");
            assert!(
                js[leaf].symbol.as_deref().unwrap().ends_with(&want),
                "{:?}",
                js[leaf]
            );
            assert_eq!(
                (js[leaf].file.as_deref(), js[leaf].line),
                (Some(path), Some(14))
            );
            // calloc's caller: node's ArrayBuffer allocator, by name.
            assert!(
                frames[0].kind == FrameKind::Native && frames[0].symbol.is_some(),
                "{:?}",
                frames[0]
            );
            assert!(
                frames.iter().all(|f| f.symbol.as_deref() != Some("[JIT]")),
                "node {v}"
            );
        }
        // The kernel's JS frames are the reference walk's (taken by ptrace
        // while leaf blocks): the same words from leaf's caller out (same
        // SFIs, tiers and bytecode offsets), in every stack.
        let at_leaf = |w: &[u64], frames: &[(JsFrameTag, offheap::symbols::v8::JsFrame)]| {
            let i = frames
                .iter()
                .position(|(_, f)| f.function.name == "leaf")
                .unwrap();
            w[i + 1..].to_vec()
        };
        let ref_words: Vec<u64> = run
            .reference
            .iter()
            .map(|(t, _)| t.encode().unwrap())
            .collect();
        let ref_tail = at_leaf(&ref_words, &run.reference);
        // The fixture's 9 callers of leaf, then node's loader: 6 frames, 7 in
        // node 22 (wrapModuleLoad).
        let loader = if v == 22 { 7 } else { 6 };
        assert_eq!(ref_tail.len(), NAMES.len() - 1 + loader, "node {v}");
        let words: Vec<Vec<u64>> = run
            .stacks
            .iter()
            .map(|s| s.iter().map(|(t, _)| t.encode().unwrap()).collect())
            .collect();
        for (w, s) in words.iter().zip(&run.stacks) {
            assert_eq!(at_leaf(w, s), ref_tail, "node {v}");
        }
        // The same words when the decoder gets the frame slots from the
        // walker's copy of the stack (what the real walker will give it).
        let windowed = traced_run(&node, &obj, &script, true, true);
        let windowed_words: Vec<Vec<u64>> = windowed
            .stacks
            .iter()
            .map(|s| s.iter().map(|(t, _)| t.encode().unwrap()).collect())
            .collect();
        assert_eq!(windowed_words.len(), words.len(), "node {v}");
        for (w, s) in windowed_words.iter().zip(&windowed.stacks) {
            assert_eq!(w.len(), words[0].len(), "node {v}");
            assert_eq!(
                s.iter()
                    .map(|(_, f)| f.function.name.as_str())
                    .collect::<Vec<_>>(),
                run.stacks[0]
                    .iter()
                    .map(|(_, f)| f.function.name.as_str())
                    .collect::<Vec<_>>()
            );
        }
        let bare = traced_run(&node, &obj, &script, false, false);
        let bare_window = traced_run(&node, &obj, &script, false, true);
        assert_eq!((bare.js_frames, bare_window.js_frames), (0, 0));
        // Figures for the report (no speed goal here): the walks' own time
        // (bpf_ktime_get_ns around each), with and without the decoder,
        // with and without the stack copy; bpf_stats per probe hit.
        let per_walk = |r: &Run| r.walk_ns as f64 / r.stacks.len().max(1) as f64;
        let per_js = |with: &Run, base: &Run| {
            (per_walk(with) - per_walk(base)) * with.stacks.len() as f64
                / with.js_frames.max(1) as f64
        };
        let per_call = |r: &Run| r.run_ns as f64 / r.runs.max(1) as f64;
        eprintln!(
            "node {v}: {} JS frames in {} stacks ({} each); verifier {:?} insns processed \
             per program; walk {:.0} ns, {:.0} without the decoder: {:.0} ns per JS frame; \
             with the stack copy {:.0} ns, {:.0} without the decoder: {:.0} ns per JS frame; \
             bpf_stats {:.0} ns per probe hit ({} hits)",
            run.js_frames,
            run.stacks.len(),
            run.stacks.first().map_or(0, Vec::len),
            run.verified_insns,
            per_walk(&run),
            per_walk(&bare),
            per_js(&run, &bare),
            per_walk(&windowed),
            per_walk(&bare_window),
            per_js(&windowed, &bare_window),
            per_call(&run),
            run.runs,
        );
    }
}
