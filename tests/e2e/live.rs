//! The live view of `run` against a real node process whose ArrayBuffers
//! grow: under a pseudo-terminal (script(1)) it redraws the screen with
//! escape codes and names the growing bucket; with stdout piped there is no
//! escape byte at all, and the final report still follows.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use offheap_e2e::*;

/// Cursor home + clear screen, as report::live draws each terminal frame.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// A node script that retains a 1 MiB Buffer, fully written, every 50 ms,
/// and exits after 5 s, which ends the trace (a command still running
/// after --duration would keep the test's stdout pipe open).
fn leak_js(dir: &Path) -> PathBuf {
    let p = dir.join("leak.js");
    std::fs::write(
        &p,
        "const keep = [];\n\
         setInterval(() => keep.push(Buffer.alloc(1 << 20, 1)), 50);\n\
         setTimeout(() => process.exit(0), 5000);\n",
    )
    .unwrap();
    p
}

fn run_args(js: &Path, live: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec!["run".into()];
    v.extend(live.iter().map(|s| s.to_string()));
    v.extend(
        ["--interval", "0.5", "--", "node"]
            .iter()
            .map(|s| s.to_string()),
    );
    v.push(js.display().to_string());
    v
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The final text report begins with this line.
const REPORT_HEAD: &str = "offheap report · mode resident";

#[test]
fn terminal_shows_the_growing_bucket_then_the_report() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let js = leak_js(dir.path());
    // Quote for sh -c: every argument is a plain path or word here.
    let cmd = std::iter::once(offheap_bin().display().to_string())
        .chain(run_args(&js, &[]))
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    // script(1) runs the command on a new pseudo-terminal: stdout is a
    // terminal, so the live view is on by default. -e: its exit status.
    let o = Command::new("script")
        .args(["-q", "-f", "-e", "-c", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("running script(1) (util-linux)");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let frames: Vec<&str> = out.split(CLEAR).skip(1).collect();
    assert!(frames.len() >= 3, "{} frames:\n{out}", frames.len());
    assert!(
        frames
            .iter()
            .any(|f| f.contains("growing fastest: array_buffers +")),
        "no frame names array_buffers as growing:\n{out}"
    );
    let last = frames.last().unwrap();
    assert!(
        last.contains(REPORT_HEAD),
        "no report after the live view:\n{last}"
    );
}

#[test]
fn piped_live_view_is_plain_text_and_ends_with_the_report() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let js = leak_js(dir.path());
    let o = Command::new(offheap_bin())
        .args(run_args(&js, &["--live"]))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = text(&o);
    assert_exit_0(&o);
    assert!(
        !o.stdout.contains(&0x1b),
        "escape byte in piped output:\n{out}"
    );
    let frames = out.matches("offheap · resident mode · ").count();
    assert!(frames >= 3, "{frames} frames:\n{out}");
    assert!(
        out.contains("growing fastest: array_buffers +"),
        "no frame names array_buffers as growing:\n{out}"
    );
    let (_, report) = out.rsplit_once(REPORT_HEAD).expect("no final report");
    assert!(
        !report.contains("offheap · resident mode · "),
        "a frame after the report"
    );
}

#[test]
fn piped_without_live_has_no_frames() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let js = leak_js(dir.path());
    let o = Command::new(offheap_bin())
        .args(run_args(&js, &[]))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = text(&o);
    assert_exit_0(&o);
    assert!(!o.stdout.contains(&0x1b), "{out}");
    assert!(!out.contains("offheap · resident mode · "), "{out}");
    assert!(out.starts_with(REPORT_HEAD), "{out}");
}

/// Malloc mode draws from the kernel's maps each interval: the growing
/// buffers show up there too.
#[test]
fn malloc_mode_live_view_shows_growth() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let js = leak_js(dir.path());
    let o = Command::new(offheap_bin())
        .args(run_args(&js, &["--live", "--mode", "malloc"]))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = text(&o);
    assert_exit_0(&o);
    assert!(!o.stdout.contains(&0x1b), "{out}");
    assert!(
        out.matches("offheap · malloc mode · ").count() >= 3,
        "{out}"
    );
    assert!(
        out.contains("growing fastest: array_buffers +"),
        "no frame names array_buffers as growing:\n{out}"
    );
    assert!(out.contains("offheap report · mode malloc"), "{out}");
}
