//! BPF run-time statistics of offheap's programs, for `cargo xtask bench`:
//! kernel.bpf_stats_enabled turned on for the measurement (and restored),
//! and each program's run_cnt and run_time_ns sampled with bpftool while
//! the tracer holds it (the counters go with the program).
use std::{
    process::{Command, Output, Stdio},
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

/// The ids of the BPF programs `pid` holds (the `prog_id:` of its bpf-prog
/// file descriptors, /proc/PID/fdinfo): other tracers on the machine load
/// programs of the same names.
fn prog_ids(pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// `bpftool prog show --json`: the counters of the programs named `names`
/// (as bpftool names them: their full names, from BTF) that `pid` holds,
/// all or none.
fn sample(names: &[&str], pid: u32) -> Option<Vec<ProgStats>> {
    let ids = prog_ids(pid);
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
                .find(|p| p["name"] == *name && p["id"].as_u64().is_some_and(|i| ids.contains(&i)))
                .map(|p| ProgStats {
                    runs: p["run_cnt"].as_u64().unwrap_or(0),
                    ns: p["run_time_ns"].as_u64().unwrap_or(0),
                })
        })
        .collect()
}

/// Runs `cmd` (the tracer) to its end while sampling its programs every
/// 50 ms; returns its output and the last sample taken.
pub fn sampled(names: &[&str], cmd: &mut Command) -> Result<(Output, Option<Vec<ProgStats>>)> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("could not start offheap")?;
    let pid = child.id();
    let last: Arc<Mutex<Option<Vec<ProgStats>>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let poller = {
        let (last, done) = (Arc::clone(&last), Arc::clone(&done));
        std::thread::spawn(move || {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            while !done.load(Ordering::Relaxed) {
                if let Some(s) = sample(&names, pid) {
                    *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let out = child.wait_with_output();
    done.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let stats = last.lock().unwrap_or_else(|e| e.into_inner()).take();
    Ok((out.context("waiting for offheap")?, stats))
}
