//! Distributions in malloc mode on the dist.c fixture: allocation sizes and
//! lifetimes per stack, counted in the kernel (size_hist / lifetime_hist)
//! and reported as quantiles in JSON and text.
use std::path::Path;

use offheap_e2e::*;
use serde_json::Value;

/// The stack whose innermost frame lies inside `site` (address from the
/// fixture, size from nm), so the test does not rely on the symbolizer.
fn stack_at<'a>(
    report: &'a Value,
    sites: &std::collections::HashMap<String, u64>,
    sizes: &std::collections::HashMap<String, u64>,
    site: &str,
) -> &'a Value {
    let (lo, len) = (sites[site], sizes[site]);
    let found: Vec<&Value> = report["processes"][0]["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            let a = hex(&s["frames"][0]["addr"]);
            a > lo && a < lo + len
        })
        .collect();
    assert_eq!(found.len(), 1, "stacks of {site}: {found:?}");
    found[0]
}

fn q(v: &Value) -> (u64, u64, u64, u64, u64) {
    let g = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    (g("count"), g("p50"), g("p90"), g("p99"), g("max"))
}

fn run_dist(
    dir: &Path,
    format: &str,
) -> (std::process::Output, std::collections::HashMap<String, u64>) {
    let bin = build_fixture("dist", dir);
    run_malloc_fixture(&bin, &dir.join(format!("r.{format}")), format, &[])
}

#[test]
fn sizes_and_lifetimes_per_stack_are_counted_in_the_kernel() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let (_, sites) = run_dist(dir.path(), "json");
    let sizes = symbol_sizes(&dir.path().join("dist"));
    let report = read_report(&dir.path().join("r.json"));

    // 100 x 4096 + 1 x 1 MiB from one call: powers of two are exact buckets.
    let s = stack_at(&report, &sites, &sizes, "site_sizes");
    assert_eq!(q(&s["sizes"]), (101, 4096, 4096, 4096, 1 << 20));
    assert!(s["lifetimes_ns"].is_null(), "nothing was freed: {s}");

    // 10 x 64 B, each freed after sleeping 200 ms: the lifetime's bucket
    // starts at or above the bucket of 200 ms (184,549,376 ns = 11 << 24).
    let s = stack_at(&report, &sites, &sizes, "site_lifetimes");
    assert_eq!(q(&s["sizes"]), (10, 64, 64, 64, 64));
    let (n, p50, _, _, max) = q(&s["lifetimes_ns"]);
    assert_eq!(n, 10);
    assert!(p50 >= 11 << 24, "p50 {p50} ns < 200 ms's bucket");
    assert!(max < 60_000_000_000, "max {max} ns");
}

#[test]
fn text_report_shows_size_quantiles() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    run_dist(dir.path(), "text");
    let text = std::fs::read_to_string(dir.path().join("r.text")).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("sizes") && l.contains("1.0 MiB"))
        .unwrap_or_else(|| panic!("no sizes line with max 1 MiB:\n{text}"));
    assert_eq!(
        line.trim(),
        "sizes     p50 4.0 KiB · p90 4.0 KiB · p99 4.0 KiB · max 1.0 MiB (n=101)"
    );
    assert!(text.lines().any(|l| l.contains("lifetimes")), "{text}");
}
