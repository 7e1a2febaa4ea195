//! Memory cgroups: which cgroup a process is in, where that cgroup's directory
//! is on this host, its limit and usage, the processes below it, and the
//! Kubernetes pod and container it belongs to (parsed by `kube`).
//!
//! Handles cgroup v1 (the `memory` controller's hierarchy), v2 (the unified
//! hierarchy, `0::` line), and hybrid hosts (v1 controllers plus a v2 mount
//! at /sys/fs/cgroup/unified). Mount points come from /proc/self/mountinfo.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

pub use super::kube::{parse_kube_path, PodInfo};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: unexpected content {content:?}")]
    Parse { path: PathBuf, content: String },
    #[error("process {0} has no memory cgroup (no v1 memory line, no v2 line)")]
    NoMemoryCgroup(u32),
    #[error("no mounted cgroup hierarchy holds {0} (is /sys/fs/cgroup mounted?)")]
    NotMounted(String),
    #[error("entering the host cgroup namespace (/proc/1/ns/cgroup)")]
    Setns(#[source] io::Error),
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The memory-relevant lines of /proc/PID/cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcCgroup {
    /// Path in the v1 `memory` hierarchy (`N:memory:/path` or `N:cpu,memory:/path`).
    pub v1_memory: Option<String>,
    /// Path in the v2 unified hierarchy (`0::/path`).
    pub unified: Option<String>,
}

/// Parses /proc/PID/cgroup (cgroups(7): `hierarchy-ID:controller-list:path`).
pub fn parse_proc_cgroup(text: &str) -> ProcCgroup {
    let mut out = ProcCgroup::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            out.unified = Some(path.to_string());
        } else if ctrls.split(',').any(|c| c == "memory") {
            out.v1_memory = Some(path.to_string());
        }
    }
    out
}

/// Where the cgroup hierarchies are mounted on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mounts {
    /// Mount point of the v1 hierarchy carrying the memory controller.
    pub v1_memory: Option<PathBuf>,
    /// Mount point of cgroup2 (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
    pub unified: Option<PathBuf>,
}

/// Parses /proc/self/mountinfo (proc(5): fields, ` - `, fstype, source, super options).
pub fn parse_mountinfo(text: &str) -> Mounts {
    let mut m = Mounts::default();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = pre.split(' ').nth(4) else {
            continue;
        };
        // mountinfo escapes spaces and the like as octal (\040).
        let mount_point = PathBuf::from(unescape_octal(mount_point));
        let mut post = post.split(' ');
        let fstype = post.next().unwrap_or("");
        let opts = post.nth(1).unwrap_or("");
        match fstype {
            "cgroup2" if m.unified.is_none() => m.unified = Some(mount_point),
            "cgroup" if m.v1_memory.is_none() && opts.split(',').any(|o| o == "memory") => {
                m.v1_memory = Some(mount_point)
            }
            _ => {}
        }
    }
    m
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Mounts {
    pub fn of_this_host() -> Result<Mounts, CgroupError> {
        Ok(parse_mountinfo(&read(Path::new("/proc/self/mountinfo"))?))
    }
}

/// A process's memory cgroup, located on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryCgroup {
    pub version: Version,
    /// Path inside the hierarchy, as /proc/PID/cgroup shows it.
    pub path: String,
    /// The cgroup's directory.
    pub dir: PathBuf,
}

/// Chooses the memory cgroup from a /proc/PID/cgroup: the v1 memory
/// controller when it is mounted (it is the one enforcing limits on v1 and
/// hybrid hosts), else the unified hierarchy.
pub fn locate(pc: &ProcCgroup, mounts: &Mounts) -> Option<MemoryCgroup> {
    let join = |root: &Path, p: &str| root.join(p.trim_start_matches('/'));
    if let (Some(p), Some(root)) = (&pc.v1_memory, &mounts.v1_memory) {
        return Some(MemoryCgroup {
            version: Version::V1,
            path: p.clone(),
            dir: join(root, p),
        });
    }
    match (&pc.unified, &mounts.unified) {
        (Some(p), Some(root)) => Some(MemoryCgroup {
            version: Version::V2,
            path: p.clone(),
            dir: join(root, p),
        }),
        _ => None,
    }
}

/// The memory cgroup of process `pid` on this host.
pub fn memory_cgroup_of(pid: u32, mounts: &Mounts) -> Result<MemoryCgroup, CgroupError> {
    let pc = parse_proc_cgroup(&read(&PathBuf::from(format!("/proc/{pid}/cgroup")))?);
    if pc.v1_memory.is_none() && pc.unified.is_none() {
        return Err(CgroupError::NoMemoryCgroup(pid));
    }
    locate(&pc, mounts)
        .ok_or_else(|| CgroupError::NotMounted(pc.v1_memory.or(pc.unified).unwrap_or_default()))
}

/// Paths in /proc/PID/cgroup are relative to the reader's cgroup namespace;
/// a container (even privileged) usually has its own, which would hide the
/// kubepods path. This moves the calling thread into init's namespace (needs
/// hostPID and CAP_SYS_ADMIN). Namespaces are per thread: call it before
/// starting other threads. Returns false when already there.
pub fn enter_host_cgroup_namespace() -> Result<bool, CgroupError> {
    enter_cgroup_namespace_of(1)
}

/// Moves the calling thread into the cgroup namespace of `pid` (setns(2)
/// with CLONE_NEWCGROUP). Returns false when already there.
pub fn enter_cgroup_namespace_of(pid: u32) -> Result<bool, CgroupError> {
    let theirs = format!("/proc/{pid}/ns/cgroup");
    let link = |p: &str| fs::read_link(p).map_err(CgroupError::Setns);
    if link(&theirs)? == link("/proc/thread-self/ns/cgroup")? {
        return Ok(false);
    }
    let f = fs::File::open(&theirs).map_err(CgroupError::Setns)?;
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWCGROUP) } != 0 {
        return Err(CgroupError::Setns(io::Error::last_os_error()));
    }
    Ok(true)
}

fn read_u64_or_max(path: &Path) -> Result<Option<u64>, CgroupError> {
    let s = read(path)?;
    let t = s.trim();
    if t == "max" {
        return Ok(None);
    }
    t.parse().map(Some).map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        content: t.to_string(),
    })
}

/// v1 "no limit" is PAGE_COUNTER_MAX pages rounded to bytes (e.g.
/// 9223372036854771712): anything this large means unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

impl MemoryCgroup {
    /// The hard limit, None when unlimited.
    pub fn limit_bytes(&self) -> Result<Option<u64>, CgroupError> {
        match self.version {
            Version::V1 => Ok(read_u64_or_max(&self.dir.join("memory.limit_in_bytes"))?
                .filter(|&v| v < V1_UNLIMITED)),
            Version::V2 => read_u64_or_max(&self.dir.join("memory.max")),
        }
    }

    /// The lowest hard limit of this cgroup and its ancestors, the one the
    /// kernel enforces first: a container's own cgroup may be unlimited
    /// below a limited one (Kubernetes puts the pod's limit on the pod's
    /// cgroup too). None when no level has a limit.
    pub fn effective_limit_bytes(&self) -> Option<u64> {
        let depth = self.path.split('/').filter(|c| !c.is_empty()).count();
        self.dir
            .ancestors()
            .take(depth + 1)
            .filter_map(|dir| {
                MemoryCgroup {
                    dir: dir.to_path_buf(),
                    ..self.clone()
                }
                .limit_bytes()
                .ok()
                .flatten()
            })
            .min()
    }

    /// Current usage as the limit is enforced against.
    pub fn usage_bytes(&self) -> Result<u64, CgroupError> {
        let f = match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        };
        let p = self.dir.join(f);
        read_u64_or_max(&p)?.ok_or(CgroupError::Parse {
            path: p,
            content: "max".into(),
        })
    }

    /// Every process in this cgroup and its descendants.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        pids_below(&self.dir)
    }

    /// The pod, when the cgroup is a Kubernetes one.
    pub fn pod(&self) -> Option<PodInfo> {
        parse_kube_path(&self.path)
    }

    /// A short name for file names and logs: the pod UID, else the last path component.
    pub fn short_name(&self) -> String {
        if let Some(p) = self.pod() {
            return p.pod_uid;
        }
        match self.path.trim_end_matches('/').rsplit('/').next() {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => "root".to_string(),
        }
    }
}

/// Pids in `cgroup.procs` of `dir` and of every directory below it, sorted.
/// A cgroup removed while walking is skipped (containers come and go).
pub fn pids_below(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let mut out = Vec::new();
    walk(dir, &mut out, true)?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<u32>, top: bool) -> Result<(), CgroupError> {
    let procs = dir.join("cgroup.procs");
    match fs::read_to_string(&procs) {
        Ok(s) => out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
        Err(e) if !top && e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: procs,
                source,
            })
        }
    }
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if !top && e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&e.path(), out, false)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f5c1a3e-8d4b-4c6a-9e21-7b3f2d1c0a99";
    const CID: &str = "3b9f2c1d4e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";

    #[test]
    fn proc_cgroup_v1_v2_and_hybrid() {
        let v1 = "12:memory:/kubepods/burstable/podx/y\n11:cpu,cpuacct:/a\n1:name=systemd:/b\n";
        assert_eq!(
            parse_proc_cgroup(v1),
            ProcCgroup {
                v1_memory: Some("/kubepods/burstable/podx/y".into()),
                unified: None
            }
        );
        assert_eq!(
            parse_proc_cgroup("0::/system.slice/node.service\n"),
            ProcCgroup {
                v1_memory: None,
                unified: Some("/system.slice/node.service".into())
            }
        );
        let hybrid = "5:cpu,memory:/m\n0::/u\n";
        let pc = parse_proc_cgroup(hybrid);
        assert_eq!(pc.v1_memory.as_deref(), Some("/m"));
        assert_eq!(pc.unified.as_deref(), Some("/u"));
        // Paths may contain ':' (cgroups(7) splits on the first two only).
        assert_eq!(
            parse_proc_cgroup("0::/a:b\n").unified.as_deref(),
            Some("/a:b")
        );
    }

    #[test]
    fn mountinfo_v1_v2_hybrid() {
        let v1 = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                  36 31 0:33 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                  37 31 0:34 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let m = parse_mountinfo(v1);
        assert_eq!(m.v1_memory, Some(PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(m.unified, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        let m = parse_mountinfo(v2);
        assert_eq!(m.v1_memory, None);
        assert_eq!(m.unified, Some(PathBuf::from("/sys/fs/cgroup")));
        // A combined v1 hierarchy, mounted at an escaped path.
        let odd = "40 31 0:35 / /host/sys\\040fs/cpu,memory rw - cgroup cgroup rw,cpu,memory\n";
        assert_eq!(
            parse_mountinfo(odd).v1_memory,
            Some(PathBuf::from("/host/sys fs/cpu,memory"))
        );
    }

    #[test]
    fn locate_prefers_v1_memory_on_hybrid_hosts() {
        let pc = parse_proc_cgroup("4:memory:/a/b\n0::/c\n");
        let both = Mounts {
            v1_memory: Some("/sys/fs/cgroup/memory".into()),
            unified: Some("/sys/fs/cgroup/unified".into()),
        };
        let cg = locate(&pc, &both).unwrap();
        assert_eq!(
            (cg.version, cg.dir),
            (Version::V1, PathBuf::from("/sys/fs/cgroup/memory/a/b"))
        );
        let v2only = Mounts {
            v1_memory: None,
            unified: Some("/sys/fs/cgroup".into()),
        };
        let cg = locate(&pc, &v2only).unwrap();
        assert_eq!(
            (cg.version, cg.dir),
            (Version::V2, PathBuf::from("/sys/fs/cgroup/c"))
        );
        assert_eq!(locate(&pc, &Mounts::default()), None);
    }

    #[test]
    fn limits_usage_and_pids_from_files() {
        let d = tempfile::tempdir().unwrap();
        let cg = |version| MemoryCgroup {
            version,
            path: format!("/kubepods/pod{UID}/{CID}"),
            dir: d.path().to_path_buf(),
        };
        fs::write(d.path().join("memory.max"), "max\n").unwrap();
        fs::write(d.path().join("memory.current"), "123456\n").unwrap();
        assert_eq!(cg(Version::V2).limit_bytes().unwrap(), None);
        assert_eq!(cg(Version::V2).usage_bytes().unwrap(), 123456);
        fs::write(d.path().join("memory.max"), "67108864\n").unwrap();
        assert_eq!(cg(Version::V2).limit_bytes().unwrap(), Some(64 << 20));
        fs::write(
            d.path().join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        assert_eq!(cg(Version::V1).limit_bytes().unwrap(), None);
        fs::write(d.path().join("memory.limit_in_bytes"), "garbage").unwrap();
        assert!(matches!(
            cg(Version::V1).limit_bytes(),
            Err(CgroupError::Parse { .. })
        ));
        assert!(matches!(
            cg(Version::V1).usage_bytes(),
            Err(CgroupError::Read { .. })
        ));
        assert_eq!(cg(Version::V1).short_name(), UID);
        // A child without a limit of its own, below a limited parent.
        let child = d.path().join("pod/ctr");
        fs::create_dir_all(&child).unwrap();
        fs::write(child.join("memory.max"), "max\n").unwrap();
        fs::write(d.path().join("pod/memory.max"), "1048576\n").unwrap();
        let nested = MemoryCgroup {
            version: Version::V2,
            path: "/pod/ctr".into(),
            dir: child,
        };
        assert_eq!(nested.effective_limit_bytes(), Some(1 << 20));

        fs::write(d.path().join("cgroup.procs"), "10\n3\n").unwrap();
        fs::create_dir_all(d.path().join("a/b")).unwrap();
        fs::write(d.path().join("a/cgroup.procs"), "").unwrap();
        fs::write(d.path().join("a/b/cgroup.procs"), "7\n3\n").unwrap();
        assert_eq!(cg(Version::V2).pids().unwrap(), vec![3, 7, 10]);
        assert!(pids_below(&d.path().join("missing")).is_err());
    }

    #[test]
    fn entering_another_cgroup_namespace() {
        // A child in a cgroup namespace of its own (unshare(1) -C).
        let mut child = std::process::Command::new("unshare")
            .args(["-C", "sleep", "60"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let ns = |p: &str| fs::read_link(p).unwrap();
        // unshare execs sleep once the namespace exists: wait for that.
        let mine = ns("/proc/self/ns/cgroup");
        while ns(&format!("/proc/{pid}/ns/cgroup")) == mine {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // On a thread of its own: namespaces are per thread, the test
        // harness's other threads stay where they are.
        let moved = std::thread::spawn(move || {
            let first = enter_cgroup_namespace_of(pid).unwrap();
            let now = ns("/proc/thread-self/ns/cgroup");
            (first, now, enter_cgroup_namespace_of(pid).unwrap())
        })
        .join()
        .unwrap();
        let theirs = ns(&format!("/proc/{pid}/ns/cgroup"));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(moved, (true, theirs, false));
        assert_eq!(ns("/proc/thread-self/ns/cgroup"), mine);
        assert!(enter_cgroup_namespace_of(u32::MAX).is_err());
    }

    #[test]
    fn this_process_cgroup_is_found_and_lists_us() {
        let mounts = Mounts::of_this_host().unwrap();
        let me = std::process::id();
        let cg = memory_cgroup_of(me, &mounts).unwrap();
        assert!(cg.dir.is_dir(), "{}", cg.dir.display());
        let pids = cg.pids().unwrap();
        assert!(pids.contains(&me), "{me} not in {pids:?}");
        let usage = cg.usage_bytes().unwrap();
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        // The cgroup is charged at least for this process's own resident
        // anonymous pages; usage is never below them.
        assert!(
            usage >= rss_kb * 1024 / 2,
            "usage {usage} vs our rss {rss_kb} kB"
        );
        assert!(memory_cgroup_of(u32::MAX, &mounts).is_err());
    }
}
