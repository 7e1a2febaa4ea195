//! Checks made before loading anything, so that a missing privilege or kernel
//! feature is one clear line instead of a verifier or perf_event_open errno.
use std::{fs, path::Path};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "offheap needs root with the capabilities CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and \
         CAP_SYS_ADMIN (and CAP_SYS_RESOURCE on kernels before 5.11); this process lacks {0}"
    )]
    MissingCapabilities(String),
    #[error("the kernel has no BTF at {BTF_PATH} (needs CONFIG_DEBUG_INFO_BTF=y)")]
    NoBtf,
    #[error("the kernel does not support uprobes (no {UPROBE_PMU}; needs CONFIG_UPROBE_EVENTS=y)")]
    NoUprobes,
    #[error("tracefs is not mounted and mounting it at {TRACEFS} failed: {0}")]
    Tracefs(std::io::Error),
}

pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe/type";
const TRACEFS: &str = "/sys/kernel/tracing";

/// (bit in CapEff, name). Bits from include/uapi/linux/capability.h.
/// CAP_SYS_RESOURCE is not required: since 5.11 BPF memory is charged to the
/// memory cgroup, not RLIMIT_MEMLOCK, and containers often drop it.
const NEEDED_CAPS: [(u32, &str); 4] = [
    (39, "CAP_BPF"),        // load programs, create maps
    (38, "CAP_PERFMON"),    // perf_event_open for uprobes/tracepoints, stack traces
    (19, "CAP_SYS_PTRACE"), // read /proc/PID/{maps,root} of another user's process
    (21, "CAP_SYS_ADMIN"),  // mount tracefs; bpf_probe_read_user of other processes
];

/// Runs every check: capabilities, BTF, uprobes, then mounts tracefs if needed.
pub fn check() -> Result<(), PreflightError> {
    check_capabilities()?;
    if !Path::new(BTF_PATH).exists() {
        return Err(PreflightError::NoBtf);
    }
    if !Path::new(UPROBE_PMU).exists() {
        return Err(PreflightError::NoUprobes);
    }
    ensure_tracefs()
}

fn check_capabilities() -> Result<(), PreflightError> {
    let eff = effective_capabilities().unwrap_or(0);
    let missing: Vec<&str> = NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::MissingCapabilities(missing.join(", ")))
    }
}

/// The CapEff mask of this process, from /proc/self/status (proc(5)).
fn effective_capabilities() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// aya finds tracepoint ids under tracefs; a fresh machine may not have it
/// mounted, so mount it the way the kernel documents (Documentation/trace/ftrace.rst).
fn ensure_tracefs() -> Result<(), PreflightError> {
    if Path::new(TRACEFS).join("events").exists()
        || Path::new("/sys/kernel/debug/tracing/events").exists()
    {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, target, fstype) = (c("nodev"), c(TRACEFS), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PreflightError::Tracefs(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_capabilities() {
        assert!(effective_capabilities().is_some());
    }
}
