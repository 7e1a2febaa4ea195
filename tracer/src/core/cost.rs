//! What the tracer itself costs, as the report's `agent` object and watch's
//! `/metrics` state it: its resident memory, the kernel memory its BPF maps
//! pin (charged to its memory cgroup since 5.11), and its CPU time.
use std::fs;

use crate::report::AgentCost;

/// The tracer's cost now.
pub fn measure() -> AgentCost {
    AgentCost {
        rss_bytes: own_rss_bytes(),
        bpf_map_bytes: bpf_map_bytes(),
        cpu_seconds: cpu_seconds(),
    }
}

fn own_rss_bytes() -> u64 {
    crate::proc::snapshot(std::process::id()).map_or(0, |p| p.rss_bytes)
}

/// User plus system CPU time of the whole process (getrusage(2)).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// The sum of `memlock:` over the BPF maps this process holds fds of, each
/// map once (by its `map_id:`; the fdinfo of a map has both,
/// kernel/bpf/syscall.c bpf_map_show_fdinfo). memlock is the map's memory
/// as the kernel accounts it (the map type's map_mem_usage): whole for
/// preallocated maps, what is in use for BPF_F_NO_PREALLOC hash maps, data
/// pages plus the consumer/producer pages for a ring buffer. The ring
/// buffers count too: `record`'s report takes this before its drain thread
/// closes the `events` ring (core::Tracer::finish).
pub fn bpf_map_bytes() -> u64 {
    let Ok(dir) = fs::read_dir("/proc/self/fdinfo") else {
        return 0;
    };
    let mut seen = std::collections::HashSet::new();
    dir.flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            let id = field(&info, "map_id:")?;
            let memlock = field(&info, "memlock:")?;
            seen.insert(id).then_some(memlock)
        })
        .sum()
}

fn field(fdinfo: &str, name: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_memlock() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t1\n\
                    key_size:\t4\nvalue_size:\t8\nmax_entries:\t4096\nmap_flags:\t0x0\n\
                    map_extra:\t0x0\nmemlock:\t362944\nmap_id:\t10\n";
        assert_eq!(field(info, "memlock:"), Some(362944));
        assert_eq!(field(info, "map_id:"), Some(10));
        assert_eq!(field("pos:\t0\n", "memlock:"), None);
        let c = measure();
        assert!(c.rss_bytes > 0 && c.cpu_seconds > 0.0, "{c:?}");
    }
}
