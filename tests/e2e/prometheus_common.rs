//! Helpers of the Prometheus tests: Debian's `prometheus` and `promtool`
//! (2.42, installed by `cargo xtask setup`), deploy/'s files, the scrape
//! config made runnable here, the dashboard's queries with its variables
//! substituted, and a Prometheus server on loopback that is killed on drop.
#![allow(dead_code)]

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use offheap_e2e::{http_get, workspace};
use serde_json::Value;

/// `prometheus` or `promtool` from Debian's package; fails (never skips)
/// when missing.
pub fn tool(name: &str) -> PathBuf {
    let p = Path::new("/usr/bin").join(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask setup` (Debian package prometheus)",
        p.display()
    );
    p
}

pub fn deploy(name: &str) -> PathBuf {
    workspace().join("deploy").join(name)
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The discovery block of deploy/prometheus-scrape.yaml. Debian builds
/// Prometheus without Kubernetes discovery ("Kubernetes support has been
/// completely removed", its NEWS.Debian for 1.5.0), so here the block is
/// swapped for file discovery of targets carrying the labels that
/// Kubernetes pod discovery would set; everything else is the file's own.
pub const K8S_SD: &str = "    kubernetes_sd_configs:
      - role: pod
        namespaces:
          names: [offheap]
";

/// deploy/prometheus-scrape.yaml with file discovery from `targets` and,
/// when given, every scrape and evaluation interval set to `interval`.
pub fn runnable_scrape_config(targets: &Path, interval: Option<&str>) -> String {
    let src = fs::read_to_string(deploy("prometheus-scrape.yaml")).unwrap();
    assert!(
        src.contains(K8S_SD),
        "deploy/prometheus-scrape.yaml no longer has the discovery block the tests replace:\n{K8S_SD}"
    );
    let file_sd = format!(
        "    file_sd_configs:\n      - files: [{}]\n        refresh_interval: 1s\n",
        targets.display()
    );
    let mut out = src.replace(K8S_SD, &file_sd);
    if let Some(i) = interval {
        for key in ["scrape_interval", "evaluation_interval"] {
            let line = format!("  {key}: 15s\n");
            assert!(
                out.contains(&line),
                "no `{}` in the scrape config",
                line.trim()
            );
            out = out.replace(&line, &format!("  {key}: {i}\n"));
        }
    }
    out
}

/// Writes the runnable config and a copy of alerts.yaml (its `rule_files`
/// entry is relative to the config's directory) into `dir`.
pub fn write_config(dir: &Path, targets: &Path, interval: Option<&str>) -> PathBuf {
    fs::copy(deploy("alerts.yaml"), dir.join("alerts.yaml")).unwrap();
    let cfg = dir.join("prometheus.yml");
    fs::write(&cfg, runnable_scrape_config(targets, interval)).unwrap();
    cfg
}

pub fn dashboard() -> Value {
    serde_json::from_slice(&fs::read(deploy("grafana-dashboard.json")).unwrap())
        .expect("deploy/grafana-dashboard.json is not JSON")
}

/// Grafana's own variables as a test substitutes them: `$__rate_interval`
/// is at least four scrape intervals, `$__range` the dashboard's range.
pub const GRAFANA_VARS: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__range", "5m"),
];

/// Replaces `$name` and `${name}` of every variable; panics on a `$` left.
pub fn substitute(expr: &str, vars: &[(&str, &str)]) -> String {
    let mut out = expr.to_string();
    // Longest names first: `$__rate_interval` before `$__range`'s prefix.
    let mut all: Vec<(&str, &str)> = vars.iter().chain(GRAFANA_VARS).copied().collect();
    all.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    for (name, value) in all {
        out = out.replace(&format!("${{{name}}}"), value);
        out = out.replace(&format!("${name}"), value);
    }
    assert!(
        !out.contains('$'),
        "unknown variable in {expr:?} -> {out:?}"
    );
    out
}

/// Every panel target's query, variables substituted: (panel title and
/// refId, PromQL).
pub fn dashboard_queries(d: &Value, vars: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            out.push((
                format!("{} {}", p["title"].as_str().unwrap(), t["refId"]),
                substitute(expr, vars),
            ));
        }
    }
    out
}

/// The template variables' `label_values(METRIC, LABEL)` queries as
/// (metric selector, label), the form Prometheus's label API answers.
pub fn variable_queries(d: &Value) -> Vec<(String, String)> {
    d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = v["query"]["query"].as_str().expect("query.query");
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or_else(|| panic!("not label_values(metric, label): {q}"));
            let (metric, label) = inner.rsplit_once(',').unwrap();
            (metric.trim().to_string(), label.trim().to_string())
        })
        .collect()
}

/// Percent-encodes a query-string value (RFC 3986 unreserved kept).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A port nobody listens on now (the kernel's choice; Prometheus takes a
/// port number, not a socket).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus server on loopback; SIGTERM, then SIGKILL, on drop, so it
/// never outlives a failed test.
pub struct Prometheus {
    child: Child,
    pub addr: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts it with `config` and a data directory in `dir`; waits until
    /// it answers /-/ready.
    pub fn start(dir: &Path, config: &Path) -> Prometheus {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut p = Prometheus { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while p.get("/-/ready").0 != 200 {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("prometheus exited with {st}:\n{}", p.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus never ready:\n{}",
                p.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
        p
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (status, body) of a GET.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path)
    }

    /// The `data` of an API call that must succeed.
    pub fn api(&self, path: &str) -> Value {
        let (code, body) = self.get(path);
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {code} {e}: {body}"));
        assert_eq!(v["status"], "success", "{path}: {body}");
        v["data"].clone()
    }

    /// An instant query's result.
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let d = self.api(&format!("/api/v1/query?query={}", urlencode(promql)));
        d["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.wait();
        }
    }
}
