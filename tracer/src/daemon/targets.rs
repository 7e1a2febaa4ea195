//! Which processes `watch` traces: by cgroup directory, by command name, or
//! every node process (`--all-node`). Used twice: once over /proc at start,
//! then for each EXEC event of a new process.
use std::{
    fs, io,
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

/// The longest comm the kernel keeps: TASK_COMM_LEN (16) minus the NUL;
/// exec(2) and prctl(PR_SET_NAME) truncate longer names (proc(5)).
pub const COMM_MAX: usize = 15;

/// Filesystem magic numbers of cgroup v1 and v2 (statfs(2), linux/magic.h).
const CGROUP_SUPER_MAGIC: i64 = 0x27e0eb;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// A selector that could never match anything.
#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error("--cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--cgroup {path} is not a directory")]
    NotDirectory { path: PathBuf },
    #[error("--cgroup {path} is not a cgroup directory (no cgroup filesystem there)")]
    NotCgroup { path: PathBuf },
}

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

    /// Refuses a `--cgroup` that names no cgroup directory (it would match
    /// nothing, silently), and makes the others absolute and canonical, as
    /// the cgroup directories of processes are. Returns one warning per
    /// `--comm` longer than the kernel keeps: such a name matches a process
    /// whose comm is its first 15 bytes, or whose executable has that name.
    pub fn check(&mut self) -> Result<Vec<String>, SelectorError> {
        for p in &mut self.cgroups {
            let err = |source| SelectorError::Cgroup {
                path: p.clone(),
                source,
            };
            let real = fs::canonicalize(&*p).map_err(err)?;
            if !real.is_dir() {
                return Err(SelectorError::NotDirectory { path: p.clone() });
            }
            let fs_type = rustix::fs::statfs(&real).map_err(|e| err(e.into()))?.f_type as i64;
            if fs_type != CGROUP_SUPER_MAGIC && fs_type != CGROUP2_SUPER_MAGIC {
                return Err(SelectorError::NotCgroup { path: p.clone() });
            }
            *p = real;
        }
        Ok(self
            .comms
            .iter()
            .filter(|c| c.len() > COMM_MAX)
            .map(|c| {
                format!(
                    "--comm {c} is longer than the {COMM_MAX} bytes the kernel keeps of a command name: \
                     matching processes whose comm is {:?} or whose executable is named {c:?}",
                    String::from_utf8_lossy(&c.as_bytes()[..COMM_MAX])
                )
            })
            .collect())
    }

    /// `check`, its warnings printed on stderr: for `watch` at start.
    pub fn checked(mut self) -> Result<Selector, SelectorError> {
        for w in self.check()? {
            eprintln!("offheap: warning: {w}");
        }
        Ok(self)
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
        if self.comms.iter().any(|c| comm_matches(c, p, exe)) {
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

/// `--comm NAME` against a process: its comm, or for a NAME longer than the
/// kernel keeps, the truncated comm or the executable's file name.
fn comm_matches(name: &str, p: &ProcInfo, exe: &Path) -> bool {
    if name.len() <= COMM_MAX {
        return p.comm == name;
    }
    p.comm.as_bytes() == &name.as_bytes()[..COMM_MAX] || exe.file_name().is_some_and(|n| n == name)
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

    #[test]
    fn a_comm_longer_than_the_kernel_keeps_matches_truncated_or_by_exe() {
        let mut s = Selector {
            comms: vec!["my-long-service-name".into(), "short".into()],
            ..Selector::default()
        };
        let w = s.check().unwrap();
        assert_eq!(
            w,
            vec![
                "--comm my-long-service-name is longer than the 15 bytes the kernel keeps of \
                  a command name: matching processes whose comm is \"my-long-service\" or whose \
                  executable is named \"my-long-service-name\""
                    .to_string()
            ]
        );
        assert!(s.matches(&p("my-long-service", Some("/usr/bin/node"), &[])));
        assert!(s.matches(&p("node", Some("/app/my-long-service-name"), &[])));
        assert!(!s.matches(&p("my-long-servic", Some("/usr/bin/node"), &[])));
        assert!(!s.matches(&p("other", Some("/usr/bin/my-long-service"), &[])));
        assert!(s.matches(&p("short", Some("/usr/bin/x"), &[])));
        // A short name is matched on comm only, as before.
        assert!(!s.matches(&p("x", Some("/usr/bin/short"), &[])));
    }

    #[test]
    fn cgroup_selectors_must_be_cgroup_directories() {
        let check = |p: &str| {
            Selector {
                cgroups: vec![p.into()],
                ..Selector::default()
            }
            .check()
            .map(|_| ())
            .map_err(|e| crate::error::one_line(&e))
        };
        assert_eq!(
            check("/nonexistent"),
            Err("--cgroup /nonexistent: No such file or directory (os error 2)".into())
        );
        assert_eq!(
            check("/proc/version"),
            Err("--cgroup /proc/version is not a directory".into())
        );
        assert_eq!(
            check("/tmp"),
            Err("--cgroup /tmp is not a cgroup directory (no cgroup filesystem there)".into())
        );
        // This process's own cgroup directory, however it is mounted.
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let mounts = Mounts::of_this_host().unwrap();
        let dir = locate(&parse_proc_cgroup(&own), &mounts).unwrap().dir;
        let mut s = Selector {
            cgroups: vec![dir.join("./")],
            ..Selector::default()
        };
        assert_eq!(s.check().unwrap(), Vec::<String>::new());
        assert_eq!(s.cgroups, vec![dir]);
    }
}
