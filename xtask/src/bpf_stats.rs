//! BPF programs' run-time statistics (kernel.bpf_stats_enabled: run_cnt and
//! run_time_ns per program, read with `bpftool prog show --json`), sampled
//! while a traced command runs: what a bench part's probes cost per event.
use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{ensure, Context, Result};

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// run_cnt and run_time_ns of a program.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgStats {
    pub runs: u64,
    pub ns: u64,
}

/// Every loaded program's counters now, by name (bpftool's: the full name,
/// from BTF), summed over the programs of one name.
pub type Sample = HashMap<String, ProgStats>;

/// Runs `f` with the statistics on, and puts the setting back.
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

/// One sample of every loaded program now (None when bpftool fails).
pub fn sample() -> Option<Sample> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut all = Sample::new();
    for p in v.as_array()? {
        let Some(name) = p["name"].as_str() else {
            continue;
        };
        let s = all.entry(name.to_string()).or_default();
        s.runs += p["run_cnt"].as_u64().unwrap_or(0);
        s.ns += p["run_time_ns"].as_u64().unwrap_or(0);
    }
    Some(all)
}

/// Runs `f` while sampling every 50 ms; returns what it returned and the
/// last sample in which a program of each of `names` (a prefix of its
/// name) was loaded: the programs go before the tracer exits, and the
/// samples taken after that are not kept.
pub fn sampled<T>(names: &[&str], f: impl FnOnce() -> T) -> (T, Option<Sample>) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let last: Arc<Mutex<Option<Sample>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (last, done) = (Arc::clone(&last), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let loaded = |s: &Sample| {
                    names
                        .iter()
                        .all(|n| s.keys().any(|k| k.starts_with(n.as_str())))
                };
                if let Some(s) = sample().filter(loaded) {
                    *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let out = f();
    done.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let s = last.lock().unwrap_or_else(|e| e.into_inner()).take();
    (out, s)
}

/// Runs `cmd`, an `offheap run` that writes its report to `report`, while
/// `sampled` watches the programs `names`: its output (it must have exited
/// 0), the report's text (the file is removed) and the last sample.
pub fn traced_run(
    cmd: &mut Command,
    report: &Path,
    names: &[&str],
) -> Result<(Output, std::io::Result<String>, Option<Sample>)> {
    let (out, last) = sampled(names, || cmd.output().context("could not start offheap"));
    let text = std::fs::read_to_string(report);
    let _ = std::fs::remove_file(report);
    let out = out?;
    ensure!(
        out.status.success(),
        "offheap run exited with {}",
        out.status
    );
    Ok((out, text, last))
}

/// `offheap run --mode resident -- node WORKLOAD` in `root`, the report
/// written to `report` so that stdout carries only the workload's lines.
pub fn resident_run(offheap: &Path, root: &Path, report: &Path, workload: &str) -> Command {
    let mut cmd = Command::new(offheap);
    cmd.current_dir(root)
        .args([
            "run",
            "--mode",
            "resident",
            "--no-live",
            "--format",
            "json",
            "--output",
        ])
        .arg(report)
        .args(["--", "node", workload]);
    cmd
}
