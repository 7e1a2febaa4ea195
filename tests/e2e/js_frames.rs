//! JS function names with no node flags (issue 14), through the real
//! offheap on node 18, 20 and 22, in both modes: tests/fixtures/js_tiers.js
//! leaks Buffers, deflate streams and addon blocks (tests/fixtures/
//! leaky_addon.c) from functions run by Ignition, Sparkplug and TurboFan.
//! Every leak is named by the fixture's function, with V8's tier, and each
//! JS function on the leak stacks holds exactly the bytes that the same run
//! with `--perf-basic-prof --interpreted-frames-native-stack` gives it when
//! the perf map alone names the frames (`OFFHEAP_V8_FRAMES=off`).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use offheap_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);
const PERF_FLAGS: [&str; 2] = ["--perf-basic-prof", "--interpreted-frames-native-stack"];

/// js_tiers.js's figures: 16 Buffers of 1 MiB and 16 addon blocks of
/// 256 KiB per function.
const BUFFER_BYTES: u64 = 16 << 20;
const ADDON_BYTES: u64 = 16 * (256 << 10);
/// Resident mode: each 1 MiB Buffer is its own mmap by glibc (above its mmap
/// threshold), 1 MiB and malloc's 16-byte header: 257 pages, all written;
/// each addon block 65 pages.
const BUFFER_RESIDENT: u64 = 16 * 257 * 4096;
const ADDON_RESIDENT: u64 = 16 * 65 * 4096;

/// %GetOptimizationStatus bits (V8 src/runtime/runtime.h, OptimizationStatus,
/// the same in V8 10.2, 11.3 and 12.4).
const OPTIMIZED: u64 = 1 << 4;
const TURBOFANNED: u64 = 1 << 6;
const INTERPRETED: u64 = 1 << 7;
const BASELINE: u64 = 1 << 15;

/// The fixture's functions: (name, tier marker in the report, status bits).
const FUNCTIONS: [(&str, &str, u64); 9] = [
    ("bufferInterpreted", "~", INTERPRETED),
    ("bufferBaseline", "^", BASELINE),
    ("bufferOptimized", "*", OPTIMIZED | TURBOFANNED),
    ("deflateInterpreted", "~", INTERPRETED),
    ("deflateBaseline", "^", BASELINE),
    ("deflateOptimized", "*", OPTIMIZED | TURBOFANNED),
    ("addonInterpreted", "~", INTERPRETED),
    ("addonBaseline", "^", BASELINE),
    ("addonOptimized", "*", OPTIMIZED | TURBOFANNED),
];

/// node 18 and 22 from `cargo xtask setup` (target/node-versions, or
/// $OFFHEAP_NODE_VERSIONS) and the system's node 20; a missing one fails.
fn node_versions() -> Vec<(u32, PathBuf)> {
    let dir = std::env::var_os("OFFHEAP_NODE_VERSIONS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/node-versions"));
    let out = vec![
        (18, dir.join("18/bin/node")),
        (20, PathBuf::from("/usr/bin/node")),
        (22, dir.join("22/bin/node")),
    ];
    for (major, bin) in &out {
        let v = Command::new(bin)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}: run `cargo xtask setup`", bin.display()));
        let v = String::from_utf8_lossy(&v.stdout).trim().to_string();
        assert!(
            v.starts_with(&format!("v{major}.")),
            "{} is {v}, expected node {major} (cargo xtask setup)",
            bin.display()
        );
    }
    out
}

struct Run {
    pid: u32,
    report: Value,
    /// offheap's stderr.
    stderr: Vec<String>,
    /// The fixture's "tier <function> <status>" lines.
    status: BTreeMap<String, u64>,
}

/// `record --pid` around the fixture's leaks; `perf`: node runs with the
/// perf map flags and offheap decodes no JS frame (the perf map names them).
fn traced(node: &Path, mode: &str, perf: bool, dir: &Path, addon: &Path) -> Run {
    let script = workspace().join("tests/fixtures/js_tiers.js");
    let flags: &[&str] = if perf { &PERF_FLAGS } else { &[] };
    let (mut child, lines, _) = start_fixture(
        Command::new(node)
            .args(flags)
            .arg(&script)
            .arg(addon)
            // A fixed mmap threshold (glibc's malloc(3) M_MMAP_THRESHOLD,
            // which also ends its dynamic raising): every Buffer and addon
            // block is its own mmap in resident mode, charged exactly to its
            // stack, however the process's earlier frees went.
            .env("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
            .current_dir(dir),
        T,
    );
    let out = dir.join(format!("{mode}-{perf}.json"));
    let mut tracer = Command::new(offheap_bin());
    tracer
        .args(["record", "--pid", &child.id().to_string(), "--mode", mode])
        .args(["--format", "json", "--output"])
        .arg(&out)
        // Every first-touch page's stack: the two runs compare page for page.
        .env("OFFHEAP_FAULT_SAMPLE", "1");
    if perf {
        tracer.env("OFFHEAP_V8_FRAMES", "off");
    }
    let (mut tracer, attached, err) = spawn_attached(&mut tracer, T);
    let mut stdin = child.stdin.take().unwrap();
    poke(&mut stdin);
    let seen = lines.until("done", T);
    signal(&tracer, libc::SIGINT);
    let status = tracer.wait().unwrap();
    let mut rest = err.rest();
    rest.push(attached);
    poke(&mut stdin);
    let _ = child.wait();
    let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", child.id()));
    assert_eq!(status.code(), Some(0), "{rest:?}");
    let status = seen
        .iter()
        .filter_map(|l| {
            let mut f = l.strip_prefix("tier ")?.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.parse().ok()?))
        })
        .collect();
    Run {
        pid: child.id(),
        report: read_report(&out),
        stderr: rest,
        status,
    }
}

fn symbols(stack: &Value) -> impl Iterator<Item = &str> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["symbol"].as_str().unwrap_or(""))
}

/// Which leak a stack holds, told by its native frames alone.
fn leak_kind(stack: &Value) -> Option<&'static str> {
    if symbols(stack).any(|s| s == "addon_leak_block") {
        Some("addon")
    } else if symbols(stack).any(|s| s.starts_with("deflateInit2_")) {
        Some("zlib")
    } else if stack["bucket"] == "array_buffers"
        && symbols(stack).any(|s| s.contains("NodeArrayBufferAllocator"))
    {
        Some("buffer")
    } else {
        None
    }
}

/// A JS frame's symbol as both sources agree on it: `name file:line`. The
/// perf map's prefix (`JS:` on 20 and 22, `LazyCompile:`/`Function:` on 18)
/// and tier marker go (it marks code a never-optimized function shares with
/// none), and the column (node 18 writes none).
fn js_key(symbol: &str) -> String {
    let rest = symbol.split_once(':').map_or(symbol, |(_, r)| r);
    let rest = rest.trim_start_matches(['~', '^', '*', '+']);
    match rest.rsplit_once(':') {
        Some((head, col))
            if col.bytes().all(|b| b.is_ascii_digit())
                && head.rsplit_once(':').is_some_and(|(_, l)| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit())
                }) =>
        {
            head.to_string()
        }
        _ => rest.to_string(),
    }
}

/// (leak kind, attribution, JS function) -> live bytes of the leak stacks
/// it is on (once per stack), and per (kind, attribution) the live bytes of
/// stacks that hold `Builtins_InterpreterEntryTrampoline` (an interpreted
/// frame the perf map cannot name: node's own functions from its snapshot
/// get no trampoline copy of their own from --interpreted-frames-native-stack).
type ByFunction = BTreeMap<(String, String, String), u64>;

fn by_function(report: &Value) -> (ByFunction, BTreeMap<(String, String), u64>) {
    let mut out = ByFunction::new();
    let mut unnamed = BTreeMap::new();
    for s in report["processes"][0]["stacks"].as_array().unwrap() {
        let Some(kind) = leak_kind(s) else { continue };
        // zlib's state is one kind whichever way its pages were charged.
        let attribution = match kind {
            "zlib" => String::new(),
            _ => s["attribution"].as_str().unwrap_or("").to_string(),
        };
        let live = s["live_bytes"].as_u64().unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for f in s["frames"].as_array().unwrap() {
            if f["kind"] == "js" {
                seen.insert(js_key(f["symbol"].as_str().unwrap()));
            }
        }
        for k in seen {
            *out.entry((kind.to_string(), attribution.clone(), k))
                .or_default() += live;
        }
        if symbols(s).any(|x| x == "Builtins_InterpreterEntryTrampoline") {
            *unnamed.entry((kind.to_string(), attribution)).or_default() += live;
        }
    }
    (out, unnamed)
}

/// Prints the leak stacks of `kind`, for a failure's diagnosis.
fn dump_leak_stacks(report: &Value, kind: &str) {
    for s in report["processes"][0]["stacks"].as_array().unwrap() {
        if leak_kind(s) == Some(kind) {
            eprintln!(
                "{kind} stack: {} bytes, {}, truncated {}:",
                s["live_bytes"], s["attribution"], s["truncated"]
            );
            for f in s["frames"].as_array().unwrap() {
                eprintln!("    {} {} {}", f["addr"], f["kind"], f["symbol"]);
            }
        }
    }
}

/// Keeps a failing run's report (the test's directory goes) and says where.
fn keep_report(report: &Value, what: &str) {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("js_frames-{what}-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec_pretty(report).unwrap()).unwrap();
    eprintln!(
        "report kept: {}; counters: {}",
        path.display(),
        report["counters"]
    );
}

/// The line of `function <name>(` in the fixture (1-based).
fn fixture_line(name: &str) -> u32 {
    let text = std::fs::read_to_string(workspace().join("tests/fixtures/js_tiers.js")).unwrap();
    let want = format!("function {name}(");
    1 + text
        .lines()
        .position(|l| l.contains(&want))
        .unwrap_or_else(|| panic!("no {want} in js_tiers.js")) as u32
}

/// The fixture's own frames in the decoded run: each function in its tier,
/// named as V8 names it, at its line of the script.
fn check_tiers(major: u32, mode: &str, run: &Run) -> BTreeMap<String, u64> {
    let script = workspace().join("tests/fixtures/js_tiers.js");
    let script = script.to_str().unwrap();
    let mut bytes = BTreeMap::new();
    for (name, marker, bits) in FUNCTIONS {
        let st = run.status[name];
        assert_eq!(st & bits, bits, "node {major}: {name} status {st:#x}");
        let line = fixture_line(name);
        let head = format!("JS:{marker}{name} {script}:{line}:");
        let mut total = 0;
        for s in run.report["processes"][0]["stacks"].as_array().unwrap() {
            if leak_kind(s).is_none() {
                continue;
            }
            let on = s["frames"].as_array().unwrap().iter().any(|f| {
                f["kind"] == "js"
                    && f["symbol"].as_str().unwrap().starts_with(&head)
                    && f["file"] == script
                    && f["line"] == line
            });
            if on {
                total += s["live_bytes"].as_u64().unwrap();
            }
        }
        eprintln!("node {major} {mode}: {head}… {total} bytes (status {st})");
        bytes.insert(name.to_string(), total);
    }
    bytes
}

fn compare(major: u32, mode: &str) {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let addon = build_leaky_addon(dir.path());
    let node = node_versions()
        .into_iter()
        .find(|(m, _)| *m == major)
        .unwrap()
        .1;
    let plain = traced(&node, mode, false, dir.path(), &addon);
    let perf = traced(&node, mode, true, dir.path(), &addon);
    let tiers = check_tiers(major, mode, &plain);

    // The exact figures of the fixture.
    let malloc = mode == "malloc";
    let per = |name: &str| tiers[name];
    for kind in ["buffer", "addon"] {
        for tier in ["Interpreted", "Baseline", "Optimized"] {
            let name = format!("{kind}{tier}");
            let want = match (kind, malloc) {
                ("buffer", true) => Some(BUFFER_BYTES),
                ("buffer", false) => Some(BUFFER_RESIDENT),
                ("addon", true) => Some(ADDON_BYTES),
                _ => Some(ADDON_RESIDENT),
            };
            if let Some(w) = want {
                if per(&name) != w {
                    dump_leak_stacks(&plain.report, kind);
                    keep_report(&plain.report, &format!("node{major}-{mode}"));
                }
                assert_eq!(per(&name), w, "node {major} {mode}: {name}");
            }
        }
    }
    if malloc {
        // 4 streams each: the same deflate state whichever tier made them.
        let z = per("deflateInterpreted");
        assert!(
            z > 0,
            "node {major}: no zlib bytes under deflateInterpreted"
        );
        assert_eq!(per("deflateBaseline"), z, "node {major}");
        assert_eq!(per("deflateOptimized"), z, "node {major}");
    }

    // Same bytes per JS function as the perf map gives. The perf map cannot
    // name every interpreted frame: node's own functions, deserialized from
    // its startup snapshot, run in the shared InterpreterEntryTrampoline
    // (--interpreted-frames-native-stack copies it only for functions
    // compiled later), where the decoder names them. So a function of node
    // may hold more bytes decoded, never more than the perf run's stacks
    // through that trampoline; the fixture's own functions hold the same.
    let (ours, _) = by_function(&plain.report);
    let (theirs, unnamed) = by_function(&perf.report);
    let mut failures = Vec::new();
    // Resident mode: which pages of zlib's state and output Buffers are
    // resident, and whether charged as mapping or first-touch pages, varies
    // from run to run (their blocks straddle the mmap threshold, and pages
    // of the shared arena go to their first toucher, which the perf-map run
    // changes: V8 writes the map through stdio). There the Buffer and addon
    // functions of the fixture (their own mmaps) are compared exactly, and
    // the deflate functions by name on zlib's stacks, whatever the attribution.
    let exact = |k: &(String, String, String)| {
        malloc
            || (k.1 == "mapping"
                && FUNCTIONS.iter().any(|(f, _, _)| {
                    !f.starts_with("deflate") && k.2.starts_with(&format!("{f} "))
                }))
    };
    let mut named: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let keys: std::collections::BTreeSet<_> = theirs.keys().chain(ours.keys()).collect();
    for k in keys {
        let a = ours.get(k).copied().unwrap_or(0);
        let b = theirs.get(k).copied().unwrap_or(0);
        let shared = unnamed
            .get(&(k.0.clone(), k.1.clone()))
            .copied()
            .unwrap_or(0);
        let extra = if k.2.contains("js_tiers.js") {
            0
        } else {
            shared
        };
        if !exact(k) {
            let e = named.entry((k.0.clone(), k.2.clone())).or_default();
            e.0 += a;
            e.1 += b;
            continue;
        }
        if a < b || a > b + extra {
            failures.push(format!(
                "{k:?}: {a} decoded, {b} from the perf map ({shared} behind the trampoline there)"
            ));
        } else if a != b {
            eprintln!("node {major} {mode}: {k:?}: {a} decoded, {b} from the perf map");
        }
    }
    // (The few pages of zlib's output Buffers, under the deflate functions
    // in the Buffer kind, are not compared: a page or two, or none.)
    for (k, (a, b)) in named {
        if k.0 == "zlib" && k.1.contains("js_tiers.js") && (a == 0) != (b == 0) {
            failures.push(format!("{k:?}: {a} decoded, {b} from the perf map"));
        }
    }
    let fixture_keys = theirs
        .keys()
        .filter(|k| k.2.contains("js_tiers.js"))
        .count();
    eprintln!(
        "node {major} {mode}: {} JS functions on the leak stacks, {fixture_keys} of the fixture's, \
         compared with the perf map's names",
        theirs.len()
    );
    assert!(
        failures.is_empty(),
        "node {major} {mode}:\n{}",
        failures.join("\n")
    );
    assert_eq!(plain.report["dropped_events"], 0);
    assert_eq!(perf.report["dropped_events"], 0);
}

#[test]
fn node18_malloc() {
    compare(18, "malloc");
}

#[test]
fn node18_resident() {
    compare(18, "resident");
}

#[test]
fn node20_malloc() {
    compare(20, "malloc");
}

#[test]
fn node20_resident() {
    compare(20, "resident");
}

#[test]
fn node22_malloc() {
    compare(22, "malloc");
}

#[test]
fn node22_resident() {
    compare(22, "resident");
}

/// A node whose V8 offheap cannot walk: its JS frames are unnamed, offheap
/// says so in one line, once for the process, on stderr and in the report,
/// and everything else is traced as always (the addon's blocks, exactly).
fn unwalkable_node(mode: &str, make: &[&str], why: &str) {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let addon = build_leaky_addon(dir.path());
    // Named `node`, as a node binary is recognized (proc/maps.rs is_node).
    let bin = dir.path().join("node");
    let mut cmd = Command::new(make[0]);
    cmd.args(&make[1..]);
    match make[0] {
        "strip" => cmd.arg("-o").arg(&bin).arg("/usr/bin/node"),
        _ => cmd.arg("/usr/bin/node").arg(&bin),
    };
    let st = cmd.status().unwrap();
    assert!(st.success(), "{make:?}");
    let run = traced(&bin, mode, false, dir.path(), &addon);
    let msg = format!(
        "pid {}: {}: {why}: its JS frames will be unnamed ([JIT]); to name them, run node with \
         --perf-basic-prof --interpreted-frames-native-stack (NODE_OPTIONS)",
        run.pid,
        bin.display()
    );
    let warned: Vec<&String> = run
        .stderr
        .iter()
        .filter(|l| l.contains("JS frames will be unnamed"))
        .collect();
    assert_eq!(
        warned,
        [&format!("offheap: warning: {msg}")],
        "{:?}",
        run.stderr
    );
    let warnings = run.report["warnings"].as_array().unwrap();
    assert_eq!(
        warnings.iter().filter(|w| w.as_str() == Some(&msg)).count(),
        1,
        "{warnings:?}"
    );
    let stacks = run.report["processes"][0]["stacks"].as_array().unwrap();
    let js = stacks
        .iter()
        .flat_map(|s| s["frames"].as_array().unwrap())
        .filter(|f| f["kind"] == "js")
        .count();
    assert_eq!(js, 0, "JS frames named without metadata or perf map");
    let addon_bytes: u64 = stacks
        .iter()
        .filter(|s| leak_kind(s) == Some("addon"))
        .map(|s| s["live_bytes"].as_u64().unwrap())
        .sum();
    let each = if mode == "malloc" {
        ADDON_BYTES
    } else {
        ADDON_RESIDENT
    };
    assert_eq!(addon_bytes, 3 * each, "the addon's blocks");
    // The fixture ran its tiers all the same.
    assert_eq!(run.status.len(), FUNCTIONS.len(), "{:?}", run.status);
}

/// `strip`: no .symtab, so no v8dbg_* metadata where offheap reads it.
#[test]
fn stripped_node_warns_once_and_traces() {
    unwalkable_node(
        "malloc",
        &["strip"],
        "no V8 postmortem metadata (no v8dbg_* symbols in .symtab: a stripped node)",
    );
}

/// One constant the frame decoder needs removed: a layout offheap does not
/// know (as a V8 that renamed it would be).
#[test]
fn node_with_an_unknown_layout_warns_once_and_traces() {
    let version = Command::new("/usr/bin/node")
        .args(["-p", "process.versions.v8"])
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    // node's "11.3.244.8-node.33" is V8 11.3.244.8.
    let v8 = version.split('-').next().unwrap();
    unwalkable_node(
        "resident",
        &["objcopy", "--strip-symbol=v8dbg_off_fp_function"],
        &format!("V8 {v8} lacks metadata off_fp_function"),
    );
}
