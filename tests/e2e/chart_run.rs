//! `offheap run --format chart`: the chart comes out of a real trace, not
//! only of a saved report. node retains 60 filled Buffers of 512 KiB; each
//! is a glibc mmap chunk of its own (above the 128 KiB threshold) with one
//! page of header, which resident mode charges to the mapping exactly.
use std::process::{Command, Stdio};

use offheap_e2e::*;
use serde_json::Value;

const EACH: u64 = 512 << 10;
const COUNT: u64 = 60;

const SCRIPT: &str = r#"
const keep = [];
const t = setInterval(() => {
  keep.push(Buffer.alloc(EACH).fill(1));
  if (keep.length === COUNT) { clearInterval(t); setTimeout(() => process.exit(0), 1500); }
}, 50);
"#;

/// The chart's layer groups as (data-series, data-kind, data-max-bytes),
/// and the panels' data-samples; python3's expat rejects anything that is
/// not well-formed XML.
fn layers(svg: &std::path::Path) -> Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, xml.etree.ElementTree as ET\n\
             ns = '{http://www.w3.org/2000/svg}'\n\
             r = ET.parse(sys.argv[1]).getroot()\n\
             print(json.dumps(dict(\n\
               samples=[g.get('data-samples') for g in r.iter(ns + 'g') if g.get('class') == 'panel'],\n\
               layers=[[g.get('data-series'), g.get('data-kind'), g.get('data-max-bytes')]\n\
                       for g in r.iter(ns + 'g') if g.get('data-series')])))",
        ])
        .arg(svg)
        .output()
        .expect("python3 is needed to check the SVG");
    assert!(
        out.status.success(),
        "not well-formed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn run_writes_a_chart_of_the_trace() {
    let _lock = require_bpf();
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("leak.js");
    std::fs::write(
        &script,
        SCRIPT
            .replace("EACH", &EACH.to_string())
            .replace("COUNT", &COUNT.to_string()),
    )
    .unwrap();
    let svg = tmp.path().join("mem.svg");
    let o = Command::new(offheap_bin())
        .args(["run", "--no-live", "--interval", "0.5", "--format", "chart"])
        .args(["--output", svg.to_str().unwrap(), "--", "/usr/bin/node"])
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_exit_0(&o);
    let c = layers(&svg);
    eprintln!("{c}");
    // One panel with a series (one sample per 0.5 s interval), five areas
    // and two lines, and the requests line: every trace records traffic
    // (none here).
    let samples: u64 = c["samples"][0].as_str().unwrap().parse().unwrap();
    assert!(samples >= 2, "{c}");
    let kinds: Vec<String> = c["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| format!("{}:{}", l[0].as_str().unwrap(), l[1].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            "v8_heap:area",
            "array_buffers:area",
            "native_addon:area",
            "node_native:area",
            "other:area",
            "v8_heap:line",
            "rss:line",
            "requests:line",
        ]
    );
    // The retained Buffers, each 512 KiB and its header page; plus at most
    // node's own small ArrayBuffers (64 KiB, as watch_metrics allows).
    let ab: u64 = c["layers"][1][2].as_str().unwrap().parse().unwrap();
    let want = COUNT * (EACH + 4096);
    assert!(
        (want..=want + 65536).contains(&ab),
        "array_buffers {ab}, want {want}"
    );
}
