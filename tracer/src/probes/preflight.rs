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
    #[error("tracefs is not mounted and mounting it at {TRACEFS} failed")]
    Tracefs(#[source] std::io::Error),
    #[error(
        "offheap needs Linux {}.{} or later ({what}); this kernel is {release}",
        MIN_KERNEL.0,
        MIN_KERNEL.1
    )]
    OldKernel { release: String, what: &'static str },
    #[error("offheap supports x86-64 only (its BPF programs read x86-64 registers); this machine is {0}")]
    Arch(String),
}

/// The oldest kernel with everything the programs use: bpf_loop (5.17),
/// bpf_task_pt_regs (5.15), attach cookies on uprobes (5.15), task-local
/// storage in tracing programs (5.11), BTF-typed raw tracepoints (5.5).
pub const MIN_KERNEL: (u32, u32) = (5, 17);
const MIN_KERNEL_WHY: &str = "bpf_loop, 5.17";

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

/// Runs every check: capabilities, architecture, kernel version, BTF,
/// uprobes, then mounts tracefs if needed.
pub fn check() -> Result<(), PreflightError> {
    check_capabilities()?;
    let uts = uname();
    if uts.machine != "x86_64" {
        return Err(PreflightError::Arch(uts.machine));
    }
    if kernel_version(&uts.release).is_some_and(|v| v < MIN_KERNEL) {
        return Err(PreflightError::OldKernel {
            release: uts.release,
            what: MIN_KERNEL_WHY,
        });
    }
    if !Path::new(BTF_PATH).exists() {
        return Err(PreflightError::NoBtf);
    }
    if !Path::new(UPROBE_PMU).exists() {
        return Err(PreflightError::NoUprobes);
    }
    ensure_tracefs().map_err(PreflightError::Tracefs)
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

struct Uname {
    release: String,
    machine: String,
}

fn uname() -> Uname {
    // SAFETY: uname(2) fills the struct we own; its fields are
    // NUL-terminated (utsname(7)).
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    unsafe { libc::uname(&mut u) };
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Uname {
        release: field(&u.release),
        machine: field(&u.machine),
    }
}

/// (major, minor) of a release string such as `6.18.44-fc-v669`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// aya finds tracepoint ids under tracefs; a fresh machine may not have it
/// mounted, so mount it the way the kernel documents (Documentation/trace/ftrace.rst).
pub fn ensure_tracefs() -> std::io::Result<()> {
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
        return Err(std::io::Error::last_os_error());
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

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(kernel_version("5.4.0-150-generic"), Some((5, 4)));
        assert!(kernel_version("5.4.0").unwrap() < MIN_KERNEL);
        assert!(kernel_version("5.17.1").unwrap() >= MIN_KERNEL);
        assert_eq!(kernel_version("weird"), None);
        assert_eq!(uname().machine, std::env::consts::ARCH);
    }
}
