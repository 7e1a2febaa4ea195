//! `offheap diff BEFORE.json AFTER.json` on two runs of the same server with
//! different leak sizes (fixtures/before.json, after.json): other pids, other
//! ASLR bases, other perf map paths, JS functions at another V8 tier.
//! The addon leak grew 1 MiB -> 5 MiB, Buffers 2 MiB -> 2.5 MiB, zlib state is
//! unchanged and a libuv stack was gone by the second run.
mod report_support;

use report_support::{fixture, offheap, offheap_ok};
use serde_json::Value;

fn path(name: &str) -> String {
    fixture(name).to_string_lossy().into_owned()
}

fn diff(format: &str) -> Vec<u8> {
    offheap_ok(&[
        "diff",
        &path("before.json"),
        &path("after.json"),
        "--format",
        format,
    ])
}

#[test]
fn ranks_the_grown_leak_first_with_its_exact_delta() {
    let d: Value = serde_json::from_slice(&diff("json")).unwrap();
    let stacks = d["stacks"].as_array().unwrap();
    // 5 stacks in both runs matched despite new addresses, + 1 gone.
    assert_eq!(stacks.len(), 6, "{d:#}");
    let first = &stacks[0];
    assert_eq!(first["frames"][1]["symbol"], "leak_chunk");
    assert_eq!(first["bucket"], "native_addon");
    assert_eq!(first["before_live_bytes"], 1_048_576);
    assert_eq!(first["after_live_bytes"], 5_242_880);
    assert_eq!(first["delta_live_bytes"], 4_194_304);
    // AFTER's frames are shown.
    assert_eq!(first["frames"][0]["addr"], "0x7f220009a0f0");
    assert_eq!(stacks[1]["bucket"], "array_buffers");
    assert_eq!(stacks[1]["delta_live_bytes"], 524_288);
    let last = stacks.last().unwrap();
    assert_eq!(last["frames"][1]["symbol"], "uv__io_start");
    assert_eq!(last["delta_live_bytes"], -131_072);
    assert_eq!(last["after_live_bytes"], 0);
    // Unchanged stacks matched: zlib (symbols) and the unsymbolized JIT one.
    let unchanged: Vec<&Value> = stacks
        .iter()
        .filter(|s| s["delta_live_bytes"] == 0)
        .collect();
    assert_eq!(unchanged.len(), 3);
    assert!(unchanged
        .iter()
        .all(|s| s["before_live_bytes"] == s["after_live_bytes"]));
    // Sorted by delta, descending.
    let deltas: Vec<i64> = stacks
        .iter()
        .map(|s| s["delta_live_bytes"].as_i64().unwrap())
        .collect();
    assert!(deltas.windows(2).all(|w| w[0] >= w[1]), "{deltas:?}");
    let b = &d["buckets"];
    assert_eq!(b["delta"]["native_addon"], 4_194_304);
    assert_eq!(b["delta"]["array_buffers"], 524_288);
    assert_eq!(b["delta"]["node_native"], -131_072);
    assert_eq!(b["delta"]["v8_heap"], 0);
    assert_eq!(b["before"]["native_addon"], 1_048_576);
    assert_eq!(b["after"]["native_addon"], 5_242_880);
}

#[test]
fn text_leads_with_the_growth() {
    let t = String::from_utf8(diff("text")).unwrap();
    assert!(
        t.starts_with("offheap diff · off-heap 3.4 MiB -> 7.8 MiB (+4.4 MiB)"),
        "{t}"
    );
    let first = t
        .lines()
        .position(|l| l.contains("+4.0 MiB (1.0 MiB -> 5.0 MiB) native_addon"));
    let second = t
        .lines()
        .position(|l| l.contains("+512.0 KiB (2.0 MiB -> 2.5 MiB) array_buffers"));
    assert!(first.is_some() && first < second, "{t}");
    assert!(t.contains("3 stacks changed"), "{t}");
}

#[test]
fn folded_is_differential() {
    let f = String::from_utf8(diff("folded")).unwrap();
    let addon = f.lines().find(|l| l.contains(";leak_chunk;")).unwrap();
    assert!(
        addon.ends_with(";leak_chunk;malloc 1048576 5242880"),
        "{addon}"
    );
    assert!(addon.starts_with("__libc_start_call_main;"), "{addon}");
    assert!(f.contains("uv__io_start;malloc 131072 0\n"), "{f}");
}

#[test]
fn same_report_twice_has_no_delta() {
    let p = path("after.json");
    let d: Value =
        serde_json::from_slice(&offheap_ok(&["diff", &p, &p, "--format", "json"])).unwrap();
    assert!(d["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["delta_live_bytes"] == 0));
}

#[test]
fn pprof_is_refused_as_usage() {
    let out = offheap(&[
        "diff",
        &path("before.json"),
        &path("after.json"),
        "--format",
        "pprof",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("text, json, folded or svg"));
}

#[test]
fn svg_is_a_differential_flame_graph() {
    let svg = String::from_utf8(diff("svg")).unwrap();
    assert!(
        svg.contains("offheap diff · off-heap 3.4 MiB -&gt; 7.8 MiB (+4.4 MiB)"),
        "{}",
        &svg[..2000]
    );
    // As in flamegraph.pl, the leaf of each stack carries its change, in
    // percent of AFTER's total: +4 MiB of 15.8 MiB.
    assert!(
        svg.contains("<title>malloc (5,242,880 bytes, 31.67%; +25.33%)</title>"),
        "{svg}"
    );
}
