//! How a trace ends: --duration, SIGTERM, and a report that cannot be written.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use offheap_e2e::*;

const T: Duration = Duration::from_secs(120);

/// `record --pid TARGET --mode malloc --format json --output OUT` running,
/// attached, with its stderr read on a thread.
fn record_attached(target: &Child, out: &str) -> (Child, Stderr) {
    let mut tracer = Command::new(offheap_bin())
        .args([
            "record",
            "--pid",
            &target.id().to_string(),
            "--mode",
            "malloc",
        ])
        .args(["--format", "json", "--output", out])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = Stderr::new(tracer.stderr.take().unwrap());
    err.wait_attached(T);
    (tracer, err)
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
    assert_exit_0(&o);
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
    let (mut tracer, err) = record_attached(&target, out.to_str().unwrap());
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
    let (mut tracer, err) = record_attached(&target, out.to_str().unwrap());
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

/// SIGKILL gives offheap no chance to detach: the kernel must, as every
/// probe hangs on a descriptor of the process (perf events, BPF links), and
/// nothing is pinned or registered by name. Its programs are then owned by
/// no one and freed; uprobe_events has nothing of it.
#[test]
fn sigkill_leaves_nothing_attached() {
    let _lock = require_bpf();
    let mut target = sleeper();
    let events_before = uprobe_events();
    let (mut tracer, _err) = record_attached(&target, "/dev/null");
    let ours = progs_held_by(tracer.id());
    assert!(!ours.is_empty(), "offheap holds no BPF program?");
    eprintln!("offheap holds {} BPF programs", ours.len());
    let loaded = bpf_prog_ids();
    assert!(
        ours.iter().all(|p| loaded.contains(p)),
        "{ours:?} {loaded:?}"
    );
    signal(&tracer, libc::SIGKILL);
    let _ = tracer.wait();
    assert_eq!(
        progs_left(&ours),
        Vec::<u32>::new(),
        "BPF programs left after SIGKILL"
    );
    let added: Vec<String> = uprobe_events()
        .into_iter()
        .filter(|l| !events_before.contains(l))
        .collect();
    assert_eq!(
        added,
        Vec::<String>::new(),
        "uprobe_events left after SIGKILL"
    );
    // The target runs on, untouched.
    assert_eq!(target.try_wait().unwrap(), None);
    target.kill().unwrap();
    let _ = target.wait();
}

/// SIGINT while offheap attaches (here: waiting for a target that maps no
/// allocator, with its system-wide programs already attached) ends the
/// attach at once: exit 130 and the one line the README documents, no
/// report, and every probe detached (the programs it held are freed, no
/// uprobe_events line added).
#[test]
fn sigint_during_attach_exits_130_and_detaches_everything() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let mut target = static_sleeper(dir.path());
    let out = dir.path().join("r.json");
    let events_before = uprobe_events();
    let mut tracer = Command::new(offheap_bin())
        .args(["record", "--pid", &target.id().to_string()])
        .args(["--mode", "malloc", "--format", "json", "--output"])
        .arg(&out)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = Stderr::new(tracer.stderr.take().unwrap());
    // Attached system-wide (links held), now in the target's attach.
    wait_attaching(&mut tracer);
    let held = progs_held_by(tracer.id());
    let links = links_held_by(tracer.id());
    let sent = std::time::Instant::now();
    signal(&tracer, libc::SIGINT);
    let status = tracer.wait().unwrap();
    let took = sent.elapsed();
    let rest = err.rest();
    target.kill().unwrap();
    let _ = target.wait();
    eprintln!(
        "offheap held {} programs and {links} links; exited {took:?} after SIGINT",
        held.len()
    );
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert_eq!(
        rest,
        [
            "offheap: error: interrupted while attaching: every probe attached so far \
          was detached, nothing was traced"
        ]
    );
    // Before the attach gave up on the target (2 s): the signal ended it.
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert!(!out.exists(), "a report after an interrupted attach");
    assert!(!held.is_empty());
    assert_eq!(progs_left(&held), Vec::<u32>::new(), "BPF programs left");
    let added: Vec<String> = uprobe_events()
        .into_iter()
        .filter(|l| !events_before.contains(l))
        .collect();
    assert_eq!(added, Vec::<String>::new(), "uprobe_events left");
}
