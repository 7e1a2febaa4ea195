//! Malloc mode on Node: Buffers retained by a script are attributed to stacks
//! that pass through node's ArrayBuffer allocator.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use offheap_e2e::*;

const T: Duration = Duration::from_secs(120);
const NODE: &str = "/usr/bin/node";
const EACH: u64 = 256 * 1024;
const COUNT: u64 = 64;

/// Address ranges of node::NodeArrayBufferAllocator's methods (node is a
/// non-PIE executable: nm's addresses are the runtime addresses).
fn allocator_ranges() -> Vec<(u64, u64)> {
    let o = Command::new("nm")
        .args(["-C", "-S", "--defined-only", NODE])
        .output()
        .expect("running nm");
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    let r: Vec<(u64, u64)> = text
        .lines()
        .filter(|l| l.contains("node::NodeArrayBufferAllocator::"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let start = u64::from_str_radix(f.first()?, 16).ok()?;
            let size = u64::from_str_radix(f.get(1)?, 16).ok()?;
            Some((start, start + size))
        })
        .collect();
    assert!(
        r.len() >= 3,
        "no NodeArrayBufferAllocator symbols in {NODE}"
    );
    r
}

const SCRIPT: &str = r#"
const keep = [];
process.stdout.write("ready\n");
process.stdin.once("data", () => {
  for (let i = 0; i < COUNT; i++) keep.push(Buffer.allocUnsafeSlow(EACH));
  for (let i = 0; i < COUNT; i++) keep.push(Buffer.alloc(EACH));
  process.stdout.write("done\n");
  process.stdin.once("data", () => { globalThis.kept = keep.length; process.exit(0); });
});
"#;

/// Live bytes and allocations on stacks through NodeArrayBufferAllocator.
fn via_allocator(report: &serde_json::Value) -> (u64, u64) {
    let ranges = allocator_ranges();
    let through = |a: u64| ranges.iter().any(|(s, e)| a >= *s && a < *e);
    let (mut bytes, mut allocs) = (0u64, 0u64);
    for s in report["processes"][0]["stacks"].as_array().unwrap() {
        if s["frames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| through(hex(&f["addr"])))
        {
            bytes += s["live_bytes"].as_u64().unwrap();
            allocs += s["live_allocs"].as_u64().unwrap();
        }
    }
    eprintln!(
        "via NodeArrayBufferAllocator: {bytes} bytes in {allocs} allocs; buckets {}",
        report["processes"][0]["buckets"]
    );
    (bytes, allocs)
}

fn script(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("buffers.js");
    std::fs::write(
        &script,
        SCRIPT
            .replace("COUNT", &COUNT.to_string())
            .replace("EACH", &EACH.to_string()),
    )
    .unwrap();
    script
}

#[test]
fn retained_buffers_pass_through_the_array_buffer_allocator() {
    let _lock = require_bpf();
    assert!(Path::new(NODE).exists(), "{NODE} is needed");
    let dir = tempfile::tempdir().unwrap();
    let script = script(dir.path());
    let mut node = Command::new(NODE)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::new(node.stdout.take().unwrap());
    lines.until("ready", T);
    let out = dir.path().join("r.json");
    let mut tracer = Command::new(offheap_bin())
        .args([
            "record",
            "--pid",
            &node.id().to_string(),
            "--mode",
            "malloc",
        ])
        .args(["--format", "json", "--output", out.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = Stderr::new(tracer.stderr.take().unwrap());
    err.wait_attached(T);
    let mut stdin = node.stdin.take().unwrap();
    poke(&mut stdin);
    lines.until("done", T);
    signal(&tracer, libc::SIGINT);
    assert_eq!(tracer.wait().unwrap().code(), Some(0), "{:?}", err.rest());
    poke(&mut stdin);
    let _ = node.wait();

    let report = read_report(&out);
    let (bytes, allocs) = via_allocator(&report);
    let retained = 2 * COUNT * EACH;
    // Stronger than 95%: every retained byte is there, and at most the
    // Buffer node made for the stdin chunk that started the allocations
    // (one byte, unless a GC collected it) comes on top.
    assert!(
        (retained..=retained + 1).contains(&bytes),
        "{bytes} bytes via the allocator, retained {retained}"
    );
    assert!((2 * COUNT..=2 * COUNT + 1).contains(&allocs), "{allocs}");
    assert_eq!(report["dropped_events"], 0, "{}", report["counters"]);
}

/// The same under `run`, from node's first instruction: node's own startup
/// ArrayBuffers come on top (about 10 KiB in 29 blocks measured here).
#[test]
fn run_node_attributes_retained_buffers_to_the_allocator() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let script = script(dir.path());
    let out = dir.path().join("r.json");
    let mut tracer = Command::new(offheap_bin())
        .args(["run", "--mode", "malloc", "--format", "json"])
        .args(["--output", out.to_str().unwrap(), "--", NODE])
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = Stderr::new(tracer.stderr.take().unwrap());
    err.wait_attached(T);
    let lines = Lines::new(tracer.stdout.take().unwrap());
    lines.until("ready", T);
    let mut stdin = tracer.stdin.take().unwrap();
    poke(&mut stdin);
    lines.until("done", T);
    // Stop while node still holds its Buffers; it exits on the next byte.
    signal(&tracer, libc::SIGINT);
    let status = tracer.wait().unwrap();
    poke(&mut stdin);
    assert_eq!(status.code(), Some(0), "{:?}", err.rest());

    let report = read_report(&out);
    let (bytes, allocs) = via_allocator(&report);
    let retained = 2 * COUNT * EACH;
    assert!(
        (retained..=retained + 64 * 1024).contains(&bytes),
        "{bytes} bytes via the allocator, retained {retained}"
    );
    assert!(allocs >= 2 * COUNT, "{allocs}");
    assert_eq!(report["dropped_events"], 0, "{}", report["counters"]);
}
