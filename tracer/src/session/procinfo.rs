//! What the report says about a process besides its stacks (comm, exe, RSS),
//! captured while it lives so that the report of a dead process is complete.
use std::fs;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub comm: String,
    pub exe: String,
    pub rss_bytes: u64,
}

/// Reads /proc/PID; None once the process is gone (or a zombie: its exe
/// link and VmRSS disappear, proc(5)).
pub fn snapshot(pid: u32) -> Option<ProcInfo> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(ProcInfo {
        comm: comm.trim_end().to_string(),
        exe: exe.to_string_lossy().into_owned(),
        rss_bytes: rss_kb * 1024,
    })
}

/// The thread-group id of a task: /proc/TID is readable for any thread,
/// but probes filter on the process (tgid).
pub fn tgid_of(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tgid_of_self() {
        assert_eq!(tgid_of(std::process::id()), Some(std::process::id()));
    }

    #[test]
    fn own_process() {
        let p = snapshot(std::process::id()).unwrap();
        assert!(p.rss_bytes > 0);
        assert_eq!(
            p.exe,
            std::env::current_exe().unwrap().to_string_lossy().as_ref()
        );
    }
}
