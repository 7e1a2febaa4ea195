//! Memory allocated by work on libuv's threadpool carries the JS code that
//! queued the work (threadpool.bpf.c): node's zlib streams, whose state is
//! made inside the first write's threadpool work, and an N-API addon's
//! async work. The stack of such memory is the worker's frames, the marker
//! frame `[libuv threadpool]` (kind `async`), then the queuing stack.
//!
//! node runs with `--perf-basic-prof` (JS frames named by the perf map as
//! well as from V8's heap) and `UV_THREADPOOL_SIZE=1`: one worker thread,
//! so that work of different callers, and fs work, runs on the same thread
//! one item after the other (the case where a stale link would show).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use offheap_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);
const NODE: &str = "/usr/bin/node";
const MARKER: &str = "[libuv threadpool]";
/// The caller of uv_queue_work for node's own threadpool work (zlib).
const SCHEDULE_WORK: &str = "node::ThreadPoolWork::ScheduleWork";

/// Bytes node 20's bundled zlib (Chromium's zlib, deps/zlib) allocates for
/// one deflate stream at windowBits 15, memLevel 8, through node's
/// AllocForZlib, which asks the allocator for each block plus a header of
/// max(sizeof(size_t), alignof(max_align_t)) = 16 bytes
/// (src/node_zlib.cc, CompressionStream::AllocForBrotli). deflateInit2_
/// (deflate.c) allocates:
/// - the state, sizeof(deflate_state) = 6048 bytes in this zlib;
/// - the window, (w_size + window_padding) * 2 bytes: w_size = 1 << 15,
///   Chromium's window_padding = 8;
/// - prev, w_size * sizeof(Pos) = 32768 * 2;
/// - head, hash_size * sizeof(Pos): hash_bits = memLevel + 7 = 15;
/// - pending_buf, lit_bufsize * LIT_BUFS: lit_bufsize = 1 << (memLevel +
///   6) = 16384, LIT_BUFS = 5 (LIT_MEM: zlib 1.3.1's separate d/l buffers).
const ZLIB_HEADER: u64 = 16;
const STREAM_BYTES: u64 = (6048 + ZLIB_HEADER)
    + ((32768 + 8) * 2 + ZLIB_HEADER)
    + (32768 * 2 + ZLIB_HEADER)
    + (32768 * 2 + ZLIB_HEADER)
    + (16384 * 5 + ZLIB_HEADER);

/// Streams opened by `openDeflateStreams`, each written once: the write's
/// threadpool work initialises the stream (ZlibContext::InitZlib runs in
/// DoThreadPoolWork, node 12+), and the stream stays open.
const STREAMS: u64 = 12;

const ZLIB_DRIVER: &str = r#"
const zlib = require("zlib");
const open = [];
const input = Buffer.alloc(1024, 7);
function openDeflateStreams(n, done) {
  let pending = n;
  for (let i = 0; i < n; i++) {
    const z = zlib.createDeflate({ level: 6, windowBits: 15, memLevel: 8 });
    z.write(input, () => { if (--pending === 0) done(); });
    open.push(z);
  }
}
function compressForAlice(n, done) { openDeflateStreams(n, done); }
function compressForBob(n, done) { openDeflateStreams(n, done); }
const [alice, bob] = process.argv.slice(2).map(Number);
process.stdout.write("ready\n");
process.stdin.once("data", () => {
  if (!bob) {
    openDeflateStreams(alice, () => process.stdout.write("done\n"));
  } else {
    // One after the other: every stream of Alice is initialised before
    // Bob queues his writes.
    compressForAlice(alice, () => compressForBob(bob, () => process.stdout.write("done\n")));
  }
  process.stdin.once("data", () => process.exit(0));
});
"#;

/// Bytes the addon's Execute leaks per work item (one malloc, below
/// glibc's mmap threshold).
const LEAK: u64 = 123_456;

/// An N-API addon whose async work leaks LEAK bytes in Execute, on the
/// threadpool (napi_queue_async_work -> uv_queue_work), and calls the JS
/// callback it was given on completion.
const ADDON: &str = r#"
#include <node_api.h>
#include <stdlib.h>
#include <string.h>

#define LEAK 123456
static void *kept[256];
static int nkept;

struct job { napi_async_work work; napi_ref cb; };

__attribute__((noinline)) static void execute_leak(napi_env env, void *data) {
  void *p = malloc(LEAK);
  memset(p, 1, LEAK);
  if (nkept < 256) kept[nkept++] = p;
  __asm__ volatile("" ::: "memory");
}

static void complete(napi_env env, napi_status status, void *data) {
  struct job *j = data;
  napi_value cb, undef;
  napi_get_reference_value(env, j->cb, &cb);
  napi_get_undefined(env, &undef);
  napi_call_function(env, undef, cb, 0, NULL, NULL);
  napi_delete_reference(env, j->cb);
  napi_delete_async_work(env, j->work);
  free(j);
}

static napi_value leak_async(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], name;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  struct job *j = calloc(1, sizeof(*j));
  napi_create_reference(env, argv[0], 1, &j->cb);
  napi_create_string_utf8(env, "leak", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, execute_leak, complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "leakAsync", NAPI_AUTO_LENGTH, leak_async, NULL, &fn);
  napi_set_named_property(env, exports, "leakAsync", fn);
  return exports;
}
"#;

/// Work items queued by each of the addon's callers.
const FIRST: u64 = 3;
const SECOND: u64 = 2;
/// Files listed by fs work in between (glibc's scandir mallocs one copy of
/// each entry on the worker).
const FILES: usize = 10;

const ADDON_DRIVER: &str = r#"
const fs = require("fs");
const addon = require(process.argv[2]);
const listed = process.argv[3];
function queue(n, done) {
  let pending = n;
  for (let i = 0; i < n; i++) addon.leakAsync(() => { if (--pending === 0) done(); });
}
function queueLeakyWork(n, done) { queue(n, done); }
function listDirectory(done) { fs.readdir(listed, (err) => { if (err) throw err; done(); }); }
function otherCaller(n, done) { queue(n, done); }
process.stdout.write("ready\n");
process.stdin.once("data", () => {
  // One after the other, on the one worker thread: the addon's work, fs
  // work queued without uv_queue_work, then the addon's work again from
  // another function.
  queueLeakyWork(FIRST, () =>
    listDirectory(() => otherCaller(SECOND, () => process.stdout.write("done\n"))));
  process.stdin.once("data", () => process.exit(0));
});
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// node with a perf map and one threadpool thread, waiting at "ready".
fn spawn_node(script: &Path, args: &[&str], dir: &Path) -> (Child, Lines) {
    assert!(Path::new(NODE).exists(), "{NODE} is needed");
    let mut cmd = Command::new(NODE);
    cmd.arg("--perf-basic-prof")
        .arg(script)
        .args(args)
        .current_dir(dir)
        .env("UV_THREADPOOL_SIZE", "1");
    let (node, lines, _) = start_fixture(&mut cmd, T);
    (node, lines)
}

/// node's perf map, removed when the test is done with it, failed or not.
struct PerfMap(u32);

impl Drop for PerfMap {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", self.0));
    }
}

/// Traces one step of a node fixture in `mode`; returns the report.
/// Removes node's perf map.
fn trace(mode: &str, script: &Path, args: &[&str], dir: &Path) -> Value {
    let (mut node, lines) = spawn_node(script, args, dir);
    let _map = PerfMap(node.id());
    let mut stdin = node.stdin.take().unwrap();
    let (report, _, _) = record_steps_in(mode, node.id(), &lines, &mut stdin, dir, &[]);
    poke(&mut stdin);
    let status = node.wait().unwrap();
    assert!(status.success(), "node: {status}");
    report
}

/// The frames before the marker (all of them when there is none): the
/// worker's side of a joined stack.
fn worker_side(stack: &Value) -> Vec<String> {
    frame_symbols(stack)
        .into_iter()
        .take_while(|s| s != MARKER)
        .collect()
}

/// The frames after the marker: the queuing stack (empty when none).
fn queue_side(stack: &Value) -> Vec<String> {
    frame_symbols(stack)
        .into_iter()
        .skip_while(|s| s != MARKER)
        .skip(1)
        .collect()
}

fn carries_js(stack: &Value, function: &str) -> bool {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["kind"] == "js" && f["symbol"].as_str().is_some_and(|s| js_name(s) == function))
}

/// The function of a JS frame's name: `JS:~name script:line:col` (from
/// V8's heap) or `LazyCompile:~name script:line` (node 18's perf map),
/// without V8's tier marker (`~` interpreted, `*` optimized...).
fn js_name(symbol: &str) -> &str {
    let first = symbol.split_whitespace().next().unwrap_or("");
    first
        .rsplit(':')
        .next()
        .unwrap_or("")
        .trim_start_matches(['~', '*', '^', '+'])
}

fn bytes(stack: &Value) -> u64 {
    stack["live_bytes"].as_u64().unwrap()
}

/// The bytes of `stacks` and, of those, the bytes under JS `function`.
fn split(stacks: &[&Value], function: &str) -> (u64, u64) {
    let total = stacks.iter().map(|s| bytes(s)).sum();
    let under = stacks
        .iter()
        .filter(|s| carries_js(s, function))
        .map(|s| bytes(s))
        .sum();
    (total, under)
}

/// Stacks whose worker side runs zlib: deflate's functions, or node's
/// ZlibContext methods on the worker.
fn zlib_stacks(report: &Value) -> Vec<&Value> {
    report_stacks(report)
        .iter()
        .filter(|s| {
            worker_side(s)
                .iter()
                .any(|f| f.starts_with("deflate") || f.contains("ZlibContext::"))
        })
        .collect()
}

/// Every joined stack has one marker, with the queuing stack after it
/// starting in `queuer`, the caller of uv_queue_work (the probed function
/// itself is no frame): node's ThreadPoolWork::ScheduleWork, which node 20
/// inlines into napi_queue_async_work for N-API work.
fn check_joined(s: &Value, queuer: &str) {
    let syms = frame_symbols(s);
    assert_eq!(syms.iter().filter(|f| *f == MARKER).count(), 1, "{syms:?}");
    let marker = s["frames"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["symbol"] == MARKER)
        .unwrap();
    assert_eq!(marker["kind"], "async", "{marker}");
    let q = queue_side(s);
    assert!(q.first().is_some_and(|f| f.starts_with(queuer)), "{q:?}");
}

#[test]
fn zlib_state_carries_the_js_function_that_wrote_the_streams_malloc_mode() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let script = write(dir.path(), "zlib.js", ZLIB_DRIVER);
    let report = trace("malloc", &script, &[&STREAMS.to_string()], dir.path());
    let zlib = zlib_stacks(&report);
    let (total, linked) = split(&zlib, "openDeflateStreams");
    eprintln!("zlib {total} bytes, {linked} under openDeflateStreams");
    // Every byte of every stream's state, exactly, and all of it under the
    // JS function that wrote the streams.
    assert_eq!(total, STREAMS * STREAM_BYTES);
    assert_eq!(linked, STREAMS * STREAM_BYTES);
    for s in &zlib {
        check_joined(s, SCHEDULE_WORK);
        assert_eq!(s["bucket"], "node_native", "{:?}", frame_symbols(s));
        assert!(
            worker_side(s)
                .iter()
                .any(|f| f.starts_with("deflateInit2_")),
            "{:?}",
            frame_symbols(s)
        );
    }
    assert_eq!(report["counters"]["threadpool_work_unlinked"], 0);
    assert_eq!(report["dropped_events"], 0, "{}", report["counters"]);
    outputs_show_the_marker(&report, dir.path());
}

#[test]
fn zlib_state_carries_the_js_function_that_wrote_the_streams_resident_mode() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let script = write(dir.path(), "zlib.js", ZLIB_DRIVER);
    let report = trace("resident", &script, &[&STREAMS.to_string()], dir.path());
    let zlib = zlib_stacks(&report);
    let (total, linked) = split(&zlib, "openDeflateStreams");
    eprintln!("zlib {total} resident bytes, {linked} under openDeflateStreams");
    // Whole pages first touched on the worker: deflateInit2_ zeroes head
    // and the window, and the first deflate writes into prev and the
    // pending buffer; at least head and the window of every stream are
    // resident.
    assert!(
        total >= STREAMS * 2 * 64 * 1024,
        "{total} resident bytes under zlib for {STREAMS} streams"
    );
    assert!(
        linked * 100 >= total * 95,
        "{linked} of {total} zlib bytes under openDeflateStreams"
    );
    for s in zlib.iter().filter(|s| carries_js(s, "openDeflateStreams")) {
        check_joined(s, SCHEDULE_WORK);
    }
    assert_eq!(report["dropped_events"], 0, "{}", report["counters"]);
}

#[test]
fn two_callers_split_the_zlib_bytes_exactly() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let script = write(dir.path(), "zlib.js", ZLIB_DRIVER);
    let (alice, bob) = (3u64, 5u64);
    let report = trace(
        "malloc",
        &script,
        &[&alice.to_string(), &bob.to_string()],
        dir.path(),
    );
    let zlib = zlib_stacks(&report);
    let of = |who: &str| split(&zlib, who).1;
    let both = zlib
        .iter()
        .filter(|s| carries_js(s, "compressForAlice") && carries_js(s, "compressForBob"))
        .count();
    eprintln!(
        "alice {} bob {} (of {})",
        of("compressForAlice"),
        of("compressForBob"),
        zlib.iter().map(|s| bytes(s)).sum::<u64>()
    );
    assert_eq!(of("compressForAlice"), alice * STREAM_BYTES);
    assert_eq!(of("compressForBob"), bob * STREAM_BYTES);
    assert_eq!(both, 0);
}

#[test]
fn addon_async_work_carries_its_caller_and_no_link_outlives_its_work() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let addon = build_napi_addon(dir.path(), "leaky_async", ADDON);
    let listed = dir.path().join("listed");
    std::fs::create_dir(&listed).unwrap();
    for i in 0..FILES {
        std::fs::write(listed.join(format!("file{i}")), "x").unwrap();
    }
    let driver = ADDON_DRIVER
        .replace("FIRST", &FIRST.to_string())
        .replace("SECOND", &SECOND.to_string());
    let script = write(dir.path(), "addon.js", &driver);
    let report = trace(
        "malloc",
        &script,
        &[addon.to_str().unwrap(), listed.to_str().unwrap()],
        dir.path(),
    );
    let leaks: Vec<&Value> = report_stacks(&report)
        .iter()
        .filter(|s| frame_symbols(s).iter().any(|f| f == "execute_leak"))
        .collect();
    let of = |who: &str| split(&leaks, who).1;
    eprintln!(
        "queueLeakyWork {} otherCaller {} listDirectory {}",
        of("queueLeakyWork"),
        of("otherCaller"),
        of("listDirectory")
    );
    assert_eq!(of("queueLeakyWork"), FIRST * LEAK);
    assert_eq!(of("otherCaller"), SECOND * LEAK);
    assert_eq!(of("listDirectory"), 0);
    for s in &leaks {
        check_joined(s, "napi_queue_async_work");
        // The addon is on the worker's side only: the bucket is decided on
        // the whole joined stack.
        assert_eq!(s["bucket"], "native_addon", "{:?}", frame_symbols(s));
        assert!(
            !(carries_js(s, "queueLeakyWork") && carries_js(s, "otherCaller")),
            "{:?}",
            frame_symbols(s)
        );
    }
    // The fs work ran on the same (only) worker after the first caller's
    // work, without uv_queue_work: its allocations (glibc's scandir, one
    // block per entry at least, freed later on the loop thread) carry no
    // queuing stack.
    let fs: Vec<&Value> = report_stacks(&report)
        .iter()
        .filter(|s| worker_side(s).iter().any(|f| f == "uv__fs_work"))
        .collect();
    let fs_allocs: u64 = fs.iter().map(|s| s["total_allocs"].as_u64().unwrap()).sum();
    eprintln!("fs work: {fs_allocs} allocations in {} stacks", fs.len());
    assert!(
        fs_allocs >= FILES as u64,
        "{fs_allocs} allocations of fs work"
    );
    for s in &fs {
        assert!(
            !frame_symbols(s).iter().any(|f| f == MARKER),
            "fs work linked: {:?}",
            frame_symbols(s)
        );
    }
}

/// The marker in every output of one joined report: JSON (above), text,
/// folded, pprof.
fn outputs_show_the_marker(report: &Value, dir: &Path) {
    let json = dir.join("report.json");
    let render = |format: &str| -> Vec<u8> {
        let out = dir.join(format!("out.{format}"));
        let o = offheap(&[
            "report",
            json.to_str().unwrap(),
            "--format",
            format,
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(&out).unwrap()
    };
    let joined = zlib_stacks(report)[0];
    let worker = worker_side(joined);
    let queued = queue_side(joined);

    // Folded: outermost first, ';'-separated: the queuing stack, the
    // marker, then the worker's frames.
    let folded = String::from_utf8(render("folded")).unwrap();
    let line = folded
        .lines()
        .find(|l| l.contains(MARKER) && l.contains("deflateInit2_"))
        .expect("a folded line with the marker");
    let frames: Vec<&str> = line.rsplit_once(' ').unwrap().0.split(';').collect();
    let at = frames.iter().position(|f| f.contains(MARKER)).unwrap();
    assert!(
        frames[..at]
            .iter()
            .any(|f| f.contains("openDeflateStreams")),
        "{line}"
    );
    assert!(
        frames[at + 1..].iter().any(|f| f.contains("deflateInit2_")),
        "{line}"
    );
    assert!(frames[at - 1].contains("ScheduleWork"), "{line}");

    // Text: the marker line among the frames.
    let text = String::from_utf8(render("text")).unwrap();
    assert!(text.contains(MARKER), "{text}");

    // pprof: the marker is a function (its name in the string table, used
    // by a location between the two sides).
    let pprof = render("pprof");
    let raw = gunzip(&pprof);
    assert!(
        raw.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "no {MARKER} in the pprof string table"
    );
    assert!(!worker.is_empty() && !queued.is_empty());
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}
