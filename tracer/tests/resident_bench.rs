//! Resident-mode cost, a benchmark (ignored by default; run in release):
//!   cargo test --release -p tracer --test resident_bench -- --ignored --nocapture
//! 1. Overhead on an allocation-heavy node loop: untraced vs traced, median of
//!    7 paired runs (order alternated).
//! 2. The tracer's own CPU and peak RSS while a node process grows by 1 GiB.
mod resident_common;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use offheap::report::Bucket;
use resident_common::{Tracer, NODE};

fn fixture(name: &str) -> String {
    format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs a fixture to completion, traced or not; returns its first line, the
/// CPU seconds (user + system, all threads) the target used, and the tracer.
// The child is reaped with wait4(2) for its rusage, not Child::wait.
#[allow(clippy::zombie_processes)]
fn run(script: &str, args: &[&str], traced: bool) -> (String, f64, Option<Tracer>) {
    let mut child = Command::new(NODE)
        .arg(fixture(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let every: u32 = std::env::var("OFFHEAP_BENCH_SAMPLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut tracer = traced.then(|| Tracer::attach_sampled(pid, every));
    stdin.write_all(b"g").unwrap();
    let mut other = |_: u32, _: &[u64]| Bucket::Other;
    let mut last_sample = Instant::now();
    let line = loop {
        if let Some(t) = tracer.as_mut() {
            t.drain();
            if last_sample.elapsed() >= Duration::from_secs(1) {
                t.sample(&mut other);
                last_sample = Instant::now();
            }
        }
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(l) => break l,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(e) => panic!("{e}"),
        }
    };
    if let Some(t) = tracer.as_mut() {
        t.drain();
    }
    drop(stdin);
    if script != "alloc_loop.js" {
        let _ = child.kill();
    }
    let mut status = 0;
    // SAFETY: reaps our own child and fills the rusage struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(pid as i32, &mut status, 0, &mut ru) };
    let cpu = tv(ru.ru_utime) + tv(ru.ru_stime);
    (line, cpu, tracer)
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// Time spent in resident mode's BPF programs so far (needs
/// kernel.bpf_stats_enabled=1), per program: (runs, ns).
fn bpf_prog_stats() -> Vec<(String, u64, u128)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let name = p.name_as_str()?.to_string();
            name.starts_with("resident_")
                .then(|| (name, p.run_count(), p.run_time().as_nanos()))
        })
        .collect()
}

fn loop_ms(line: &str) -> f64 {
    line.split_whitespace().next().unwrap().parse().unwrap()
}

fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "benchmark: run in release with --ignored"]
fn overhead_on_allocation_heavy_loop() {
    let iter = std::env::var("OFFHEAP_BENCH_ITER").unwrap_or_else(|_| "300000".into());
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    for i in 0..7 {
        let order = if i % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let mut ms = [0.0; 2];
        let mut cs = [0.0; 2];
        let mut stats = None;
        for traced in order {
            let (line, c, tracer) = run("alloc_loop.js", &[&iter], traced);
            ms[traced as usize] = loop_ms(&line);
            cs[traced as usize] = c;
            if let Some(t) = tracer {
                stats = Some((t.stats, t.drain_time, t.lost_events(), bpf_prog_stats()));
            }
        }
        eprintln!(
            "pair {i}: loop wall {:.0} -> {:.0} ms ({:+.2}%), target CPU {:.3} -> {:.3} s ({:+.2}%); {:?}",
            ms[0],
            ms[1],
            (ms[1] / ms[0] - 1.0) * 100.0,
            cs[0],
            cs[1],
            (cs[1] / cs[0] - 1.0) * 100.0,
            stats
        );
        wall.push(ms[1] / ms[0]);
        cpu.push(cs[1] / cs[0]);
    }
    for (name, mut r) in [("loop wall time", wall), ("target CPU time", cpu)] {
        r.sort_by(f64::total_cmp);
        eprintln!(
            "{name}: median slowdown {:+.2}% (min {:+.2}%, max {:+.2}%)",
            (r[3] - 1.0) * 100.0,
            (r[0] - 1.0) * 100.0,
            (r[6] - 1.0) * 100.0
        );
    }
}

#[test]
#[ignore = "benchmark: run in release with --ignored"]
fn tracer_cost_while_target_grows_1gib() {
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    let (line, _, tracer) = run("buffer_leak.js", &["1024"], true);
    let wall = t0.elapsed().as_secs_f64();
    let mut tracer = tracer.unwrap();
    let mut other = |_: u32, _: &[u64]| Bucket::Other;
    let t1 = Instant::now();
    tracer.sample(&mut other);
    let sample_ms = t1.elapsed().as_secs_f64() * 1e3;
    let cpu = cpu_secs() - cpu0;
    eprintln!(
        "target: {line}; tracer: {cpu:.2} s CPU over {wall:.2} s wall, VmHWM {} MiB, VmRSS {} MiB; \
         one sample of ~1 GiB: {sample_ms:.1} ms; {:?} drained in {:?}, lost {}",
        status_kib("VmHWM:") / 1024,
        status_kib("VmRSS:") / 1024,
        tracer.stats,
        tracer.drain_time,
        tracer.lost_events()
    );
}
