//! Which processes `watch` traces: by cgroup directory, by command name, or
//! every node process (`--all-node`). Used twice: once over /proc at start,
//! then for each EXEC event of a new process.
use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{
    cli::WatchArgs,
    daemon::{
        cgroup::{locate, memory_cgroup_of, parse_proc_cgroup, MemoryCgroup, Mounts, ProcCgroup},
        metrics::Labels,
        oom::Owner,
    },
};

/// Executable names that are Node.js (Debian and Ubuntu install `nodejs`).
const NODE_EXES: &[&str] = &["node", "nodejs"];

/// What a selector looks at, read from /proc/PID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    /// /proc/PID/comm: the thread name, which node's `process.title` changes.
    pub comm: String,
    /// /proc/PID/exe, as the process sees it (inside its container); None
    /// for kernel threads.
    pub exe: Option<PathBuf>,
    /// The process's memory cgroup directories on this host: the v1 memory
    /// controller's and the unified (v2) one, those that are mounted.
    pub cgroup_dirs: Vec<PathBuf>,
}

/// Reads what selectors need about `pid`; None when it is gone.
pub fn proc_info(pid: u32, mounts: &Mounts) -> Option<ProcInfo> {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let comm = fs::read_to_string(base.join("comm")).ok()?;
    // readlink(2) on /proc/PID/exe appends " (deleted)" once the file was
    // replaced (e.g. a node upgrade under a running process).
    let exe = fs::read_link(base.join("exe")).ok().map(|p| {
        let s = p.to_string_lossy();
        PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string())
    });
    let pc = parse_proc_cgroup(&fs::read_to_string(base.join("cgroup")).unwrap_or_default());
    let mut cgroup_dirs = Vec::new();
    let v1_only = ProcCgroup {
        unified: None,
        ..pc.clone()
    };
    let v2_only = ProcCgroup {
        v1_memory: None,
        ..pc
    };
    for p in [&v1_only, &v2_only] {
        if let Some(cg) = locate(p, mounts) {
            cgroup_dirs.push(cg.dir);
        }
    }
    Some(ProcInfo {
        pid,
        comm: comm.trim_end_matches('\n').to_string(),
        exe,
        cgroup_dirs,
    })
}

/// Every process id in /proc (thread-group leaders only: /proc lists no
/// other tasks at its top level).
pub fn all_pids() -> Vec<u32> {
    let mut v: Vec<u32> = fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// The union of `--cgroup`, `--comm` and `--all-node`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub cgroups: Vec<PathBuf>,
    pub comms: Vec<String>,
    pub all_node: bool,
}

impl Selector {
    pub fn from_args(a: &WatchArgs) -> Selector {
        Selector {
            cgroups: a.cgroup.clone(),
            comms: a.comm.clone(),
            all_node: a.all_node,
        }
    }

    /// No flag given: nothing would ever be traced.
    pub fn is_empty(&self) -> bool {
        self.cgroups.is_empty() && self.comms.is_empty() && !self.all_node
    }

    pub fn matches(&self, p: &ProcInfo) -> bool {
        // Kernel threads have no exe and nothing to trace.
        let Some(exe) = &p.exe else {
            return false;
        };
        if self.all_node && is_node_exe(exe) {
            return true;
        }
        if self.comms.contains(&p.comm) {
            return true;
        }
        self.cgroups
            .iter()
            .any(|sel| p.cgroup_dirs.iter().any(|d| d.starts_with(sel)))
    }

    /// The matching processes now running, except this one.
    pub fn scan(&self, mounts: &Mounts) -> Vec<ProcInfo> {
        let me = std::process::id();
        all_pids()
            .into_iter()
            .filter(|&pid| pid != me)
            .filter_map(|pid| proc_info(pid, mounts))
            .filter(|p| self.matches(p))
            .collect()
    }
}

/// What the daemon keeps about a traced process from the moment it starts
/// tracing it: at OOM or exit time /proc/PID may already be gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub info: ProcInfo,
    /// The memory cgroup whose limit applies (None outside any, or unreadable).
    pub cgroup: Option<MemoryCgroup>,
    pub labels: Labels,
    pub owner: Owner,
}

impl Tracked {
    /// None when the process is gone.
    pub fn new(pid: u32, mounts: &Mounts) -> Option<Tracked> {
        let info = proc_info(pid, mounts)?;
        let cgroup = memory_cgroup_of(pid, mounts).ok();
        let pod = cgroup.as_ref().and_then(|c| c.pod());
        let labels = Labels {
            comm: info.comm.clone(),
            pod_uid: pod.as_ref().map(|p| p.pod_uid.clone()).unwrap_or_default(),
            container_id: pod.and_then(|p| p.container_id).unwrap_or_default(),
        };
        let owner = Owner::of(cgroup.as_ref());
        Some(Tracked {
            info,
            cgroup,
            labels,
            owner,
        })
    }
}

pub fn is_node_exe(exe: &Path) -> bool {
    exe.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| NODE_EXES.contains(&n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(comm: &str, exe: Option<&str>, cg: &[&str]) -> ProcInfo {
        ProcInfo {
            pid: 1,
            comm: comm.into(),
            exe: exe.map(PathBuf::from),
            cgroup_dirs: cg.iter().map(PathBuf::from).collect(),
        }
    }

    #[test]
    fn all_node_goes_by_executable_not_comm() {
        let s = Selector {
            all_node: true,
            ..Selector::default()
        };
        assert!(s.matches(&p("npm start", Some("/usr/local/bin/node"), &[])));
        assert!(s.matches(&p("nodejs", Some("/usr/bin/nodejs"), &[])));
        assert!(!s.matches(&p("node", Some("/usr/bin/python3"), &[])));
        assert!(!s.matches(&p("node", None, &[]))); // kernel thread
        assert!(!s.matches(&p("x", Some("/opt/node/bin/nodemon"), &[])));
    }

    #[test]
    fn comm_and_cgroup_selectors_union() {
        let s = Selector {
            cgroups: vec!["/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice".into()],
            comms: vec!["worker".into()],
            all_node: false,
        };
        assert!(s.matches(&p("worker", Some("/app/w"), &[])));
        assert!(s.matches(&p(
            "x",
            Some("/app/x"),
            &["/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/pod.slice/c.scope"]
        )));
        // Path components, not string prefixes.
        assert!(!s.matches(&p(
            "x",
            Some("/app/x"),
            &["/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice2"]
        )));
        assert!(!s.matches(&p("workers", Some("/app/w"), &[])));
        assert!(Selector::default().is_empty());
        assert!(!s.is_empty());
    }
}
