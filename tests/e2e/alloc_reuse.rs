//! Malloc mode keeps a freed block's `allocs` entry for the next block at the
//! same address (malloc.bpf.c), but only up to a quarter of the map: past
//! that, a free deletes its entry, so that freed entries never crowd out live
//! ones. Run on reuse.c with a 4096-entry map.
use offheap_e2e::*;

#[test]
fn freed_entries_never_crowd_out_live_ones() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let bin = build_fixture("reuse", dir.path());
    let out = dir.path().join("r.json");
    let (_, sites) = run_malloc_fixture(&bin, &out, "json", &[("OFFHEAP_MAX_ALLOCS", "4096")]);
    let sizes = symbol_sizes(&bin);
    let report = read_report(&out);
    assert_eq!(
        report["counters"]["allocs_map_full"], 0,
        "{}",
        report["counters"]
    );

    let at = |site: &str| site_totals(&report, sites[site], sizes[site]);
    assert_eq!(
        at("site_churn"),
        Totals {
            live_bytes: 0,
            live_allocs: 0,
            total_bytes: 48 * 3000,
            total_allocs: 3000,
        }
    );
    assert_eq!(
        at("site_keep"),
        Totals {
            live_bytes: 200 * 3000,
            live_allocs: 3000,
            total_bytes: 200 * 3000,
            total_allocs: 3000,
        }
    );
}
