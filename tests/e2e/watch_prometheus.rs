//! A real Prometheus scrapes a real agent: `offheap watch` traces two leaking
//! node processes, each in a cgroup laid out as kubelet's cgroupfs driver
//! does (`…/kubepods/burstable/pod<uid>/<container id>`), and Debian's
//! Prometheus 2.42 scrapes it every second with deploy/prometheus-scrape.yaml
//! (pod discovery swapped for file discovery of the labels it would set)
//! and evaluates deploy/alerts.yaml. Through the HTTP API:
//! - `offheap_bucket_bytes` carries exactly the agent's labels (pid, comm,
//!   pod_uid, container_id, bucket) plus the scrape's (instance, job, and the
//!   relabeled namespace, pod, node); a pod not annotated for scraping is
//!   dropped;
//! - its samples agree with the agent's own `/report?pid=N` within one
//!   scrape interval (defined at `agrees`);
//! - the alert rules evaluate without error and the growth alert is pending
//!   for the process leaking faster than its threshold only;
//! - every query of deploy/grafana-dashboard.json returns data.
#[path = "prometheus_common.rs"]
mod prometheus_common;
#[path = "watch_common.rs"]
mod watch_common;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::PathBuf,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use offheap_e2e::*;
use prometheus_common::*;
use serde_json::{json, Value};
use watch_common::*;

const UID_A: &str = "0f5c1a3e-8d4b-4c6a-9e21-7b3f2d1c0a99";
const UID_B: &str = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const CID_A: &str = "3b9f2c1d4e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";
const CID_B: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d";
const BUCKETS: [&str; 5] = [
    "v8_heap",
    "array_buffers",
    "native_addon",
    "node_native",
    "other",
];
/// The agent's --interval and the scrape interval, seconds.
const INTERVAL: f64 = 1.0;

/// On the first stdin line, retains a filled Buffer of argv[2] bytes every
/// argv[3] ms, 400 of them. Both sizes are at least glibc's 128 KiB mmap
/// threshold, so each Buffer is a mapping of its own: A (256 KiB / 100 ms,
/// ~2.7 MB/s) grows faster than the growth alert's 1 MB/s, B (128 KiB /
/// 250 ms, ~0.54 MB/s) slower.
const SCRIPT: &str = r#"
const keep = [];
const [size, every] = [Number(process.argv[2]), Number(process.argv[3])];
process.stdout.write("ready\n");
process.stdin.once("data", () => {
  const t = setInterval(() => {
    keep.push(Buffer.alloc(size).fill(1));
    if (keep.length >= 400) clearInterval(t);
  }, every);
  process.stdout.write("leaking\n");
});
"#;

/// The directories above the two leaf cgroups, removed (deepest first)
/// after the leaves, which watch_common's `Cgroup` removes itself.
struct KubeTree {
    dirs: Vec<PathBuf>,
}

impl KubeTree {
    fn new() -> KubeTree {
        let top = own_memory_cgroup().join(format!("offheap-prom-{}", std::process::id()));
        let dirs = vec![
            top.clone(),
            top.join("kubepods"),
            top.join("kubepods/burstable"),
        ];
        for d in &dirs {
            let _ = fs::create_dir(d);
        }
        KubeTree { dirs }
    }

    /// `…/kubepods/burstable/pod<uid>/<cid>`, as a watch_common `Cgroup`.
    fn container(&mut self, uid: &str, cid: &str) -> Cgroup {
        let pod = self.dirs[2].join(format!("pod{uid}"));
        fs::create_dir(&pod).unwrap();
        self.dirs.push(pod.clone());
        let dir = pod.join(cid);
        fs::create_dir(&dir).unwrap();
        let path = format!(
            "/{}",
            dir.strip_prefix("/sys/fs/cgroup/memory").unwrap().display()
        );
        Cgroup {
            dir,
            path,
            name: cid.to_string(),
        }
    }
}

impl Drop for KubeTree {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            for _ in 0..100 {
                if fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One `/report?pid=N` as seen from here: sent and answered at (Unix
/// seconds), with its figures by metric (`rss` and each bucket).
struct Seen {
    sent: f64,
    answered: f64,
    values: BTreeMap<String, u64>,
}

fn fetch_report(agent: &Agent, pid: u32) -> Seen {
    let sent = now_secs();
    let (code, body) = agent.get(&format!("/report?pid={pid}"));
    let answered = now_secs();
    assert_eq!(code, 200, "{body}");
    let r = parse_report(&body);
    let p = &r["processes"][0];
    let mut values = BTreeMap::new();
    values.insert("rss".to_string(), p["rss_bytes"].as_u64().unwrap());
    for b in BUCKETS {
        values.insert(b.to_string(), p["buckets"][b].as_u64().unwrap());
    }
    Seen {
        sent,
        answered,
        values,
    }
}

/// "Agrees within one scrape interval": a sample Prometheus scraped at `ts`
/// equals what some `/report` of that pid showed, fetched within INTERVAL
/// of `ts`. Why that is the right window: each agent tick sets /metrics and
/// /report from the same ProcessReport (metrics first, the JSON right
/// after), and both hold it until the next tick, INTERVAL later. The scrape
/// at `ts` read the tick current at `ts`; polled every 100 ms, that tick
/// was also seen by a /report inside its own lifetime, so less than
/// INTERVAL from `ts`. A stale, mixed-up or mis-scaled value has no match.
fn agrees(ts: f64, value: u64, key: &str, seen: &[Seen]) -> bool {
    seen.iter()
        .any(|s| s.answered >= ts - INTERVAL && s.sent <= ts + INTERVAL && s.values[key] == value)
}

#[test]
fn prometheus_scrapes_the_agent_and_agrees_with_its_reports() {
    let _lock = require_bpf();
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("leak.js");
    fs::write(&script, SCRIPT).unwrap();
    let mut tree = KubeTree::new();
    let (cg_a, cg_b) = (tree.container(UID_A, CID_A), tree.container(UID_B, CID_B));
    let mut agent = Agent::start(&[
        "--cgroup",
        cg_a.dir.to_str().unwrap(),
        "--cgroup",
        cg_b.dir.to_str().unwrap(),
        "--interval",
        "1",
    ]);
    let mut a = cg_a.start_node(&script, &[(256 << 10).to_string(), "100".into()]);
    let mut b = cg_b.start_node(&script, &[(128 << 10).to_string(), "250".into()]);
    let (pa, pb) = (a.pid(), b.pid());
    agent.wait_tracing(pa);
    agent.wait_tracing(pb);
    a.poke_until("leaking");
    b.poke_until("leaking");

    // What Kubernetes pod discovery would say of the agent's pod (address
    // without the metrics port, which the port annotation supplies), and of
    // a pod that does not ask to be scraped.
    let port = agent.addr.rsplit_once(':').unwrap().1.to_string();
    let meta = |scrape: &str, pod: &str| {
        json!({
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape": scrape,
            "__meta_kubernetes_pod_annotation_prometheus_io_port": port,
            "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
            "__meta_kubernetes_namespace": "offheap",
            "__meta_kubernetes_pod_name": pod,
            "__meta_kubernetes_pod_node_name": "test-node",
        })
    };
    let targets = tmp.path().join("targets.json");
    fs::write(
        &targets,
        json!([
            {"targets": ["127.0.0.1:9"], "labels": meta("true", "offheap-agent-x1")},
            {"targets": [agent.addr], "labels": meta("false", "not-annotated")},
        ])
        .to_string(),
    )
    .unwrap();
    let config = write_config(tmp.path(), &targets, Some("1s"));
    let prom = Prometheus::start(tmp.path(), &config);

    // One target, relabeled, up; the other dropped.
    let deadline = Instant::now() + T;
    let target = loop {
        let t = prom.api("/api/v1/targets");
        let active = t["activeTargets"].as_array().cloned().unwrap_or_default();
        if active.len() == 1 && active[0]["health"] == "up" {
            assert_eq!(t["droppedTargets"].as_array().unwrap().len(), 1, "{t:#}");
            break active[0].clone();
        }
        assert!(Instant::now() < deadline, "{t:#}\n{}", prom.log());
        thread::sleep(Duration::from_millis(200));
    };
    let scrape_labels = json!({
        "instance": agent.addr,
        "job": "offheap",
        "namespace": "offheap",
        "pod": "offheap-agent-x1",
        "node": "test-node",
    });
    assert_eq!(target["labels"], scrape_labels, "{target:#}");
    assert_eq!(
        target["scrapeUrl"],
        format!("http://{}/metrics", agent.addr)
    );

    // Every bucket of both processes, with exactly these labels.
    let deadline = Instant::now() + T;
    let series = loop {
        let r = prom.query("offheap_bucket_bytes");
        if r.len() == 2 * BUCKETS.len() {
            break r;
        }
        assert!(Instant::now() < deadline, "{r:#?}");
        thread::sleep(Duration::from_millis(200));
    };
    let labels: BTreeSet<String> = series.iter().map(|s| s["metric"].to_string()).collect();
    let mut want = BTreeSet::new();
    for (pid, uid, cid) in [(pa, UID_A, CID_A), (pb, UID_B, CID_B)] {
        for bucket in BUCKETS {
            let mut l = scrape_labels.clone();
            let m = l.as_object_mut().unwrap();
            m.insert("__name__".into(), "offheap_bucket_bytes".into());
            m.insert("bucket".into(), bucket.into());
            m.insert("comm".into(), "node".into());
            m.insert("container_id".into(), cid.into());
            m.insert("pid".into(), pid.to_string().into());
            m.insert("pod_uid".into(), uid.into());
            // serde_json keeps object keys sorted: comparable as text.
            want.insert(l.to_string());
        }
    }
    assert_eq!(labels, want);

    // Poll both /reports while Prometheus scrapes, then check every sample
    // it took meanwhile (8 s: about 8 per series) against them.
    let start = now_secs();
    let mut seen: BTreeMap<u32, Vec<Seen>> = BTreeMap::new();
    while now_secs() < start + 8.0 {
        for pid in [pa, pb] {
            seen.entry(pid).or_default().push(fetch_report(&agent, pid));
        }
        thread::sleep(Duration::from_millis(100));
    }
    let end = now_secs();
    let mut checked = 0;
    let mut distinct_ab = BTreeSet::new();
    for (metric, key_of) in [
        ("offheap_bucket_bytes", Some("bucket")),
        ("offheap_rss_bytes", None),
    ] {
        let at = format!("{metric}[20s]");
        let d = prom.api(&format!(
            "/api/v1/query?query={}&time={end}",
            urlencode(&at)
        ));
        for s in d["result"].as_array().unwrap() {
            let pid: u32 = s["metric"]["pid"].as_str().unwrap().parse().unwrap();
            let key = key_of.map_or("rss", |k| s["metric"][k].as_str().unwrap());
            for v in s["values"].as_array().unwrap() {
                let ts = v[0].as_f64().unwrap();
                // Only samples whose whole window was polled.
                if ts < start + INTERVAL || ts > end - INTERVAL {
                    continue;
                }
                let value: u64 = v[1].as_str().unwrap().parse().unwrap();
                assert!(
                    agrees(ts, value, key, &seen[&pid]),
                    "pid {pid} {key} = {value} at {ts}: no /report within {INTERVAL} s showed it; \
                     seen: {:?}",
                    seen[&pid]
                        .iter()
                        .map(|s| (s.sent, s.values[key]))
                        .collect::<Vec<_>>()
                );
                checked += 1;
                if pid == pa && key == "array_buffers" {
                    distinct_ab.insert(value);
                }
            }
        }
    }
    eprintln!(
        "{checked} samples agree; array_buffers of A took {} values",
        distinct_ab.len()
    );
    // 2 pids x 6 metrics x at least 4 scrapes in the checked 6 s.
    assert!(checked >= 2 * 6 * 4, "only {checked} samples checked");
    // The leak moved the figures: agreement is not of a constant.
    assert!(distinct_ab.len() >= 3, "{distinct_ab:?}");

    // The rules load and evaluate; the growth alert is pending (its `for`
    // is 15 minutes) for A, which outgrows 1 MB/s, and for nobody else.
    let deadline = Instant::now() + T;
    loop {
        let groups = prom.api("/api/v1/rules")["groups"].clone();
        let rules = groups[0]["rules"].as_array().cloned().unwrap_or_default();
        let alerts = prom.api("/api/v1/alerts")["alerts"].clone();
        let growing: Vec<&Value> = alerts
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == "OffheapMemoryGrowing")
            .collect();
        if rules.len() == 5 && rules.iter().all(|r| r["health"] == "ok") && !growing.is_empty() {
            assert_eq!(groups[0]["name"], "offheap");
            assert_eq!(growing.len(), 1, "{alerts:#}");
            assert_eq!(growing[0]["labels"]["pid"], pa.to_string());
            assert_eq!(growing[0]["labels"]["pod_uid"], UID_A);
            assert_eq!(growing[0]["state"], "pending");
            break;
        }
        assert!(Instant::now() < deadline, "{groups:#}\n{alerts:#}");
        thread::sleep(Duration::from_millis(500));
    }

    // Every dashboard query returns data for pod A; its pod variable lists
    // both pods.
    let d = dashboard();
    for (what, q) in dashboard_queries(&d, &[("pod", UID_A)]) {
        let r = prom.query(&q);
        assert!(!r.is_empty(), "{what}: {q} returned nothing");
    }
    for (metric, label) in variable_queries(&d) {
        let values = prom.api(&format!(
            "/api/v1/label/{label}/values?match[]={}",
            urlencode(&metric)
        ));
        assert_eq!(values, json!([UID_A, UID_B]), "{label} of {metric}");
    }

    drop(prom);
    assert_eq!(agent.stop(), Some(0));
    for mut node in [a, b] {
        node.child.kill().unwrap();
        node.child.wait().unwrap();
    }
}
