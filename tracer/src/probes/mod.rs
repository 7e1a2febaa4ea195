//! Loading the BPF object and attaching its programs: the one loader of the
//! crate. Only the maps and programs of the active mode are created at full
//! size and loaded; nothing here knows how a report looks, it hands the
//! loaded maps to `accounting`.
pub mod allocator;
mod config;
mod detach;
pub mod multi;
pub mod object;
pub mod preflight;
pub(crate) mod sys;
pub mod threadpool;
pub mod unwind;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use aya::{
    maps::HashMap as BpfHashMap,
    programs::{
        raw_trace_point::RawTracePointLink, tp_btf::BtfTracePointLink, trace_point::TracePointLink,
        BtfTracePoint, Program, ProgramError, RawTracePoint, TracePoint,
    },
    Btf, Ebpf, EbpfError, EbpfLoader,
};
use tracer_common::{
    maps,
    programs::{self, Attach, Hook},
    TargetInfo, V8ProcConfig,
};

pub use allocator::Allocator;
pub(crate) use config::page_size;
pub use config::LoadConfig;
pub use detach::Detacher;
use detach::Links;
use multi::{MultiLink, MultiPrograms};
use unwind::UnwindTables;

use crate::{report::Mode, sync::lock};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading the BPF object")]
    Load(#[from] EbpfError),
    #[error("BPF program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("BPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("loading BPF program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching {what}")]
    Attach {
        what: String,
        #[source]
        source: ProgramError,
    },
    #[error("updating BPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading the kernel BTF (/sys/kernel/btf/vmlinux)")]
    Btf(#[from] aya::BtfError),
    #[error(transparent)]
    Multi(multi::MultiError),
    #[error(transparent)]
    Unwind(#[from] unwind::UnwindError),
}

/// The loaded object. Links live as long as this value: dropping it (or
/// `detach`) detaches every probe.
pub struct Probes {
    ebpf: Ebpf,
    mode: Mode,
    /// Whether the traffic programs run (`programs::TRAFFIC`): the kernel
    /// has their tracepoints.
    traffic: bool,
    /// Malloc mode's programs, loaded for uprobe_multi links.
    multi: Option<MultiPrograms>,
    /// The unwind tables of every target's modules (the walker's), shared
    /// with the drain thread, which brings a process's up to date as soon as
    /// it maps code (`tables`).
    unwind: Arc<Mutex<UnwindTables>>,
    /// The thread loading the first target's tables (`LoadConfig::
    /// early_tables`), until `add_target` waits for it.
    early_tables: Option<std::thread::JoinHandle<()>>,
    /// Each with the pid it filters on, so one process's can be detached.
    uprobe_links: Vec<(u32, MultiLink)>,
    tracepoint_links: Vec<TracePointLink>,
    btf_links: Vec<BtfTracePointLink>,
    raw_links: Vec<RawTracePointLink>,
    detacher: Detacher,
}

impl Probes {
    /// Creates the maps (sized for `cfg.mode`) and loads (verifies) the
    /// mode's programs; nothing is attached yet.
    pub fn load(cfg: &LoadConfig) -> Result<Probes, ProbeError> {
        log::debug!("loading the BPF object ({:?} mode)", cfg.mode);
        let page = page_size();
        let max_free_allocs = i64::from(cfg.max_allocs / 4);
        let watch_exec = u8::from(cfg.watch_exec);
        // The kernel's BTF, for aya's CO-RE relocations, the uprobe_multi
        // programs' and the tp_btf programs. aya 0.14's loader parses its
        // own copy as it is made (EbpfLoader::new, ~20 ms here), which it
        // then drops for ours; it has no way to take ours instead. The two
        // parses run at once.
        let (mut loader, btf) = std::thread::scope(|s| {
            let loader = s.spawn(EbpfLoader::new);
            let btf = Btf::from_sys_fs();
            let loader = loader
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            (loader, btf)
        });
        let btf = btf?;
        log::debug!("kernel BTF parsed");
        loader
            .override_global(programs::KNOB_PAGE_SIZE, &page, true)
            .override_global(programs::KNOB_STACK_HASH_BITS, &cfg.stack_hash_bits, true)
            .override_global(programs::KNOB_MAX_FREE_ALLOCS, &max_free_allocs, true)
            .override_global(programs::KNOB_WATCH_EXEC, &watch_exec, true)
            // `inflight` is task-local storage, which aya creates but has
            // no type for; userspace never opens it.
            .allow_unsupported_maps();
        for (name, n) in cfg.map_sizes() {
            loader.map_max_entries(name, n);
        }
        loader.btf(Some(&btf));
        // The uprobe_multi programs' half of the object is parsed and CO-RE
        // relocated while aya creates the maps (no map needed yet; in
        // malloc mode the maps take ~35 ms, with a core to spare).
        let (ebpf, prepared) = std::thread::scope(|s| {
            let prepared = s.spawn(|| MultiPrograms::prepare(object::OBJECT, &btf));
            let ebpf = loader.load(object::OBJECT);
            let prepared = prepared
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            (ebpf, prepared)
        });
        let mut ebpf = ebpf?;
        let prepared = prepared.map_err(ProbeError::Multi)?;
        log::debug!("maps created, programs relocated");
        // Loaded now, while every map is still in `ebpf` (the core takes
        // the ring buffers out later). The threadpool's in every mode.
        let names: &[&'static str] = match cfg.mode {
            // alloc_enter also runs the threadpool probes (THREADPOOL_ENTER).
            Mode::Malloc => &[
                programs::ALLOC_ENTER,
                programs::ALLOC_EXIT,
                programs::FREE_ENTER,
            ],
            Mode::Resident => &[programs::THREADPOOL_ENTER],
        };
        let traffic = programs::TRAFFIC.iter().all(|h| match h.attach {
            Attach::BtfTracePoint(event) => preflight::has_btf_tracepoint(&btf, event),
            Attach::TracePoint(..) | Attach::RawTracePoint(..) => true,
        });
        let hooks = mode_hooks(cfg.mode, traffic);
        let fds = multi::map_fds(&ebpf);
        // Every program of the mode is verified at once, each in its own
        // thread (the verifier runs in the caller's): the uprobe_multi ones
        // here, the system-wide ones in `load_hooks`.
        // The tables' maps are taken out first (the programs were relocated
        // against their fds already).
        let unwind = Arc::new(Mutex::new(UnwindTables::new(
            &mut ebpf,
            unwind::DEFAULT_CAP_BYTES,
        )?));
        // The early tables may still be going in when `load` returns: their
        // last step waits out an RCU grace period (`unwind::loader`'s
        // publish), and so does the first uprobe attach (the kernel's
        // dup_mmap_sem, ~15 ms here), which then overlap. `add_target`
        // waits for them, so no target's probes count before its tables
        // are in. A failure is for add_pid's own load_tables to tell.
        let early_tables = cfg.early_tables.map(|pid| {
            let unwind = Arc::clone(&unwind);
            std::thread::spawn(move || {
                let _ = lock(&unwind).add_process(pid);
                log::debug!("early unwind tables of PID {pid} loaded");
            })
        });
        let (multi, hooks) = std::thread::scope(|s| {
            let multi = s.spawn(|| MultiPrograms::load(prepared, &fds, names));
            let hooks = load_hooks(&mut ebpf, &hooks, &btf);
            let multi = multi
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            (multi, hooks)
        });
        hooks?;
        let multi = Some(multi.map_err(ProbeError::Multi)?);
        Ok(Probes {
            ebpf,
            multi,
            unwind,
            early_tables,
            mode: cfg.mode,
            traffic,
            uprobe_links: Vec::new(),
            tracepoint_links: Vec::new(),
            btf_links: Vec::new(),
            raw_links: Vec::new(),
            detacher: Detacher::default(),
        })
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether traffic is counted: false on a kernel without the
    /// `sock_recv_length` tracepoint (before Linux 6.3), where the traffic
    /// programs are left out and the series carries no traffic.
    pub fn traffic(&self) -> bool {
        self.traffic
    }

    /// Attaches the system-wide programs of the mode (loaded by `load`):
    /// the lifecycle programs, and the mapping tracepoints (malloc mode) or
    /// the fault and mapping tracepoints (resident mode). Every one filters
    /// on `targets` first.
    pub fn attach_mode(&mut self) -> Result<(), ProbeError> {
        preflight::ensure_tracefs().map_err(|e| ProbeError::Attach {
            what: "tracefs".into(),
            source: ProgramError::IOError(e),
        })?;
        for hook in mode_hooks(self.mode, self.traffic) {
            let name = hook.program;
            let prog = self
                .ebpf
                .program_mut(name)
                .ok_or(ProbeError::MissingProgram(name))?;
            match hook.attach {
                Attach::TracePoint(category, event) => {
                    let prog: &mut TracePoint = prog
                        .try_into()
                        .map_err(|_| ProbeError::MissingProgram(name))?;
                    let link = prog
                        .attach(category, event)
                        .and_then(|id| prog.take_link(id))
                        .map_err(|source| ProbeError::Attach {
                            what: format!("{name} to {category}/{event}"),
                            source,
                        })?;
                    self.tracepoint_links.push(link);
                }
                Attach::BtfTracePoint(event) => {
                    let prog: &mut BtfTracePoint = prog
                        .try_into()
                        .map_err(|_| ProbeError::MissingProgram(name))?;
                    let link =
                        prog.attach()
                            .and_then(|id| prog.take_link(id))
                            .map_err(|source| ProbeError::Attach {
                                what: format!("{name} to {event}"),
                                source,
                            })?;
                    self.btf_links.push(link);
                }
                Attach::RawTracePoint(event) => {
                    let prog: &mut RawTracePoint = prog
                        .try_into()
                        .map_err(|_| ProbeError::MissingProgram(name))?;
                    let link = prog
                        .attach(event)
                        .and_then(|id| prog.take_link(id))
                        .map_err(|source| ProbeError::Attach {
                            what: format!("{name} to {event}"),
                            source,
                        })?;
                    self.raw_links.push(link);
                }
            }
        }
        Ok(())
    }

    fn targets(
        &mut self,
    ) -> Result<BpfHashMap<&mut aya::maps::MapData, u32, TargetInfo>, ProbeError> {
        let map = self
            .ebpf
            .map_mut(maps::TARGETS)
            .ok_or(ProbeError::MissingMap(maps::TARGETS))?;
        BpfHashMap::try_from(map).map_err(|source| ProbeError::Map {
            name: maps::TARGETS,
            source,
        })
    }

    /// Puts a tgid in `targets`: every probe ignores other processes. The
    /// first target's early tables are in place first (see `load`).
    pub fn add_target(&mut self, tgid: u32, flags: u32) -> Result<(), ProbeError> {
        if let Some(t) = self.early_tables.take() {
            t.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        }
        self.targets()?
            .insert(tgid, TargetInfo { flags, _pad: 0 }, 0)
            .map_err(|source| ProbeError::Map {
                name: maps::TARGETS,
                source,
            })
    }

    /// Takes a tgid out of `targets`: its probes stop counting at once, so
    /// the figures read afterwards are one consistent moment.
    pub fn remove_target(&mut self, tgid: u32) -> Result<(), ProbeError> {
        match self.targets()?.remove(&tgid) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(source) => Err(ProbeError::Map {
                name: maps::TARGETS,
                source,
            }),
        }
    }

    /// Attaches the malloc-family probes to one process's allocator, from
    /// the attach table (`programs::MALLOC_FAMILY`): one uprobe_multi link
    /// per program and module (see `multi`; the malloc module, then the
    /// C++ one), each point with its function's cookie. Functions sharing
    /// one address (glibc's aligned_alloc is memalign) get one probe: two
    /// would fire twice per call. Returns the symbols attached.
    pub fn attach_malloc(
        &mut self,
        pid: u32,
        alloc: &Allocator,
    ) -> Result<Vec<&'static str>, ProbeError> {
        let multi = self
            .multi
            .as_ref()
            .ok_or(ProbeError::MissingProgram(programs::ALLOC_ENTER))?;
        let mut attached = Vec::new();
        for (path, functions) in alloc.modules() {
            let mut by_offset: BTreeMap<u64, &'static str> = BTreeMap::new();
            // program -> (offsets, cookies)
            let mut points: BTreeMap<&'static str, (Vec<u64>, Vec<u64>)> = BTreeMap::new();
            for p in programs::MALLOC_FAMILY.iter() {
                let Some(f) = functions.get(p.symbol) else {
                    continue;
                };
                let Some(cookie) = p.cookie(f.len) else {
                    continue;
                };
                if by_offset.insert(f.offset, p.symbol).is_some() {
                    continue;
                }
                let (enter, exit) = p.programs();
                for name in std::iter::once(enter).chain(exit) {
                    let e = points.entry(name).or_default();
                    e.0.push(f.offset);
                    e.1.push(cookie);
                }
                attached.push(p.symbol);
            }
            // The return probes first: an entry seen before its return probe
            // exists would leave a call in flight that no return ends.
            let order = [
                (programs::ALLOC_EXIT, true),
                (programs::ALLOC_ENTER, false),
                (programs::FREE_ENTER, false),
            ];
            for (name, ret) in order {
                let Some((offsets, cookies)) = points.get(name) else {
                    continue;
                };
                let link = multi
                    .attach(name, path, offsets, cookies, pid, ret)
                    .map_err(ProbeError::Multi)?;
                self.uprobe_links.push((pid, link));
            }
        }
        Ok(attached)
    }

    /// Attaches the threadpool probes (`programs::THREADPOOL`) to one
    /// process's libuv: one uprobe_multi link of `programs::THREADPOOL_ENTER`
    /// (alloc_enter), each point with its cookie (`ThreadpoolProbe::cookie`).
    /// The kernel registers the points in the order given
    /// (bpf_uprobe_multi_link_attach), and each fires from
    /// its registration: done first, then run, then queue, so that no
    /// thread is linked before the probe that unlinks it is in place.
    pub fn attach_threadpool(
        &mut self,
        pid: u32,
        tp: &threadpool::Threadpool,
    ) -> Result<(), ProbeError> {
        let multi = self
            .multi
            .as_ref()
            .ok_or(ProbeError::MissingProgram(programs::THREADPOOL_ENTER))?;
        let mut table = programs::THREADPOOL.to_vec();
        table.sort_by_key(|p| std::cmp::Reverse(p.kind));
        let (offsets, cookies): (Vec<u64>, Vec<u64>) = table
            .iter()
            .filter_map(|p| tp.functions.get(p.symbol).map(|f| (f.offset, p.cookie())))
            .unzip();
        let link = multi
            .attach(
                programs::THREADPOOL_ENTER,
                &tp.path,
                &offsets,
                &cookies,
                pid,
                false,
            )
            .map_err(ProbeError::Multi)?;
        self.uprobe_links.push((pid, link));
        Ok(())
    }

    /// Loads (or brings up to date: a module mapped since) the unwind
    /// tables of `pid`'s modules and its mapping entries, then makes every
    /// walker forget what it cached about addresses. Call it before the
    /// process's probes fire, and again when it maps code.
    pub fn load_tables(&mut self, pid: u32) -> Result<(), ProbeError> {
        lock(&self.unwind).add_process(pid)?;
        Ok(())
    }

    /// The tables, for the drain thread: `UnwindTables::refresh_process` on
    /// each code mapping, without waiting for the front end's loop.
    pub fn tables(&self) -> Arc<Mutex<UnwindTables>> {
        Arc::clone(&self.unwind)
    }

    /// Drops `pid`'s mapping entries and V8 layout (it exited, or exec'd:
    /// then `load_tables` again).
    pub fn drop_tables(&mut self, pid: u32) {
        if let Some(m) = self.ebpf.map_mut(maps::V8_PROCS) {
            if let Ok(mut h) = BpfHashMap::<_, u32, V8ProcConfig>::try_from(m) {
                let _ = h.remove(&pid);
            }
        }
        lock(&self.unwind).remove_process(pid);
    }

    /// The V8 layout the walker decodes `pid`'s JS frames with.
    pub fn set_v8_config(&mut self, pid: u32, cfg: &V8ProcConfig) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(maps::V8_PROCS)
            .ok_or(ProbeError::MissingMap(maps::V8_PROCS))?;
        let mut h: BpfHashMap<_, u32, V8ProcConfig> =
            BpfHashMap::try_from(map).map_err(|source| ProbeError::Map {
                name: maps::V8_PROCS,
                source,
            })?;
        h.insert(pid, cfg, 0).map_err(|source| ProbeError::Map {
            name: maps::V8_PROCS,
            source,
        })?;
        // Cached answers about V8's code predate the layout.
        Ok(lock(&self.unwind).forget_cached()?)
    }

    /// What the tables did (for the report's counters).
    pub fn unwind_counters(&self) -> unwind::UnwindCounters {
        lock(&self.unwind).counters
    }

    /// Detaches the uprobes of one process (malloc family, threadpool: it
    /// exited, or exec'd another program), in the background (see
    /// `Detacher`).
    pub fn detach_uprobes(&mut self, pid: u32) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.uprobe_links)
            .into_iter()
            .partition(|(p, _)| *p == pid);
        self.uprobe_links = kept;
        self.detacher
            .send(Links::Uprobes(gone.into_iter().map(|(_, l)| l).collect()));
    }

    /// Starts detaching every probe, in the background, and returns the
    /// handle to wait for it: the maps stay readable meanwhile, so a report
    /// is built while the links go.
    pub fn detach(&mut self) -> Detacher {
        let uprobes = std::mem::take(&mut self.uprobe_links)
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        self.detacher.send(Links::Uprobes(uprobes));
        self.detacher.send(Links::TracePoints(std::mem::take(
            &mut self.tracepoint_links,
        )));
        self.detacher
            .send(Links::Btf(std::mem::take(&mut self.btf_links)));
        self.detacher
            .send(Links::Raw(std::mem::take(&mut self.raw_links)));
        std::mem::take(&mut self.detacher)
    }
}

/// The system-wide programs of `mode` (with the traffic ones or not),
/// attached by `Probes::attach_mode`.
fn mode_hooks(mode: Mode, traffic: bool) -> Vec<&'static Hook> {
    let mode_hooks: &'static [Hook] = match mode {
        Mode::Malloc => &programs::MALLOC_VM,
        Mode::Resident => &programs::RESIDENT,
    };
    let traffic: &'static [Hook] = if traffic { &programs::TRAFFIC } else { &[] };
    programs::LIFECYCLE
        .iter()
        .chain(mode_hooks)
        .chain(traffic)
        .collect()
}

/// Loads (verifies) the programs of `hooks`, each in its own thread, each
/// once (a program may serve several hooks: resident_fault_enter,
/// resident_map_exit).
fn load_hooks(ebpf: &mut Ebpf, hooks: &[&'static Hook], btf: &Btf) -> Result<(), ProbeError> {
    let mut found: Vec<(&'static Hook, &mut Program)> = Vec::with_capacity(hooks.len());
    for (name, prog) in ebpf.programs_mut() {
        if let Some(hook) = hooks.iter().find(|h| h.program == name) {
            found.push((hook, prog));
        }
    }
    if let Some(h) = hooks
        .iter()
        .find(|h| !found.iter().any(|(f, _)| f.program == h.program))
    {
        return Err(ProbeError::MissingProgram(h.program));
    }
    std::thread::scope(|s| {
        let threads: Vec<_> = found
            .into_iter()
            .map(|(hook, prog)| s.spawn(move || load_hook(hook, prog, btf)))
            .collect();
        // The scope joins every thread, also after the first error.
        threads
            .into_iter()
            .try_for_each(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
    })
}

fn load_hook(hook: &'static Hook, prog: &mut Program, btf: &Btf) -> Result<(), ProbeError> {
    let name = hook.program;
    let since = std::time::Instant::now();
    let loaded = match hook.attach {
        Attach::TracePoint(..) => {
            let prog: &mut TracePoint = prog
                .try_into()
                .map_err(|_| ProbeError::MissingProgram(name))?;
            prog.load()
        }
        Attach::BtfTracePoint(event) => {
            let prog: &mut BtfTracePoint = prog
                .try_into()
                .map_err(|_| ProbeError::MissingProgram(name))?;
            prog.load(event, btf)
        }
        Attach::RawTracePoint(..) => {
            let prog: &mut RawTracePoint = prog
                .try_into()
                .map_err(|_| ProbeError::MissingProgram(name))?;
            prog.load()
        }
    };
    log::debug!("{name} verified in {:?}", since.elapsed());
    loaded.map_err(|source| ProbeError::Program { name, source })
}

impl Drop for Probes {
    fn drop(&mut self) {
        drop(self.detach());
    }
}

/// Whether a map operation failed only because the key was not there (a
/// delete of what is already gone): ENOENT from bpf(2).
pub fn is_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}
