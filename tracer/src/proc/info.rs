//! What the report says about a process besides its stacks (comm, exe, RSS),
//! and the facts a front end checks before tracing it, read from /proc/PID
//! (proc(5)). Captured while the process lives, so that the report of a dead
//! process is complete.
use std::fs;

use super::limits::{self, MemoryLimits};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub comm: String,
    /// /proc/PID/exe without the " (deleted)" the kernel appends once the
    /// file was replaced (a deploy under a running process).
    pub exe: String,
    pub rss_bytes: u64,
    /// node's heap flags, the host's memory, the cgroup's limit.
    pub limits: MemoryLimits,
}

/// Reads /proc/PID; None once the process is gone (or a zombie: its exe
/// link and VmRSS disappear, proc(5)).
pub fn snapshot(pid: u32) -> Option<ProcInfo> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let exe = exe(pid)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status_field(&status, "VmRSS:")?
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(ProcInfo {
        comm: comm.trim_end().to_string(),
        limits: limits::read(pid, &exe),
        exe,
        rss_bytes: rss_kb * 1024,
    })
}

/// The executable's path as the process sees it: /proc/PID/exe without the
/// " (deleted)" the kernel appends once the file was replaced, which is how
/// /proc/PID/maps names the same file (see `maps`). None once the process
/// is gone.
pub fn exe(pid: u32) -> Option<String> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let exe = exe.to_string_lossy();
    Some(exe.strip_suffix(" (deleted)").unwrap_or(&exe).to_string())
}

fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

/// What /proc says a pid is, for the messages of `record --pid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// A running (or sleeping) process with memory of its own.
    Process,
    /// A thread of another process (the tgid).
    Thread {
        tgid: u32,
    },
    /// Exited, not yet reaped by its parent: no memory left to trace.
    Zombie,
    /// A kernel thread: no user memory.
    KernelThread,
    Gone,
}

/// Classifies `pid` from /proc/PID/status (Tgid, State) and whether it has
/// an mm (kernel threads have no VmSize line, proc(5)).
pub fn liveness(pid: u32) -> Liveness {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Liveness::Gone;
    };
    parse_liveness(pid, &status)
}

fn parse_liveness(pid: u32, status: &str) -> Liveness {
    if let Some(tgid) = status_field(status, "Tgid:").and_then(|t| t.parse().ok()) {
        if tgid != pid {
            return Liveness::Thread { tgid };
        }
    }
    let state = status_field(status, "State:").unwrap_or("");
    if state.starts_with('Z') || state.starts_with('X') {
        return Liveness::Zombie;
    }
    if status_field(status, "VmSize:").is_none() {
        return Liveness::KernelThread;
    }
    Liveness::Process
}

/// The pid as the process's innermost pid namespace sees it: the last field
/// of `NSpid:` in /proc/PID/status (Linux >= 4.1). V8 names its perf map
/// after getpid(), which returns this value inside a container.
pub fn innermost_pid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_nspid(&status)
}

/// The real, effective, saved and filesystem uids of `Uid:` in
/// /proc/PID/status (proc(5)), as this (the initial) user namespace sees them.
pub fn parse_uids(status: &str) -> Vec<u32> {
    status_field(status, "Uid:")
        .map(|v| {
            v.split_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn parse_nspid(status: &str) -> Option<u32> {
    status_field(status, "NSpid:")
        .and_then(|v| v.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// The value of `name` in the process's environment (/proc/PID/environ),
/// as the process started with it.
pub fn environ_var(pid: u32, name: &str) -> Option<String> {
    let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    env.split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process() {
        let p = snapshot(std::process::id()).unwrap();
        assert!(p.rss_bytes > 0);
        assert_eq!(
            p.exe,
            std::env::current_exe().unwrap().to_string_lossy().as_ref()
        );
        assert_eq!(liveness(std::process::id()), Liveness::Process);
        assert_eq!(liveness(u32::MAX - 1), Liveness::Gone);
    }

    #[test]
    fn liveness_from_status() {
        let s = "Name:\tnode\nState:\tS (sleeping)\nTgid:\t10\nVmSize:\t 100 kB\n";
        assert_eq!(parse_liveness(10, s), Liveness::Process);
        assert_eq!(parse_liveness(11, s), Liveness::Thread { tgid: 10 });
        let z = "Name:\tnode\nState:\tZ (zombie)\nTgid:\t10\n";
        assert_eq!(parse_liveness(10, z), Liveness::Zombie);
        let k = "Name:\tkworker/0:1\nState:\tI (idle)\nTgid:\t12\n";
        assert_eq!(parse_liveness(12, k), Liveness::KernelThread);
    }

    #[test]
    fn nspid_takes_the_innermost_namespace() {
        assert_eq!(parse_nspid("Name:\tnode\nNSpid:\t4242\t7\t1\n"), Some(1));
        assert_eq!(parse_nspid("Name:\tnode\nNSpid:\t4242\n"), Some(4242));
        assert_eq!(parse_nspid("Name:\tnode\n"), None);
    }

    #[test]
    fn uids_real_effective_saved_fs() {
        assert_eq!(
            parse_uids("Name:\tnode\nUid:\t1000\t0\t0\t0\nGid:\t1\t1\t1\t1\n"),
            vec![1000, 0, 0, 0]
        );
        assert!(parse_uids("Name:\tx\n").is_empty());
    }
}
