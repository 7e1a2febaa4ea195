//! The verdict on real processes: a Buffer cache that keeps what traffic
//! brought (retained off-heap, named by its JS function), a service whose
//! memory follows its traffic (tracks load), a JS heap that grows under
//! malloc mode (its V8 heap figure and the heap-snapshot step), a heap limit
//! too close to its cgroup's (both numbers), glibc arenas left fragmented
//! (retention, not a leak), and `offheap explain` on the saved reports.
use std::{
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    thread::sleep,
    time::Duration,
};

use offheap_e2e::*;
use serde_json::Value;

#[path = "watch_common.rs"]
mod watch_common;

const T: Duration = Duration::from_secs(120);
const NODE: &str = "/usr/bin/node";
const MIB: u64 = 1 << 20;
/// Short intervals: a verdict needs points before, during and after traffic.
const INTERVAL: &str = "0.5";

fn fixture(name: &str) -> PathBuf {
    workspace().join("tests/fixtures").join(name)
}

/// `offheap run` of a command, its report written as JSON to `report`.
struct Traced {
    offheap: Child,
    stdin: ChildStdin,
    out: Lines,
    err: Stderr,
    pid: u32,
    report: PathBuf,
}

impl Traced {
    fn run(dir: &Path, mode: &str, cmd: &[&str], env: &[(&str, &str)]) -> Traced {
        let report = dir.join("report.json");
        let mut offheap = Command::new(offheap_bin())
            .args(["run", "--no-live", "--mode", mode, "--interval", INTERVAL])
            .args([
                "--format",
                "json",
                "--output",
                report.to_str().unwrap(),
                "--",
            ])
            .args(cmd)
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = offheap.stdin.take().unwrap();
        let out = Lines::new(offheap.stdout.take().unwrap());
        let mut err = Stderr::new(offheap.stderr.take().unwrap());
        let line = err.wait_attached(T);
        let pid = line
            .strip_prefix("offheap: attached to PID ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        Traced {
            offheap,
            stdin,
            out,
            err,
            pid,
            report,
        }
    }

    /// The first stdout line of the command that starts with `prefix`.
    fn line(&self, prefix: &str) -> String {
        self.out.starting_with(prefix, T)
    }

    /// Stops tracing (SIGINT), kills the command if it still runs, and
    /// returns the report.
    fn stop(self) -> Value {
        signal(&self.offheap, libc::SIGINT);
        self.wait_report()
    }

    /// Waits for offheap to write the report and exit 0.
    fn wait_report(self) -> Value {
        let Traced {
            mut offheap,
            stdin,
            err,
            pid,
            report,
            ..
        } = self;
        let status = offheap.wait().unwrap();
        let err = err.rest();
        drop(stdin);
        // SAFETY: kill(2) of the traced command, a child of offheap that
        // outlives it when tracing stopped first.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
        assert_eq!(status.code(), Some(0), "{err:?}");
        read_report(&report)
    }
}

fn verdict(report: &Value) -> &Value {
    let v = &report["processes"][0]["verdict"];
    eprintln!("verdict: {}", serde_json::to_string_pretty(v).unwrap());
    v
}

/// GETs `n` pages from the server, one connection each.
fn drive(port: &str, n: usize, pause: Duration) {
    let addr = format!("127.0.0.1:{port}");
    for i in 0..n {
        let (status, _) = http_get(&addr, &format!("/item/{i}"));
        assert_eq!(status, 200);
        sleep(pause);
    }
}

fn explain(report: &Path) -> (i32, String, String) {
    let o = offheap(&["explain", report.to_str().unwrap()]);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_buffer_cache_kept_after_traffic_is_retained_off_heap_at_its_js_function() {
    let _bpf = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let script = fixture("buffer_cache.js");
    let t = Traced::run(
        dir.path(),
        "resident",
        &[
            NODE,
            "--perf-basic-prof-only-functions",
            script.to_str().unwrap(),
        ],
        &[],
    );
    let port = t.line("port ")[5..].to_string();
    sleep(Duration::from_secs(1));
    // 160 requests of 256 KiB each: 40 MiB cached, then 3 s of quiet.
    drive(&port, 160, Duration::from_millis(10));
    sleep(Duration::from_secs(3));
    let pid = t.pid;
    let report = t.stop();
    let v = verdict(&report);
    assert_eq!(v["kind"], "off_heap_growth");
    assert_eq!(v["shape"]["kind"], "retained_after_load");
    let c = &v["culprit"];
    assert_eq!(c["kind"], "js");
    assert_eq!(c["bucket"], "array_buffers");
    let function = c["function"].as_str().unwrap();
    assert!(function.starts_with("cacheResponse ("), "{function}");
    // The cached bytes: 160 Buffers of 256 KiB, all still live.
    let ab = v["growth"]["by_bucket"]["array_buffers"].as_i64().unwrap();
    assert!(
        ab >= 40 * MIB as i64 - MIB as i64,
        "array_buffers grew {ab}"
    );
    let headline = v["headline"].as_str().unwrap();
    assert!(
        headline.starts_with("off-heap grows: ")
            && headline.contains("array_buffers +")
            && headline.contains("retained after traffic stopped · culprit cacheResponse ("),
        "{headline}"
    );
    let steps: Vec<&str> = v["next_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(steps[0].starts_with("bound the cache or stream the payload at cacheResponse ("));
    assert!(steps
        .iter()
        .any(|s| s.contains(&format!("kill -USR2 {pid}"))));
    // Every connection was counted: 160 accepted.
    let accepted: u64 = report["processes"][0]["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["accepted_connections"].as_u64().unwrap())
        .sum();
    assert_eq!(accepted, 160);

    // The saved report explains itself; the text report opens with it and
    // folds the runtime's frames unless asked for all of them.
    let (code, out, err) = explain(&dir.path().join("report.json"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().next().unwrap(),
        format!("verdict PID {pid} (node): {headline}")
    );
    let path = dir.path().join("report.json");
    let text = |extra: &[&str]| {
        let mut args = vec!["report", path.to_str().unwrap(), "--top", "1"];
        args.extend_from_slice(extra);
        let o = offheap(&args);
        assert_eq!(o.status.code(), Some(0));
        String::from_utf8(o.stdout).unwrap()
    };
    let folded = text(&[]);
    assert_eq!(folded.lines().nth(1), out.lines().next());
    assert!(folded.contains(" V8 frames …"), "{folded}");
    assert!(!folded.contains("Builtins_JSEntryTrampoline"), "{folded}");
    let all = text(&["--frames", "all"]);
    assert!(!all.contains(" V8 frames …"));
    assert!(all.contains("Builtins_JSEntryTrampoline"), "{all}");
}

#[test]
fn memory_that_follows_traffic_back_down_tracks_load() {
    let _bpf = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let script = fixture("load_tracking.js");
    let t = Traced::run(
        dir.path(),
        "resident",
        &[NODE, "--expose-gc", script.to_str().unwrap()],
        &[("MALLOC_MMAP_THRESHOLD_", "131072")],
    );
    let port = t.line("port ")[5..].to_string();
    sleep(Duration::from_secs(1));
    // About 100 requests a second for 3 s: ~25 MiB held at a time.
    drive(&port, 300, Duration::from_millis(8));
    sleep(Duration::from_secs(3));
    let report = t.stop();
    let v = verdict(&report);
    assert_eq!(v["kind"], "tracks_load");
    assert_eq!(v["shape"]["kind"], "tracks_load");
    let headline = v["headline"].as_str().unwrap();
    assert!(
        headline.starts_with("tracks load, not a leak: rose "),
        "{headline}"
    );
    assert!(headline.contains("after traffic stopped"), "{headline}");
    assert!(v["next_steps"][0]
        .as_str()
        .unwrap()
        .starts_with("not a leak: size the container for the peak"));
}

#[test]
fn a_growing_js_heap_is_seen_in_malloc_mode_and_asks_for_a_heap_snapshot() {
    let _bpf = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let script = fixture("js_heap_leak.js");
    let mut t = Traced::run(
        dir.path(),
        "malloc",
        &[NODE, script.to_str().unwrap(), "300000"],
        &[],
    );
    sleep(Duration::from_secs(1));
    let mut heap_total = 0;
    for phase in 1..=5 {
        poke(&mut t.stdin);
        let l = t.line(&format!("phase {phase} "));
        heap_total = l.rsplit(' ').next().unwrap().parse::<u64>().unwrap();
        sleep(Duration::from_millis(600));
    }
    sleep(Duration::from_secs(1));
    let pid = t.pid;
    let report = t.stop();
    let v = verdict(&report);
    assert_eq!(v["kind"], "v8_heap_growth");
    let steps = v["next_steps"].as_array().unwrap();
    let first = steps[0].as_str().unwrap();
    assert!(
        first.contains("--heapsnapshot-signal=SIGUSR2")
            && first.contains(&format!("`kill -USR2 {pid}`")),
        "{first}"
    );
    // Malloc mode's V8 heap is V8's committed pages that are resident: node's
    // own heapTotal after the last phase, within 15% (heapTotal counts
    // committed space capacity, some of which is not yet touched).
    let series = report["processes"][0]["series"].as_array().unwrap();
    let v8_last = series.last().unwrap()["buckets"]["v8_heap"]
        .as_u64()
        .unwrap();
    let v8_first = series[0]["buckets"]["v8_heap"].as_u64().unwrap();
    eprintln!("v8_heap {v8_first} -> {v8_last}, node's heapTotal {heap_total}");
    assert!(
        v8_last as f64 >= 0.85 * heap_total as f64 && v8_last as f64 <= 1.15 * heap_total as f64,
        "v8_heap {v8_last} against heapTotal {heap_total}"
    );
    assert!(v["growth"]["v8_heap_bytes"].as_i64().unwrap() >= 60 * MIB as i64);
}

#[test]
fn a_heap_limit_close_to_the_cgroup_limit_is_flagged_with_both_numbers() {
    let _bpf = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let limit = 256 * MIB;
    let cg = watch_common::Cgroup::create("-verdict", Some(limit));
    let script = fixture("heap_limit.js");
    // The shell moves itself into the cgroup, then execs node (same pid).
    let mut node = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
        .arg("sh")
        .arg(&cg.dir)
        .args([NODE, "--max-old-space-size=240"])
        .arg(&script)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Lines::new(node.stdout.take().unwrap());
    let lines = out.until("ready", T);
    let v8_limit: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("limit "))
        .and_then(|l| l.parse().ok())
        .unwrap();
    let report_path = dir.path().join("limit.json");
    let pid = node.id().to_string();
    let o = offheap(&[
        "record",
        "--pid",
        &pid,
        "--duration",
        "2",
        "--interval",
        INTERVAL,
        "--no-live",
        "--format",
        "json",
        "--output",
        report_path.to_str().unwrap(),
    ]);
    node.kill().unwrap();
    node.wait().unwrap();
    assert_exit_0(&o);
    let report = read_report(&report_path);
    let v = verdict(&report);
    let h = &v["heap_limit"];
    // Exactly V8's own figure: 240 MiB of old generation plus the young
    // generation V8 sizes for a 256 MiB container.
    assert_eq!(h["heap_limit_bytes"].as_u64().unwrap(), v8_limit);
    assert_eq!(h["source"], "command_line");
    assert_eq!(h["container_limit_bytes"].as_u64().unwrap(), limit);
    let warning = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            f["kind"] == "heap_limit_exceeds_container" || f["kind"] == "heap_limit_too_close"
        })
        .expect("a heap-limit finding");
    let msg = warning["message"].as_str().unwrap();
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / MIB as f64);
    assert!(
        msg.contains(&format!("V8 heap limit {}", mib(v8_limit)))
            && msg.contains(&format!("container limit {}", mib(limit))),
        "{msg}"
    );
    let (code, text, _) = explain(&report_path);
    assert_eq!(code, 0);
    assert!(text.contains(msg), "{text}");
}

#[test]
fn fragmented_glibc_arenas_are_retention_not_a_leak() {
    let _bpf = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let bin = build_fixture("fragment", dir.path());
    let mut t = Traced::run(dir.path(), "malloc", &[bin.to_str().unwrap()], &[]);
    // A first interval before the fixture allocates: the arena figures
    // count from there.
    sleep(Duration::from_millis(1200));
    poke(&mut t.stdin);
    let stats = t.line("kept ");
    t.line("done");
    sleep(Duration::from_secs(2));
    poke(&mut t.stdin);
    let report = t.wait_report();
    // "kept K size S arena A inuse U free F" (mallinfo2).
    let f: Vec<u64> = stats
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (kept, size, arena) = (f[0], f[1], f[2]);
    let v = verdict(&report);
    assert_eq!(v["kind"], "allocator_retention");
    let r = &v["retention"];
    assert_eq!(r["known"], true);
    let resident = r["arena_resident_bytes"].as_u64().unwrap();
    let freed = r["freed_held_bytes"].as_u64().unwrap();
    // The live blocks, exactly: K chunks of glibc's size for S bytes
    // (S + 8 rounded up to 16).
    let chunk = (size + 8).div_ceil(16) * 16;
    assert_eq!(
        resident - freed,
        kept * chunk,
        "resident {resident} freed {freed}"
    );
    // Resident: the arena glibc grew with brk, less the untouched part of
    // its top chunk (at most M_TOP_PAD, 128 KiB, plus a page).
    assert!(
        resident <= arena && resident + (132 << 10) >= arena,
        "{resident} vs {arena}"
    );
    let headline = v["headline"].as_str().unwrap();
    let mib = format!("{:.1} MiB", freed as f64 / MIB as f64);
    assert!(
        headline.starts_with(&format!("glibc holds {mib} of freed memory"))
            && headline.ends_with("fragmentation, not a leak"),
        "{headline}"
    );
    assert!(v["next_steps"][0]
        .as_str()
        .unwrap()
        .contains("MALLOC_ARENA_MAX=2"));
}

#[test]
fn explain_refuses_what_is_not_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"hello\": 1}").unwrap();
    for path in [bad.clone(), dir.path().join("missing.json")] {
        let (code, out, err) = explain(&path);
        assert_eq!(code, 1, "{err}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("offheap: error: "), "{err}");
    }
}
