//! Stacks through code without frame pointers (issue 12), end to end through
//! the `offheap` binary: tests/fixtures/nofp_lib.c built as a shared library
//! at -O2 -fomit-frame-pointer (as node-gyp builds addons and the libraries
//! they link), whose noinline chain nofp_chain1 -> ... -> nofp_chain5 ends
//! in malloc. Frame pointers cannot walk it (%rbp is a general register
//! there); the BPF walker must take every one of its frames from the unwind
//! tables built from its `.eh_frame`.
//!
//! - From a C fixture (nofp_main.c, built with frame pointers), malloc mode:
//!   the whole stack, in order, to `_start`; bytes exact.
//! - From an N-API addon built the same way (nofp_addon.c), called by a JS
//!   function of node run with --perf-basic-prof: the chain, then the
//!   addon's function, then the JS caller; bytes exact.
//! - Resident mode, the C fixture: a block glibc serves with its own mmap
//!   (charged to the mmap's stack) and one from the heap touched page by page
//!   in nofp_chain5 (first-touch stacks), each within one page. On node, the
//!   addon's mmap'd block, within one page. (Not node's first-touch pages:
//!   node's heap already holds touched pages where a new block starts, 4 of
//!   a 6 MiB block's 1536 when tried, so no figure is exact to a page; and
//!   resident mode's mmap stacks are unwound in userspace from a bounded
//!   copy, which names JS frames as V8's trampolines and may end early.)
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command},
    time::Duration,
};

use offheap_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);
const NODE: &str = "/usr/bin/node";
const PAGE: u64 = 4096;

/// The chain as the walk finds it, innermost first.
const CHAIN: [&str; 5] = [
    "nofp_chain5",
    "nofp_chain4",
    "nofp_chain3",
    "nofp_chain2",
    "nofp_chain1",
];

/// `cc ARGS SRC LIBS -o OUT` (libraries after the source that needs them).
fn cc(args: &[&str], src: &Path, libs: &[String], out: &Path) {
    let o = Command::new("cc")
        .args(args)
        .arg(src)
        .args(libs)
        .arg("-o")
        .arg(out)
        .output()
        .expect("running cc");
    assert!(
        o.status.success(),
        "cc {}: {}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// libnofp.so in `dir`, without frame pointers.
fn build_lib(dir: &Path) -> PathBuf {
    let lib = dir.join("libnofp.so");
    let args = ["-O2", "-g", "-fomit-frame-pointer", "-fPIC", "-shared"];
    cc(
        &args,
        &workspace().join("tests/fixtures/nofp_lib.c"),
        &[],
        &lib,
    );
    lib
}

/// `-L dir -lnofp` with the run path: the library as a dependency.
fn link_nofp(dir: &Path) -> [String; 3] {
    [
        format!("-L{}", dir.display()),
        "-lnofp".to_string(),
        format!("-Wl,-rpath,{}", dir.display()),
    ]
}

/// nofp_main (frame pointers) linked against libnofp.so, both in `dir`.
fn build_main(dir: &Path) -> PathBuf {
    build_lib(dir);
    let main = dir.join("nofp_main");
    let args = ["-O1", "-g", "-fno-omit-frame-pointer", "-Wall", "-Werror"];
    let src = workspace().join("tests/fixtures/nofp_main.c");
    cc(&args, &src, &link_nofp(dir), &main);
    main
}

/// nofp.node: the N-API addon, built like node-gyp builds one (-O2, no
/// frame pointers, plain `cc -shared` against node's headers), linked
/// against libnofp.so.
fn build_addon(dir: &Path) -> PathBuf {
    build_lib(dir);
    let addon = dir.join("nofp.node");
    let args = [
        "-O2",
        "-g",
        "-fomit-frame-pointer",
        "-fPIC",
        "-shared",
        "-Wall",
        "-Werror",
        "-I/usr/include/node",
        "-DNODE_GYP_MODULE_NAME=nofp",
    ];
    let src = workspace().join("tests/fixtures/nofp_addon.c");
    cc(&args, &src, &link_nofp(dir), &addon);
    addon
}

fn stacks(report: &Value) -> &Vec<Value> {
    report["processes"][0]["stacks"].as_array().unwrap()
}

fn frames(s: &Value) -> &Vec<Value> {
    s["frames"].as_array().unwrap()
}

fn symbols(s: &Value) -> Vec<&str> {
    frames(s)
        .iter()
        .map(|f| f["symbol"].as_str().unwrap_or("?"))
        .collect()
}

/// Where the chain starts in a stack's frames: CHAIN at [i, i + 5), each
/// frame in libnofp.so. None when the stack does not hold the whole chain.
fn chain_at(s: &Value) -> Option<usize> {
    let f = frames(s);
    let i = f.iter().position(|f| f["symbol"] == CHAIN[0])?;
    let whole = CHAIN.iter().enumerate().all(|(k, name)| {
        f.get(i + k)
            .is_some_and(|f| f["symbol"] == *name && module_file(f) == "libnofp.so")
    });
    whole.then_some(i)
}

/// Every stack with a frame of libnofp.so: each must hold the whole chain.
fn chain_stacks(report: &Value) -> Vec<&Value> {
    let with_lib: Vec<&Value> = stacks(report)
        .iter()
        .filter(|s| frames(s).iter().any(|f| module_file(f) == "libnofp.so"))
        .collect();
    for s in &with_lib {
        assert!(chain_at(s).is_some(), "a broken chain: {:?}", symbols(s));
    }
    with_lib
}

fn figures(s: &[&Value]) -> [u64; 4] {
    ["live_bytes", "live_allocs", "total_bytes", "total_allocs"]
        .map(|k| s.iter().map(|s| s[k].as_u64().unwrap()).sum())
}

fn send(stdin: &mut ChildStdin, line: &str) {
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
}

/// `offheap record --pid PID --mode MODE` (JSON to `out`, environment
/// `env`), attached.
fn record(pid: u32, mode: &str, out: &Path, env: &[(&str, &str)]) -> (Child, Stderr) {
    let (tracer, _, err) = spawn_attached(
        Command::new(offheap_bin())
            .args(["record", "--pid", &pid.to_string(), "--mode", mode])
            .args(["--no-live", "--interval", "0.2", "--format", "json"])
            .arg("--output")
            .arg(out)
            .envs(env.iter().copied()),
        T,
    );
    (tracer, err)
}

fn stop(mut tracer: Child, err: Stderr) {
    signal(&tracer, libc::SIGINT);
    let status = tracer.wait().unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {:?}", err.rest());
}

/// Starts `cmd` (a fixture printing "ready"), traces it with `record --pid`
/// in `mode`, sends each step's line and waits for a line starting with its
/// answer; stops the trace while the fixture still holds its blocks.
/// Returns the report and the answers.
fn trace(
    cmd: &mut Command,
    mode: &str,
    steps: &[(String, String)],
    env: &[(&str, &str)],
) -> (Value, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut fixture, lines, _) = start_fixture(cmd, T);
    let pid = fixture.id();
    let out = dir.path().join("r.json");
    let (tracer, err) = record(pid, mode, &out, env);
    let mut stdin = fixture.stdin.take().unwrap();
    let answers = steps
        .iter()
        .map(|(line, answer)| {
            send(&mut stdin, line);
            lines.starting_with(answer, T)
        })
        .collect();
    stop(tracer, err);
    drop(stdin);
    assert!(fixture.wait().unwrap().success());
    // node --perf-basic-prof's map.
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    (read_report(&out), answers)
}

/// nofp_main under `trace`, one chain call per size.
fn trace_main(mode: &str, sizes: &[u64], env: &[(&str, &str)]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let main = build_main(dir.path());
    let steps: Vec<(String, String)> = sizes
        .iter()
        .map(|n| (n.to_string(), format!("done {n} ")))
        .collect();
    trace(&mut Command::new(&main), mode, &steps, env).0
}

/// node --perf-basic-prof (environment `node_env`) on nofp_addon.js under
/// `trace` (the tracer's environment `env`), one step per (size, count):
/// `count` calls of nofpCaller(size).
fn trace_addon(
    mode: &str,
    calls: &[(u64, u64)],
    env: &[(&str, &str)],
    node_env: &[(&str, &str)],
) -> (Value, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let addon = build_addon(dir.path());
    let steps: Vec<(String, String)> = calls
        .iter()
        .map(|(n, count)| (format!("{n} {count}"), format!("done {n}")))
        .collect();
    let mut node = Command::new(NODE);
    node.arg("--perf-basic-prof")
        .arg(workspace().join("tests/fixtures/nofp_addon.js"))
        .arg(&addon)
        .envs(node_env.iter().copied());
    let report = trace(&mut node, mode, &steps, env).0;
    // The addon's path as the report names it (the directory is gone).
    (report, addon)
}

/// Malloc mode: the one stack of the chain's mallocs is the chain, in order,
/// then main (frame pointers) and glibc's start code to `_start`, unwound to
/// the end; every byte counted.
#[test]
fn malloc_mode_walks_a_chain_without_frame_pointers_from_a_c_fixture() {
    let _lock = require_bpf();
    let report = trace_main("malloc", &[4242, 4242, 4242], &[]);
    let chain = chain_stacks(&report);
    assert_eq!(chain.len(), 1, "{chain:#?}");
    let s = chain[0];
    assert_eq!(
        symbols(s),
        [
            "nofp_chain5",
            "nofp_chain4",
            "nofp_chain3",
            "nofp_chain2",
            "nofp_chain1",
            "main",
            "__libc_start_call_main",
            "__libc_start_main",
            "_start",
        ],
        "{s}"
    );
    assert_eq!(s["truncated"], false, "{s}");
    assert_eq!(module_file(&frames(s)[5]), "nofp_main", "{s}");
    assert_eq!(figures(&chain), [3 * 4242, 3, 3 * 4242, 3]);
}

/// Malloc mode on node: JS nofpCaller -> the addon's nofp_alloc -> the chain
/// -> malloc. Above the chain: nofp_alloc in nofp.node, then node's N-API
/// and V8 frames, then nofpCaller as a JS frame. 8 blocks of 3000 bytes,
/// `native_addon`.
#[test]
fn malloc_mode_walks_js_addon_and_library_without_frame_pointers() {
    let _lock = require_bpf();
    let (report, addon) = trace_addon("malloc", &[(3000, 8)], &[], &[]);
    let chain = chain_stacks(&report);
    assert!(!chain.is_empty(), "no stack through libnofp.so");
    assert_eq!(figures(&chain), [8 * 3000, 8, 8 * 3000, 8]);
    for s in &chain {
        let i = chain_at(s).unwrap();
        let f = frames(s);
        // malloc's caller is frame 0.
        assert_eq!(i, 0, "{:?}", symbols(s));
        let alloc = &f[CHAIN.len()];
        assert_eq!(alloc["symbol"], "nofp_alloc", "{:?}", symbols(s));
        assert_eq!(alloc["module"], addon.to_str().unwrap(), "{s}");
        let js = f[CHAIN.len() + 1..]
            .iter()
            .position(|f| {
                f["kind"] == "js"
                    && f["symbol"]
                        .as_str()
                        .is_some_and(|n| n.contains("nofpCaller"))
            })
            .unwrap_or_else(|| panic!("no JS nofpCaller above nofp_alloc: {:?}", symbols(s)));
        // Between the addon and its JS caller, only node's own frames (N-API,
        // V8's API call builtins).
        for g in &f[CHAIN.len() + 1..CHAIN.len() + 1 + js] {
            assert!(
                g["module"].as_str() == Some(NODE) || g["kind"] != "native",
                "{g} between nofp_alloc and nofpCaller: {:?}",
                symbols(s)
            );
        }
        assert_eq!(s["bucket"], "native_addon", "{s}");
    }
}

/// Resident mode, every first-touch page's stack taken: a 4 MiB block (glibc
/// serves it with its own mmap, over the mmap threshold of 128 KiB) is
/// charged to the mmap's stack, through the chain; a 100 KiB block from the
/// heap, touched page by page in nofp_chain5, to first-touch stacks through
/// the chain. Each within one page.
#[test]
fn resident_mode_charges_mapping_and_first_touch_through_the_chain() {
    let _lock = require_bpf();
    const BIG: u64 = 4 << 20;
    const HEAP: u64 = 100 << 10;
    let report = trace_main("resident", &[BIG, HEAP], &[("OFFHEAP_FAULT_SAMPLE", "1")]);
    assert_eq!(report["mode"], "resident");
    let chain = chain_stacks(&report);
    let pages = |attribution: &str| -> u64 {
        chain
            .iter()
            .filter(|s| s["attribution"] == attribution)
            .map(|s| s["live_bytes"].as_u64().unwrap())
            .sum::<u64>()
            / PAGE
    };
    let (mapping, first_touch) = (pages("mapping"), pages("first_touch"));
    // The loop writes each 4 KiB of the block from its start: 1024 pages of
    // the mapping (glibc's header and the block's last 16 bytes make it one
    // page longer; that page is not written).
    assert!(
        mapping.abs_diff(BIG / PAGE) <= 1,
        "mapping: {mapping} pages, want {} +- 1: {chain:#?}",
        BIG / PAGE
    );
    // 25 pages written by the loop (malloc's own header writes land on the
    // pages at either end, under the same chain).
    assert!(
        first_touch.abs_diff(HEAP / PAGE) <= 1,
        "first touch: {first_touch} pages, want {} +- 1: {chain:#?}",
        HEAP / PAGE
    );
    // The mapping's stack: glibc's mmap under malloc, then the chain.
    let maps: Vec<&&Value> = chain
        .iter()
        .filter(|s| s["attribution"] == "mapping")
        .collect();
    assert_eq!(maps.len(), 1, "{maps:#?}");
    let f = frames(maps[0]);
    let i = chain_at(maps[0]).unwrap();
    assert!(
        f[..i].iter().all(|f| module_file(f) == "libc.so.6"),
        "{:?}",
        symbols(maps[0])
    );
    assert_eq!(
        f[i + CHAIN.len()]["symbol"],
        "main",
        "{:?}",
        symbols(maps[0])
    );
    // Unwound to _start, whose CFI marks the end of the stack.
    assert_eq!(maps[0]["truncated"], false, "{:?}", symbols(maps[0]));
    for s in &chain {
        assert_eq!(frames(s).last().unwrap()["symbol"], "_start", "{s}");
    }
    assert_eq!(report["counters"]["events_lost"], 0);
}

/// Resident mode on node: a 12 MiB block the addon's chain mallocs (glibc
/// maps it: the tunable pins glibc's mmap threshold at 128 KiB, which a
/// freed mmap'd block would otherwise raise) is charged to the mmap's stack,
/// through the chain and the addon's nofp_alloc, within one page.
#[test]
fn resident_mode_charges_an_addons_mapping_through_the_chain() {
    let _lock = require_bpf();
    const BIG: u64 = 12 << 20;
    let (report, addon) = trace_addon(
        "resident",
        &[(BIG, 1)],
        &[("OFFHEAP_FAULT_SAMPLE", "1")],
        &[("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=131072")],
    );
    let maps: Vec<&Value> = chain_stacks(&report)
        .into_iter()
        .filter(|s| s["attribution"] == "mapping")
        .collect();
    assert_eq!(maps.len(), 1, "{maps:#?}");
    let s = maps[0];
    let pages = s["live_bytes"].as_u64().unwrap() / PAGE;
    assert!(
        pages.abs_diff(BIG / PAGE) <= 1,
        "{pages} pages, want {} +- 1: {s}",
        BIG / PAGE
    );
    let i = chain_at(s).unwrap();
    let f = frames(s);
    assert_eq!(
        f[i + CHAIN.len()]["symbol"],
        "nofp_alloc",
        "{:?}",
        symbols(s)
    );
    assert_eq!(f[i + CHAIN.len()]["module"], addon.to_str().unwrap(), "{s}");
    assert_eq!(s["bucket"], "native_addon", "{s}");
}

/// Malloc mode in code no unwind table covers yet: a library dlopen'd once
/// the trace is attached and called at once (tests/fixtures/guess_main.c),
/// whose guess_alloc leaves a made-up frame record in %rbp
/// (guess_lib.c). The walker can only guess frame pointers there; the
/// guess finds guess_junk, which no call precedes, so the stack ends at
/// guess_alloc and says it was truncated: guess_junk is no frame of it
/// (before the check, the stack was guess_alloc <- guess_junk, complete).
#[test]
fn malloc_mode_a_guessed_step_to_no_return_address_ends_the_stack() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libguess.so");
    let src = workspace().join("tests/fixtures/guess_lib.c");
    cc(&["-O2", "-g", "-fPIC", "-shared"], &src, &[], &lib);
    let main = build_fixture("guess_main", dir.path());
    let steps = [("x".to_string(), "done ".to_string())];
    let (report, _) = trace(Command::new(&main).arg(&lib), "malloc", &steps, &[]);
    let with_lib: Vec<&Value> = stacks(&report)
        .iter()
        .filter(|s| frames(s).iter().any(|f| module_file(f) == "libguess.so"))
        .collect();
    assert_eq!(with_lib.len(), 1, "{with_lib:#?}");
    let s = with_lib[0];
    assert_eq!(symbols(s), ["guess_alloc"], "{s}");
    assert_eq!(s["truncated"], true, "{s}");
    assert_eq!(figures(&with_lib), [7777, 1, 7777, 1]);
}
