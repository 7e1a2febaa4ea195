//! `watch` and a real OOM kill: node leaks filled Buffers in a v1 memory
//! cgroup limited to 256 MiB until the kernel kills it. The agent must have
//! written a pre-OOM snapshot on the way up, then a post-mortem naming the
//! victim, with the Buffers as the top stack, and logged the file.
#[path = "watch_common.rs"]
mod watch_common;

use std::{os::unix::process::ExitStatusExt, path::Path};

use offheap_e2e::*;
use watch_common::*;

const LIMIT: u64 = 256 << 20;

/// Leaks 1 MiB Buffers, touched by fill(), up to an RSS of argv[2] bytes,
/// says "high", then (on the next stdin line) leaks without end. Node runs
/// with no flags: the post-mortem names the JS function that leaks,
/// leakTick, from V8's heap (resolved while node lived).
const SCRIPT: &str = r#"
const MiB = 1 << 20;
const high = Number(process.argv[2]);
const keep = [];
function leak(until, then) {
  const t = setInterval(function leakTick() {
    for (let i = 0; i < 4; i++) keep.push(Buffer.alloc(MiB).fill(7));
    if (process.memoryUsage.rss() >= until) { clearInterval(t); then(); }
  }, 5);
}
process.stdout.write("ready\n");
process.stdin.once("data", () => {
  leak(high, () => {
    process.stdout.write("high\n");
    process.stdin.once("data", () => leak(Infinity, () => {}));
  });
});
"#;

/// Waits until the agent's report of `pid` has sampled the high state
/// (half the limit in array_buffers): resident mode reports the last sample
/// before the kill.
fn wait_sampled_high(agent: &Agent, pid: u32) {
    let deadline = std::time::Instant::now() + T;
    loop {
        let (code, body) = agent.get(&format!("/report?pid={pid}"));
        let ab = (code == 200)
            .then(|| parse_report(&body))
            .and_then(|r| r["processes"][0]["buckets"]["array_buffers"].as_u64());
        if code == 200 && ab.is_some_and(|b| b >= LIMIT / 2) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{code} {ab:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn oom_kill_writes_a_postmortem_naming_the_buffers_malloc() {
    oom_kill_writes_a_postmortem("malloc");
}

#[test]
fn oom_kill_writes_a_postmortem_naming_the_buffers_resident() {
    oom_kill_writes_a_postmortem("resident");
}

fn oom_kill_writes_a_postmortem(mode: &str) {
    let _lock = require_bpf();
    let tmp = tempfile::tempdir().unwrap();
    let oom_dir = tmp.path().join("oom");
    std::fs::create_dir(&oom_dir).unwrap();
    let script = tmp.path().join("leak.js");
    std::fs::write(&script, SCRIPT).unwrap();
    let cg = Cgroup::create("", Some(LIMIT));

    let mut agent = Agent::start(&[
        "--mode",
        mode,
        "--cgroup",
        cg.dir.to_str().unwrap(),
        "--oom-dir",
        oom_dir.to_str().unwrap(),
        "--interval",
        "0.5",
        "--warn-at",
        "60",
    ]);
    let high = LIMIT * 3 / 4;
    let mut node = cg.spawn_node(&script, &[high.to_string()]);
    let pid = node.id();
    let mut node_out = Stream::new(node.stdout.take().unwrap());
    let mut stdin = node.stdin.take().unwrap();
    node_out.until("ready", T, |l| l == "ready");
    agent.wait_tracing(pid);
    assert_eq!(cg.procs(), vec![pid as i32]);

    // 75% of the limit: above --warn-at 60, below the kill.
    poke_line(&mut stdin);
    node_out.until("high", T, |l| l == "high");
    let pre = agent.out.until("the pre-OOM line", T, |l| {
        l.starts_with("offheap: memory at ")
    });
    let want_pre = format!("preoom-{}-", cg.name);
    let pre_json = pre
        .split_once(": snapshot ")
        .and_then(|(_, r)| r.split_once("; "))
        .map(|(p, _)| Path::new(p).to_path_buf())
        .unwrap_or_else(|| panic!("no snapshot path in {pre:?}"));
    assert_eq!(pre_json.parent(), Some(oom_dir.as_path()), "{pre}");
    let pre_name = pre_json.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        pre_name.starts_with(&want_pre) && pre_name.ends_with(".json"),
        "{pre_name}"
    );
    let pre_report = read_report(&pre_json);
    assert_eq!(pre_report["processes"][0]["pid"], pid);
    assert!(pre_report["oom"].is_null());
    assert!(oom_dir.join(pre_name.replace(".json", ".txt")).is_file());

    wait_sampled_high(&agent, pid);

    // Leak until the kernel kills node.
    poke_line(&mut stdin);
    let status = node.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    let prefix = format!(
        "offheap: OOM kill of pid {pid} (node) in cgroup {}: report ",
        cg.name
    );
    let line = agent.out.until("the OOM line", T, |l| {
        l.starts_with("offheap: OOM kill of pid")
    });
    eprintln!("{pre}\n{line}");
    assert!(line.starts_with(&prefix), "{line}");
    let path = line[prefix.len()..]
        .split_once("; top off-heap: ")
        .unwrap()
        .0;
    let path = Path::new(path);
    assert_eq!(path.parent(), Some(oom_dir.as_path()));
    let name = path.file_name().unwrap().to_str().unwrap();
    let stem = format!("oom-{}-{pid}-", cg.name);
    assert!(name.starts_with(&stem) && name.ends_with(".json"), "{name}");
    assert!(oom_dir.join(name.replace(".json", ".txt")).is_file());
    assert!(
        line.contains("; top off-heap: ") && line.contains(" array_buffers at "),
        "{line}"
    );

    let r = read_report(path);
    assert_eq!(r["mode"], mode);
    assert_eq!(r["oom"]["pid"], pid, "{}", r["oom"]);
    assert_eq!(r["oom"]["comm"], "node");
    assert_eq!(r["oom"]["cgroup"], cg.path.as_str());
    assert_eq!(r["oom"]["memory_limit_bytes"], LIMIT);
    let procs = r["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1);
    let p = &procs[0];
    assert_eq!(p["pid"], pid);
    assert_eq!(p["exited"], true);
    assert_eq!(p["cgroup"], cg.path.as_str());
    assert_eq!(
        p["stacks"][0]["bucket"], "array_buffers",
        "{}",
        p["stacks"][0]
    );
    // The top stack names the JS function, with the script's path and its
    // line (leakTick starts on line 6 of SCRIPT), though node is gone.
    let leak_tick: Vec<&serde_json::Value> = p["stacks"][0]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "js" && f["symbol"].as_str().unwrap().contains("leakTick "))
        .collect();
    assert_eq!(leak_tick.len(), 1, "{}", p["stacks"][0]);
    assert_eq!(leak_tick[0]["file"], script.to_str().unwrap());
    assert_eq!(leak_tick[0]["line"], 6);
    let ab = p["buckets"]["array_buffers"].as_u64().unwrap();
    eprintln!(
        "array_buffers {ab} of a {LIMIT} limit; buckets {}",
        p["buckets"]
    );
    assert!(ab >= LIMIT / 2, "array_buffers {ab} of a {LIMIT} limit");
    // A second copy of the same event is never written.
    let oom_files = std::fs::read_dir(&oom_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("oom-"))
        .count();
    assert_eq!(oom_files, 3, "one .json, one .txt, one .svg");
    // The chart beside them marks the kill at the report's time, and the limit.
    let chart = std::fs::read_to_string(oom_dir.join(name.replace(".json", ".svg"))).unwrap();
    let kill_t = chart
        .split_once("<g data-series=\"oom_kill\" data-kind=\"marker\" data-t-secs=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(t, _)| t.parse::<f64>().unwrap())
        .unwrap_or_else(|| panic!("no kill marked: {chart}"));
    // This crate's serde_json parses floats to within an ulp or so (no
    // float_roundtrip feature): equal up to that.
    let report_t = r["duration_secs"].as_f64().unwrap();
    assert!((kill_t - report_t).abs() < 1e-9, "{kill_t} vs {report_t}");
    assert!(chart.contains(&format!(
        "data-series=\"memory_limit\" data-kind=\"line\" data-bytes=\"{LIMIT}\""
    )));

    // Its exit then drops it.
    let want = format!("offheap: PID {pid} (node) exited");
    agent.err.until(&want, T, |l| l.starts_with(&want));
    let (code, _) = agent.get(&format!("/report?pid={pid}"));
    assert_eq!(code, 404);
    let (_, metrics) = agent.get("/metrics");
    assert!(!metrics.contains(&format!("pid=\"{pid}\"")), "{metrics}");
    assert_eq!(
        sample(&metrics, "offheap_oom_kills_total").map(|v| v >= 1.0),
        Some(true)
    );
    assert_eq!(agent.stop(), Some(0));
}

/// The post-mortem cannot be written (the --oom-dir was removed after the
/// agent started): the one OOM line still names the victim and the top
/// stack, and says why there is no file.
#[test]
fn oom_kill_with_an_unwritable_oom_dir_still_logs_the_culprit() {
    let _lock = require_bpf();
    let tmp = tempfile::tempdir().unwrap();
    let oom_dir = tmp.path().join("oom");
    let script = tmp.path().join("leak.js");
    std::fs::write(&script, SCRIPT).unwrap();
    let cg = Cgroup::create("-unwritable", Some(LIMIT));
    let mut agent = Agent::start(&[
        "--cgroup",
        cg.dir.to_str().unwrap(),
        "--oom-dir",
        oom_dir.to_str().unwrap(),
        "--interval",
        "0.5",
        "--warn-at",
        "100",
    ]);
    // Created at start (it was missing), then gone before the kill.
    assert!(oom_dir.is_dir());
    std::fs::remove_dir(&oom_dir).unwrap();
    let high = LIMIT * 3 / 4;
    let mut node = cg.spawn_node(&script, &[high.to_string()]);
    let pid = node.id();
    let mut node_out = Stream::new(node.stdout.take().unwrap());
    let mut stdin = node.stdin.take().unwrap();
    node_out.until("ready", T, |l| l == "ready");
    agent.wait_tracing(pid);
    poke_line(&mut stdin);
    node_out.until("high", T, |l| l == "high");
    wait_sampled_high(&agent, pid);
    poke_line(&mut stdin);
    let status = node.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    let line = agent.out.until("the OOM line", T, |l| {
        l.starts_with("offheap: OOM kill of pid")
    });
    eprintln!("{line}");
    let head = format!(
        "offheap: OOM kill of pid {pid} (node) in cgroup {}: no report written (cannot write {}/oom-{}-{pid}-",
        cg.name,
        oom_dir.display(),
        cg.name
    );
    assert!(line.starts_with(&head), "{line}");
    let why = format!(
        ".txt: cannot create a temporary file in {}: No such file or directory (os error 2)); top off-heap: ",
        oom_dir.display()
    );
    assert!(line.contains(&why), "{line}");
    assert!(line.contains(" array_buffers at "), "{line}");
    assert_eq!(line.lines().count(), 1);
    assert!(!oom_dir.exists());
    assert_eq!(agent.stop(), Some(0));
}
