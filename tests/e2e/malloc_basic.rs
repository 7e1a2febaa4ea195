//! Malloc mode on the basic.c fixture: every traced function, exact bytes per
//! allocation site, through `record --pid` and `run --`.
use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use offheap_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

fn check_sites(report: &Value, sites: &HashMap<String, u64>, bin: &Path) {
    let sizes = symbol_sizes(bin);
    assert_site_totals(report, sites, &sizes, BASIC_SITES);

    // The walk goes on past the site: frame 1 of site_malloc is in run_sites.
    let stacks = report["processes"][0]["stacks"].as_array().unwrap();
    let in_site = |f: &Value, s: &str| {
        let a = hex(&f["addr"]);
        a >= sites[s] && a <= sites[s] + sizes[s]
    };
    let s = stacks
        .iter()
        .find(|s| in_site(&s["frames"][0], "site_malloc"))
        .unwrap();
    assert!(in_site(&s["frames"][1], "run_sites"), "{s}");
    assert_eq!(report["mode"], "malloc");
    assert_eq!(report["dropped_events"], 0, "{}", report["counters"]);
    // Stacks are sorted by live bytes, descending.
    let live: Vec<u64> = stacks
        .iter()
        .map(|s| s["live_bytes"].as_u64().unwrap())
        .collect();
    assert!(live.windows(2).all(|w| w[0] >= w[1]));
}

/// Builds tests/fixtures/preload.c into a shared object that interposes
/// the whole malloc family, as a preloaded jemalloc would.
fn build_preload(dir: &Path) -> std::path::PathBuf {
    let src = workspace().join("tests/fixtures/preload.c");
    let out = dir.join("libpreload.so");
    let o = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror"])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

#[test]
fn record_pid_counts_every_site_exactly() {
    record_basic(None, false);
}

/// Every stack collides: a one-bucket stack_traces map sends the mmap and
/// brk sites' stacks (bpf_get_stackid -EEXIST) to hashed_stacks, and zero
/// home-slot bits start every stack there in the same slot, so each must
/// probe past the others to a slot of its own. The figures and the frames
/// must be just as exact, and nothing may be counted as dropped.
#[test]
fn colliding_stacks_keep_their_frames() {
    record_basic(None, true);
}

/// With a preloaded allocator, its functions are the ones to probe: probing
/// libc instead would attribute every block to the preload's wrappers, and
/// no site would match.
#[test]
fn record_pid_probes_a_preloaded_allocator() {
    let dir = tempfile::tempdir().unwrap();
    let preload = build_preload(dir.path());
    record_basic(Some(&preload), false);
}

#[test]
fn run_probes_a_preloaded_allocator() {
    let dir = tempfile::tempdir().unwrap();
    let preload = build_preload(dir.path());
    run_basic(Some(&preload));
}

fn record_basic(preload: Option<&Path>, collide: bool) {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let bin = build_fixture("basic", dir.path());
    let mut fixture = Command::new(&bin);
    if let Some(p) = preload {
        fixture.env("LD_PRELOAD", p);
    }
    let mut fixture = fixture
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::new(fixture.stdout.take().unwrap());
    let sites = parse_sites(&lines.until("ready", T));
    let pid = fixture.id();
    let out = dir.path().join("r.json");

    let mut tracer = Command::new(offheap_bin());
    if collide {
        tracer.env("OFFHEAP_MAX_STACK_TRACES", "1");
        tracer.env("OFFHEAP_STACK_HASH_BITS", "0");
    }
    let mut tracer = tracer
        .args(["record", "--pid", &pid.to_string(), "--mode", "malloc"])
        .args(["--format", "json", "--output", out.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = Stderr::new(tracer.stderr.take().unwrap());
    let line = err.wait_attached(T);
    assert_eq!(
        line,
        format!("offheap: attached to PID {pid} (basic), mode malloc")
    );

    let mut stdin = fixture.stdin.take().unwrap();
    poke(&mut stdin);
    lines.until("done", T);
    signal(&tracer, libc::SIGINT);
    let status = tracer.wait().unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {:?}", err.rest());

    let report = read_report(&out);
    let p = &report["processes"][0];
    assert_eq!(p["pid"], pid);
    assert_eq!(p["comm"], "basic");
    assert_eq!(p["exited"], false);
    assert!(p["rss_bytes"].as_u64().unwrap() > 0);
    check_sites(&report, &sites, &bin);

    poke(&mut stdin);
    assert!(fixture.wait().unwrap().success());
}

#[test]
fn run_counts_every_site_exactly_and_ends_with_the_command() {
    run_basic(None);
}

fn run_basic(preload: Option<&Path>) {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let bin = build_fixture("basic", dir.path());
    let out = dir.path().join("r.json");
    let mut tracer = Command::new(offheap_bin());
    if let Some(p) = preload {
        // offheap passes its environment to the command, and reads
        // LD_PRELOAD to know which allocator the command will use.
        tracer.env("LD_PRELOAD", p);
    }
    let mut tracer = tracer
        .args(["run", "--mode", "malloc", "--format", "json"])
        .args(["--output", out.to_str().unwrap(), "--"])
        .arg(&bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = Stderr::new(tracer.stderr.take().unwrap());
    let line = err.wait_attached(T);
    assert!(line.ends_with("(basic), mode malloc"), "{line}");
    // The command's stdio is offheap's: its stdout comes through here.
    let lines = Lines::new(tracer.stdout.take().unwrap());
    let sites = parse_sites(&lines.until("ready", T));
    let mut stdin = tracer.stdin.take().unwrap();
    poke(&mut stdin);
    lines.until("done", T);
    poke(&mut stdin); // the command exits, and with it the trace
    let status = tracer.wait().unwrap();
    let stderr = err.rest();
    assert_eq!(status.code(), Some(0), "stderr: {stderr:?}");
    assert!(
        stderr
            .iter()
            .any(|l| l == "offheap: the command exited with status 0"),
        "{stderr:?}"
    );

    let report = read_report(&out);
    assert_eq!(report["processes"][0]["exited"], true);
    assert_eq!(report["processes"][0]["comm"], "basic");
    check_sites(&report, &sites, &bin);
}

#[test]
fn target_exiting_mid_trace_still_writes_the_report() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let bin = build_fixture("basic", dir.path());
    let mut fixture = Command::new(&bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::new(fixture.stdout.take().unwrap());
    let sites = parse_sites(&lines.until("ready", T));
    let pid = fixture.id();
    let out = dir.path().join("r.json");
    let mut tracer = Command::new(offheap_bin())
        .args(["record", "--pid", &pid.to_string(), "--mode", "malloc"])
        .args(["--format", "json", "--output", out.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = Stderr::new(tracer.stderr.take().unwrap());
    err.wait_attached(T);
    let mut stdin = fixture.stdin.take().unwrap();
    poke(&mut stdin);
    lines.until("done", T);
    poke(&mut stdin);
    assert!(fixture.wait().unwrap().success());
    // No signal, no duration: offheap stops because the target is gone.
    let status = tracer.wait().unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {:?}", err.rest());

    let report = read_report(&out);
    let p = &report["processes"][0];
    assert_eq!(p["exited"], true);
    assert_eq!(p["comm"], "basic");
    assert_eq!(p["exe"], bin.to_str().unwrap());
    check_sites(&report, &sites, &bin);
}
