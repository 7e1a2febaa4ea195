//! glibc-internal allocations in malloc mode (tests/fixtures/libc_sites.c):
//! strdup and fopen call malloc inside glibc, which has no frame pointers, so
//! only glibc's unwind table (issue 12) leads from malloc's caller in glibc
//! back to the program. Each stack must show the fixture's site right above
//! the libc function, with the bytes glibc asked for, exactly.
use std::process::Command;

use offheap_e2e::*;
use serde_json::Value;

const T: std::time::Duration = std::time::Duration::from_secs(120);

fn symbols(s: &Value) -> Vec<&str> {
    s["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["symbol"].as_str().unwrap_or("?"))
        .collect()
}

/// The stacks through `site` (one per call site in main: gcc unrolls
/// main's loops); each must have frame 0 in libc.so.6 named `libc_fn`, the
/// site as frame 1, and go on to main, unwound to the end.
fn site_stacks<'a>(report: &'a Value, site: &str, libc_fn: &str) -> Vec<&'a Value> {
    let found: Vec<&Value> = report["processes"][0]["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| symbols(s).contains(&site))
        .collect();
    for s in &found {
        let f = s["frames"].as_array().unwrap();
        let names = symbols(s);
        assert_eq!(names[1], site, "{names:?}");
        assert_eq!(names[0], libc_fn, "{names:?}");
        assert_eq!(module_file(&f[0]), "libc.so.6", "{s}");
        assert_eq!(names[2], "main", "{names:?}");
        assert_eq!(s["truncated"], false, "{s}");
    }
    found
}

fn figures(s: &[&Value]) -> [u64; 4] {
    ["live_bytes", "live_allocs", "total_bytes", "total_allocs"]
        .map(|k| s.iter().map(|s| s[k].as_u64().unwrap()).sum())
}

#[test]
fn strdup_and_fopen_name_their_caller_with_glibcs_own_sizes() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let bin = build_fixture("libc_sites", dir.path());
    let (mut fixture, lines, _) = start_fixture(&mut Command::new(&bin), T);
    let mut stdin = fixture.stdin.take().unwrap();
    let (report, _, _) = record_steps(fixture.id(), &lines, &mut stdin, dir.path(), &[]);
    poke(&mut stdin);
    assert!(fixture.wait().unwrap().success());

    // strdup: malloc(strlen + 1) in strdup itself (string/strdup.c).
    let strdup = site_stacks(&report, "site_strdup", "strdup");
    assert_eq!(figures(&strdup), [3000, 3, 3000, 3]);
    // fopen: malloc(sizeof (struct locked_FILE)) = 472 in __fopen_internal,
    // which fopen tail-calls (so it is the libc frame right under the site).
    let fopen = site_stacks(&report, "site_fopen", "__fopen_internal");
    assert_eq!(figures(&fopen), [472, 1, 944, 2]);
    assert_eq!(report["dropped_events"], 0, "{}", report["counters"]);
}
