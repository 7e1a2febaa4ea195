//! Malloc mode keeps a freed block's `allocs` entry for the next block at the
//! same address (malloc.bpf.c), but only up to a quarter of the map: past
//! that, a free deletes its entry, so that freed entries never crowd out live
//! ones. Run on reuse.c with a 4096-entry map.
use std::process::{Command, Stdio};

use offheap_e2e::*;

#[test]
fn freed_entries_never_crowd_out_live_ones() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let bin = build_fixture("reuse", dir.path());
    let out = dir.path().join("r.json");
    let o = Command::new(offheap_bin())
        .args(["run", "--mode", "malloc", "--no-live", "--format", "json"])
        .args(["--output", out.to_str().unwrap(), "--"])
        .arg(&bin)
        .env("OFFHEAP_MAX_ALLOCS", "4096")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{lines:?}");
    let sites = parse_sites(&lines);
    let sizes = symbol_sizes(&bin);
    let report = read_report(&out);
    assert_eq!(
        report["counters"]["allocs_map_full"], 0,
        "{}",
        report["counters"]
    );

    let at = |site: &str| site_totals(&report, sites[site], sizes[site]);
    let churn = at("site_churn");
    assert_eq!(
        (
            churn.live_bytes,
            churn.live_allocs,
            churn.total_bytes,
            churn.total_allocs
        ),
        (0, 0, 48 * 3000, 3000)
    );
    let keep = at("site_keep");
    assert_eq!(
        (
            keep.live_bytes,
            keep.live_allocs,
            keep.total_bytes,
            keep.total_allocs
        ),
        (200 * 3000, 3000, 200 * 3000, 3000)
    );
}
