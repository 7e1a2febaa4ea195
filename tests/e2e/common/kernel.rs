//! What the kernel holds: BPF programs, links and uprobes, for the checks
//! that nothing is left attached.
use super::*;

/// Every BPF program id loaded in the kernel (bpf(2) BPF_PROG_GET_NEXT_ID).
pub fn bpf_prog_ids() -> Vec<u32> {
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
pub fn progs_held_by(pid: u32) -> Vec<u32> {
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

pub fn uprobe_events() -> Vec<String> {
    std::fs::read_to_string("/sys/kernel/tracing/uprobe_events")
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// How many BPF links a process holds (fds whose fdinfo has `link_id:`):
/// a link exists once a program is attached.
pub fn links_held_by(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter(|t| t.lines().any(|l| l.starts_with("link_id:")))
                .count()
        })
        .unwrap_or(0)
}

/// The processes whose uprobes a process holds: the `pid:` of its
/// uprobe_multi links' fdinfo (Linux 6.9+; malloc mode attaches one set of
/// links per traced process).
pub fn uprobe_pids_held_by(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter(|t| t.contains("uprobe_multi"))
                .filter_map(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("pid:"))
                        .and_then(|v| v.trim().parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v.dedup();
    v
}

/// Waits until every program in `progs` is freed by the kernel (after its
/// last reference went, an RCU grace period later); returns those still
/// loaded after 10 s.
pub fn progs_left(progs: &[u32]) -> Vec<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = bpf_prog_ids();
        let left: Vec<u32> = progs.iter().copied().filter(|p| now.contains(p)).collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(100));
    }
}
