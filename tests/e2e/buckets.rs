//! Buckets and readable stacks on real traced Node processes (malloc mode,
//! exact): an N-API addon's leak lands in `native_addon` under its function
//! and `.node` path, unclosed zlib streams in `node_native` under zlib's
//! frames, and a Buffer leak in `array_buffers` under the JS function that
//! made it, named from V8's perf map, also inside a PID + mount namespace.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use offheap_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);
const NODE: &str = "/usr/bin/node";

/// Waits for "ready", then on each stdin chunk runs the next step; prints
/// "done" after the leak. The addon is loaded after offheap attached, so its
/// module must be picked up while the process runs (dlopen).
const ADDON_DRIVER: &str = r#"
process.stdout.write("ready\n");
process.stdin.once("data", () => {
  const addon = require(process.argv[2]);
  addon.leak(64, 65536);
  process.stdout.write("done\n");
  process.stdin.once("data", () => process.exit(0));
});
"#;

const ZLIB_DRIVER: &str = r#"
const zlib = require("zlib");
const open = [];
process.stdout.write("ready\n");
process.stdin.once("data", () => {
  let pending = 20;
  for (let i = 0; i < 20; i++) {
    const z = zlib.createDeflate({ level: 6 });
    z.write(Buffer.alloc(4096, i), () => { if (--pending === 0) process.stdout.write("done\n"); });
    open.push(z);
  }
  process.stdin.once("data", () => process.exit(0));
});
"#;

const JS_DRIVER: &str = r#"
const keep = [];
function leakyRequestHandler(n) {
  for (let i = 0; i < n; i++) keep.push(Buffer.allocUnsafeSlow(262144));
}
process.stdout.write(`ready ${process.pid}\n`);
process.stdin.once("data", () => {
  leakyRequestHandler(32);
  process.stdout.write("done\n");
  process.stdin.once("data", () => process.exit(0));
});
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The report of `record --pid` in malloc mode around one step of the process.
fn trace_steps(pid: u32, lines: &Lines, stdin: &mut std::process::ChildStdin, dir: &Path) -> Value {
    record_steps(pid, lines, stdin, dir, &[]).0
}

fn spawn_node(args: &[&str], script: &Path, extra: &[&str], dir: &Path) -> (Child, Lines) {
    let mut node = Command::new(NODE)
        .args(args)
        .arg(script)
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::new(node.stdout.take().unwrap());
    (node, lines)
}

#[test]
fn addon_leak_lands_in_native_addon_with_its_function_and_module() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    // It keeps `count` blocks of `size` bytes from one noinline function.
    let addon = build_leaky_addon(dir.path());
    let script = write(dir.path(), "driver.js", ADDON_DRIVER);
    let (mut node, lines) = spawn_node(&[], &script, &[addon.to_str().unwrap()], dir.path());
    lines.until("ready", T);
    let mut stdin = node.stdin.take().unwrap();
    let report = trace_steps(node.id(), &lines, &mut stdin, dir.path());
    poke(&mut stdin);
    let _ = node.wait();

    let leak: Vec<&Value> = report_stacks(&report)
        .iter()
        .filter(|s| s["frames"][0]["symbol"] == "addon_leak_block")
        .collect();
    assert!(!leak.is_empty(), "no stack starts in addon_leak_block");
    let live: u64 = leak.iter().map(|s| s["live_bytes"].as_u64().unwrap()).sum();
    let allocs: u64 = leak
        .iter()
        .map(|s| s["live_allocs"].as_u64().unwrap())
        .sum();
    assert_eq!(live, 64 * 65536);
    assert_eq!(allocs, 64);
    for s in &leak {
        assert_eq!(s["bucket"], "native_addon");
        assert_eq!(s["frames"][0]["module"], addon.to_str().unwrap());
    }
    let bucket = report["processes"][0]["buckets"]["native_addon"]
        .as_u64()
        .unwrap();
    assert!(bucket >= 64 * 65536, "native_addon {bucket}");
}

#[test]
fn unclosed_deflate_streams_land_in_node_native_under_zlib_frames() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let script = write(dir.path(), "zlib.js", ZLIB_DRIVER);
    let (mut node, lines) = spawn_node(&[], &script, &[], dir.path());
    lines.until("ready", T);
    let mut stdin = node.stdin.take().unwrap();
    let report = trace_steps(node.id(), &lines, &mut stdin, dir.path());
    poke(&mut stdin);
    let _ = node.wait();

    let zlib: Vec<&Value> = report_stacks(&report)
        .iter()
        .filter(|s| {
            frame_symbols(s)
                .iter()
                .any(|f| f.starts_with("deflateInit2_"))
        })
        .collect();
    let live: u64 = zlib.iter().map(|s| s["live_bytes"].as_u64().unwrap()).sum();
    let allocs: u64 = zlib
        .iter()
        .map(|s| s["live_allocs"].as_u64().unwrap())
        .sum();
    // zlib's deflateInit2_ makes the state, window, prev, head and pending
    // buffers of each stream (5 blocks; ~256 KiB at level 6, windowBits 15,
    // memLevel 8): 20 streams, none closed.
    assert_eq!(allocs % 20, 0, "{allocs} blocks for 20 streams");
    assert!(allocs >= 20 * 4, "{allocs} blocks");
    assert!(live >= 20 * 200 * 1024, "{live} bytes under deflateInit2_");
    for s in &zlib {
        assert_eq!(s["bucket"], "node_native", "{:?}", frame_symbols(s));
    }
}

fn check_js_leak(report: &Value) {
    let js: Vec<&Value> = report_stacks(report)
        .iter()
        .filter(|s| {
            s["frames"].as_array().unwrap().iter().any(|f| {
                f["kind"] == "js"
                    && f["symbol"]
                        .as_str()
                        .is_some_and(|n| n.contains("leakyRequestHandler"))
            })
        })
        .collect();
    // Every retained Buffer's data is under the JS function, through node's
    // ArrayBuffer allocator, in array_buffers. (Each Buffer also has a small
    // BackingStore and JSArrayBuffer extension made with operator new: real,
    // and not counted here.)
    let buffers: u64 = js
        .iter()
        .filter(|s| {
            frame_symbols(s)
                .iter()
                .any(|f| f.contains("NodeArrayBufferAllocator"))
        })
        .map(|s| {
            assert_eq!(s["bucket"], "array_buffers", "{:?}", frame_symbols(s));
            s["live_bytes"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(
        buffers,
        32 * 262144,
        "Buffer bytes under leakyRequestHandler"
    );
}

const JS_FLAGS: [&str; 2] = ["--perf-basic-prof", "--interpreted-frames-native-stack"];

#[test]
fn js_function_names_appear_on_a_traced_buffer_leak() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let script = write(dir.path(), "app.js", JS_DRIVER);
    let (mut node, lines) = spawn_node(&JS_FLAGS, &script, &[], dir.path());
    lines.until(&format!("ready {}", node.id()), T);
    let mut stdin = node.stdin.take().unwrap();
    let report = trace_steps(node.id(), &lines, &mut stdin, dir.path());
    poke(&mut stdin);
    let _ = node.wait();
    let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", node.id()));
    check_js_leak(&report);
}

#[test]
fn js_function_names_appear_inside_a_pid_and_mount_namespace() {
    let _lock = require_bpf();
    // Not under /tmp (where a checkout may live, and tempdir() is): the
    // namespace mounts its own /tmp over it, which would hide the script.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let script = write(dir.path(), "app.js", JS_DRIVER);
    // A private /tmp: node's perf-1.map exists only in the namespace, so
    // offheap must find it through NSpid and /proc/PID/root.
    let inner = format!(
        "mount -t tmpfs tmpfs /tmp && exec {NODE} {} {}",
        JS_FLAGS.join(" "),
        script.display()
    );
    let mut unshare = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--mount",
            "--kill-child",
            "sh",
            "-c",
        ])
        .arg(inner)
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::new(unshare.stdout.take().unwrap());
    lines.until("ready 1", T);
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id())).unwrap();
    let host_pid: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    assert_ne!(host_pid, 1);
    let mut stdin = unshare.stdin.take().unwrap();
    let report = trace_steps(host_pid, &lines, &mut stdin, dir.path());
    poke(&mut stdin);
    let _ = unshare.wait();
    check_js_leak(&report);
}
