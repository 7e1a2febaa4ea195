//! Fork-follow: `run` traces the processes its command forks, and
//! `record --pid P --children` those P forks once attached, each its own
//! `processes[]` entry with its own exact bytes in malloc mode (node's
//! `cluster` and PM2 fork workers this way). The children allocate once
//! offheap holds their uprobes (fork_sites.c says why): what a child
//! allocates between its fork and that moment is not seen yet.
use std::{collections::HashMap, path::Path, process::Command, time::Duration};

use offheap_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

/// What each process allocates from the fixture's sites (fork_sites.c):
/// (function, live_bytes, live_allocs, total_bytes, total_allocs), and
/// nothing from the other processes' sites.
const PARENT: &[SiteFigures] = &[
    ("site_parent", 777, 1, 777, 1),
    ("site_child_a", 0, 0, 0, 0),
    ("site_child_b", 0, 0, 0, 0),
];
const CHILD_A: &[SiteFigures] = &[
    ("site_parent", 0, 0, 0, 0),
    ("site_child_a", 3333, 3, 3333, 3),
    ("site_child_b", 0, 0, 0, 0),
];
const CHILD_B: &[SiteFigures] = &[
    ("site_parent", 0, 0, 0, 0),
    ("site_child_a", 0, 0, 0, 0),
    ("site_child_b", 11110, 5, 12109, 6),
];

/// The children's PIDs from their "child <a|b> <pid>" lines.
fn child_pids(lines: &Lines) -> HashMap<String, u32> {
    (0..2)
        .map(|_| {
            let l = lines.starting_with("child ", T);
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].to_string(), f[2].parse().unwrap())
        })
        .collect()
}

/// Lets each child allocate (SIGUSR1) once offheap (`tracer`) holds its
/// uprobes; without `follow`, once 2 s passed without them.
fn release(tracer: u32, kids: &HashMap<String, u32>, follow: bool) {
    let deadline = std::time::Instant::now() + if follow { T } else { Duration::from_secs(2) };
    loop {
        let held = uprobe_pids_held_by(tracer);
        let followed = kids.values().filter(|k| held.contains(k)).count();
        if follow && followed == kids.len() {
            break;
        }
        assert!(
            follow || followed == 0,
            "children followed without --children"
        );
        if std::time::Instant::now() > deadline {
            assert!(!follow, "offheap never attached to the children: {held:?}");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for &k in kids.values() {
        // SAFETY: kill(2) of the fixture's child.
        assert_eq!(unsafe { libc::kill(k as i32, libc::SIGUSR1) }, 0);
    }
}

fn process(report: &Value, pid: u32) -> &Value {
    report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("no process {pid} in the report"))
}

fn pids(report: &Value) -> Vec<u64> {
    let mut v: Vec<u64> = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    v.sort_unstable();
    v
}

/// Parent and both children, each with its figures and its own comm.
fn check(
    report: &Value,
    bin: &Path,
    parent: u32,
    kids: &HashMap<String, u32>,
    sites: &HashMap<String, u64>,
) {
    let sizes = symbol_sizes(bin);
    let mut want = vec![parent as u64, kids["a"] as u64, kids["b"] as u64];
    want.sort_unstable();
    assert_eq!(pids(report), want);
    assert_process_sites(process(report, parent), sites, &sizes, PARENT);
    assert_process_sites(process(report, kids["a"]), sites, &sizes, CHILD_A);
    assert_process_sites(process(report, kids["b"]), sites, &sizes, CHILD_B);
    for pid in [parent, kids["a"], kids["b"]] {
        assert_eq!(process(report, pid)["comm"], "fork_sites");
    }
}

#[test]
fn run_follows_forked_children_with_exact_bytes() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let bin = build_fixture("fork_sites", dir.path());
    let out = dir.path().join("r.json");
    let mut cmd = Command::new(offheap_bin());
    cmd.args(["run", "--mode", "malloc", "--no-live", "--format", "json"])
        .args(["--output", out.to_str().unwrap(), "--"])
        .arg(&bin);
    let (mut tracer, _, err) = spawn_attached(&mut cmd, T);
    let lines = Lines::new(tracer.stdout.take().unwrap());
    let sites = parse_sites(&lines.until("ready", T));
    let mut stdin = tracer.stdin.take().unwrap();
    poke(&mut stdin);
    let kids = child_pids(&lines);
    release(tracer.id(), &kids, true);
    lines.until("done", T);
    poke(&mut stdin); // the parent kills its children and exits
    let status = tracer.wait().unwrap();
    let stderr = err.rest();
    assert_eq!(status.code(), Some(0), "{stderr:?}");
    let report = read_report(&out);
    let parent = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap() as u32)
        .find(|p| !kids.values().any(|k| k == p))
        .unwrap();
    check(&report, &bin, parent, &kids, &sites);
}

/// `record --pid` of the fixture (with `--children` or not), stopped by
/// SIGINT once the three have allocated, all still alive.
fn record_fork_sites(children: bool) -> RecordRun {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_fixture("fork_sites", dir.path());
    let (mut fixture, lines, before) = start_fixture(&mut Command::new(&bin), T);
    let sites = parse_sites(&before);
    let parent = fixture.id();
    let out = dir.path().join("r.json");
    let mut cmd = Command::new(offheap_bin());
    cmd.args(["record", "--pid", &parent.to_string()])
        .args(children.then_some("--children"))
        .args(["--mode", "malloc", "--format", "json"])
        .args(["--output", out.to_str().unwrap()]);
    let (mut tracer, _, err) = spawn_attached(&mut cmd, T);
    let mut stdin = fixture.stdin.take().unwrap();
    poke(&mut stdin);
    let kids = child_pids(&lines);
    release(tracer.id(), &kids, children);
    lines.until("done", T);
    stop_record(&mut tracer, err);
    drop(stdin);
    let _ = fixture.wait();
    RecordRun {
        report: read_report(&out),
        bin,
        parent,
        kids,
        sites,
        _dir: dir,
    }
}

/// What `record_fork_sites` saw.
struct RecordRun {
    report: Value,
    bin: std::path::PathBuf,
    parent: u32,
    kids: HashMap<String, u32>,
    sites: HashMap<String, u64>,
    _dir: tempfile::TempDir,
}

#[test]
fn record_children_follows_what_the_target_forks() {
    let _lock = require_bpf();
    let r = record_fork_sites(true);
    check(&r.report, &r.bin, r.parent, &r.kids, &r.sites);
    // Stopped while all three live: none is exited.
    for pid in [r.parent, r.kids["a"], r.kids["b"]] {
        assert_eq!(process(&r.report, pid)["exited"], false, "{pid}");
    }
}

/// Without --children, `record --pid` stays on its target: the children's
/// bytes are in no entry.
#[test]
fn record_without_children_reports_the_target_alone() {
    let _lock = require_bpf();
    let r = record_fork_sites(false);
    assert_eq!(pids(&r.report), [r.parent as u64]);
    let sizes = symbol_sizes(&r.bin);
    assert_process_sites(process(&r.report, r.parent), &r.sites, &sizes, PARENT);
}

/// Node's `cluster` (issue 16): `run` follows both workers node forks and
/// execs, each its own process in the report with its Buffers exact, under
/// its own JS function (cluster_leak.js: 3 and 5 Buffers of 100003 bytes).
#[test]
fn run_follows_node_cluster_workers_with_exact_bytes() {
    const SIZE: u64 = 100_003;
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let fixture = workspace().join("tests/fixtures/cluster_leak.js");
    let mut cmd = Command::new(offheap_bin());
    cmd.args(["run", "--mode", "malloc", "--no-live", "--format", "json"])
        .args(["--output", out.to_str().unwrap(), "--"])
        .args(["/usr/bin/node", "--perf-basic-prof"])
        .arg(&fixture);
    let (mut tracer, _, err) = spawn_attached(&mut cmd, T);
    let lines = Lines::new(tracer.stdout.take().unwrap());
    let workers: HashMap<String, u32> = (0..2)
        .map(|_| {
            let l = lines.starting_with("worker ", T);
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].to_string(), f[2].parse().unwrap())
        })
        .collect();
    lines.until("ready", T);
    // Both workers' uprobes held before they allocate.
    let deadline = std::time::Instant::now() + T;
    while !workers
        .values()
        .all(|w| uprobe_pids_held_by(tracer.id()).contains(w))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "offheap never attached to the workers"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Lines: the primary reads its stdin with readline.
    let mut stdin = tracer.stdin.take().unwrap();
    let mut line = || {
        use std::io::Write;
        stdin.write_all(b"x\n").unwrap();
        stdin.flush().unwrap();
    };
    line();
    lines.until("done", T);
    // A tick (1 s) reads the workers' JS frames while they live: a worker
    // ended before that would keep unnamed ones.
    std::thread::sleep(Duration::from_millis(2500));
    line();
    let status = tracer.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{:?}", err.rest());
    let report = read_report(&out);
    // node --perf-basic-prof leaves its perf map behind.
    for p in report["processes"].as_array().unwrap() {
        let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", p["pid"]));
    }
    for (n, count) in [("0", 3u64), ("1", 5)] {
        let p = process(&report, workers[n]);
        let name = format!("leakWorker{n}");
        // The Buffers' own mallocs: the stacks under the worker's function
        // whose blocks are all SIZE bytes (the BackingStore objects node
        // news beside them are other stacks).
        let (mut bytes, mut allocs) = (0u64, 0u64);
        for s in p["stacks"].as_array().unwrap() {
            let under = s["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["symbol"].as_str().is_some_and(|y| y.contains(&name)));
            let live = s["live_allocs"].as_u64().unwrap();
            if under && live > 0 && s["live_bytes"].as_u64().unwrap() == live * SIZE {
                bytes += s["live_bytes"].as_u64().unwrap();
                allocs += live;
            }
        }
        assert_eq!((bytes, allocs), (count * SIZE, count), "worker {n}: {p}");
        let other = if n == "0" {
            "leakWorker1"
        } else {
            "leakWorker0"
        };
        assert!(
            !p.to_string().contains(other),
            "worker {n} has the other worker's function"
        );
    }
}
