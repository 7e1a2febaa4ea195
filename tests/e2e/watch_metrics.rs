//! `watch` over two cgroups: each node process gets its own labelled series
//! in /metrics and its own /report; one that exits normally disappears from
//! both while the other stays.
#[path = "watch_common.rs"]
mod watch_common;

use std::time::{Duration, Instant};

use offheap_e2e::*;
use watch_common::*;

const EACH: u64 = 256 * 1024;

/// On the first stdin line: retains `argv[2]` filled Buffers of EACH bytes
/// and says "done"; on the next line: exits 0.
const SCRIPT: &str = r#"
const keep = [];
process.stdout.write("ready\n");
process.stdin.once("data", () => {
  for (let i = 0; i < Number(process.argv[2]); i++) keep.push(Buffer.alloc(EACH).fill(1));
  process.stdout.write("done\n");
  process.stdin.once("data", () => { globalThis.kept = keep.length; process.exit(0); });
});
"#;

fn series(metric: &str, pid: u32, bucket: Option<&str>) -> String {
    match bucket {
        Some(b) => format!(
            "{metric}{{bucket=\"{b}\",comm=\"node\",container_id=\"\",pid=\"{pid}\",pod_uid=\"\"}}"
        ),
        None => format!("{metric}{{comm=\"node\",container_id=\"\",pid=\"{pid}\",pod_uid=\"\"}}"),
    }
}

/// Polls /metrics until `ok` accepts it; panics with the last scrape and
/// the agent's stderr.
fn scrape_until(agent: &mut Agent, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + T;
    loop {
        let (code, body) = agent.get("/metrics");
        if code == 200 && ok(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}; last /metrics:\n{body}\nagent stderr: {:#?}",
            agent.err.drain()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_cgroups_two_labelled_series_and_exit_removes_one_malloc() {
    two_cgroups("malloc");
}

#[test]
fn two_cgroups_two_labelled_series_and_exit_removes_one_resident() {
    two_cgroups("resident");
}

fn two_cgroups(mode: &str) {
    let _lock = require_bpf();
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("buffers.js");
    std::fs::write(&script, SCRIPT.replace("EACH", &EACH.to_string())).unwrap();
    let (cg_a, cg_b) = (Cgroup::create("-a", None), Cgroup::create("-b", None));
    let mut agent = Agent::start(&[
        "--mode",
        mode,
        "--cgroup",
        cg_a.dir.to_str().unwrap(),
        "--cgroup",
        cg_b.dir.to_str().unwrap(),
        "--interval",
        "0.5",
    ]);
    // Different counts, so that a series mixed up between pids shows.
    let (count_a, count_b) = (40u64, 24u64);
    let mut a = cg_a.start_node(&script, &[count_a.to_string()]);
    let mut b = cg_b.start_node(&script, &[count_b.to_string()]);
    let (pa, pb) = (a.pid(), b.pid());
    agent.wait_tracing(pa);
    agent.wait_tracing(pb);
    a.poke_until("done");
    b.poke_until("done");

    // Malloc mode: the retained bytes, plus at most node's own small
    // ArrayBuffers made after the probes went in (the stdin chunk; startup
    // ones when the agent attached early): 64 KiB. Resident mode counts
    // pages: each Buffer is a glibc mmap chunk (above its 128 KiB
    // threshold) with one page of header, plus the same 64 KiB.
    let per = if mode == "resident" {
        EACH + 4096
    } else {
        EACH
    };
    let in_range = |m: &str, pid: u32, count: u64| {
        sample(
            m,
            &series("offheap_bucket_bytes", pid, Some("array_buffers")),
        )
        .is_some_and(|v| (count * per..=count * per + 65536).contains(&(v as u64)))
    };
    let what =
        format!("array_buffers of {pa} ({count_a} Buffers) and {pb} ({count_b}), {per} bytes each");
    let m = scrape_until(&mut agent, &what, |m| {
        in_range(m, pa, count_a) && in_range(m, pb, count_b)
    });
    eprintln!(
        "array_buffers a={:?} b={:?}",
        sample(
            &m,
            &series("offheap_bucket_bytes", pa, Some("array_buffers"))
        ),
        sample(
            &m,
            &series("offheap_bucket_bytes", pb, Some("array_buffers"))
        )
    );
    for (pid, count) in [(pa, count_a), (pb, count_b)] {
        // The filled Buffers are resident.
        let rss = sample(&m, &series("offheap_rss_bytes", pid, None)).unwrap();
        assert!(rss as u64 >= count * EACH, "rss {rss} of pid {pid}");
        for bucket in ["v8_heap", "native_addon", "node_native", "other"] {
            assert!(
                sample(&m, &series("offheap_bucket_bytes", pid, Some(bucket))).is_some(),
                "no {bucket} series for pid {pid}"
            );
        }
        assert!(sample(&m, &series("offheap_growth_bytes_per_second", pid, None)).is_some());
    }
    // Only the two targets are traced.
    let pids: std::collections::BTreeSet<&str> = m
        .lines()
        .filter(|l| l.starts_with("offheap_rss_bytes{"))
        .filter_map(|l| l.split("pid=\"").nth(1)?.split('"').next())
        .collect();
    let want: std::collections::BTreeSet<String> = [pa, pb].iter().map(u32::to_string).collect();
    assert_eq!(pids, want.iter().map(String::as_str).collect());

    // Each pid's /report is its own, in its own cgroup.
    for (pid, cg) in [(pa, &cg_a), (pb, &cg_b)] {
        let (code, body) = agent.get(&format!("/report?pid={pid}"));
        assert_eq!(code, 200, "{body}");
        let r = parse_report(&body);
        assert_eq!(r["schema"], "offheap.report.v1");
        assert_eq!(r["processes"].as_array().unwrap().len(), 1);
        assert_eq!(r["processes"][0]["pid"], pid);
        assert_eq!(r["processes"][0]["comm"], "node");
        assert_eq!(r["processes"][0]["cgroup"], cg.path.as_str());
        assert!(!r["processes"][0]["series"].as_array().unwrap().is_empty());
    }

    // a exits normally: its series go, b's stay.
    poke_line(&mut a.stdin);
    assert_eq!(a.child.wait().unwrap().code(), Some(0));
    let want = format!("offheap: PID {pa} (node) exited (wait status 0)");
    agent.err.until(&want, T, |l| l == want);
    let (_, m) = agent.get("/metrics");
    assert!(!m.contains(&format!("pid=\"{pa}\"")), "{m}");
    assert!(in_range(&m, pb, count_b), "{m}");
    assert_eq!(agent.get(&format!("/report?pid={pa}")).0, 404);
    assert_eq!(agent.get(&format!("/report?pid={pb}")).0, 200);

    poke_line(&mut b.stdin);
    assert_eq!(b.child.wait().unwrap().code(), Some(0));
    let want = format!("offheap: PID {pb} (node) exited (wait status 0)");
    agent.err.until(&want, T, |l| l == want);
    let (_, m) = agent.get("/metrics");
    assert!(!m.contains("offheap_rss_bytes{"), "{m}");
    assert_eq!(agent.stop(), Some(0));
}

/// Bad flags: one line on stderr and the documented exit code, before any
/// BPF is loaded.
#[test]
fn bad_flags_fail_with_one_line() {
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["watch"],
            1,
            "offheap: error: watch needs at least one of --cgroup, --comm, --all-node",
        ),
        (
            &["watch", "--comm", "x", "--warn-at", "0"],
            1,
            "offheap: error: --warn-at must be a percentage in (0, 100], not 0",
        ),
        (
            &["watch", "--comm", "x", "--interval", "0"],
            1,
            "offheap: error: --interval must be a positive number of seconds below 1e9, not 0",
        ),
        (
            // A missing --oom-dir is created (mkdir -p); not in /proc.
            &["watch", "--comm", "x", "--oom-dir", "/proc/offheap/oom"],
            2,
            "offheap: error: --oom-dir /proc/offheap/oom: cannot create it: No such file or directory (os error 2)",
        ),
    ];
    for (args, code, line) in cases {
        let o = offheap(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {err}");
        assert_eq!(err.lines().collect::<Vec<_>>(), vec![*line], "{args:?}");
    }
}
