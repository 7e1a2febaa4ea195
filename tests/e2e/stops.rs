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

/// Every BPF program id loaded in the kernel (bpf(2) BPF_PROG_GET_NEXT_ID).
fn bpf_prog_ids() -> Vec<u32> {
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    // union bpf_attr for the GET_NEXT_ID commands: start_id, next_id, open_flags.
    let mut attr = [0u32; 3];
    let mut ids = Vec::new();
    loop {
        // SAFETY: bpf(2) reads start_id and writes next_id in our 12-byte attr.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_GET_NEXT_ID,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if r != 0 {
            return ids; // ENOENT: no next id
        }
        ids.push(attr[1]);
        attr[0] = attr[1];
    }
}

/// The BPF programs a process holds (`prog_id:` in the fdinfo of its BPF
/// program and link descriptors).
fn progs_held_by(pid: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn uprobe_events() -> Vec<String> {
    std::fs::read_to_string("/sys/kernel/tracing/uprobe_events")
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
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
    // The kernel frees a program once its last reference is gone, after an
    // RCU grace period: poll briefly.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let left = loop {
        let now = bpf_prog_ids();
        let left: Vec<u32> = ours.iter().copied().filter(|p| now.contains(p)).collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(left, Vec::<u32>::new(), "BPF programs left after SIGKILL");
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
