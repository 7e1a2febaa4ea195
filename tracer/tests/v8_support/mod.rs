//! Helpers of the V8 frame tests: the node versions under test, a node
//! process stopped with ptrace at a known point of a JS fixture, and the
//! reference walk of its main thread.
#![allow(dead_code)]
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use offheap::symbols::{
    read_exec_maps,
    v8::{
        proc_config, reference_walk, JsFrame, JsFrameTag, ProcessMemory, V8Metadata, V8Resolver,
        WalkedFrame,
    },
};
use tracer_common::V8ProcConfig;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A node binary under test.
#[derive(Clone, Debug)]
pub struct Node {
    pub major: u32,
    pub bin: PathBuf,
}

/// node 18 and 22 from `cargo xtask setup` (target/node-versions, or
/// $OFFHEAP_NODE_VERSIONS), and the system's node 20. Missing ones fail.
pub fn node_versions() -> Vec<Node> {
    let dir = std::env::var_os("OFFHEAP_NODE_VERSIONS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/node-versions"));
    let system = which("node").expect("node is not in PATH (cargo xtask setup)");
    let mut out = Vec::new();
    for (major, bin) in [
        (18, dir.join("18/bin/node")),
        (20, system),
        (22, dir.join("22/bin/node")),
    ] {
        let v = Command::new(&bin)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}: run `cargo xtask setup`", bin.display()));
        let v = String::from_utf8_lossy(&v.stdout).trim().to_string();
        assert!(
            v.starts_with(&format!("v{major}.")),
            "{} is {v}, expected node {major} (cargo xtask setup)",
            bin.display()
        );
        out.push(Node { major, bin });
    }
    out
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

pub fn metadata(bin: &Path) -> V8Metadata {
    let data = std::fs::read(bin).unwrap();
    V8Metadata::from_elf(&data).unwrap_or_else(|e| panic!("{}: {e}", bin.display()))
}

/// The decoder's config for `pid`, running `bin`.
pub fn config_for(meta: &V8Metadata, pid: u32, bin: &Path) -> V8ProcConfig {
    let maps = read_exec_maps(pid).unwrap();
    let real = std::fs::canonicalize(bin).unwrap();
    let builtins = meta.builtins_in(&maps, real.to_str().unwrap());
    assert!(
        !builtins.is_empty(),
        "no mapping of {} holds V8's builtins",
        real.display()
    );
    proc_config(meta, &builtins)
}

/// Waits until the main thread of `pid` sits in the syscall `nr` (from
/// /proc/PID/syscall: the number, then the arguments, then sp and pc).
pub fn wait_in_syscall(pid: u32, nr: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if s.split_whitespace().next() == Some(&nr.to_string()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} never blocked in syscall {nr}: {s}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A thread stopped with PTRACE_SEIZE + PTRACE_INTERRUPT; detached on drop.
pub struct Stopped {
    pub tid: u32,
    pub regs: libc::user_regs_struct,
}

impl Stopped {
    pub fn seize(tid: u32) -> Stopped {
        // SAFETY: plain ptrace/waitpid calls on a thread of our own child;
        // `regs` is a valid out-parameter for PTRACE_GETREGS.
        unsafe {
            let pid = tid as libc::pid_t;
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0),
                0,
                "PTRACE_SEIZE {tid}: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0), 0);
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, libc::__WALL), pid);
            assert!(libc::WIFSTOPPED(status), "status {status:#x}");
            let mut regs: libc::user_regs_struct = std::mem::zeroed();
            assert_eq!(
                libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs as *mut _),
                0
            );
            Stopped { tid, regs }
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: detaching the thread seized above.
        unsafe {
            libc::ptrace(libc::PTRACE_DETACH, self.tid as libc::pid_t, 0, 0);
        }
    }
}

/// The reference walk of the stopped main thread of `pid`.
pub fn walk_stopped(cfg: &V8ProcConfig, pid: u32) -> Vec<WalkedFrame> {
    let maps = read_exec_maps(pid).unwrap();
    let stopped = Stopped::seize(pid);
    let mem = ProcessMemory { pid };
    reference_walk(cfg, &mem, &maps, stopped.regs.rip, stopped.regs.rbp)
}

/// The JS frames of a walk, resolved, in stack order (innermost first).
pub fn resolve_all(resolver: &mut V8Resolver, words: &[u64]) -> Vec<JsFrame> {
    words
        .iter()
        .filter_map(|&w| JsFrameTag::decode(w))
        .map(|t| resolver.resolve(&t).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

pub fn resolver_for(meta: &V8Metadata, pid: u32) -> V8Resolver {
    V8Resolver::new(Arc::new(meta.clone()), Box::new(ProcessMemory { pid }))
}

/// Held for the whole of a BPF test: one test at a time touches the kernel,
/// across worktrees (the lock file of tests/e2e/common).
pub struct BpfLock(#[allow(dead_code)] std::fs::File);

/// Fails (never skips) when the machine cannot run BPF tests.
pub fn require_bpf() -> BpfLock {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "BPF tests need root");
    assert!(
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "no kernel BTF: BPF tests cannot run here"
    );
    let f = std::fs::File::create(std::env::temp_dir().join("offheap-e2e.lock")).unwrap();
    // SAFETY: flock on an fd we own.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) },
        0
    );
    BpfLock(f)
}

/// Copies tracer/tests/fixtures/v8/<name> into `dir`.
pub fn fixture(dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    std::fs::copy(
        workspace().join("tracer/tests/fixtures/v8").join(name),
        &dst,
    )
    .unwrap();
    dst
}
