//! Process lifecycle events from `lifecycle.bpf.c`: exec (new targets), exit
//! (finish a report), fork, and OOM-kill victims (post-mortems).
//!
//! Two ways in: [`attach`] adds the lifecycle programs to an `Ebpf` some other
//! loader owns, and [`decode`] turns a record of the shared `events` ring
//! buffer into a [`LifecycleEvent`]; [`LifecycleTracer`] is a standalone loader
//! of just these programs (and their maps), for the daemon and for tests.
use std::{io, path::Path};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use tracer_common::{event_kind, maps, Counter, OomEvent, ProcEvent, TargetInfo};

use crate::probes::object::OBJECT;

/// Program names, as in lifecycle.bpf.c, with the tracepoint each attaches to.
pub const PROGRAMS: &[(&str, &str, &str)] = &[
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
    ("mark_victim", "oom", "mark_victim"),
];
/// The fork program is a BTF-typed raw tracepoint: it needs the child task,
/// which the classic sched_process_fork record does not carry.
pub const FORK_PROGRAM: &str = "sched_process_fork";
/// The `const volatile bool` knob: emit EXEC for every exec on the host.
pub const WATCH_EXEC_GLOBAL: &str = "watch_exec";

const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("BPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("BPF program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("reading the kernel BTF (/sys/kernel/btf/vmlinux): {0}")]
    Btf(#[from] aya::BtfError),
    #[error("mounting tracefs at {TRACEFS}: {0}")]
    Tracefs(io::Error),
}

/// A decoded lifecycle record. Times are `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// `tgid` exec'd a new program, now called `comm`.
    Exec { tgid: u32, comm: String, ts_ns: u64 },
    /// The whole process `tgid` exited. `wait_status` is as waitpid(2) reports
    /// it: `code << 8` after exit(code), the signal number when killed.
    Exit {
        tgid: u32,
        comm: String,
        wait_status: i32,
        ts_ns: u64,
    },
    /// Tracked process `tgid` created the new process `child`.
    Fork {
        tgid: u32,
        child: u32,
        comm: String,
        ts_ns: u64,
    },
    /// The OOM killer chose `tgid` as its victim.
    Oom(OomVictim),
}

/// The oom/mark_victim record, sizes converted to bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomVictim {
    pub tgid: u32,
    pub comm: String,
    pub total_vm_bytes: u64,
    pub anon_rss_bytes: u64,
    pub file_rss_bytes: u64,
    pub shmem_rss_bytes: u64,
    pub pgtables_bytes: u64,
    pub uid: u32,
    pub oom_score_adj: i16,
    pub ts_ns: u64,
}

fn comm_str(c: &[u8]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is a plain #[repr(C)] ABI struct (any bit
    // pattern valid) and read_unaligned copes with the ring buffer's 8-byte
    // alignment being weaker than nothing we rely on.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one `events` record. Returns None for the kinds other modules own
/// (vm events) and for truncated records.
pub fn decode(bytes: &[u8]) -> Option<LifecycleEvent> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    match kind {
        event_kind::EXEC | event_kind::EXIT | event_kind::FORK => {
            let e: ProcEvent = read(bytes)?;
            let (tgid, comm, ts_ns) = (e.hdr.tgid, comm_str(&e.comm), e.hdr.ts_ns);
            Some(match kind {
                event_kind::EXEC => LifecycleEvent::Exec { tgid, comm, ts_ns },
                event_kind::EXIT => LifecycleEvent::Exit {
                    tgid,
                    comm,
                    wait_status: e.exit_code,
                    ts_ns,
                },
                _ => LifecycleEvent::Fork {
                    tgid,
                    child: e.child_tgid,
                    comm,
                    ts_ns,
                },
            })
        }
        event_kind::OOM_VICTIM => {
            let e: OomEvent = read(bytes)?;
            Some(LifecycleEvent::Oom(OomVictim {
                tgid: e.hdr.tgid,
                comm: comm_str(&e.comm),
                total_vm_bytes: e.total_vm_kb * 1024,
                anon_rss_bytes: e.anon_rss_kb * 1024,
                file_rss_bytes: e.file_rss_kb * 1024,
                shmem_rss_bytes: e.shmem_rss_kb * 1024,
                pgtables_bytes: e.pgtables_kb * 1024,
                uid: e.uid,
                oom_score_adj: e.oom_score_adj,
                ts_ns: e.hdr.ts_ns,
            }))
        }
        _ => None,
    }
}

/// Mounts tracefs when it is missing (fresh hosts, containers): aya finds a
/// tracepoint's id under `events/` there.
pub fn ensure_tracefs() -> Result<(), LifecycleError> {
    if Path::new(TRACEFS).join("events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(());
    }
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL");
    // SAFETY: mount(2) with NUL-terminated strings we own and no data.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(LifecycleError::Tracefs(io::Error::last_os_error()));
    }
    Ok(())
}

/// Loads and attaches the lifecycle programs of an already loaded object.
/// The links live as long as `ebpf`.
pub fn attach(ebpf: &mut Ebpf) -> Result<(), LifecycleError> {
    ensure_tracefs()?;
    for &(name, category, tp) in PROGRAMS {
        let prog: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or(LifecycleError::MissingProgram(name))?
            .try_into()
            .map_err(|source| LifecycleError::Program { name, source })?;
        prog.load()
            .and_then(|()| prog.attach(category, tp).map(drop))
            .map_err(|source| LifecycleError::Program { name, source })?;
    }
    let btf = Btf::from_sys_fs()?;
    let name = FORK_PROGRAM;
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or(LifecycleError::MissingProgram(name))?
        .try_into()
        .map_err(|source| LifecycleError::Program { name, source })?;
    prog.load("sched_process_fork", &btf)
        .and_then(|()| prog.attach().map(drop))
        .map_err(|source| LifecycleError::Program { name, source })?;
    Ok(())
}

/// Just the lifecycle programs, with their own `targets`, `counters` and
/// `events` maps.
pub struct LifecycleTracer {
    /// Registered with the tokio reactor on the first `recv`. Declared before
    /// `events` so that it is dropped (deregistered) before the fd closes.
    async_fd: Option<tokio::io::unix::AsyncFd<RawFdRef>>,
    events: RingBuf<MapData>,
    ebpf: Ebpf,
}

/// The ring buffer's fd for the reactor; the RingBuf owns and closes it.
struct RawFdRef(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for RawFdRef {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

impl LifecycleTracer {
    /// `watch_exec`: report every exec on the host (and every OOM victim),
    /// not only those of tracked processes.
    pub fn load(watch_exec: bool) -> Result<Self, LifecycleError> {
        let mut ebpf = EbpfLoader::new()
            .override_global(WATCH_EXEC_GLOBAL, &u8::from(watch_exec), true)
            // `inflight` (task-local storage) has no aya type; unused here.
            .allow_unsupported_maps()
            .load(OBJECT)?;
        attach(&mut ebpf)?;
        let map = ebpf
            .take_map(maps::EVENTS)
            .ok_or(LifecycleError::MissingMap(maps::EVENTS))?;
        let events = RingBuf::try_from(map).map_err(|source| LifecycleError::Map {
            name: maps::EVENTS,
            source,
        })?;
        Ok(LifecycleTracer {
            ebpf,
            events,
            async_fd: None,
        })
    }

    fn targets(&mut self) -> Result<HashMap<&mut MapData, u32, TargetInfo>, LifecycleError> {
        let map = self
            .ebpf
            .map_mut(maps::TARGETS)
            .ok_or(LifecycleError::MissingMap(maps::TARGETS))?;
        HashMap::try_from(map).map_err(|source| LifecycleError::Map {
            name: maps::TARGETS,
            source,
        })
    }

    /// Reports exec, exit, fork and OOM kill of `tgid` from now on.
    pub fn track(&mut self, tgid: u32) -> Result<(), LifecycleError> {
        self.targets()?
            .insert(tgid, TargetInfo::default(), 0)
            .map_err(|source| LifecycleError::Map {
                name: maps::TARGETS,
                source,
            })
    }

    pub fn untrack(&mut self, tgid: u32) -> Result<(), LifecycleError> {
        match self.targets()?.remove(&tgid) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(LifecycleError::Map {
                name: maps::TARGETS,
                source,
            }),
        }
    }

    /// The next pending event, if any (never blocks).
    pub fn next_event(&mut self) -> Option<LifecycleEvent> {
        while let Some(item) = self.events.next() {
            if let Some(ev) = decode(&item) {
                return Some(ev);
            }
        }
        None
    }

    /// Waits for the next event (inside a tokio runtime). The ring buffer's
    /// fd polls readable once a record is submitted (the programs submit
    /// with the default wakeup).
    pub async fn recv(&mut self) -> io::Result<LifecycleEvent> {
        if self.async_fd.is_none() {
            let fd = RawFdRef(self.events_fd());
            // SAFETY: the fd is the ring buffer's, open until `self.events`
            // drops, which happens after `async_fd` (field order).
            let afd = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            }?;
            self.async_fd = Some(afd);
        }
        loop {
            let afd = self.async_fd.as_ref().expect("set above");
            let mut guard = afd.readable().await?;
            // Drain while holding the readiness: clearing it only after
            // seeing the buffer empty cannot lose a wakeup.
            while let Some(item) = self.events.next() {
                if let Some(ev) = decode(&item) {
                    return Ok(ev);
                }
            }
            guard.clear_ready();
        }
    }

    /// The ring buffer's fd, for epoll/`AsyncFd` readiness.
    pub fn events_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.events.as_raw_fd()
    }

    /// A counter summed over CPUs (e.g. `Counter::OomKills`, `Counter::EventsLost`).
    pub fn counter(&self, c: Counter) -> Result<u64, LifecycleError> {
        let map = self
            .ebpf
            .map(maps::COUNTERS)
            .ok_or(LifecycleError::MissingMap(maps::COUNTERS))?;
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| LifecycleError::Map {
                name: maps::COUNTERS,
                source,
            })?;
        let v = arr
            .get(&(c as u32), 0)
            .map_err(|source| LifecycleError::Map {
                name: maps::COUNTERS,
                source,
            })?;
        Ok(v.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain #[repr(C)] value.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    fn comm(s: &str) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    #[test]
    fn decodes_exit_with_wait_status() {
        let mut e = ProcEvent::default();
        e.hdr.kind = event_kind::EXIT;
        e.hdr.tgid = 4242;
        e.hdr.ts_ns = 7;
        e.exit_code = 3 << 8;
        e.comm = comm("node");
        assert_eq!(
            decode(&bytes_of(&e)),
            Some(LifecycleEvent::Exit {
                tgid: 4242,
                comm: "node".into(),
                wait_status: 768,
                ts_ns: 7
            })
        );
    }

    #[test]
    fn decodes_oom_in_bytes_and_full_length_comm() {
        let mut e = OomEvent::default();
        e.hdr.kind = event_kind::OOM_VICTIM;
        e.hdr.tgid = 9;
        e.anon_rss_kb = 65536;
        e.file_rss_kb = 3;
        e.oom_score_adj = -998;
        e.comm = *b"0123456789abcdef"; // no NUL: all 16 bytes are the name
        let Some(LifecycleEvent::Oom(v)) = decode(&bytes_of(&e)) else {
            panic!("not an OOM event")
        };
        assert_eq!(v.anon_rss_bytes, 64 << 20);
        assert_eq!(v.file_rss_bytes, 3072);
        assert_eq!(v.oom_score_adj, -998);
        assert_eq!(v.comm, "0123456789abcdef");
    }

    #[test]
    fn ignores_vm_kinds_and_truncated_records() {
        let mut e = ProcEvent::default();
        e.hdr.kind = event_kind::MMAP;
        assert_eq!(decode(&bytes_of(&e)), None);
        e.hdr.kind = event_kind::EXEC;
        assert_eq!(decode(&bytes_of(&e)[..20]), None);
        assert_eq!(decode(&[1, 2]), None);
    }
}
