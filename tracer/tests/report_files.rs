//! What `report` and `diff` accept as input: regular files only (a device or
//! a FIFO is refused at once instead of blocking), offheap reports only, a
//! later schema version with a warning, and a diff across modes with one.
mod report_support;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use offheap::report::json;
use report_support::fixture;

/// Runs offheap with a deadline: a test of "does not block" must not block.
fn offheap_within(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_offheap"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("offheap {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .map(String::from)
        .collect()
}

const LIMIT: Duration = Duration::from_secs(10);

#[test]
fn a_device_or_a_fifo_is_refused_at_once() {
    let o = offheap_within(&["report", "/dev/zero"], LIMIT);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&o),
        ["offheap: error: /dev/zero is not a regular file"]
    );
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let f = fifo.to_str().unwrap();
    // No writer: opening it for reading would wait for one.
    let o = offheap_within(&["report", f], LIMIT);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&o),
        [format!("offheap: error: {f} is not a regular file")]
    );
    let before = fixture("before.json");
    let o = offheap_within(&["diff", before.to_str().unwrap(), "/dev/zero"], LIMIT);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&o),
        ["offheap: error: /dev/zero is not a regular file"]
    );
}

/// The fixture with `"schema"` and `"mode"` replaced.
fn variant(dir: &Path, name: &str, schema: &str, mode: &str) -> String {
    let text = std::fs::read_to_string(fixture("before.json")).unwrap();
    let text = text
        .replacen("\"offheap.report.v1\"", &format!("\"{schema}\""), 1)
        .replacen("\"mode\": \"malloc\"", &format!("\"mode\": \"{mode}\""), 1);
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn a_later_schema_version_warns_and_a_foreign_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = variant(dir.path(), "v2.json", "offheap.report.v2", "malloc");
    let o = offheap_within(&["report", &v2, "--format", "json"], LIMIT);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stderr_lines(&o),
        [format!(
            "offheap: warning: {v2} has schema offheap.report.v2, which this offheap does not \
             know (it reads offheap.report.v1): fields added since are not shown"
        )]
    );
    // Nothing it knows is lost (a report read gains its verdict, which the
    // fixture predates).
    let mut back = json::parse(&o.stdout).unwrap();
    let orig = json::parse(&std::fs::read(fixture("before.json")).unwrap()).unwrap();
    for p in &mut back.processes {
        assert!(p.verdict.take().is_some());
    }
    assert_eq!(back.processes, orig.processes);

    let other = variant(dir.path(), "other.json", "acme.profile.v1", "malloc");
    for args in [vec!["report", &other], vec!["diff", &other, &other]] {
        let o = offheap_within(&args, LIMIT);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(
            stderr_lines(&o),
            [format!(
                "offheap: error: {other} has schema \"acme.profile.v1\", not offheap.report.v1"
            )]
        );
    }
}

#[test]
fn a_diff_across_modes_warns() {
    let dir = tempfile::tempdir().unwrap();
    let resident = variant(dir.path(), "resident.json", "offheap.report.v1", "resident");
    let before = fixture("before.json");
    let o = offheap_within(
        &[
            "diff",
            before.to_str().unwrap(),
            &resident,
            "--format",
            "json",
        ],
        LIMIT,
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stderr_lines(&o),
        [
            "offheap: warning: comparing a malloc report with a resident report: their bytes \
          are not the same measure (malloc: bytes allocated; resident: pages resident)"
        ]
    );
    // Same stacks on both sides: every one matched, none changed.
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let stacks = d["stacks"].as_array().unwrap();
    assert!(!stacks.is_empty());
    assert!(stacks.iter().all(|s| s["delta_live_bytes"] == 0));
}
