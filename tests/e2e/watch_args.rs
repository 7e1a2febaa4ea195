//! `watch` flags that could never work are refused at start (exit 2, one
//! line), before anything is traced: a --cgroup that is no cgroup, an
//! --oom-dir that cannot be written. A missing --oom-dir is created, and a
//! --comm longer than the kernel keeps warns and still matches.
#[path = "watch_common.rs"]
mod watch_common;

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use offheap_e2e::*;
use watch_common::{Agent, Stream, NODE, T};

/// `offheap watch ARGS --duration 30`, which must end at once.
fn watch_refused(args: &[&str]) -> (Output, Duration) {
    let t0 = Instant::now();
    let o = Command::new(offheap_bin())
        .arg("watch")
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--duration", "30"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (o, t0.elapsed())
}

/// Exit 2, this one line, nothing else, and no trace ran.
fn assert_refused(o: &Output, took: Duration, line: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().collect::<Vec<_>>(), vec![line], "{err}");
    assert!(o.stdout.is_empty());
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn a_missing_cgroup_is_refused() {
    let (o, took) = watch_refused(&["--cgroup", "/nonexistent"]);
    assert_refused(
        &o,
        took,
        "offheap: error: --cgroup /nonexistent: No such file or directory (os error 2)",
    );
}

#[test]
fn a_file_or_a_plain_directory_as_cgroup_is_refused() {
    let f = tempfile::NamedTempFile::new().unwrap();
    let p = f.path().to_str().unwrap();
    let (o, took) = watch_refused(&["--cgroup", p]);
    assert_refused(
        &o,
        took,
        &format!("offheap: error: --cgroup {p} is not a directory"),
    );
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_str().unwrap();
    let (o, took) = watch_refused(&["--all-node", "--cgroup", p]);
    assert_refused(
        &o,
        took,
        &format!(
            "offheap: error: --cgroup {p} is not a cgroup directory (no cgroup filesystem there)"
        ),
    );
}

#[test]
fn a_read_only_oom_dir_is_refused() {
    // A read-only bind mount, in a mount namespace of the agent's own (so
    // nothing is left mounted): root writes through mode bits, not there.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_str().unwrap();
    let t0 = Instant::now();
    let o = Command::new("unshare")
        .args(["--mount", "sh", "-c"])
        .arg(r#"mount --bind -o ro "$1" "$1" && exec "$2" watch --all-node --listen 127.0.0.1:0 --duration 30 --oom-dir "$1""#)
        .args(["sh", p])
        .arg(offheap_bin())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_refused(
        &o,
        t0.elapsed(),
        &format!(
            "offheap: error: --oom-dir {p} is not writable: Read-only file system (os error 30)"
        ),
    );
}

#[test]
fn an_oom_dir_under_a_file_is_refused() {
    let f = tempfile::NamedTempFile::new().unwrap();
    let p = f.path().join("oom");
    let p = p.to_str().unwrap();
    let (o, took) = watch_refused(&["--all-node", "--oom-dir", p]);
    assert_refused(
        &o,
        took,
        &format!("offheap: error: --oom-dir {p}: cannot create it: Not a directory (os error 20)"),
    );
}

#[test]
fn a_missing_oom_dir_is_created() {
    let _lock = require_bpf();
    let d = tempfile::tempdir().unwrap();
    let oom = d.path().join("var/lib/offheap");
    let agent = Agent::start(&["--comm", "offheap-none", "--oom-dir", oom.to_str().unwrap()]);
    assert!(oom.is_dir());
    assert_eq!(std::fs::read_dir(&oom).unwrap().count(), 0);
    assert_eq!(agent.stop(), Some(0));
}

#[test]
fn a_comm_longer_than_15_bytes_warns_and_matches_the_truncated_comm() {
    let _lock = require_bpf();
    let title = format!("offheap-long-title-{}", std::process::id());
    let mut node = Command::new(NODE)
        .args([
            "-e",
            "process.title = process.argv[1]; console.log('ready'); setInterval(() => {}, 1000)",
        ])
        .arg(&title)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = Stream::new(node.stdout.take().unwrap());
    out.until("ready", T, |l| l == "ready");
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", node.id())).unwrap();
    assert_eq!(comm.trim_end(), &title[..15], "the kernel keeps 15 bytes");
    let mut agent = Agent::start(&["--comm", &title]);
    let warning = format!(
        "offheap: warning: --comm {title} is longer than the 15 bytes the kernel keeps of a \
         command name: matching processes whose comm is {:?} or whose executable is named {title:?}",
        &title[..15]
    );
    let seen = agent.err.drain().to_vec();
    assert!(seen.contains(&warning), "{seen:#?}");
    agent.wait_tracing(node.id());
    assert_eq!(agent.stop(), Some(0));
    let _ = node.kill();
    let _ = node.wait();
}
