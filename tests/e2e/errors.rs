//! Errors before tracing starts: one clear line and the documented exit code.
use std::{
    os::unix::process::CommandExt,
    process::{Command, Stdio},
};

use offheap_e2e::*;

fn one_error_line(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr).into_owned();
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got {s:?}");
    assert!(lines[0].starts_with("offheap: error: "), "{s:?}");
    lines[0].to_string()
}

/// A PID that is not in use: above the kernel's pid_max.
fn unused_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    max + 1
}

#[test]
fn unknown_pid_exits_2_with_one_line() {
    let _lock = require_bpf();
    let pid = unused_pid().to_string();
    let o = offheap(&["record", "--pid", &pid, "--mode", "malloc"]);
    assert_eq!(o.status.code(), Some(2));
    let line = one_error_line(&o.stderr);
    assert!(
        line.contains(&format!("no process with PID {pid}")),
        "{line}"
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn non_root_exits_2_naming_the_missing_capabilities() {
    let _lock = bpf_lock();
    let mut cmd = Command::new(offheap_bin());
    cmd.args(["record", "--pid", "1", "--mode", "malloc"])
        .stdin(Stdio::null());
    // SAFETY: only setgroups/setgid/setuid between fork and exec. Dropping to
    // nobody clears the effective capabilities (capabilities(7)).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let line = one_error_line(&o.stderr);
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_SYS_ADMIN"] {
        assert!(line.contains(cap), "{line}");
    }
    assert!(
        line.contains("lacks CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_SYS_ADMIN"),
        "{line}"
    );
}

#[test]
fn unwritable_output_exits_2_before_tracing() {
    let _lock = require_bpf();
    let me = std::process::id().to_string();
    let o = offheap(&[
        "record",
        "--pid",
        &me,
        "--mode",
        "malloc",
        "--output",
        "/proc/offheap-no-such-dir/r.json",
    ]);
    assert_eq!(o.status.code(), Some(2));
    // The path the user gave, and the cause once.
    assert_eq!(
        one_error_line(&o.stderr),
        "offheap: error: cannot write /proc/offheap-no-such-dir/r.json: cannot create a \
         temporary file in /proc/offheap-no-such-dir: No such file or directory (os error 2)"
    );
}

#[test]
fn run_of_a_missing_command_exits_2() {
    let _lock = require_bpf();
    let o = offheap(&["run", "--mode", "malloc", "--", "offheap-no-such-command"]);
    assert_eq!(o.status.code(), Some(2));
    let line = one_error_line(&o.stderr);
    assert!(
        line.contains("command not found: offheap-no-such-command"),
        "{line}"
    );
}

#[test]
fn missing_pid_is_a_usage_error() {
    let o = offheap(&["record", "--mode", "malloc"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn negative_duration_is_a_usage_error_not_a_panic() {
    let o = offheap(&["record", "--pid", "1", "--mode", "malloc", "--duration=-1"]);
    assert_eq!(o.status.code(), Some(1));
    let line = one_error_line(&o.stderr);
    assert!(
        line.contains("--duration must be a positive number"),
        "{line}"
    );
}

#[test]
fn a_thread_id_is_refused_with_its_process_id() {
    let _lock = require_bpf();
    // A thread that lives until told to end.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
        let _ = end_rx.recv();
    });
    let tid = tid_rx.recv().unwrap();
    let pid = std::process::id();
    assert_ne!(tid, pid);
    let o = offheap(&["record", "--pid", &tid.to_string(), "--mode", "malloc"]);
    end_tx.send(()).unwrap();
    t.join().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let line = one_error_line(&o.stderr);
    assert!(
        line.contains(&format!("PID {tid} is a thread of process {pid}")),
        "{line}"
    );
}

#[test]
fn a_file_without_execute_permission_is_not_executable_not_missing() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let path = script.to_str().unwrap();
    let o = offheap(&["run", "--mode", "malloc", "--", path]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        one_error_line(&o.stderr),
        format!("offheap: error: {path} is not executable (no execute permission)")
    );
    // Found through PATH, as execvp(3) finds it (EACCES, not ENOENT).
    let o = Command::new(offheap_bin())
        .args(["run", "--mode", "malloc", "--", "app.sh"])
        .env("PATH", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        one_error_line(&o.stderr),
        format!("offheap: error: {path} is not executable (no execute permission)")
    );
}

#[test]
fn a_bad_flag_is_one_line_with_the_help_to_read() {
    let o = offheap(&["record", "--bogus"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        one_error_line(&o.stderr),
        "offheap: error: unexpected argument '--bogus' found; try 'offheap record --help'"
    );
    let o = offheap(&["record"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        one_error_line(&o.stderr),
        "offheap: error: the following required arguments were not provided: --pid <PID>; \
         try 'offheap record --help'"
    );
    // Help itself is still the whole help, on stdout, exit 0.
    let o = offheap(&["record", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).lines().count() > 5);
}

#[test]
fn a_huge_duration_is_shown_in_exponent_form() {
    let o = offheap(&["record", "--pid", "1", "--duration", "1e300"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        one_error_line(&o.stderr),
        "offheap: error: --duration must be a positive number of seconds below 1e9, not 1e300"
    );
}

/// The state letter of /proc/PID/stat (after the parenthesized comm).
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[test]
fn a_zombie_is_refused_as_a_zombie() {
    let _lock = require_bpf();
    // Our child, exited and not reaped yet: a zombie until we wait.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while state(pid) != Some('Z') {
        assert!(std::time::Instant::now() < deadline, "{:?}", state(pid));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for mode in ["malloc", "resident"] {
        let o = offheap(&["record", "--pid", &pid.to_string(), "--mode", mode]);
        assert_eq!(o.status.code(), Some(2), "{mode}");
        assert_eq!(
            one_error_line(&o.stderr),
            format!(
                "offheap: error: PID {pid} is a zombie (it exited and waits for its parent \
                 to reap it): no memory left to trace"
            )
        );
        assert!(o.stdout.is_empty());
    }
    child.wait().unwrap();
}

/// A kernel thread: kthreadd (PID 2) where it is one, else any child of it.
fn kernel_thread() -> u32 {
    let is_kthread = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            !s.contains("VmSize:")
                && (pid == 2 && s.contains("Name:\tkthreadd") || s.contains("PPid:\t2\n"))
        })
    };
    if is_kthread(2) {
        return 2;
    }
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .find(|&p| is_kthread(p))
        .expect("no kernel thread visible in /proc")
}

#[test]
fn a_kernel_thread_is_refused_as_a_kernel_thread() {
    let _lock = require_bpf();
    let pid = kernel_thread();
    for mode in ["malloc", "resident"] {
        let o = offheap(&["record", "--pid", &pid.to_string(), "--mode", mode]);
        assert_eq!(o.status.code(), Some(2), "{mode}");
        assert_eq!(
            one_error_line(&o.stderr),
            format!("offheap: error: PID {pid} is a kernel thread: it has no user memory to trace")
        );
    }
}

/// The target exits (killed and reaped) while offheap attaches to it: here
/// while it waits for the target to map an allocator, its system-wide
/// programs attached.
#[test]
fn a_target_that_exits_while_attaching_is_said_so() {
    let _lock = require_bpf();
    let dir = tempfile::tempdir().unwrap();
    let mut target = static_sleeper(dir.path());
    let pid = target.id();
    let mut tracer = Command::new(offheap_bin())
        .args(["record", "--pid", &pid.to_string(), "--mode", "malloc"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_attaching(&mut tracer);
    target.kill().unwrap();
    target.wait().unwrap();
    let o = tracer.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        one_error_line(&o.stderr),
        format!("offheap: error: the process exited while attaching (PID {pid})")
    );
    assert!(o.stdout.is_empty());
}

/// A failure with a cause prints the cause once (error types keep it as
/// their source only; main joins the chain); unwritable_output_exits_2_before_tracing
/// checks another.
#[test]
fn a_cause_is_printed_once() {
    let o = offheap(&["report", "/proc/offheap-no-such-dir/r.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        one_error_line(&o.stderr),
        "offheap: error: cannot read /proc/offheap-no-such-dir/r.json: \
         No such file or directory (os error 2)"
    );
}
