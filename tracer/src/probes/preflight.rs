//! Checks made before loading anything, so that a missing privilege or kernel
//! feature is one clear line instead of a verifier or perf_event_open errno.
use std::{fs, os::fd::AsFd, path::Path};

use aya_obj::generated::{bpf_attach_type, bpf_cmd, bpf_prog_type};

use super::multi::{link_create, sys_bpf, zeroed_attr};
use crate::report::Mode;

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
    #[error(
        "--mode malloc needs uprobe_multi links (BPF_TRACE_UPROBE_MULTI, Linux {}.{} or later), \
         which this kernel ({release}) does not support; --mode resident (the default) needs none",
        UPROBE_MULTI_KERNEL.0,
        UPROBE_MULTI_KERNEL.1
    )]
    NoUprobeMulti { release: String },
    #[error(
        "offheap needs the oom/mark_victim tracepoint with the victim's memory fields (Linux \
         6.9, or a stable kernel with commit 72ba14deb40a); this kernel ({release}) lacks {missing}"
    )]
    OldMarkVictim { release: String, missing: String },
}

/// What the kernel offers beyond the minimum, for the modes that can do
/// without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// uprobe_multi links: resident mode probes libuv's threadpool with
    /// them, and goes without that link on a kernel that lacks them.
    pub uprobe_multi: bool,
}

/// The fields of oom/mark_victim that lifecycle.bpf.c reads (CO-RE: a
/// kernel without one refuses to load the program).
const MARK_VICTIM_FIELDS: [&str; 9] = [
    "pid",
    "comm",
    "total_vm",
    "anon_rss",
    "file_rss",
    "shmem_rss",
    "uid",
    "pgtables",
    "oom_score_adj",
];
const MARK_VICTIM_FORMAT: &str = "/sys/kernel/tracing/events/oom/mark_victim/format";

/// The oldest kernel with everything the programs use: bpf_loop (5.17),
/// bpf_task_pt_regs (5.15), attach cookies on uprobes (5.15), task-local
/// storage in tracing programs (5.11), BTF-typed raw tracepoints (5.5).
pub const MIN_KERNEL: (u32, u32) = (5, 17);
const MIN_KERNEL_WHY: &str = "bpf_loop, 5.17";

/// The first kernel with uprobe_multi links (commit 89ae89f53d20, "bpf: Add
/// multi uprobe link"), which malloc mode's uprobes are (probes/multi.rs).
pub const UPROBE_MULTI_KERNEL: (u32, u32) = (6, 6);

/// The first kernel with the `sock_recv_length` tracepoint (net/socket.c,
/// "sock: add tracepoint for send recv length"), which the traffic
/// counters attach to (traffic.bpf.c).
pub const SOCK_RECV_LENGTH_KERNEL: (u32, u32) = (6, 3);

/// Test knob: BTF raw tracepoints (comma-separated event names) to treat as
/// missing from the kernel, to exercise what offheap does on an older one.
pub const HIDE_TRACEPOINTS_ENV: &str = "OFFHEAP_HIDE_TRACEPOINTS";

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
/// uprobes, uprobe_multi links (required in malloc mode), tracefs (mounted
/// if needed), and the fields of oom/mark_victim.
pub fn check(mode: Mode) -> Result<Features, PreflightError> {
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
    let probe = probe_uprobe_multi();
    if mode == Mode::Malloc {
        malloc_mode_supported(&uts.release, probe)?;
    }
    ensure_tracefs().map_err(PreflightError::Tracefs)?;
    // A format that cannot be read leaves the answer to the program load.
    if let Ok(format) = fs::read_to_string(MARK_VICTIM_FORMAT) {
        let missing = missing_fields(&format, &MARK_VICTIM_FIELDS);
        if !missing.is_empty() {
            return Err(PreflightError::OldMarkVictim {
                release: uts.release,
                missing: missing.join(", "),
            });
        }
    }
    Ok(Features {
        uprobe_multi: malloc_mode_supported(&uts.release, probe).is_ok(),
    })
}

/// The names in `fields` that a tracepoint's format file (tracefs
/// events/CATEGORY/EVENT/format: `field:TYPE NAME;` lines) does not define.
fn missing_fields<'a>(format: &str, fields: &[&'a str]) -> Vec<&'a str> {
    let defined: Vec<&str> = format
        .lines()
        .filter_map(|l| l.trim().strip_prefix("field:"))
        .filter_map(|f| f.split(';').next())
        .filter_map(|decl| decl.rsplit([' ', '\t']).next())
        .map(|name| name.split('[').next().unwrap_or(name))
        .collect();
    fields
        .iter()
        .copied()
        .filter(|f| !defined.contains(f))
        .collect()
}

/// Whether the kernel has the BTF raw tracepoint `event`: the typedef
/// `btf_trace_<event>` that the kernel's tracepoint macros define for every
/// tracepoint (include/trace/bpf_probe.h) and that a tp_btf program is
/// loaded against (kernel/bpf/btf.c, bpf_check_attach_target). A name in
/// `$OFFHEAP_HIDE_TRACEPOINTS` counts as missing.
pub fn has_btf_tracepoint(btf: &aya::Btf, event: &str) -> bool {
    let hidden =
        std::env::var(HIDE_TRACEPOINTS_ENV).is_ok_and(|v| v.split(',').any(|h| h.trim() == event));
    !hidden && btf_defines_tracepoint(btf, event)
}

fn btf_defines_tracepoint(btf: &aya::Btf, event: &str) -> bool {
    btf.id_by_type_name_kind(
        &format!("btf_trace_{event}"),
        aya_obj::btf::BtfKind::Typedef,
    )
    .is_ok()
}

/// What the kernel answered when asked for a uprobe_multi link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkProbe {
    Supported,
    Unsupported,
    /// The question could not be asked (an unexpected errno).
    Unknown,
}

/// Whether malloc mode can attach its uprobes. The kernel's own answer wins
/// over its version (a distribution kernel may carry the link type
/// backported to an older version); the version decides only when the
/// probe could not be made.
pub fn malloc_mode_supported(release: &str, probe: LinkProbe) -> Result<(), PreflightError> {
    let supported = match probe {
        LinkProbe::Supported => true,
        LinkProbe::Unsupported => false,
        LinkProbe::Unknown => kernel_version(release).is_none_or(|v| v >= UPROBE_MULTI_KERNEL),
    };
    if supported {
        Ok(())
    } else {
        Err(PreflightError::NoUprobeMulti {
            release: release.to_string(),
        })
    }
}

/// Asks the kernel for a uprobe_multi link the way libbpf probes the
/// feature: a two-instruction program loaded for BPF_TRACE_UPROBE_MULTI,
/// linked at offset 0 of "/". A kernel with the link type accepts the
/// attach type and then refuses the path, a directory, with EBADF
/// (kernel/trace/bpf_trace.c, bpf_uprobe_multi_link_attach: !d_is_reg);
/// one without it refuses the program or the link with EINVAL (link_create
/// takes no other attach type than BPF_PERF_EVENT or BPF_TRACE_KPROBE_MULTI
/// for a kprobe program). Nothing is attached either way.
pub fn probe_uprobe_multi() -> LinkProbe {
    // r0 = 0; exit (BPF_ALU64|BPF_MOV|BPF_K, BPF_JMP|BPF_EXIT).
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let mut attr = zeroed_attr();
    // SAFETY: writing the PROG_LOAD member of a zeroed union.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    u.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
    u.expected_attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
    u.insns = insns.as_ptr() as u64;
    u.insn_cnt = insns.len() as u32;
    u.license = license.as_ptr() as u64;
    let prog = match sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return LinkProbe::Unsupported,
        Err(_) => return LinkProbe::Unknown,
    };
    link_answer(link_create(prog.as_fd(), c"/", &[0], None, 0, 0).map(drop))
}

/// The meaning of LINK_CREATE's answer to the probe above.
fn link_answer(r: std::io::Result<()>) -> LinkProbe {
    match r.map_err(|e| e.raw_os_error()) {
        Err(Some(libc::EBADF)) | Ok(()) => LinkProbe::Supported,
        Err(Some(libc::EINVAL | libc::EOPNOTSUPP)) => LinkProbe::Unsupported,
        Err(_) => LinkProbe::Unknown,
    }
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
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn reads_own_capabilities() {
        assert!(effective_capabilities().is_some());
    }

    #[test]
    fn malloc_mode_needs_uprobe_multi() {
        use LinkProbe::*;
        // The kernel's answer wins over the version, both ways.
        assert!(malloc_mode_supported("6.18.44-fc-v669", Supported).is_ok());
        assert!(malloc_mode_supported("5.14.0-427.el9.x86_64", Supported).is_ok());
        let e = malloc_mode_supported("6.8.0-40-generic", Unsupported).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--mode malloc needs uprobe_multi links (BPF_TRACE_UPROBE_MULTI, Linux 6.6 or later), \
             which this kernel (6.8.0-40-generic) does not support; --mode resident (the default) \
             needs none"
        );
        // Without an answer, the version decides; an unreadable one does not refuse.
        assert!(malloc_mode_supported("6.6.0", Unknown).is_ok());
        assert!(matches!(
            malloc_mode_supported("6.5.13", Unknown),
            Err(PreflightError::NoUprobeMulti { .. })
        ));
        assert!(malloc_mode_supported("5.17.1", Unknown).is_err());
        assert!(malloc_mode_supported("weird", Unknown).is_ok());
    }

    #[test]
    fn link_create_answers() {
        let os = |n| Err(std::io::Error::from_raw_os_error(n));
        assert_eq!(link_answer(os(libc::EBADF)), LinkProbe::Supported);
        assert_eq!(link_answer(Ok(())), LinkProbe::Supported);
        assert_eq!(link_answer(os(libc::EINVAL)), LinkProbe::Unsupported);
        assert_eq!(link_answer(os(libc::EOPNOTSUPP)), LinkProbe::Unsupported);
        assert_eq!(link_answer(os(libc::EPERM)), LinkProbe::Unknown);
    }

    /// This machine's kernel (6.18) has uprobe_multi links: the probe must
    /// say so itself (the version would let malloc mode through anyway).
    /// Root, like every BPF test, and under the e2e tests' lock
    /// (tests/e2e/common bpf_lock: one BPF test at a time on the machine).
    #[test]
    fn this_kernel_has_uprobe_multi() {
        let lock = fs::File::create(std::env::temp_dir().join("offheap-e2e.lock")).unwrap();
        // SAFETY: flock on an fd we own; released when it closes.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        assert_eq!(probe_uprobe_multi(), LinkProbe::Supported);
    }

    #[test]
    fn mark_victim_fields_from_the_format() {
        // Linux 6.18's format (tracefs), and 6.1's before the fields were
        // added: pid only.
        let new = "name: mark_victim\nID: 609\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n\
            \tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;\n\
            \tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;\n\
            \tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;\n\
            \tfield:unsigned long file_rss;\toffset:32;\tsize:8;\tsigned:0;\n\
            \tfield:unsigned long shmem_rss;\toffset:40;\tsize:8;\tsigned:0;\n\
            \tfield:uid_t uid;\toffset:48;\tsize:4;\tsigned:0;\n\
            \tfield:unsigned long pgtables;\toffset:56;\tsize:8;\tsigned:0;\n\
            \tfield:short oom_score_adj;\toffset:64;\tsize:2;\tsigned:1;\n";
        assert!(missing_fields(new, &MARK_VICTIM_FIELDS).is_empty());
        let old = "name: mark_victim\nID: 480\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n";
        assert_eq!(
            missing_fields(old, &MARK_VICTIM_FIELDS),
            MARK_VICTIM_FIELDS[1..]
        );
        // This machine's kernel has them all.
        let here = fs::read_to_string(MARK_VICTIM_FORMAT).unwrap();
        assert!(missing_fields(&here, &MARK_VICTIM_FIELDS).is_empty());
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
