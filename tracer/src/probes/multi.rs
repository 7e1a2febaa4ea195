//! Malloc mode's uprobes as uprobe_multi links (BPF_TRACE_UPROBE_MULTI,
//! Linux 6.6): one link carries every attach point of one program for one
//! process, each with its cookie.
//!
//! Why not aya's UProbe: it attaches through one perf event per function,
//! and the kernel tears a perf uprobe down under the kernel-wide event_mutex,
//! waiting out RCU grace periods for each (perf_trace_destroy ->
//! uprobe_unregister_sync, tracepoint_synchronize_unregister): 116 ms per
//! event measured here, one after the other whatever the thread, so the 17
//! probes of glibc's malloc family took 2 s to detach after a trace. A
//! uprobe_multi link unregisters all its uprobes with one grace period.
//!
//! aya 0.14 has no uprobe_multi, and the kernel accepts one only for a
//! program loaded with expected_attach_type BPF_TRACE_UPROBE_MULTI, which
//! aya's UProbe never sets. So the three malloc programs are loaded here, from
//! the same object and through aya-obj (the relocation code aya itself uses),
//! against the maps aya created: the same instructions, the same maps.
use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use aya::{maps::Map, Ebpf};
use aya_obj::generated::{
    bpf_attach_type, bpf_attr, bpf_cmd, bpf_prog_type, BPF_F_UPROBE_MULTI_RETURN,
};

#[derive(Debug, thiserror::Error)]
pub enum MultiError {
    #[error("parsing the BPF object")]
    Parse(#[source] aya_obj::ParseError),
    #[error("BPF object BTF")]
    Btf(#[source] aya_obj::btf::BtfError),
    #[error("CO-RE relocations against the kernel BTF")]
    Core(#[source] aya_obj::btf::BtfRelocationError),
    #[error("relocating the BPF object")]
    Relocate(#[source] aya_obj::relocation::EbpfRelocationError),
    #[error("BPF program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("BPF map {0} of the object was not created")]
    MissingMap(String),
    #[error("{what}{log}")]
    Syscall {
        what: String,
        #[source]
        source: std::io::Error,
        /// The verifier's last lines, for a failed load.
        log: String,
    },
}

/// The fd of every map of `ebpf`, by name (for `MultiPrograms::load`).
pub fn map_fds(ebpf: &Ebpf) -> HashMap<String, RawFd> {
    ebpf.maps()
        .map(|(n, m)| (n.to_string(), map_fd(m)))
        .collect()
}

/// The fd of any aya map.
fn map_fd(m: &Map) -> RawFd {
    macro_rules! fd {
        ($($v:ident),*) => {
            match m { $(Map::$v(d) => d.fd().as_fd().as_raw_fd(),)* }
        };
    }
    fd!(
        Array,
        ArrayOfMaps,
        BloomFilter,
        CgroupArray,
        CgroupStorage,
        CgrpStorage,
        CpuMap,
        DevMap,
        DevMapHash,
        HashMap,
        HashOfMaps,
        InodeStorage,
        LpmTrie,
        LruHashMap,
        PerCpuArray,
        PerCpuCgroupStorage,
        PerCpuHashMap,
        PerCpuLruHashMap,
        PerfEventArray,
        ProgramArray,
        Queue,
        RingBuf,
        ReusePortSockArray,
        SockHash,
        SockMap,
        SkStorage,
        Stack,
        StackTraceMap,
        Unsupported,
        XskMap
    )
}

pub(super) fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<OwnedFd> {
    let r = super::sys::bpf(cmd, attr)?;
    // SAFETY: the commands used here (BTF_LOAD, PROG_LOAD, LINK_CREATE)
    // return a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

pub(super) use super::sys::zeroed_attr;

/// The malloc-family programs, loaded for uprobe_multi links.
pub struct MultiPrograms {
    progs: HashMap<&'static str, OwnedFd>,
    /// The object's BTF, which the programs reference (func_info).
    _btf: Option<OwnedFd>,
}

/// One uprobe_multi link: dropping it detaches every point it carries.
pub struct MultiLink {
    _fd: OwnedFd,
}

/// The object parsed, its BTF loaded and CO-RE relocated against the
/// kernel's (`MultiPrograms::prepare`): what needs no map yet, done while
/// aya creates the maps.
pub struct Prepared {
    obj: aya_obj::Object,
    btf_fd: Option<OwnedFd>,
}

impl MultiPrograms {
    /// Parses `object`, loads its BTF and CO-RE relocates it against the
    /// kernel's `kernel_btf` (~14 ms for this object here, most of it
    /// aya-obj's search of the kernel's types), for `load`.
    pub fn prepare(object: &[u8], kernel_btf: &aya::Btf) -> Result<Prepared, MultiError> {
        let mut obj = aya_obj::Object::parse(object).map_err(MultiError::Parse)?;
        let features = aya::features();
        let mut btf_fd = None;
        if let Some(btf_features) = features.btf() {
            if let Some(btf) = obj
                .fixup_and_sanitize_btf(btf_features)
                .map_err(MultiError::Btf)?
            {
                let bytes = btf.to_bytes();
                let mut attr = zeroed_attr();
                // SAFETY: writing the BTF_LOAD member of a zeroed union.
                let u = unsafe { &mut attr.__bindgen_anon_7 };
                u.btf = bytes.as_ptr() as u64;
                u.btf_size = bytes.len() as u32;
                btf_fd = Some(sys_bpf(bpf_cmd::BPF_BTF_LOAD, &mut attr).map_err(|source| {
                    MultiError::Syscall {
                        what: "loading the object's BTF".into(),
                        source,
                        log: String::new(),
                    }
                })?);
            }
        }
        obj.relocate_btf(kernel_btf).map_err(MultiError::Core)?;
        Ok(Prepared { obj, btf_fd })
    }

    /// Loads `names` from the prepared object against `maps` (`map_fds`:
    /// the maps aya created from the same object). The programs are
    /// verified at the same time, one thread each: the verifier runs in
    /// the loading thread.
    pub fn load(
        prepared: Prepared,
        maps: &HashMap<String, RawFd>,
        names: &[&'static str],
    ) -> Result<MultiPrograms, MultiError> {
        let Prepared { mut obj, btf_fd } = prepared;
        let features = aya::features();
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        let defs: Vec<(String, aya_obj::Map)> = obj.maps.drain().collect();
        let mut relocated = Vec::with_capacity(defs.len());
        for (name, def) in &defs {
            let fd = *maps
                .get(name.as_str())
                .ok_or_else(|| MultiError::MissingMap(name.clone()))?;
            relocated.push((name.as_str(), fd, def));
        }
        obj.relocate_maps(relocated.into_iter(), &text_sections)
            .map_err(MultiError::Relocate)?;
        obj.relocate_calls(&text_sections)
            .map_err(MultiError::Relocate)?;
        obj.sanitize_functions(features);
        let mut found = Vec::with_capacity(names.len());
        for &name in names {
            let p = obj
                .programs
                .get(name)
                .ok_or(MultiError::MissingProgram(name))?;
            let f = obj
                .functions
                .get(&p.function_key())
                .ok_or(MultiError::MissingProgram(name))?;
            found.push((name, p, f));
        }
        let btf = btf_fd.as_ref();
        let loaded = std::thread::scope(|s| {
            let threads: Vec<_> = found
                .into_iter()
                .map(|(name, p, f)| s.spawn(move || (name, load_program(name, p, f, btf))))
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect::<Vec<_>>()
        });
        let mut progs = HashMap::new();
        for (name, fd) in loaded {
            progs.insert(name, fd?);
        }
        Ok(MultiPrograms {
            progs,
            _btf: btf_fd,
        })
    }

    /// Attaches `program` at `offsets` of `path`, each with its cookie, for
    /// process `pid` only; `ret`: at the functions' returns.
    pub fn attach(
        &self,
        program: &'static str,
        path: &Path,
        offsets: &[u64],
        cookies: &[u64],
        pid: u32,
        ret: bool,
    ) -> Result<MultiLink, MultiError> {
        let prog = self
            .progs
            .get(program)
            .ok_or(MultiError::MissingProgram(program))?;
        let what = || format!("attaching {program} to {} (PID {pid})", path.display());
        let cpath =
            CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| MultiError::Syscall {
                what: what(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                log: String::new(),
            })?;
        let n = offsets.len().min(cookies.len());
        let flags = if ret { BPF_F_UPROBE_MULTI_RETURN } else { 0 };
        let fd = link_create(
            prog.as_fd(),
            &cpath,
            &offsets[..n],
            Some(&cookies[..n]),
            pid,
            flags,
        )
        .map_err(|source| MultiError::Syscall {
            what: what(),
            source,
            log: String::new(),
        })?;
        Ok(MultiLink { _fd: fd })
    }
}

/// BPF_LINK_CREATE of a uprobe_multi link: `prog` at `offsets` of `path`
/// (with a cookie each, when given), for process `pid` (0: every process).
pub(super) fn link_create(
    prog: std::os::fd::BorrowedFd<'_>,
    path: &std::ffi::CStr,
    offsets: &[u64],
    cookies: Option<&[u64]>,
    pid: u32,
    flags: u32,
) -> std::io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // SAFETY: writing the LINK_CREATE member of a zeroed union.
    let l = unsafe { &mut attr.link_create };
    l.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    l.attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
    // SAFETY: the uprobe_multi member of the link_create union.
    let u = unsafe { &mut l.__bindgen_anon_3.uprobe_multi };
    u.path = path.as_ptr() as u64;
    u.offsets = offsets.as_ptr() as u64;
    u.cookies = cookies.map_or(0, |c| c.as_ptr() as u64);
    u.cnt = offsets.len() as u32;
    u.flags = flags;
    u.pid = pid;
    sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// BPF_PROG_LOAD of one program as a uprobe_multi program; on failure, again
/// with the verifier's log, whose last lines go into the error.
fn load_program(
    name: &'static str,
    p: &aya_obj::Program,
    f: &aya_obj::Function,
    btf: Option<&OwnedFd>,
) -> Result<OwnedFd, MultiError> {
    let func_info = f.func_info.func_info_bytes();
    let line_info = f.line_info.line_info_bytes();
    let attempt = |log: &mut [u8]| {
        let mut attr = zeroed_attr();
        // SAFETY: writing the PROG_LOAD member of a zeroed union.
        let u = unsafe { &mut attr.__bindgen_anon_3 };
        for (d, s) in u.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s as libc::c_char;
        }
        u.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
        u.expected_attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
        u.insns = f.instructions.as_ptr() as u64;
        u.insn_cnt = f.instructions.len() as u32;
        u.license = p.license.as_ptr() as u64;
        if let Some(btf) = btf {
            u.prog_btf_fd = btf.as_raw_fd() as u32;
            if f.func_info_rec_size > 0 {
                u.func_info = func_info.as_ptr() as u64;
                u.func_info_cnt = f.func_info.len() as u32;
                u.func_info_rec_size = f.func_info_rec_size as u32;
            }
            if f.line_info_rec_size > 0 {
                u.line_info = line_info.as_ptr() as u64;
                u.line_info_cnt = f.line_info.len() as u32;
                u.line_info_rec_size = f.line_info_rec_size as u32;
            }
        }
        if !log.is_empty() {
            u.log_level = 1;
            u.log_buf = log.as_mut_ptr() as u64;
            u.log_size = log.len() as u32;
        }
        sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
    };
    let since = std::time::Instant::now();
    let first = attempt(&mut []);
    log::debug!("{name} verified in {:?}", since.elapsed());
    first.or_else(|_| {
        let mut log = vec![0u8; 1 << 20];
        attempt(&mut log).map_err(|source| {
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0');
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            MultiError::Syscall {
                what: format!("loading BPF program {name}"),
                source,
                log: if tail.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (verifier: {})",
                        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                    )
                },
            }
        })
    })
}
