//! A stack of threadpool work (the worker's frames, the `[libuv threadpool]`
//! marker, then the stack that queued the work) in every output: JSON
//! (kind `async`), text, folded, pprof (the marker is a function), svg and
//! diff. The report is the committed fixtures/after.json with one such
//! stack added: zlib state allocated on the worker for a stream that
//! `openDeflateStreams` wrote.
mod report_support;

use std::path::Path;

use report_support::{decode_pprof, fixture, offheap_ok};
use serde_json::{json, Value};

const MARKER: &str = "[libuv threadpool]";
const BYTES: u64 = 284_672;

fn native(sym: &str, module: &str) -> Value {
    json!({"addr": "0x1000", "symbol": sym, "module": module, "file": null, "line": null, "kind": "native"})
}

/// Innermost first, as reports keep frames.
fn joined_frames() -> Vec<Value> {
    let node = "/usr/bin/node";
    vec![
        native("AllocForZlib", node),
        native("deflateInit2_", node),
        native("node::ZlibContext::InitZlib()", node),
        native("worker", node),
        native("start_thread", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
        json!({"addr": "0xffffffffffffffff", "symbol": MARKER, "module": null, "file": null, "line": null, "kind": "async"}),
        native("node::ThreadPoolWork::ScheduleWork()", node),
        json!({"addr": "0x2000", "symbol": "JS:~openDeflateStreams", "module": null, "file": "/app/zlib.js", "line": 5, "kind": "js"}),
        native("uv_run", node),
        native("node::Start(int, char**)", node),
    ]
}

/// after.json with the joined stack added (and counted in its bucket).
fn joined_report(dir: &Path) -> std::path::PathBuf {
    let mut r: Value =
        serde_json::from_slice(&std::fs::read(fixture("after.json")).unwrap()).unwrap();
    let p = &mut r["processes"][0];
    let nn = p["buckets"]["node_native"].as_u64().unwrap();
    p["buckets"]["node_native"] = json!(nn + BYTES);
    p["stacks"].as_array_mut().unwrap().push(json!({
        "bucket": "node_native",
        "live_bytes": BYTES,
        "live_allocs": 5,
        "total_bytes": BYTES,
        "total_allocs": 5,
        "frames": joined_frames(),
    }));
    let out = dir.join("joined.json");
    std::fs::write(&out, serde_json::to_vec(&r).unwrap()).unwrap();
    out
}

fn render(report: &Path, format: &str) -> String {
    String::from_utf8_lossy(&offheap_ok(&[
        "report",
        report.to_str().unwrap(),
        "--format",
        format,
    ]))
    .into_owned()
}

/// The folded order of the joined stack below the process root: outermost
/// first.
const FOLDED: &str = "node::Start(int, char**);uv_run;JS:~openDeflateStreams;\
    node::ThreadPoolWork::ScheduleWork();[libuv threadpool];start_thread;worker;\
    node::ZlibContext::InitZlib();deflateInit2_;AllocForZlib";

#[test]
fn json_keeps_the_marker_as_an_async_frame() {
    let dir = tempfile::tempdir().unwrap();
    let report = joined_report(dir.path());
    let out: Value = serde_json::from_str(&render(&report, "json")).unwrap();
    let stack = out["processes"][0]["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["live_bytes"] == BYTES)
        .unwrap();
    let frames = stack["frames"].as_array().unwrap();
    let marker: Vec<&Value> = frames.iter().filter(|f| f["kind"] == "async").collect();
    assert_eq!(marker.len(), 1, "{frames:?}");
    assert_eq!(marker[0]["symbol"], MARKER);
    assert_eq!(frames[5]["symbol"], MARKER);
    assert_eq!(stack["bucket"], "node_native");
}

#[test]
fn folded_text_svg_show_the_joined_stack() {
    let dir = tempfile::tempdir().unwrap();
    let report = joined_report(dir.path());
    let folded = render(&report, "folded");
    let line = format!("node (pid 2222);{FOLDED} {BYTES}");
    assert!(folded.lines().any(|l| l == line), "{folded}");

    let text = render(&report, "text");
    let at = text.find(MARKER).unwrap_or_else(|| panic!("{text}"));
    // Innermost first: the worker's frames above the marker, the queuing
    // stack below.
    assert!(text[..at].contains("deflateInit2_"), "{text}");
    assert!(text[at..].contains("JS:~openDeflateStreams"), "{text}");

    let svg = dir.path().join("f.svg");
    offheap_ok(&[
        "report",
        report.to_str().unwrap(),
        "--format",
        "svg",
        "--output",
        svg.to_str().unwrap(),
    ]);
    let body = std::fs::read_to_string(&svg).unwrap();
    assert!(body.contains(MARKER), "no marker in the flame graph");
}

#[test]
fn pprof_has_the_marker_as_a_function_between_the_two_stacks() {
    let dir = tempfile::tempdir().unwrap();
    let report = joined_report(dir.path());
    let pb = dir.path().join("heap.pb.gz");
    offheap_ok(&[
        "report",
        report.to_str().unwrap(),
        "--format",
        "pprof",
        "-o",
        pb.to_str().unwrap(),
    ]);
    let d = decode_pprof(&pb);
    assert_eq!(d["stacks"][FOLDED], BYTES, "{}", d["stacks"]);
    assert!(d["functions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == MARKER));
}

#[test]
fn diff_names_the_joined_stack_that_grew() {
    let dir = tempfile::tempdir().unwrap();
    let after = joined_report(dir.path());
    let before = fixture("after.json");
    let text = String::from_utf8_lossy(&offheap_ok(&[
        "diff",
        before.to_str().unwrap(),
        after.to_str().unwrap(),
        "--format",
        "folded",
    ]))
    .into_owned();
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("{FOLDED} ")) && l.ends_with(&BYTES.to_string())),
        "{text}"
    );
}
