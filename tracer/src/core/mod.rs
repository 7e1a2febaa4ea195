//! The one tracing core, for every front end: preflight, load, attach, the
//! event and drain loop, the per-process models, the tick (time series) and
//! building the Report, for N targets.
//!
//! `record` and `run` are the core with one target (and the children it
//! forks, when followed); `watch` is the same core with targets that come
//! and go, plus the metrics server and the OOM writer. A front end starts a
//! `Tracer`, adds targets, then calls `next` in a loop and reacts to what
//! happened (`Happening`); it never touches a probe or a map.
pub mod caps;
pub mod cost;
pub mod events;
mod model;
mod prefetch;
pub mod spawn;
pub mod symcache;
mod targets;
pub mod wait;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{sync::mpsc::UnboundedReceiver, time::Interval};
use tracer_common::maps;

use crate::{
    accounting::{
        malloc::{MallocModel, ReadError},
        point::PointReaders,
        resident::{ResidentError, ResidentSet},
    },
    error::Interrupted,
    probes::{allocator::AllocatorError, preflight, LoadConfig, ProbeError, Probes},
    proc::ProcInfo,
    report::{raw::RawStack, Mode, SeriesPoint},
    symbols::Symbolizer,
};

pub use events::OomVictim;
use events::{Drainer, LifecycleEvent, RingEvent};
use spawn::{HeldChild, SpawnError};
use symcache::FrameCache;
use wait::{Deadline, Signals};

/// Default 1-in-N sampling of first-touch stacks (`OFFHEAP_FAULT_SAMPLE`
/// overrides; 1 takes every page). Mapping attribution is always exact.
pub const DEFAULT_FAULT_SAMPLE: u32 = 8;
/// Counter added to each report's `counters`: stacks dropped by the caps,
/// cumulative (malloc mode: deleted from the BPF maps; resident mode: folded
/// into one aggregate per bucket and attribution, which keeps their bytes).
pub const STACKS_EVICTED: &str = "stacks_evicted";
/// Counter in a report when some target's threadpool work is not followed
/// to the stacks that queued it (no libuv, or a libuv without the symbols
/// of `programs::THREADPOOL`): how many targets.
pub const THREADPOOL_UNPROBED: &str = "threadpool_unprobed";
/// Points kept in a process's time series (an hour at the default interval).
const MAX_SERIES_POINTS: usize = 3600;

/// How a front end wants the core to trace.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    pub mode: Mode,
    /// Stop after this long (from `begin`); None: until a signal.
    pub duration: Option<Duration>,
    /// How often process facts are refreshed and a series point taken.
    pub interval: Duration,
    /// Hear of every exec and OOM kill on the host, not only targets'
    /// (`watch` selects new targets among them).
    pub watch_exec: bool,
    /// Trace the processes a target forks, from their first instruction.
    pub follow_children: bool,
    /// Stack caps (per process, over all processes): the smallest stacks
    /// beyond them are evicted (`watch`).
    pub caps: Option<(usize, usize)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Allocator(#[from] AllocatorError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Resident(#[from] ResidentError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    #[error("installing the SIGINT/SIGTERM handlers")]
    Signals(#[source] std::io::Error),
    #[error("starting the ring buffer thread")]
    Drainer(#[source] std::io::Error),
    #[error("no process with PID {0}")]
    NoProcess(u32),
    #[error("PID {pid} is a thread of process {tgid}: trace --pid {tgid}")]
    Thread { pid: u32, tgid: u32 },
    #[error("PID {0} is a zombie (it exited and waits for its parent to reap it): no memory left to trace")]
    Zombie(u32),
    #[error("PID {0} is a kernel thread: it has no user memory to trace")]
    KernelThread(u32),
    #[error("the process exited while attaching (PID {0})")]
    ExitedWhileAttaching(u32),
    #[error(
        "PID {pid} has mapped no allocator (no module defines malloc) {secs} s after attaching: \
         statically linked without symbols?"
    )]
    NoAllocator { pid: u32, secs: u64 },
}

/// Why tracing stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Duration,
    Signal,
    /// Every target exited.
    TargetExited,
}

/// What `next` saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Happening {
    /// An interval passed: every target has a new series point and
    /// `report` reflects it.
    Tick,
    /// `pid` exec'd a new program: a target (its model is of the old image:
    /// `restart` or `remove` it), or any process with `watch_exec`.
    Exec {
        pid: u32,
        target: bool,
        /// When (CLOCK_MONOTONIC).
        ts_ns: u64,
    },
    /// Target `pid` exited; its data stays for the report until `remove`.
    Exited {
        pid: u32,
        wait_status: Option<i32>,
    },
    /// Target `parent` forked `child`, now traced too (`follow_children`).
    Forked {
        parent: u32,
        child: u32,
    },
    /// The OOM killer chose a process (a target, or any with `watch_exec`).
    Oom(OomVictim),
    Stop(StopReason),
}

/// Where the figures come from.
enum Model {
    /// Uprobes and BPF maps, plus the self-made mappings from the ring.
    Malloc(MallocModel),
    /// Page faults, applied by the drain thread to the resident models.
    Resident(Arc<Mutex<ResidentSet>>),
}

/// One traced process.
struct Target {
    /// Latest /proc facts, kept for after it dies.
    info: ProcInfo,
    series: Vec<SeriesPoint>,
    /// CLOCK_MONOTONIC when tracing it started: older EXEC records are stale.
    since_ns: u64,
    cgroup: Option<String>,
    exited: bool,
    wait_status: Option<i32>,
    /// Its stacks as of the last tick.
    stacks: Vec<RawStack>,
    /// A digest of its code mappings when its unwind tables were last
    /// loaded (`code_digest`): a change means code mapped since.
    code: u64,
}

pub struct Tracer {
    opts: TraceOptions,
    /// Declared before `probes`: its thread owns maps taken out of the
    /// object and must stop first.
    drainer: Option<Drainer>,
    rx: UnboundedReceiver<RingEvent>,
    model: Model,
    probes: Probes,
    sym: Symbolizer,
    frames: FrameCache,
    targets: BTreeMap<u32, Target>,
    signals: Signals,
    /// A signal an attach step saw while tracing (a followed child, a
    /// restart, watch's new target): `next` stops on it.
    signal_seen: bool,
    deadline: Deadline,
    ticker: Interval,
    started: Instant,
    evicted: u64,
    /// Targets whose threadpool is not followed (threadpool::Skip).
    threadpool_unprobed: u64,
    /// The kernel has the uprobe_multi links the threadpool probes are.
    threadpool_links: bool,
    /// `run`'s command, reaped at the end for its exit status.
    held: Option<HeldChild>,
    /// Lifecycle records that arrived while a front end was not waiting.
    pending: Vec<Happening>,
    /// A series point's figures besides RSS and buckets (traffic...).
    point_readers: PointReaders,
    /// What `start_for_pid` read ahead for `add_pid`.
    prefetched: Option<prefetch::Prefetched>,
    /// What every report says about this tracer (a feature the kernel
    /// lacks).
    warnings: Vec<String>,
}

/// CLOCK_MONOTONIC now, the clock of bpf_ktime_get_ns() that stamps records.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Tracer {
    /// Installs the signal handlers (first: a Ctrl-C from now on is seen),
    /// runs the preflight checks, loads the object sized for the mode and
    /// attaches its system-wide programs. Targets come next.
    pub fn start(opts: TraceOptions) -> Result<Tracer, CoreError> {
        Tracer::start_reading(opts, None)
    }

    /// `start` for a front end whose first target is the running process
    /// `pid` (`record --pid`): what `add_pid` reads of its files is read
    /// while the kernel verifies the programs (see `prefetch`).
    pub fn start_for_pid(opts: TraceOptions, pid: u32) -> Result<Tracer, CoreError> {
        Tracer::start_reading(opts, Some(pid))
    }

    fn start_reading(opts: TraceOptions, pid: Option<u32>) -> Result<Tracer, CoreError> {
        let started = Instant::now();
        let mut signals = Signals::install().map_err(CoreError::Signals)?;
        let features = preflight::check(opts.mode)?;
        let cfg = LoadConfig {
            watch_exec: opts.watch_exec,
            early_tables: pid,
            ..LoadConfig::from_env(opts.mode)
        };
        let mut sym = Symbolizer::new();
        let (probes, prefetched) = std::thread::scope(|s| {
            let ahead = pid.map(|pid| {
                let sym = &mut sym;
                s.spawn(move || prefetch::Prefetched::read(pid, opts.mode, sym))
            });
            let probes = Probes::load(&cfg);
            let prefetched =
                ahead.and_then(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
            (probes, prefetched)
        });
        let mut probes = probes?;
        log::debug!("BPF object loaded in {:?}", started.elapsed());
        let mut warnings = Vec::new();
        if !features.uprobe_multi {
            // Resident mode only: malloc mode refused to start without them.
            let (major, minor) = preflight::UPROBE_MULTI_KERNEL;
            eprintln!(
                "offheap: warning: threadpool work is not followed to the code that queued it: \
                 this kernel has no uprobe_multi links (Linux {major}.{minor} or later)"
            );
            warnings.push(format!(
                "threadpool link unavailable: this kernel has no uprobe_multi links (Linux \
                 {major}.{minor} or later), so memory allocated on libuv's threadpool is not \
                 joined to the stack that queued its work"
            ));
        }
        if !probes.traffic() {
            let (major, minor) = preflight::SOCK_RECV_LENGTH_KERNEL;
            eprintln!(
                "offheap: warning: traffic is not counted: this kernel has no sock_recv_length \
                 tracepoint (Linux {major}.{minor} or later)"
            );
            warnings.push(format!(
                "traffic unavailable: this kernel has no sock_recv_length tracepoint (Linux \
                 {major}.{minor} or later), so the series carries no traffic figures and the \
                 verdict cannot tell memory that tracks load from a leak"
            ));
        }
        interrupted(&mut signals)?;
        probes.attach_mode()?;
        interrupted(&mut signals)?;
        let model = match opts.mode {
            Mode::Malloc => Model::Malloc(MallocModel::default()),
            Mode::Resident => {
                let mut set = ResidentSet::new(probes.ebpf_mut())?;
                let every = std::env::var("OFFHEAP_FAULT_SAMPLE")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(DEFAULT_FAULT_SAMPLE);
                set.set_sample_every(every)?;
                Model::Resident(Arc::new(Mutex::new(set)))
            }
        };
        let ring = probes
            .ebpf_mut()
            .take_map(maps::EVENTS)
            .ok_or(ProbeError::MissingMap(maps::EVENTS))?;
        let ring = aya::maps::RingBuf::try_from(ring).map_err(|source| ProbeError::Map {
            name: maps::EVENTS,
            source,
        })?;
        let resident = match &model {
            Model::Resident(set) => Some(Arc::clone(set)),
            Model::Malloc(_) => None,
        };
        let (drainer, rx) =
            Drainer::start(ring, resident, Some(probes.tables())).map_err(CoreError::Drainer)?;
        let traffic = probes.traffic();
        Ok(Tracer {
            deadline: Deadline::after(None),
            ticker: wait::ticker(opts.interval),
            opts,
            drainer: Some(drainer),
            rx,
            model,
            probes,
            sym,
            prefetched,
            frames: FrameCache::default(),
            targets: BTreeMap::new(),
            signals,
            signal_seen: false,
            started: Instant::now(),
            evicted: 0,
            threadpool_unprobed: 0,
            threadpool_links: features.uprobe_multi,
            held: None,
            pending: Vec::new(),
            point_readers: PointReaders::new(traffic),
            warnings,
        })
    }

    pub fn mode(&self) -> Mode {
        self.opts.mode
    }

    /// Starts the clock once the first targets are attached: --duration,
    /// the ticker and the report's duration count from here.
    pub fn begin(&mut self) {
        self.started = Instant::now();
        self.deadline = Deadline::after(self.opts.duration);
        self.ticker = wait::ticker(self.opts.interval);
    }

    /// The pids traced now (live or exited, until removed).
    pub fn pids(&self) -> Vec<u32> {
        self.targets.keys().copied().collect()
    }

    /// Whether every target exited (and there is at least one).
    pub fn all_exited(&self) -> bool {
        !self.targets.is_empty() && self.targets.values().all(|t| t.exited)
    }

    /// The comm of a target, as last seen while it lived.
    pub fn comm_of(&self, pid: u32) -> Option<&str> {
        self.targets.get(&pid).map(|t| t.info.comm.as_str())
    }

    /// Waits for what happens next: a signal, the deadline, a target's exec,
    /// exit or fork, an OOM kill, or the next interval.
    pub async fn next(&mut self) -> Happening {
        if self.signal_seen {
            return Happening::Stop(StopReason::Signal);
        }
        while !self.pending.is_empty() {
            let h = self.pending.remove(0);
            if let Some(h) = self.recheck(h) {
                return h;
            }
        }
        loop {
            tokio::select! {
                _ = self.deadline.reached() => return Happening::Stop(StopReason::Duration),
                _ = self.signals.recv() => return Happening::Stop(StopReason::Signal),
                ev = self.rx.recv() => match ev {
                    Some(ev) => {
                        if let Some(h) = self.on_event(ev) {
                            return h;
                        }
                    }
                    // The drain thread stopped: nothing more will come.
                    None => return Happening::Stop(StopReason::Signal),
                },
                _ = self.ticker.tick() => {
                    self.tick();
                    return Happening::Tick;
                }
            }
        }
    }

    /// What an exec of `pid` at `ts_ns` (CLOCK_MONOTONIC) means now.
    fn exec_happening(&self, pid: u32, ts_ns: u64) -> Option<Happening> {
        let (pid, target) = match self.targets.get(&pid) {
            // Found (or spawned) after this exec: already right.
            Some(t) if ts_ns < t.since_ns => return None,
            Some(_) => (pid, true),
            None if self.opts.watch_exec => (pid, false),
            None => return None,
        };
        Some(Happening::Exec { pid, target, ts_ns })
    }

    /// A happening queued by `apply_queued`, as of now: an exec is judged
    /// again, as the front end may have added its process since (a process
    /// whose two execs, the shell's and its program's, were queued at one
    /// tick was added on the first, then reset on the second, and what it
    /// mapped in between was lost).
    fn recheck(&self, h: Happening) -> Option<Happening> {
        match h {
            Happening::Exec { pid, ts_ns, .. } => self.exec_happening(pid, ts_ns),
            h => Some(h),
        }
    }

    /// Applies one ring record; returns what a front end must hear of.
    fn on_event(&mut self, ev: RingEvent) -> Option<Happening> {
        let life = match ev {
            RingEvent::Vm(v) => {
                if let Model::Malloc(m) = &mut self.model {
                    m.apply(&v);
                }
                return None;
            }
            RingEvent::ExecMap { tgid } => {
                // The drain thread loaded its tables already.
                if self.targets.get(&tgid).is_some_and(|t| !t.exited) {
                    self.modules_changed(tgid);
                }
                return None;
            }
            RingEvent::Life(l) => l,
        };
        match life {
            LifecycleEvent::Exec { tgid, ts_ns, .. } => self.exec_happening(tgid, ts_ns),
            LifecycleEvent::Exit {
                tgid, wait_status, ..
            } => {
                let t = self.targets.get_mut(&tgid)?;
                if t.exited {
                    return None;
                }
                self.mark_exited(tgid, Some(wait_status));
                Some(Happening::Exited {
                    pid: tgid,
                    wait_status: Some(wait_status),
                })
            }
            LifecycleEvent::Fork { tgid, child, .. } => {
                if !self.opts.follow_children || !self.targets.contains_key(&tgid) {
                    return None;
                }
                match self.adopt(child) {
                    Ok(()) => Some(Happening::Forked {
                        parent: tgid,
                        child,
                    }),
                    Err(e) => {
                        log::info!(
                            "not following child {child} of {tgid}: {}",
                            crate::error::one_line(&e)
                        );
                        None
                    }
                }
            }
            LifecycleEvent::Oom(v) => Some(Happening::Oom(v)),
        }
    }

    /// Stops counting an exited target (its figures freeze) and keeps its
    /// data for the report.
    pub(super) fn mark_exited(&mut self, pid: u32, wait_status: Option<i32>) {
        let _ = self.probes.remove_target(pid);
        self.probes.drop_tables(pid);
        self.probes.detach_uprobes(pid);
        if let Some(t) = self.targets.get_mut(&pid) {
            t.exited = true;
            t.wait_status = wait_status.or(t.wait_status);
        }
    }

    /// How long tracing has run (since `begin`).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A digest of what a process maps executable or anonymous (what its unwind
/// tables cover), to notice code mapped since: an addon's dlopen, V8's code
/// space growing. 0 when the process is gone.
fn code_digest(pid: u32) -> u64 {
    use std::hash::{Hash, Hasher};
    let Ok(maps) = crate::proc::maps::read(pid) else {
        return 0;
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in maps.iter().filter(|m| m.executable() || m.is_anon()) {
        (m.start, m.end, m.perms, m.inode).hash(&mut h);
    }
    h.finish()
}

/// Aborts an attach step when a signal came: the caller detaches what is
/// attached (dropping the tracer) and exits without a report.
fn interrupted(signals: &mut Signals) -> Result<(), CoreError> {
    if signals.pending() {
        Err(Interrupted.into())
    } else {
        Ok(())
    }
}

/// The stacks of every target, by pid (see `Tracer::tick`).
type StacksByPid = HashMap<u32, Vec<RawStack>>;
