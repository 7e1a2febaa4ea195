//! `watch --max-stacks-per-process`: beyond the cap the smallest stacks are
//! evicted, from the report and from the BPF maps (a later free(3) of an
//! evicted block changes nothing), and counted in `stacks_evicted`.
#[path = "watch_common.rs"]
mod watch_common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use offheap_e2e::*;
use serde_json::Value;
use watch_common::*;

/// (site, live bytes, total bytes) of every stack of the report, by site.
fn sites(r: &Value) -> Vec<(String, u64, u64)> {
    let mut v: Vec<(String, u64, u64)> = r["processes"][0]["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["frames"][0]["symbol"].as_str().unwrap_or("?").to_string(),
                s["live_bytes"].as_u64().unwrap(),
                s["total_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn report_until(agent: &Agent, pid: u32, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let (code, body) = agent.get(&format!("/report?pid={pid}"));
        if code == 200 {
            let r = parse_report(&body);
            if ok(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {:?} evicted {}",
                sites(&r),
                r["counters"]["stacks_evicted"]
            );
        }
        assert!(Instant::now() < deadline, "{what}: /report {code}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn smallest_stacks_are_evicted_from_the_maps_and_counted() {
    let _lock = require_bpf();
    let tmp = tempfile::tempdir().unwrap();
    let bin = build_fixture("capsites", tmp.path());
    let mut agent = Agent::start(&[
        "--mode",
        "malloc",
        "--comm",
        "capsites",
        "--max-stacks-per-process",
        "3",
        "--interval",
        "0.2",
    ]);
    let mut child = Command::new(&bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = Stream::new(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    out.until("ready", T, |l| l == "ready");
    agent.wait_tracing(pid);
    poke_line(&mut stdin);
    out.until("done", T, |l| l == "done");

    let r = report_until(&agent, pid, "the three largest sites kept", |r| {
        sites(r)
            == want(&[
                ("site_3", 300000, 300000),
                ("site_4", 400000, 400000),
                ("site_5", 500000, 500000),
            ])
    });
    // site_1 and site_2, and the dynamic loader's own mappings when the
    // agent picked the process up before ld.so made them.
    let evicted = r["counters"]["stacks_evicted"].as_u64().unwrap();
    assert!((2..=4).contains(&evicted), "{evicted}");

    // site_1's stack again, 600000 bytes: a fresh entry, now one of the
    // largest; site_3 becomes the smallest and goes.
    poke_line(&mut stdin);
    out.until("again", T, |l| l == "again");
    let new_set = want(&[
        ("site_1", 600000, 600000),
        ("site_4", 400000, 400000),
        ("site_5", 500000, 500000),
    ]);
    let r = report_until(&agent, pid, "site_1 back, site_3 evicted", |r| {
        sites(r) == new_set
    });
    assert_eq!(r["counters"]["stacks_evicted"], evicted + 1);

    // Freeing the first site_1 block (allocated before its stack was
    // evicted) must not touch the new entry: its allocs entry went with
    // the eviction. Two more ticks, then the same figures.
    poke_line(&mut stdin);
    out.until("freed", T, |l| l == "freed");
    let ticks = |r: &Value| r["processes"][0]["series"].as_array().unwrap().len();
    let (_, body) = agent.get(&format!("/report?pid={pid}"));
    let before = ticks(&parse_report(&body));
    let r = report_until(&agent, pid, "two ticks after the free", |r| {
        ticks(r) >= before + 2
    });
    assert_eq!(sites(&r), new_set);
    assert_eq!(r["counters"]["stacks_evicted"], evicted + 1);
    poke_line(&mut stdin);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(agent.stop(), Some(0));
}

fn want(v: &[(&str, u64, u64)]) -> Vec<(String, u64, u64)> {
    v.iter().map(|(s, l, t)| (s.to_string(), *l, *t)).collect()
}

/// Resident mode: beyond the cap the smallest stacks are folded into one
/// aggregate per bucket and attribution, so the model (the agent's memory)
/// stays bounded while the bucket totals keep every byte. resident_sites.c:
/// malloc_site 513 pages (mapping) is the largest and stays; map_site (40
/// pages, mapping), touch_brk (60) and memset_brk (20, first touch) fold.
#[test]
fn resident_mode_folds_the_smallest_stacks_and_keeps_their_bytes() {
    const PAGE: u64 = 4096;
    let _lock = require_bpf();
    let tmp = tempfile::tempdir().unwrap();
    let src = workspace().join("tests/fixtures/resident_sites.c");
    let bin = tmp.path().join("resident_sites");
    let o = Command::new("cc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-no-pie"])
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Exact first-touch pages per site: every page's stack, not 1 in 8.
    let mut agent = Agent::start_env(
        &[
            "--mode",
            "resident",
            "--comm",
            "resident_sites",
            "--max-stacks-per-process",
            "2",
            "--interval",
            "0.2",
        ],
        &[("OFFHEAP_FAULT_SAMPLE", "1")],
    );
    let mut child = Command::new(&bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = Stream::new(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    agent.wait_tracing(pid);
    poke_line(&mut stdin);
    out.until("done", T, |l| l.starts_with("done "));

    let stacks = |r: &Value| r["processes"][0]["stacks"].as_array().unwrap().clone();
    let folded = |s: &Value| {
        s["frames"][0]["symbol"]
            .as_str()
            .is_some_and(|n| n.contains("folded by the stack cap"))
    };
    let r = report_until(&agent, pid, "one real stack and the aggregates", |r| {
        let st = stacks(r);
        st.iter().filter(|s| !folded(s)).count() == 1
            && st
                .iter()
                .any(|s| folded(s) && s["attribution"] == "first_touch")
            && r["counters"]["stacks_evicted"].as_u64().unwrap_or(0) >= 3
    });
    let st = stacks(&r);
    let real: Vec<&Value> = st.iter().filter(|s| !folded(s)).collect();
    let names: Vec<&str> = real[0]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["symbol"].as_str())
        .collect();
    assert!(names.contains(&"malloc_site"), "{names:?}");
    assert_eq!(real[0]["live_bytes"], 513 * PAGE);
    let sum = |attribution: &str| -> u64 {
        st.iter()
            .filter(|s| folded(s) && s["attribution"] == attribution)
            .map(|s| s["live_bytes"].as_u64().unwrap())
            .sum()
    };
    assert!(
        sum("mapping") >= 40 * PAGE,
        "mapping aggregate {}",
        sum("mapping")
    );
    assert!(
        sum("first_touch") >= 80 * PAGE,
        "first-touch aggregate {}",
        sum("first_touch")
    );
    let total: u64 = st.iter().map(|s| s["live_bytes"].as_u64().unwrap()).sum();
    let buckets = &r["processes"][0]["buckets"];
    let bucket_sum: u64 = [
        "v8_heap",
        "array_buffers",
        "native_addon",
        "node_native",
        "other",
    ]
    .iter()
    .map(|b| buckets[b].as_u64().unwrap())
    .sum();
    assert_eq!(bucket_sum, total, "buckets keep every folded byte");
    poke_line(&mut stdin);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(agent.stop(), Some(0));
}
