//! `offheap diff` of two large reports: generated reports of
//! OFFHEAP_DIFF_STACKS stacks (default 100 000) of 12 frames each, drawn
//! from 20 000 distinct frames, as a long-running node's report has; AFTER
//! has other addresses (ASLR), grown bytes, and 10% new stacks.
//!
//! Measured (debug build, 200 000 stacks, 943 MB of JSON): peak RSS 3.4 GB
//! before the diff streamed its inputs and output, 100 MiB after.
mod report_support;

use std::{
    io::{BufWriter, Write},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use offheap::report::{Bucket, Frame, FrameKind, StackReport};

const FRAMES_PER_STACK: usize = 12;
const DISTINCT_FRAMES: usize = 20_000;

fn stacks() -> usize {
    std::env::var("OFFHEAP_DIFF_STACKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

fn frame(i: usize, base: u64) -> Frame {
    let addr = format!("{:#x}", base + (i as u64) * 0x40);
    if i.is_multiple_of(5) {
        Frame {
            addr,
            symbol: Some(format!(
                "JS:*handler{i} /srv/app/routes/r{}.js:{}:7",
                i % 97,
                i % 500
            )),
            module: Some("/tmp/perf-4242.map".into()),
            file: Some(format!("/srv/app/routes/r{}.js", i % 97)),
            line: Some((i % 500) as u32),
            kind: FrameKind::Js,
            addon: None,
        }
    } else {
        Frame {
            addr,
            symbol: Some(format!(
                "node::native::Function{i}(v8::Local<v8::Value>, unsigned long)"
            )),
            module: Some(format!("/usr/lib/x86_64-linux-gnu/libapp{}.so.1", i % 40)),
            file: None,
            line: None,
            kind: FrameKind::Native,
            addon: None,
        }
    }
}

/// Frame `j` of stack `s`: a hash of both (splitmix64's finalizer), so that
/// every stack is a distinct sequence of shared frames.
fn pick(s: usize, j: usize) -> usize {
    let mut z = (s as u64) << 8 | j as u64;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) % DISTINCT_FRAMES as u64) as usize
}

/// Writes a report one stack at a time (the generator itself stays small).
fn write_report(path: &Path, n: usize, after: bool) {
    let base = if after {
        0x7f10_0000_0000
    } else {
        0x7f20_0000_0000
    };
    let mut w = BufWriter::new(std::fs::File::create(path).unwrap());
    write!(
        w,
        r#"{{"schema":"offheap.report.v1","mode":"malloc","duration_secs":60.0,"dropped_events":0,"oom":null,"processes":[{{"pid":{},"comm":"node","exe":"/usr/bin/node","rss_bytes":1,"buckets":{{"v8_heap":0,"array_buffers":0,"native_addon":0,"node_native":0,"other":0}},"stacks":["#,
        if after { 2 } else { 1 }
    )
    .unwrap();
    let total = if after { n + n / 10 } else { n };
    for s in 0..total {
        let frames = (0..FRAMES_PER_STACK)
            .map(|j| frame(pick(s, j), base))
            .collect();
        let live = 4096 * (1 + (s % 64) as u64) * if after { 2 } else { 1 };
        let st = StackReport {
            bucket: Some(Bucket::NodeNative),
            live_bytes: live,
            live_allocs: 1,
            total_bytes: live,
            total_allocs: 1,
            frames,
            ..StackReport::default()
        };
        if s > 0 {
            w.write_all(b",").unwrap();
        }
        serde_json::to_writer(&mut w, &st).unwrap();
    }
    w.write_all(b"]}]}\n").unwrap();
    w.flush().unwrap();
}

/// Runs `offheap ARGS` and returns its exit code and peak RSS in KiB
/// (wait4(2)'s ru_maxrss).
fn run_measured(args: &[&str]) -> (i32, u64, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_offheap"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stderr first: a full pipe would block the child before it exits.
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let (status, maxrss) = wait_maxrss(&mut child);
    (status.code().unwrap_or(-1), maxrss, err)
}

/// Reaps `child` with wait4(2): its status and peak RSS in KiB.
fn wait_maxrss(child: &mut std::process::Child) -> (std::process::ExitStatus, u64) {
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: rusage is plain data wait4 fills; pid is our child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to a status and a rusage.
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut ru) }, pid);
    (
        std::process::ExitStatus::from_raw(status),
        ru.ru_maxrss as u64,
    )
}

/// Where the reports go: OFFHEAP_DIFF_KEEP (kept, to measure another
/// build on them), else a temporary directory.
fn report_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("OFFHEAP_DIFF_KEEP") {
        Some(d) => (PathBuf::from(d), None),
        None => {
            let t = tempfile::tempdir().unwrap();
            (t.path().to_path_buf(), Some(t))
        }
    }
}

/// The bound: what the diff keeps per distinct stack (its frame and key
/// ids, a hash map slot, then its row of shared frames: ~400 bytes at 12
/// frames, measured 100 MiB for 220 000) at 512 bytes, plus 48 MiB for
/// the binary, the 20 000 x 2 distinct frames and the I/O buffers. Holding
/// either report parsed would take more than a gigabyte at 100 000 stacks.
fn max_rss_kib(distinct_stacks: usize) -> u64 {
    (48 << 10) + ((distinct_stacks as u64 * 512) >> 10)
}

/// `{"stacks": [...]}` counted without holding them.
#[derive(serde::Deserialize)]
struct Count {
    stacks: Vec<serde::de::IgnoredAny>,
}

#[test]
fn diff_of_two_large_reports_stays_bounded() {
    let n = stacks();
    let (dir, _keep) = report_dir();
    let (a, b) = (dir.join("before.json"), dir.join("after.json"));
    write_report(&a, n, false);
    write_report(&b, n, true);
    let size = std::fs::metadata(&a).unwrap().len() + std::fs::metadata(&b).unwrap().len();
    let out = dir.join("diff.json");
    let (code, maxrss, err) = run_measured(&[
        "diff",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--format",
        "json",
        "--output",
        out.to_str().unwrap(),
    ]);
    eprintln!(
        "diff of {n} + {} stacks ({} MB of JSON, a {} MB diff): peak RSS {} MiB",
        n + n / 10,
        size >> 20,
        std::fs::metadata(&out).map_or(0, |m| m.len() >> 20),
        maxrss >> 10
    );
    assert_eq!(code, 0, "{err}");
    // Nothing lost: BEFORE's stacks all matched in AFTER, plus the new ones.
    let f = std::io::BufReader::new(std::fs::File::open(&out).unwrap());
    let c: Count = serde_json::from_reader(f).unwrap();
    let distinct = n + n / 10;
    assert_eq!(c.stacks.len(), distinct);
    assert!(
        maxrss < max_rss_kib(distinct),
        "diff peaked at {maxrss} KiB, bound {} KiB",
        max_rss_kib(distinct)
    );
}
