//! How a trace ends: --duration, SIGTERM, and a report that cannot be written.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use offheap_e2e::*;

const T: Duration = Duration::from_secs(120);

/// A process that sleeps until killed.
fn sleeper() -> Child {
    Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn duration_stops_and_writes_text_to_stdout() {
    let _lock = require_bpf();
    let mut target = sleeper();
    let pid = target.id().to_string();
    let o = offheap(&[
        "record",
        "--pid",
        &pid,
        "--mode",
        "malloc",
        "--duration",
        "0.5",
    ]);
    target.kill().unwrap();
    let _ = target.wait();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [format!(
            "offheap: attached to PID {pid} (sleep), mode malloc"
        )]
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("offheap report · mode malloc"), "{text}");
    assert!(text.contains(&format!("PID {pid} (sleep)")), "{text}");
}

#[test]
fn sigterm_stops_and_writes_the_report() {
    let _lock = require_bpf();
    let mut target = sleeper();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let mut tracer = Command::new(offheap_bin())
        .args([
            "record",
            "--pid",
            &target.id().to_string(),
            "--mode",
            "malloc",
        ])
        .args(["--format", "json", "--output", out.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = Stderr::new(tracer.stderr.take().unwrap());
    err.wait_attached(T);
    signal(&tracer, libc::SIGTERM);
    assert_eq!(tracer.wait().unwrap().code(), Some(0), "{:?}", err.rest());
    target.kill().unwrap();
    let _ = target.wait();
    let report = read_report(&out);
    assert_eq!(report["processes"][0]["pid"], target.id());
    assert_eq!(report["processes"][0]["exited"], false);
}

#[test]
fn report_that_cannot_be_written_exits_3() {
    let _lock = require_bpf();
    let mut target = sleeper();
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("gone");
    std::fs::create_dir(&sub).unwrap();
    let out = sub.join("r.json");
    let mut tracer = Command::new(offheap_bin())
        .args([
            "record",
            "--pid",
            &target.id().to_string(),
            "--mode",
            "malloc",
        ])
        .args(["--format", "json", "--output", out.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = Stderr::new(tracer.stderr.take().unwrap());
    err.wait_attached(T);
    // Writable when checked up front, gone when the report is written.
    std::fs::remove_dir(&sub).unwrap();
    signal(&tracer, libc::SIGINT);
    let status = tracer.wait().unwrap();
    target.kill().unwrap();
    let _ = target.wait();
    let rest = err.rest();
    assert_eq!(status.code(), Some(3), "{rest:?}");
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert!(
        rest[0].starts_with("offheap: error: cannot write"),
        "{rest:?}"
    );
}

/// The command starts as it would without offheap: Rust ignores SIGPIPE in
/// offheap itself, and an ignored signal stays ignored across exec, so the
/// child must restore it (as std::process::Command does). Its exit status
/// is reported.
#[test]
fn run_gives_the_command_default_signal_dispositions() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let o = Command::new(offheap_bin())
        .args(["run", "--mode", "malloc", "--format", "json"])
        .args(["--output", out.to_str().unwrap(), "--"])
        .args(["sh", "-c", "grep SigIgn /proc/$$/status; exit 7"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let shown = String::from_utf8_lossy(&o.stdout);
    let ignored = u64::from_str_radix(shown.trim().trim_start_matches("SigIgn:").trim(), 16)
        .unwrap_or_else(|_| panic!("{shown:?}"));
    // Bit n-1 stands for signal n (proc(5)).
    assert_eq!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "SIGPIPE ignored: {shown}"
    );
    assert!(
        stderr.contains("offheap: the command exited with status 7"),
        "{stderr}"
    );
    assert_eq!(read_report(&out)["processes"][0]["exited"], true);
}
