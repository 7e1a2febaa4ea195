//! Resident mode (the default) end to end, through the `offheap` binary: a C
//! fixture with known pages per site (record --pid), and a node Buffer leak
//! (run --). Frames are matched to functions by address with `nm`, so these
//! tests do not depend on the symbolizer.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use offheap_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);
const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;

/// Function ranges [start, end) by name, from `nm -C -S` (non-PIE binaries).
fn functions(bin: &Path) -> Vec<(u64, u64, String)> {
    let o = Command::new("nm")
        .args(["-C", "-S", "--defined-only"])
        .arg(bin)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(4, ' ');
            let a = u64::from_str_radix(it.next()?, 16).ok()?;
            let s = u64::from_str_radix(it.next()?, 16).ok()?;
            matches!(it.next()?, "t" | "T" | "W" | "w")
                .then(|| (a, a + s, it.next().unwrap_or("").to_string()))
        })
        .collect()
}

fn name_at(f: &[(u64, u64, String)], a: u64) -> Option<&str> {
    f.iter()
        .find(|(s, e, _)| a >= *s && a < *e)
        .map(|(_, _, n)| n.as_str())
}

fn build_sites(dir: &Path) -> PathBuf {
    let out = dir.join("resident_sites");
    let o = Command::new("cc")
        .args([
            "-O1",
            "-g",
            "-Wall",
            "-Werror",
            "-fno-omit-frame-pointer",
            "-no-pie",
        ])
        .arg(workspace().join("tests/fixtures/resident_sites.c"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// `record --pid` on resident_sites.c, with every first-touch page's stack:
/// resident pages per site (innermost frame in a site function) and
/// attribution match what the fixture documents, within one page per site;
/// given-back pages do not count.
#[test]
fn record_counts_resident_pages_per_site() {
    record_sites(Some("1"), 1);
}

/// The same with the default sampling of first-touch stacks (1 page in 8,
/// picked by a hash of the page, each counting 8): mapping sites stay exact;
/// a first-touch site is a run of contiguous pages, which the hash samples
/// evenly, so its estimate is within two sampling steps (16 pages) of the
/// truth. Without the scaling, touch_brk would show ~8 pages, not 60.
#[test]
fn record_estimates_first_touch_pages_when_sampling_by_default() {
    record_sites(None, 16);
}

/// Runs the fixture under `record` (OFFHEAP_FAULT_SAMPLE = `sample`, or the
/// default) and checks every site; first-touch sites within
/// `first_touch_tolerance` pages.
fn record_sites(sample: Option<&str>, first_touch_tolerance: u64) {
    let _bpf = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let bin = build_sites(dir.path());
    let funcs = functions(&bin);
    let mut fixture = Command::new(&bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = dir.path().join("r.json");
    let mut tracer = Command::new(offheap_bin())
        .args([
            "record",
            "--pid",
            &fixture.id().to_string(),
            "--interval",
            "0.2",
        ])
        .args(["--format", "json", "-o"])
        .arg(&out)
        .envs(sample.map(|n| ("OFFHEAP_FAULT_SAMPLE", n)))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = Stderr::new(tracer.stderr.take().unwrap());
    let attached = err.wait_attached(T);
    assert!(attached.contains("mode resident"), "{attached}");
    poke(fixture.stdin.as_mut().unwrap());
    let mut line = String::new();
    BufReader::new(fixture.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("done"), "{line}");
    signal(&tracer, libc::SIGINT);
    let st = tracer.wait().unwrap();
    assert!(st.success(), "offheap: {st}; {:?}", err.rest());
    let _ = fixture.kill();
    let _ = fixture.wait();

    let report = read_report(&out);
    assert_eq!(report["mode"], "resident");
    let p = &report["processes"][0];
    let sites = ["map_site", "malloc_site", "touch_brk", "memset_brk"];
    let mut got: BTreeMap<(String, String), u64> = BTreeMap::new();
    for s in p["stacks"].as_array().unwrap() {
        let site = s["frames"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|f| name_at(&funcs, hex(&f["addr"])).filter(|n| sites.contains(n)));
        if let Some(site) = site {
            let a = s["attribution"].as_str().unwrap_or("none").to_string();
            *got.entry((site.to_string(), a)).or_default() +=
                s["live_bytes"].as_u64().unwrap() / PAGE;
        }
    }
    let want = [
        ("map_site", "mapping", 40),
        ("malloc_site", "mapping", 513),
        ("touch_brk", "first_touch", 60),
        ("memset_brk", "first_touch", 20),
    ];
    for (site, attr, pages) in want {
        let g = got
            .get(&(site.to_string(), attr.to_string()))
            .copied()
            .unwrap_or(0);
        let tolerance = if attr == "mapping" {
            1
        } else {
            first_touch_tolerance
        };
        assert!(
            g.abs_diff(pages) <= tolerance,
            "{site}/{attr}: {g} pages, want {pages} +- {tolerance}; all {got:?}"
        );
    }
    // Sizes of mapping stacks are the mmap lengths: map_site maps 64 pages
    // once (2^18 bytes, an exact histogram bucket).
    let map_sizes: Vec<&Value> = p["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["attribution"] == "mapping"
                && s["frames"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| name_at(&funcs, hex(&f["addr"])) == Some("map_site"))
        })
        .map(|s| &s["sizes"])
        .collect();
    assert_eq!(map_sizes.len(), 1, "{map_sizes:?}");
    for k in ["p50", "p90", "p99", "max"] {
        assert_eq!(map_sizes[0][k], 64 * PAGE, "{k}: {}", map_sizes[0]);
    }
    assert_eq!(map_sizes[0]["count"], 1);
    let rec = p["reconciliation"].as_str().unwrap();
    assert!(rec.contains(", within 5%)"), "{rec}");
    let sampled = "first-touch pages sampled 1 in 8, each counted 8 times";
    assert_eq!(rec.ends_with(sampled), sample.is_none(), "{rec}");
    assert_eq!(report["counters"]["events_lost"], 0);
}

/// `run -- node` on a Buffer leak: at least 80% of the 200 MiB retained and
/// written lands under mapping attribution on stacks through node's
/// ArrayBuffer allocator (unwound through glibc's calloc), and the series has
/// one point per interval.
#[test]
fn run_node_buffer_leak_is_attributed_to_the_array_buffer_allocator() {
    let _bpf = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let node_funcs = functions(Path::new("/usr/bin/node"));
    let mut tracer = Command::new(offheap_bin())
        .args(["run", "--interval", "0.2", "--format", "json", "-o"])
        .arg(&out)
        .args(["--", "node"])
        .arg(workspace().join("tests/fixtures/buffer_leak.js"))
        .args(["200", "3000"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = Stderr::new(tracer.stderr.take().unwrap());
    err.wait_attached(T);
    std::thread::sleep(Duration::from_millis(300));
    poke(tracer.stdin.as_mut().unwrap());
    let st = tracer.wait().unwrap();
    assert!(st.success(), "offheap: {st}; {:?}", err.rest());
    let report = read_report(&out);
    let p = &report["processes"][0];
    let through_allocator = |s: &&Value| {
        s["frames"].as_array().unwrap().iter().any(|f| {
            name_at(&node_funcs, hex(&f["addr"]))
                .is_some_and(|n| n.starts_with("node::NodeArrayBufferAllocator::Allocate"))
        })
    };
    let stacks = p["stacks"].as_array().unwrap();
    let leak: u64 = stacks
        .iter()
        .filter(|s| s["attribution"] == "mapping")
        .filter(through_allocator)
        .map(|s| s["live_bytes"].as_u64().unwrap())
        .sum();
    assert!(
        leak * 10 >= 200 * MIB * 8,
        "{} MiB of 200 MiB through NodeArrayBufferAllocator::Allocate",
        leak / MIB
    );
    // Symbolized reports put those stacks in array_buffers.
    for s in stacks.iter().filter(through_allocator) {
        if s["frames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["symbol"].is_string())
        {
            assert_eq!(s["bucket"], "array_buffers", "{s}");
        }
    }
    assert!(
        p["series"].as_array().unwrap().len() >= 3,
        "{}",
        p["series"]
    );
    let rec = p["reconciliation"].as_str().unwrap();
    assert!(rec.contains(", within 5%)"), "{rec}");
}

/// On a byte on stdin, one named JS function retains 20 Buffers of 1 MiB,
/// then the script lives 2 s more and exits; node runs without
/// --perf-basic-prof. (The byte comes once offheap says it is attached:
/// from then on the walker has the V8 layout it needs for JS frames, read
/// from node's symbols. The 2 s leave several intervals to resolve the JS
/// frames while the process lives: its heap is unreadable after the exit.)
const MAPPING_LEAK: &str = r#"
const keep = [];
function leakMappings() { for (let i = 0; i < 20; i++) keep.push(Buffer.alloc(1 << 20).fill(1)); }
process.stdin.once("data", () => { leakMappings(); setTimeout(() => process.exit(0), 2000); });
"#;

/// Mappings' stacks come from the one BPF walker (issue 12), as faults' and
/// malloc mode's do, not from a bounded raw copy unwound in userspace: from
/// glibc's mmap stub through its malloc (no frame pointers: the unwind
/// tables), node's C++, the JS function (V8's frames decoded in the
/// kernel) and libuv's loop, to the process's entry point, not truncated.
/// Each Buffer is one glibc mmap chunk (1 MiB is above the 128 KiB mmap
/// threshold): 1 MiB and the chunk's header, rounded up to a page
/// (malloc.c sysmalloc_mmap), so exactly 20 x (1 MiB + 4 KiB) resident.
#[test]
fn mapping_stacks_are_walked_in_the_kernel_to_the_entry_point() {
    let _bpf = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("mappings.js");
    std::fs::write(&script, MAPPING_LEAK).unwrap();
    let out = dir.path().join("r.json");
    let mut tracer = Command::new(offheap_bin())
        .args(["run", "--mode", "resident", "--interval", "0.2"])
        .args(["--format", "json", "-o"])
        .arg(&out)
        .args(["--", "node"])
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = Stderr::new(tracer.stderr.take().unwrap());
    err.wait_attached(T);
    // A second first: a mapping made right after the attach got a stack
    // truncated at uv__io_poll (3 of 3 runs with the poke 0.2 s after it, none
    // with 0.7 s; no frame was stepped on a guess then). Not understood yet,
    // noted on issue 12; this test is about the walker's stacks once settled.
    std::thread::sleep(Duration::from_secs(1));
    poke(tracer.stdin.as_mut().unwrap());
    let st = tracer.wait().unwrap();
    assert!(st.success(), "offheap: {st}; {:?}", err.rest());
    let report = read_report(&out);
    let leaks: Vec<&Value> = report_stacks(&report)
        .iter()
        .filter(|s| s["attribution"] == "mapping")
        .filter(|s| {
            frame_symbols(s)
                .iter()
                .any(|f| f.starts_with("JS:") && f.contains("leakMappings"))
        })
        .collect();
    let bytes: u64 = leaks
        .iter()
        .map(|s| s["live_bytes"].as_u64().unwrap())
        .sum();
    let mappings: Vec<(u64, Vec<String>)> = report_stacks(&report)
        .iter()
        .filter(|s| s["attribution"] == "mapping")
        .map(|s| (s["live_bytes"].as_u64().unwrap(), frame_symbols(s)))
        .collect();
    assert_eq!(bytes, 20 * (MIB + PAGE), "mapping stacks: {mappings:#?}");
    for s in &leaks {
        let f = frame_symbols(s);
        assert_eq!(s["truncated"], false, "{f:#?}");
        assert_eq!(f.last().map(String::as_str), Some("_start"), "{f:#?}");
        for want in [
            "sysmalloc",
            "node::NodeArrayBufferAllocator::Allocate",
            "uv_run",
        ] {
            assert!(f.iter().any(|x| x.starts_with(want)), "no {want} in {f:#?}");
        }
        assert_eq!(s["bucket"], "array_buffers", "{f:#?}");
    }
    assert_frames_mapped(&report);
}
