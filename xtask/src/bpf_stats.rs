//! BPF run-time statistics of offheap's programs, for `cargo xtask bench`:
//! kernel.bpf_stats_enabled turned on for the measurement (and restored),
//! and each program's run_cnt and run_time_ns sampled with bpftool while
//! the tracer holds it (the counters go with the program).
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

/// run_cnt and run_time_ns of one program, at the last sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgStats {
    pub runs: u64,
    pub ns: u64,
}

impl ProgStats {
    /// Mean run time per event, None without events.
    pub fn per_event(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.ns as f64 / self.runs as f64)
    }
}

/// Runs `f` with kernel.bpf_stats_enabled on, restoring it after.
pub fn enabled<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
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

/// `bpftool prog show --json`: the counters of the programs named `names`
/// (as bpftool names them: their full names, from BTF), all or none.
fn sample(names: &[&str]) -> Option<Vec<ProgStats>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    names
        .iter()
        .map(|name| {
            v.as_array()?
                .iter()
                .find(|p| p["name"] == *name)
                .map(|p| ProgStats {
                    runs: p["run_cnt"].as_u64().unwrap_or(0),
                    ns: p["run_time_ns"].as_u64().unwrap_or(0),
                })
        })
        .collect()
}

/// Runs `f` (which runs the tracer) while sampling the programs every 50 ms;
/// returns its result and the last sample taken.
pub fn sampled<T>(names: &[&str], f: impl FnOnce() -> T) -> (T, Option<Vec<ProgStats>>) {
    let last: Arc<Mutex<Option<Vec<ProgStats>>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let poller = {
        let (last, done) = (Arc::clone(&last), Arc::clone(&done));
        std::thread::spawn(move || {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            while !done.load(Ordering::Relaxed) {
                if let Some(s) = sample(&names) {
                    *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let out = f();
    done.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let stats = last.lock().unwrap_or_else(|e| e.into_inner()).take();
    (out, stats)
}
