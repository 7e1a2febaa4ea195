//! BPF run-time statistics for the bench parts that time programs in the
//! kernel: `kernel.bpf_stats_enabled` (sysctl(8); the kernel then counts
//! each program's runs and nanoseconds, `run_cnt`/`run_time_ns` in
//! `bpftool prog show --json`), sampled while a traced run goes on (the
//! programs vanish with the tracer, so the last sample before it exits is
//! the figure).
use std::{
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{Context, Result};

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// One loaded program's counters at a sample.
#[derive(Clone, Debug, Default)]
pub struct Prog {
    pub id: u64,
    pub name: String,
    pub runs: u64,
    pub ns: u64,
}

impl Prog {
    /// Nanoseconds per run.
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.ns as f64 / self.runs as f64)
    }
}

/// Every loaded program now (`bpftool prog show --json`); None when bpftool
/// cannot answer.
pub fn programs() -> Option<Vec<Prog>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v.as_array()?
            .iter()
            .map(|p| Prog {
                id: p["id"].as_u64().unwrap_or(0),
                name: p["name"].as_str().unwrap_or("").to_string(),
                runs: p["run_cnt"].as_u64().unwrap_or(0),
                ns: p["run_time_ns"].as_u64().unwrap_or(0),
            })
            .collect(),
    )
}

/// Runs `f` with the statistics on (restored afterwards when they were off).
pub fn with_stats<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let before = std::fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
    let enable = before.trim() == "0";
    if enable {
        std::fs::write(STATS, "1").with_context(|| format!("enabling {STATS}"))?;
    }
    let result = f();
    if enable {
        let _ = std::fs::write(STATS, "0");
    }
    result
}

/// Runs `f` while sampling every program every 50 ms; returns its result
/// and the last sample that `pick` accepted (a sample taken after the
/// tracer exited lacks its programs: `pick` says None to it).
pub fn sampled<T, S: Send + 'static>(
    f: impl FnOnce() -> T,
    pick: impl Fn(Vec<Prog>) -> Option<S> + Send + 'static,
) -> (T, Option<S>) {
    let last: Arc<Mutex<Option<S>>> = Arc::new(Mutex::new(None));
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (last, done) = (Arc::clone(&last), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(s) = programs().and_then(&pick) {
                    *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let out = f();
    done.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let sample = last.lock().unwrap_or_else(|e| e.into_inner()).take();
    (out, sample)
}
