//! Malloc mode on a C++ program (tests/fixtures/cxx_sites.cc), built against
//! libstdc++ and against libc++: every operator new and delete is an
//! allocator entry point. Each site is the frame right above operator new,
//! with the bytes it asked for, counted once (never again under the malloc,
//! aligned_alloc or posix_memalign that new calls), and a std::bad_alloc
//! thrown through a throwing new is caught as it would be without offheap.
//! Through `run --` and `record --pid`.
use std::{collections::HashMap, path::Path, process::Command, time::Duration};

use offheap_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

/// (site, live_bytes, live_allocs, total_bytes, total_allocs) as
/// cxx_sites.cc documents them, for sites that run while traced.
const EXPECTED: &[SiteFigures] = &[
    ("site_new", 3000, 3, 3000, 3),
    ("site_new_array", 3000, 2, 3000, 2),
    ("site_new_deleted", 0, 0, 3108, 4),
    ("site_new_array_deleted", 0, 0, 1110, 2),
    // The size the program asked for, not the 1024 libstdc++ passes on to
    // aligned_alloc.
    ("site_new_aligned", 1000, 1, 1000, 1),
    ("site_new_aligned_array", 3000, 1, 3000, 1),
    ("site_new_nothrow", 1200, 1, 1200, 1),
    ("site_new_nothrow_array", 1300, 1, 1300, 1),
    ("site_new_nothrow_aligned", 1400, 1, 1400, 1),
    ("site_new_nothrow_aligned_array", 1600, 1, 1600, 1),
    // new WithDtor[10]: 10 * 100 bytes and the 8-byte array cookie.
    ("site_array_cookie", 1008, 1, 2016, 2),
    ("site_every_delete", 0, 0, 24078, 12),
    ("site_nothrow_fails", 0, 0, 0, 0),
    ("site_throw_caught", 0, 0, 0, 0),
    ("site_delete_preexisting", 0, 0, 0, 0),
];

/// alloc_preexisting under `run`: traced from the start, deleted by
/// site_delete_preexisting. Under `record --pid` it predates tracing.
const PREEXISTING: SiteFigures = ("alloc_preexisting", 0, 0, 12791, 5);

fn check_sites(report: &Value, sites: &HashMap<String, u64>, bin: &Path, expected: &[SiteFigures]) {
    let sizes = symbol_sizes(bin);
    assert_site_totals(report, sites, &sizes, expected);

    // A C++ allocation counted under the malloc inside operator new would
    // show as a stack starting in libstdc++'s operator new (or delete): a
    // double count, or a new whose block was missed.
    let stacks = report["processes"][0]["stacks"].as_array().unwrap();
    for s in stacks {
        let f0 = &s["frames"][0];
        let sym = f0["symbol"].as_str().unwrap_or("");
        assert!(
            !sym.starts_with("operator new") && !sym.starts_with("operator delete"),
            "a stack starts inside {sym}: {s}"
        );
    }
    // The walk goes on past the site: frame 1 of site_new is in run_sites.
    let in_site = |f: &Value, s: &str| {
        let a = hex(&f["addr"]);
        a >= sites[s] && a <= sites[s] + sizes[s]
    };
    let s = stacks
        .iter()
        .find(|s| in_site(&s["frames"][0], "site_new"))
        .unwrap();
    assert!(in_site(&s["frames"][1], "run_sites"), "{s}");
    assert_eq!(report["mode"], "malloc");
    assert_eq!(report["dropped_events"], 0, "{}", report["counters"]);
    // The one throwing new that threw (site_throw_caught).
    assert_eq!(
        report["counters"]["operator_new_unfinished"], 1,
        "{}",
        report["counters"]
    );
}

#[test]
fn run_counts_every_libstdcxx_site_exactly_once() {
    run_sites(CxxRuntime::Libstdcxx);
}

#[test]
fn run_counts_every_libcxx_site_exactly_once() {
    run_sites(CxxRuntime::Libcxx);
}

#[test]
fn record_pid_counts_libstdcxx_sites_and_deletes_of_older_blocks_once() {
    record_sites(CxxRuntime::Libstdcxx);
}

#[test]
fn record_pid_counts_libcxx_sites_and_deletes_of_older_blocks_once() {
    record_sites(CxxRuntime::Libcxx);
}

fn run_sites(rt: CxxRuntime) {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let bin = build_cxx_fixture("cxx_sites", dir.path(), rt);
    let out = dir.path().join("r.json");
    // Ticks refresh the captured modules: one after "ready" names the
    // frames in the C++ runtime, which ld.so maps after the exec (the
    // process is gone when the report is built).
    let (mut tracer, line, err) = spawn_attached(
        Command::new(offheap_bin())
            .args(["run", "--mode", "malloc", "--no-live", "--interval", "0.2"])
            .args(["--format", "json"])
            .args(["--output", out.to_str().unwrap(), "--"])
            .arg(&bin),
        T,
    );
    assert!(line.ends_with("(cxx_sites), mode malloc"), "{line}");
    let lines = Lines::new(tracer.stdout.take().unwrap());
    let sites = parse_sites(&lines.until("ready", T));
    std::thread::sleep(Duration::from_millis(600));
    let mut stdin = tracer.stdin.take().unwrap();
    poke(&mut stdin);
    // The bad_alloc was caught: the process goes on.
    assert_eq!(lines.until("done", T), ["caught 1"]);
    poke(&mut stdin);
    let status = tracer.wait().unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {:?}", err.rest());

    let report = read_report(&out);
    assert_eq!(report["processes"][0]["comm"], "cxx_sites");
    let mut expected = EXPECTED.to_vec();
    expected.push(PREEXISTING);
    check_sites(&report, &sites, &bin, &expected);
    // The runtime was captured (check_sites' "no stack starts inside
    // operator new" needs its frames named): its own allocations name it.
    let runtime = runtime_module(rt);
    let stacks = report["processes"][0]["stacks"].as_array().unwrap();
    assert!(
        stacks.iter().any(|s| frame0_module(s).starts_with(runtime)),
        "no stack starts in {runtime}"
    );
}

/// The file-name prefix of the module defining operator new.
fn runtime_module(rt: CxxRuntime) -> &'static str {
    match rt {
        CxxRuntime::Libstdcxx => "libstdc++.so",
        CxxRuntime::Libcxx => "libc++abi.so",
    }
}

fn frame0_module(s: &Value) -> &str {
    let m = s["frames"][0]["module"].as_str().unwrap_or("");
    m.rsplit('/').next().unwrap_or(m)
}

fn record_sites(rt: CxxRuntime) {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let bin = build_cxx_fixture("cxx_sites", dir.path(), rt);
    let (mut fixture, lines, before) = start_fixture(&mut Command::new(&bin), T);
    let sites = parse_sites(&before);
    let pid = fixture.id();
    let out = dir.path().join("r.json");
    let (mut tracer, line, err) = spawn_attached(
        Command::new(offheap_bin())
            .args(["record", "--pid", &pid.to_string(), "--mode", "malloc"])
            .args(["--format", "json", "--output", out.to_str().unwrap()]),
        T,
    );
    assert_eq!(
        line,
        format!("offheap: attached to PID {pid} (cxx_sites), mode malloc")
    );
    let mut stdin = fixture.stdin.take().unwrap();
    poke(&mut stdin);
    assert_eq!(lines.until("done", T), ["caught 1"]);
    signal(&tracer, libc::SIGINT);
    let status = tracer.wait().unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {:?}", err.rest());
    poke(&mut stdin);
    assert!(fixture.wait().unwrap().success());

    let report = read_report(&out);
    let mut expected = EXPECTED.to_vec();
    expected.push((PREEXISTING.0, 0, 0, 0, 0));
    check_sites(&report, &sites, &bin, &expected);
    // site_delete_preexisting's five deletes of blocks from before tracing,
    // each seen once: its operator delete, not again by the free it calls.
    assert_eq!(
        report["counters"]["free_of_untracked"], 5,
        "{}",
        report["counters"]
    );

    // Nothing else ran while traced but the sites and the exception object
    // of site_throw_caught (__cxa_allocate_exception's malloc, freed when
    // the catch ends): every byte of the report is accounted for.
    let stacks = report["processes"][0]["stacks"].as_array().unwrap();
    let sum = |v: &[&Value], k: &str| -> u64 { v.iter().map(|s| s[k].as_u64().unwrap()).sum() };
    let sizes = symbol_sizes(&bin);
    let in_sites = |s: &Value| {
        let a = hex(&s["frames"][0]["addr"]);
        EXPECTED
            .iter()
            .any(|(n, ..)| a >= sites[*n] && a <= sites[*n] + sizes[*n])
    };
    let outside: Vec<&Value> = stacks.iter().filter(|s| !in_sites(s)).collect();
    assert_eq!(outside.len(), 1, "{outside:#?}");
    // Allocated by the runtime's __cxa_allocate_exception (named in
    // libstdc++; a local function of libc++abi's without a symbol).
    assert!(
        frame0_module(outside[0]).starts_with(runtime_module(rt)),
        "{}",
        outside[0]
    );
    if rt == CxxRuntime::Libstdcxx {
        assert_eq!(
            outside[0]["frames"][0]["symbol"],
            "__cxa_allocate_exception"
        );
    }
    assert_eq!(
        (
            outside[0]["total_allocs"].as_u64(),
            outside[0]["live_bytes"].as_u64()
        ),
        (Some(1), Some(0))
    );
    let all: Vec<&Value> = stacks.iter().collect();
    let site_total: u64 = EXPECTED.iter().map(|e| e.3).sum();
    assert_eq!(
        sum(&all, "total_bytes"),
        site_total + outside[0]["total_bytes"].as_u64().unwrap()
    );
}
