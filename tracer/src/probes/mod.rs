//! Loading the BPF object and attaching its programs. Nothing here knows how a
//! report looks: it hands the loaded maps to `accounting`.
pub mod allocator;
pub mod object;
pub mod preflight;
pub mod unwind;

use std::collections::BTreeMap;

use aya::{
    maps::HashMap as BpfHashMap,
    programs::{
        trace_point::TracePointLink,
        uprobe::{UProbeLink, UProbeScope},
        ProgramError, TracePoint, UProbe,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use tracer_common::{maps, programs, TargetInfo};

pub use allocator::Allocator;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading the BPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("BPF program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("BPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("loading BPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("attaching {what}: {source}")]
    Attach { what: String, source: ProgramError },
    #[error("updating BPF map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
}

/// The id bits below `STACK_ID_HASHED`: a home slot has at most this many.
const STACK_HASH_BITS: u32 = tracer_common::STACK_ID_HASHED.trailing_zeros();

/// Sizes and knobs fixed before load.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub max_allocs: u32,
    pub max_stack_stats: u32,
    pub max_stack_traces: u32,
    /// Bits of a stack's hash that pick its home slot in `hashed_stacks`
    /// (30; fewer make distinct stacks share home slots).
    pub stack_hash_bits: u32,
    /// Lifecycle's `watch_exec` knob: report every exec and OOM victim on
    /// the host, not only those of targets (`watch`).
    pub watch_exec: bool,
}

impl LoadConfig {
    /// The defaults, with test knobs from the environment. Two make stacks
    /// collide, to exercise the paths that handle it:
    /// $OFFHEAP_MAX_STACK_TRACES resizes `stack_traces` (a tiny map sends
    /// tracepoint stacks to `hashed_stacks`), $OFFHEAP_STACK_HASH_BITS
    /// shrinks the home-slot bits of `hashed_stacks` (0: every stack starts
    /// at the same slot and probes for a free one). $OFFHEAP_MAX_ALLOCS
    /// resizes `allocs`, to fill it with freed entries.
    pub fn from_env() -> LoadConfig {
        let mut c = LoadConfig::default();
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
        if let Some(n) = env("OFFHEAP_MAX_ALLOCS").filter(|n| *n > 0) {
            c.max_allocs = n;
        }
        if let Some(n) = env("OFFHEAP_MAX_STACK_TRACES").filter(|n| *n > 0) {
            c.max_stack_traces = n;
        }
        if let Some(bits) = env("OFFHEAP_STACK_HASH_BITS") {
            c.stack_hash_bits = bits.min(STACK_HASH_BITS);
        }
        c
    }
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            max_allocs: tracer_common::MAX_ALLOCS,
            max_stack_stats: tracer_common::MAX_STACK_STATS,
            max_stack_traces: tracer_common::MAX_STACK_TRACES,
            stack_hash_bits: STACK_HASH_BITS,
            watch_exec: false,
        }
    }
}

/// The loaded object. Links live as long as this value: dropping it detaches
/// every probe.
pub struct Probes {
    ebpf: Ebpf,
    loaded: bool,
    /// Each with the pid it filters on, so one process's can be detached.
    uprobe_links: Vec<(u32, UProbeLink)>,
    tracepoint_links: Vec<TracePointLink>,
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

impl Probes {
    pub fn load(cfg: &LoadConfig) -> Result<Probes, ProbeError> {
        let page = page_size();
        let max_free_allocs = i64::from(cfg.max_allocs / 4);
        let ebpf = EbpfLoader::new()
            .override_global(programs::KNOB_PAGE_SIZE, &page, true)
            .override_global(programs::KNOB_STACK_HASH_BITS, &cfg.stack_hash_bits, true)
            .override_global(programs::KNOB_MAX_FREE_ALLOCS, &max_free_allocs, true)
            .override_global(
                crate::daemon::lifecycle::WATCH_EXEC_GLOBAL,
                &u8::from(cfg.watch_exec),
                true,
            )
            .map_max_entries(maps::ALLOCS, cfg.max_allocs)
            .map_max_entries(maps::STACK_STATS, cfg.max_stack_stats)
            .map_max_entries(maps::STACK_TRACES, cfg.max_stack_traces)
            // `inflight` is task-local storage, which aya 0.13 creates but
            // has no type for; userspace never opens it.
            .allow_unsupported_maps()
            .load(object::OBJECT)?;
        Ok(Probes {
            ebpf,
            loaded: false,
            uprobe_links: Vec::new(),
            tracepoint_links: Vec::new(),
        })
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Loads every program into the kernel (verifier) once.
    fn load_programs(&mut self) -> Result<(), ProbeError> {
        if self.loaded {
            return Ok(());
        }
        for p in programs::MALLOC_FAMILY.iter() {
            for name in std::iter::once(p.enter).chain(p.exit) {
                self.uprobe(name)?
                    .load()
                    .map_err(|source| ProbeError::Program { name, source })?;
            }
        }
        for (name, _, _) in programs::VM_TRACEPOINTS.iter() {
            self.tracepoint(name)?
                .load()
                .map_err(|source| ProbeError::Program { name, source })?;
        }
        self.loaded = true;
        Ok(())
    }

    fn uprobe(&mut self, name: &'static str) -> Result<&mut UProbe, ProbeError> {
        self.ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(ProbeError::MissingProgram(name))
    }

    fn tracepoint(&mut self, name: &'static str) -> Result<&mut TracePoint, ProbeError> {
        self.ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(ProbeError::MissingProgram(name))
    }

    /// Puts a tgid in `targets`: every probe ignores other processes.
    pub fn add_target(&mut self, tgid: u32, flags: u32) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(maps::TARGETS)
            .ok_or(ProbeError::MissingMap(maps::TARGETS))?;
        let mut targets: BpfHashMap<_, u32, TargetInfo> =
            BpfHashMap::try_from(map).map_err(|e| ProbeError::Map(maps::TARGETS, e))?;
        targets
            .insert(tgid, TargetInfo { flags, _pad: 0 }, 0)
            .map_err(|e| ProbeError::Map(maps::TARGETS, e))
    }

    /// Takes a tgid out of `targets`: its probes stop counting at once, so
    /// the figures read afterwards are one consistent moment.
    pub fn remove_target(&mut self, tgid: u32) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(maps::TARGETS)
            .ok_or(ProbeError::MissingMap(maps::TARGETS))?;
        let mut targets: BpfHashMap<_, u32, TargetInfo> =
            BpfHashMap::try_from(map).map_err(|e| ProbeError::Map(maps::TARGETS, e))?;
        match targets.remove(&tgid) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(ProbeError::Map(maps::TARGETS, e)),
        }
    }

    /// Attaches the mapping tracepoints (system-wide; filtered by `targets`).
    pub fn attach_vm(&mut self) -> Result<(), ProbeError> {
        self.load_programs()?;
        for &tracepoint in programs::VM_TRACEPOINTS.iter() {
            self.attach_tracepoint(tracepoint)?;
        }
        Ok(())
    }

    /// Attaches one loaded tracepoint program; its link lives as long as self.
    fn attach_tracepoint(
        &mut self,
        (name, category, event): (&'static str, &str, &str),
    ) -> Result<(), ProbeError> {
        let prog = self.tracepoint(name)?;
        let link = prog
            .attach(category, event)
            .and_then(|id| prog.take_link(id))
            .map_err(|source| ProbeError::Attach {
                what: format!("{name} to {category}/{event}"),
                source,
            })?;
        self.tracepoint_links.push(link);
        Ok(())
    }

    /// Attaches the malloc-family probes to one process's allocator. Functions
    /// sharing one address (glibc's aligned_alloc is memalign) get one probe:
    /// two would fire twice per call. Returns the symbols attached.
    pub fn attach_malloc(
        &mut self,
        pid: u32,
        alloc: &Allocator,
    ) -> Result<Vec<&'static str>, ProbeError> {
        self.load_programs()?;
        let mut by_offset: BTreeMap<u64, &'static str> = BTreeMap::new();
        let mut attached = Vec::new();
        // Targets are real processes (pid > 0); 0 can only come from a caller
        // bug, and then the probes fire for offheap itself, which is never in
        // `targets`, so nothing is counted.
        let scope = std::num::NonZeroU32::new(pid)
            .map_or(UProbeScope::CallingProcess, UProbeScope::OneProcess);
        for p in programs::MALLOC_FAMILY.iter() {
            let Some(&offset) = alloc.offsets.get(p.symbol) else {
                continue;
            };
            if by_offset.contains_key(&offset) {
                continue;
            }
            by_offset.insert(offset, p.symbol);
            // The uretprobe first: an entry seen before its return probe
            // exists would leave an `inflight` entry that no return clears.
            for name in p.exit.into_iter().chain(std::iter::once(p.enter)) {
                let prog = self.uprobe(name)?;
                let link = prog
                    .attach(offset, &alloc.path, scope)
                    .and_then(|id| prog.take_link(id))
                    .map_err(|source| ProbeError::Attach {
                        what: format!(
                            "{name} to {}:{} (PID {pid})",
                            alloc.path.display(),
                            p.symbol
                        ),
                        source,
                    })?;
                self.uprobe_links.push((pid, link));
            }
            attached.push(p.symbol);
        }
        Ok(attached)
    }

    /// Detaches the malloc-family probes of one process (it exited, or
    /// exec'd another program).
    pub fn detach_malloc(&mut self, pid: u32) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.uprobe_links)
            .into_iter()
            .partition(|(p, _)| *p == pid);
        self.uprobe_links = kept;
        drop(gone);
    }

    /// Detaches every probe. Each uprobe unregistration waits for an SRCU
    /// grace period under a kernel-wide lock (~0.08 s each here, measured),
    /// so callers detach after the report is written.
    pub fn detach(&mut self) {
        let uprobes = std::mem::take(&mut self.uprobe_links);
        let tracepoints = std::mem::take(&mut self.tracepoint_links);
        drop(uprobes);
        drop(tracepoints);
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach();
    }
}
