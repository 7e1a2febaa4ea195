//! `offheap run` of a command that exits before the first interval, in
//! resident mode: its pagemap cannot be read after its exit, so the report
//! holds the pages it touched, from the fault programs' own record
//! (accounting/resident/exited.rs), to the page; and its JS frames, resolved
//! as the stacks arrived while it lived, name the leaking function.
//! tests/fixtures/short_run.js leaks 8 Buffers of 1 MiB from shortLivedLeak.
use std::{process::Command, time::Duration};

use offheap_e2e::*;

const T: Duration = Duration::from_secs(120);
/// Each 1 MiB Buffer is its own mmap (glibc's mmap threshold at 64 KiB):
/// 1 MiB and malloc's 16-byte header, 257 pages, all written.
const BUFFERS: u64 = 8;
const BUFFER_PAGES: u64 = 257;

#[test]
fn resident_run_of_a_command_shorter_than_an_interval_keeps_its_pages_and_js_names() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("short.json");
    let script = workspace().join("tests/fixtures/short_run.js");
    let (mut tracer, _, err) = spawn_attached(
        Command::new(offheap_bin())
            .args(["run", "--mode", "resident", "--no-live", "--interval", "60"])
            .args(["--format", "json", "--output"])
            .arg(&out)
            .args(["--", "node"])
            .arg(&script)
            .env("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
            // Every first-touch page's stack (mapping pages are exact anyway).
            .env("OFFHEAP_FAULT_SAMPLE", "1"),
        T,
    );
    let lines = Lines::new(tracer.stdout.take().unwrap());
    let mut stdin = tracer.stdin.take().unwrap();
    lines.until("ready", T);
    poke(&mut stdin);
    lines.until("done", T);
    // The drain resolves the stacks' JS words within milliseconds of their
    // mmap; the command then exits at once, long before the first sample.
    std::thread::sleep(Duration::from_millis(500));
    poke(&mut stdin);
    let status = tracer.wait().unwrap();
    let rest = err.rest();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    let report = read_report(&out);
    let p = &report["processes"][0];
    assert_eq!(p["exited"], true);
    let note = p["reconciliation"].as_str().unwrap();
    assert!(note.contains("before its first sample"), "{note}");
    let script = script.to_str().unwrap();
    let mut bytes = 0;
    for s in p["stacks"].as_array().unwrap() {
        let named = s["frames"].as_array().unwrap().iter().any(|f| {
            f["kind"] == "js"
                && f["symbol"]
                    .as_str()
                    .is_some_and(|n| n.contains("shortLivedLeak ") && n.contains(script))
        });
        if named && s["bucket"] == "array_buffers" && s["attribution"] == "mapping" {
            bytes += s["live_bytes"].as_u64().unwrap();
        }
    }
    assert_eq!(
        bytes,
        BUFFERS * BUFFER_PAGES * 4096,
        "shortLivedLeak's Buffers; stderr {rest:?}"
    );
    let warnings: Vec<&str> = report["warnings"]
        .as_array()
        .map(|w| w.iter().filter_map(|w| w.as_str()).collect())
        .unwrap_or_default();
    assert!(
        !warnings.iter().any(|w| w.contains("could not be named")),
        "{warnings:?}"
    );
}
