//! Prometheus metrics and the agent's small HTTP surface: `/metrics`,
//! `/healthz` (200 once the shared `ready` flag is set, else 503) and
//! `/report?pid=N` (the JSON report of one process, from a provider the
//! daemon installs).
//!
//! A process's label sets exist from its first `update_process` until
//! `remove_process`, so a process that exits disappears from `/metrics`
//! instead of freezing at its last value.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, RwLock,
    },
    thread::JoinHandle,
};

use prometheus::{
    Counter, Encoder, GaugeVec, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::report::{verdict::Kind, Bucket, ProcessReport};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric")]
    Prometheus(#[from] prometheus::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    #[error("cannot listen on {addr}: not an IP address")]
    NotIp { addr: String },
    #[error("starting the metrics server's thread")]
    Thread(#[source] std::io::Error),
}

/// Who a process is, for labels. Empty strings when unknown (not in a pod).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    pub comm: String,
    pub pod_uid: String,
    pub container_id: String,
}

/// Returns the JSON report of a pid, or None when the pid is not traced.
pub type ReportProvider = Box<dyn Fn(u32) -> Option<Vec<u8>> + Send + Sync>;

const PROC_LABELS: &[&str] = &["pid", "comm", "pod_uid", "container_id"];
const BUCKET_LABELS: &[&str] = &["pid", "comm", "pod_uid", "container_id", "bucket"];
const VERDICT_LABELS: &[&str] = &["pid", "comm", "pod_uid", "container_id", "kind"];
/// Window over which `offheap_growth_bytes_per_second` is measured.
const GROWTH_WINDOW_SECS: f64 = 60.0;

/// Everything `/metrics` shows, shared between the daemon loop and the server.
pub struct MetricsState {
    registry: Registry,
    bucket_bytes: IntGaugeVec,
    rss_bytes: IntGaugeVec,
    growth: GaugeVec,
    verdict: IntGaugeVec,
    oom_kills: IntCounter,
    dropped_events: IntCounter,
    agent_rss: IntGauge,
    agent_bpf_maps: IntGauge,
    agent_cpu: Counter,
    agent_cpu_last: Mutex<f64>,
    known: Mutex<HashMap<u32, Labels>>,
    /// Set by the daemon once probes are attached; `/healthz` reports it.
    pub ready: AtomicBool,
    provider: RwLock<Option<ReportProvider>>,
}

impl MetricsState {
    pub fn new() -> Result<Arc<MetricsState>, MetricsError> {
        let registry = Registry::new();
        let bucket_bytes = IntGaugeVec::new(
            Opts::new(
                "offheap_bucket_bytes",
                "Live bytes of a traced process by bucket (v8_heap, array_buffers, native_addon, node_native, other).",
            ),
            BUCKET_LABELS,
        )?;
        let rss_bytes = IntGaugeVec::new(
            Opts::new(
                "offheap_rss_bytes",
                "Resident set size of a traced process.",
            ),
            PROC_LABELS,
        )?;
        let growth = GaugeVec::new(
            Opts::new(
                "offheap_growth_bytes_per_second",
                "Growth of a traced process's off-heap bytes over the last minute.",
            ),
            PROC_LABELS,
        )?;
        let verdict = IntGaugeVec::new(
            Opts::new(
                "offheap_verdict",
                "1 for each verdict kind that applies to a traced process (the main one and every \
                 other finding: v8_heap_growth, off_heap_growth, tracks_load, allocator_retention, \
                 heap_limit_exceeds_container, ...), else 0.",
            ),
            VERDICT_LABELS,
        )?;
        let oom_kills = IntCounter::new(
            "offheap_oom_kills_total",
            "OOM kills seen on this host (oom/mark_victim).",
        )?;
        let dropped_events = IntCounter::new(
            "offheap_dropped_events_total",
            "Events or allocations the tracer lost (full maps, full ring buffer, failed stack walks).",
        )?;
        let agent_rss =
            IntGauge::new("offheap_agent_rss_bytes", "Resident set size of the agent.")?;
        let agent_bpf_maps = IntGauge::new(
            "offheap_agent_bpf_map_bytes",
            "Kernel memory pinned by the agent's BPF maps (charged to its memory cgroup).",
        )?;
        let agent_cpu = Counter::new(
            "offheap_agent_cpu_seconds_total",
            "User and system CPU time of the agent.",
        )?;
        registry.register(Box::new(bucket_bytes.clone()))?;
        registry.register(Box::new(rss_bytes.clone()))?;
        registry.register(Box::new(growth.clone()))?;
        registry.register(Box::new(verdict.clone()))?;
        registry.register(Box::new(oom_kills.clone()))?;
        registry.register(Box::new(dropped_events.clone()))?;
        registry.register(Box::new(agent_rss.clone()))?;
        registry.register(Box::new(agent_bpf_maps.clone()))?;
        registry.register(Box::new(agent_cpu.clone()))?;
        Ok(Arc::new(MetricsState {
            registry,
            bucket_bytes,
            rss_bytes,
            growth,
            verdict,
            oom_kills,
            dropped_events,
            agent_rss,
            agent_bpf_maps,
            agent_cpu,
            agent_cpu_last: Mutex::new(0.0),
            known: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
            provider: RwLock::new(None),
        }))
    }

    /// Sets every gauge of one process. Labels changing for a pid (exec
    /// renamed it) replace the old label sets.
    pub fn update_process(&self, p: &ProcessReport, labels: &Labels) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = known.get(&p.pid) {
            if old != labels {
                self.remove_label_sets(p.pid, old);
            }
        }
        known.insert(p.pid, labels.clone());
        let pid = p.pid.to_string();
        let base = [
            pid.as_str(),
            &labels.comm,
            &labels.pod_uid,
            &labels.container_id,
        ];
        for b in Bucket::ALL {
            let mut l = base.to_vec();
            l.push(b.as_str());
            self.bucket_bytes
                .with_label_values(&l)
                .set(clamp_i64(p.buckets.get(b)));
        }
        self.rss_bytes
            .with_label_values(&base)
            .set(clamp_i64(p.rss_bytes));
        self.growth
            .with_label_values(&base)
            .set(growth_bytes_per_sec(p));
        if let Some(v) = &p.verdict {
            for k in Kind::ALL {
                let mut l = base.to_vec();
                l.push(k.as_str());
                let on = v.findings.iter().any(|f| f.kind == k);
                self.verdict.with_label_values(&l).set(i64::from(on));
            }
        }
    }

    /// Drops every label set of `pid`. Unknown pids are ignored.
    pub fn remove_process(&self, pid: u32) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = known.remove(&pid) {
            self.remove_label_sets(pid, &old);
        }
    }

    fn remove_label_sets(&self, pid: u32, l: &Labels) {
        let pid = pid.to_string();
        let base = [pid.as_str(), &l.comm, &l.pod_uid, &l.container_id];
        for b in Bucket::ALL {
            let mut v = base.to_vec();
            v.push(b.as_str());
            let _ = self.bucket_bytes.remove_label_values(&v);
        }
        for k in Kind::ALL {
            let mut v = base.to_vec();
            v.push(k.as_str());
            let _ = self.verdict.remove_label_values(&v);
        }
        let _ = self.rss_bytes.remove_label_values(&base);
        let _ = self.growth.remove_label_values(&base);
    }

    pub fn inc_oom_kills(&self) {
        self.oom_kills.inc();
    }

    /// Raises the dropped-events counter to `total` (a running sum of the BPF
    /// counters); a lower value is ignored, as counters never go down.
    pub fn set_dropped_events_total(&self, total: u64) {
        let cur = self.dropped_events.get();
        if total > cur {
            self.dropped_events.inc_by(total - cur);
        }
    }

    /// Installs the function `/report?pid=N` calls.
    pub fn set_report_provider(&self, f: ReportProvider) {
        *self.provider.write().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    fn report_for(&self, pid: u32) -> Option<Vec<u8>> {
        let p = self.provider.read().unwrap_or_else(|e| e.into_inner());
        p.as_ref().and_then(|f| f(pid))
    }

    fn refresh_agent(&self) {
        let cost = crate::core::cost::measure();
        self.agent_rss.set(clamp_i64(cost.rss_bytes));
        self.agent_bpf_maps.set(clamp_i64(cost.bpf_map_bytes));
        let cpu = cost.cpu_seconds;
        let mut last = self
            .agent_cpu_last
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if cpu > *last {
            self.agent_cpu.inc_by(cpu - *last);
            *last = cpu;
        }
    }

    /// The Prometheus text exposition of every metric, agent metrics refreshed.
    pub fn encode(&self) -> String {
        self.refresh_agent();
        let mut buf = Vec::new();
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Off-heap growth over the last GROWTH_WINDOW_SECS of the series; without a
/// series, the sum of the stacks' own growth rates.
fn growth_bytes_per_sec(p: &ProcessReport) -> f64 {
    if let Some(last) = p.series.last() {
        let first = p
            .series
            .iter()
            .find(|s| last.t_secs - s.t_secs <= GROWTH_WINDOW_SECS)
            .unwrap_or(last);
        let dt = last.t_secs - first.t_secs;
        if dt > 0.0 {
            return (last.buckets.off_heap() as f64 - first.buckets.off_heap() as f64) / dt;
        }
    }
    p.stacks
        .iter()
        .filter(|s| s.bucket.is_none_or(Bucket::is_off_heap))
        .filter_map(|s| s.growth_bytes_per_sec)
        // fold from +0.0: f64's Sum starts at -0.0, which exports as "-0"
        .fold(0.0, |a, g| a + g)
}

/// The running HTTP server; `shutdown` stops it and joins its thread.
pub struct MetricsServer {
    pub addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves `state` on `addr` (e.g. "0.0.0.0:9464"; port 0 picks a free one)
/// from a dedicated thread: scrapes must keep working while the tracing loop
/// is busy.
pub fn serve(addr: &str, state: Arc<MetricsState>) -> Result<MetricsServer, MetricsError> {
    let server = tiny_http::Server::http(addr).map_err(|source| MetricsError::Listen {
        addr: addr.to_string(),
        source,
    })?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| MetricsError::NotIp {
            addr: addr.to_string(),
        })?;
    let server = Arc::new(server);
    let s = Arc::clone(&server);
    let thread = std::thread::Builder::new()
        .name("offheap-metrics".into())
        .spawn(move || {
            for req in s.incoming_requests() {
                let (status, ctype, body) = respond(&state, req.method(), req.url());
                let resp = tiny_http::Response::from_data(body)
                    .with_status_code(status)
                    .with_header(
                        tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes())
                            .expect("static header"),
                    );
                // A client that went away is not our problem.
                let _ = req.respond(resp);
            }
        })
        .map_err(MetricsError::Thread)?;
    Ok(MetricsServer {
        addr: bound,
        server,
        thread: Some(thread),
    })
}

const TEXT: &str = "text/plain; charset=utf-8";

fn respond(
    state: &MetricsState,
    method: &tiny_http::Method,
    url: &str,
) -> (u16, &'static str, Vec<u8>) {
    if *method != tiny_http::Method::Get {
        return (405, TEXT, b"only GET\n".to_vec());
    }
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            state.encode().into_bytes(),
        ),
        "/healthz" => {
            if state.ready.load(Ordering::SeqCst) {
                (200, TEXT, b"ok\n".to_vec())
            } else {
                (503, TEXT, b"not ready: probes not attached yet\n".to_vec())
            }
        }
        "/report" => {
            let pid = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("pid="))
                .and_then(|v| v.parse::<u32>().ok());
            match pid {
                None => (400, TEXT, b"usage: /report?pid=N\n".to_vec()),
                Some(pid) => match state.report_for(pid) {
                    Some(json) => (200, "application/json", json),
                    None => (404, TEXT, format!("pid {pid} is not traced\n").into_bytes()),
                },
            }
        }
        _ => (
            404,
            TEXT,
            b"try /metrics, /healthz or /report?pid=N\n".to_vec(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Buckets, SeriesPoint};

    fn proc(pid: u32, rss: u64, ab: u64) -> ProcessReport {
        ProcessReport {
            pid,
            comm: "node".into(),
            rss_bytes: rss,
            buckets: Buckets {
                v8_heap: 1000,
                array_buffers: ab,
                ..Buckets::default()
            },
            ..ProcessReport::default()
        }
    }

    #[test]
    fn growth_uses_the_last_minute_of_the_series() {
        let mut p = proc(1, 0, 0);
        let pt = |t: f64, ab: u64| SeriesPoint {
            t_secs: t,
            rss_bytes: 0,
            buckets: Buckets {
                array_buffers: ab,
                v8_heap: 5 * ab, // on-heap growth is not off-heap growth
                ..Buckets::default()
            },
            ..SeriesPoint::default()
        };
        p.series = vec![
            pt(0.0, 0),
            pt(40.0, 1_000_000),
            pt(70.0, 1_300_000),
            pt(100.0, 4_000_000),
        ];
        // window starts at t=40: (4_000_000 - 1_000_000) / 60
        assert_eq!(growth_bytes_per_sec(&p), 50_000.0);
        p.series.truncate(1);
        assert_eq!(growth_bytes_per_sec(&p), 0.0);
    }

    #[test]
    fn labels_change_replaces_old_series_and_remove_drops_them() {
        let st = MetricsState::new().unwrap();
        let l1 = Labels {
            comm: "sh".into(),
            ..Labels::default()
        };
        let l2 = Labels {
            comm: "node".into(),
            pod_uid: "u".into(),
            container_id: "c".into(),
        };
        st.update_process(&proc(7, 100, 5), &l1);
        st.update_process(&proc(7, 200, 6), &l2);
        let text = st.encode();
        assert!(!text.contains("comm=\"sh\""), "{text}");
        assert!(text.contains(
            "offheap_bucket_bytes{bucket=\"array_buffers\",comm=\"node\",container_id=\"c\",pid=\"7\",pod_uid=\"u\"} 6"
        ), "{text}");
        st.remove_process(7);
        let text = st.encode();
        assert!(!text.contains("pid=\"7\""), "{text}");
    }

    #[test]
    fn a_gauge_per_verdict_kind() {
        let st = MetricsState::new().unwrap();
        let mut p = proc(9, 100, 5);
        p.verdict = Some(crate::report::verdict::judge(
            &p,
            crate::report::Mode::Resident,
        ));
        st.update_process(&p, &Labels::default());
        let text = st.encode();
        let line = |kind: &str, v: u8| {
            format!(
                "offheap_verdict{{comm=\"\",container_id=\"\",kind=\"{kind}\",pid=\"9\",pod_uid=\"\"}} {v}\n"
            )
        };
        assert!(text.contains(&line("insufficient_data", 1)), "{text}");
        assert!(text.contains(&line("off_heap_growth", 0)), "{text}");
        assert_eq!(text.matches("offheap_verdict{").count(), Kind::ALL.len());
        st.remove_process(9);
        assert!(!st.encode().contains("offheap_verdict{"));
    }

    #[test]
    fn dropped_events_only_go_up() {
        let st = MetricsState::new().unwrap();
        st.set_dropped_events_total(10);
        st.set_dropped_events_total(4);
        st.set_dropped_events_total(12);
        assert!(st.encode().contains("offheap_dropped_events_total 12\n"));
    }
}
