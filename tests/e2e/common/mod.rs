//! Helpers for the end-to-end tests: find the `offheap` binary, serialize BPF
//! tests, build C fixtures, drive fixture processes over stdin/stdout, read
//! JSON reports, and GET over HTTP.
//!
//! BPF tests never skip: without root, BTF or uprobes they fail (that is the
//! point of an end-to-end test of a tracer).
use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::fd::AsRawFd,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use serde_json::Value;

mod fixtures;
mod kernel;
mod procs;
mod report;

pub use fixtures::*;
pub use kernel::*;
pub use procs::*;
pub use report::*;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `<workspace>/target/debug/offheap`, or $OFFHEAP_BIN.
pub fn offheap_bin() -> PathBuf {
    let p = std::env::var_os("OFFHEAP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/offheap"));
    assert!(
        p.exists(),
        "{} not found: run `cargo build -p tracer` first (or set OFFHEAP_BIN)",
        p.display()
    );
    p
}

/// Held for the whole of a BPF test: one test at a time touches the kernel.
pub struct BpfLock(#[allow(dead_code)] File);

pub fn bpf_lock() -> BpfLock {
    let f = File::create(std::env::temp_dir().join("offheap-e2e.lock")).unwrap();
    // SAFETY: flock on an fd we own.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    BpfLock(f)
}

/// Fails (never skips) when the machine cannot run BPF tests.
pub fn require_bpf() -> BpfLock {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "BPF end-to-end tests need root (CAP_BPF, CAP_PERFMON, ...)"
    );
    assert!(
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "no kernel BTF: BPF end-to-end tests cannot run here"
    );
    bpf_lock()
}
