//! The tracing session shared by `record` and `run`: preflight, load, attach,
//! wait for the end (duration, SIGINT/SIGTERM, or the target's exit), then
//! drain the maps into raw stacks and assemble the report. Front ends only
//! choose the target and the output.
pub mod live;
pub mod procinfo;
pub mod resident;
pub mod spawn;
mod symbolizer;

use std::{
    collections::HashMap,
    io::Write,
    os::fd::{FromRawFd, OwnedFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tracer_common::{maps, VmEvent, TARGET_MALLOC, TARGET_VM};

use crate::{
    accounting::{self, dist::Dist, vm::VmSpace, RawProcess, RawStack},
    commands::{StartError, WriteFailure},
    probes::{self, allocator, preflight, LoadConfig, Probes},
    report::{
        self,
        build::{Meta, NoSymbols, Symbolize},
        Format, Mode, RenderOptions, Report,
    },
};

use procinfo::ProcInfo;

/// What to trace.
#[derive(Clone, Debug)]
pub enum Target {
    /// A running process (`record --pid`).
    Pid(u32),
    /// A command to start, held before exec until probes are attached (`run`).
    Command(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub mode: Mode,
    pub duration: Option<Duration>,
    /// How often process facts (RSS, comm) are refreshed and `on_tick` called.
    pub interval: Duration,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub top: Option<usize>,
    /// Folded and SVG output: live or total bytes.
    pub value: report::ValueKind,
    /// Draw the live view on stdout every interval (`report::live::wanted`).
    pub live: bool,
}

/// The symbolizer slot: the session calls these hooks so that a symbolizer can
/// capture a process's modules while it is alive.
pub trait SessionSymbolizer: Symbolize + Send {
    /// Every probe is attached (for `run`: the command has exec'd).
    fn on_attached(&mut self, _pid: u32) {}
    /// Called every interval while the target lives (it may map new code).
    fn on_tick(&mut self, _pid: u32) {}
    /// Tracing stopped; `exited` tells whether the process is already gone.
    fn on_stop(&mut self, _pid: u32, _exited: bool) {}
}

impl SessionSymbolizer for NoSymbols {}

/// The symbolizer every tracing front end uses: the one place to plug in
/// `symbols::Symbolizer` (frames carry only addresses until then).
pub fn new_symbolizer() -> Box<dyn SessionSymbolizer> {
    Box::new(crate::symbols::Symbolizer::new())
}

/// Why tracing stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Duration,
    Signal,
    TargetExited,
}

pub struct Outcome {
    pub report: Report,
    pub stop: StopReason,
    /// For `run`: how the child ended, when it did.
    pub child_status: Option<String>,
    /// Still attached (but no longer counting): detaching takes ~0.1 s per
    /// uprobe, so it happens when the caller drops this, after writing.
    pub probes: Probes,
}

pub(crate) fn start_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(StartError(e.to_string()))
}

/// A failure once tracing ran: no report can be made (exit code 3).
fn after_start(e: impl Into<anyhow::Error>) -> anyhow::Error {
    let e: anyhow::Error = e.into();
    anyhow::Error::new(WriteFailure(format!("{e:#}")))
}

/// SIGINT and SIGTERM end the trace (and still write the report).
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }
}

/// Runs a whole session and returns the report (not yet written).
pub async fn trace(
    target: Target,
    opts: &SessionOptions,
    sym: &mut dyn SessionSymbolizer,
) -> Result<Outcome> {
    if opts.mode == Mode::Resident {
        return resident::trace(target, opts, sym).await;
    }
    if let Some(out) = &opts.output {
        report::write::check_writable(out).map_err(start_err)?;
    }
    preflight::check().map_err(start_err)?;
    // Installed before anything is attached, so that a Ctrl-C at any later
    // moment still ends in a report.
    let signals = Signals::install().map_err(start_err)?;

    let (pid, alloc, mut child, comm_hint) = match &target {
        Target::Pid(pid) => {
            if let Some(tgid) = procinfo::tgid_of(*pid).filter(|t| t != pid) {
                return Err(start_err(format!(
                    "PID {pid} is a thread of process {tgid}: trace --pid {tgid}"
                )));
            }
            let alloc = allocator::for_pid(*pid).map_err(start_err)?;
            (*pid, alloc, None, None)
        }
        Target::Command(argv) => {
            let exe = spawn::resolve(&argv[0]).map_err(start_err)?;
            let preload = std::env::var("LD_PRELOAD").ok();
            let alloc = allocator::for_exec(&exe, preload.as_deref()).map_err(start_err)?;
            let child = spawn::spawn_held(argv).map_err(start_err)?;
            let comm = spawn::comm_of(&exe);
            (child.pid, alloc, Some(child), Some(comm))
        }
    };
    alloc.check_required().map_err(start_err)?;

    let (mut probes, events) = or_abort(attach(pid, &alloc), &mut child)?;
    let pidfd = target_pidfd(pid, &mut child)?;
    let comm = match &comm_hint {
        Some(c) => c.clone(),
        None => procinfo::snapshot(pid).map(|p| p.comm).unwrap_or_default(),
    };
    eprintln!(
        "offheap: attached to PID {pid} ({comm}), mode {}",
        opts.mode.as_str()
    );
    if let Some(c) = child.as_mut() {
        if let Err(e) = c.release(&comm) {
            let _ = spawn::reap(c.pid);
            return Err(start_err(e));
        }
    }
    let started = Instant::now();
    let mut live = Live {
        pid,
        pidfd,
        signals,
        events,
        spaces: HashMap::new(),
        info: procinfo::snapshot(pid).unwrap_or_default(),
    };
    sym.on_attached(pid);
    let mut screen = live::Screen::new(opts.live);
    let mut tick = |l: &Live, sym: &mut dyn SessionSymbolizer| {
        if let Some(screen) = screen.as_mut() {
            let secs = started.elapsed().as_secs_f64();
            match snapshot(&probes, l, opts.mode, secs, sym) {
                Ok(r) => screen.draw(r),
                Err(e) => log::warn!("live view: {e:#}"),
            }
        }
    };
    let stop = live.wait(opts, sym, &mut tick).await.map_err(after_start)?;
    let elapsed = started.elapsed().as_secs_f64();

    // Freeze the figures, then take the last events from the ring buffer.
    probes.remove_target(pid).map_err(after_start)?;
    drain(live.events.get_mut(), &mut live.spaces);
    let exited = stop == StopReason::TargetExited || procinfo::snapshot(pid).is_none();
    if let Some(now) = procinfo::snapshot(pid) {
        live.info = now;
    }
    sym.on_stop(pid, exited);
    let child_status = child.as_ref().and_then(|c| spawn::reap(c.pid));

    let raw = raw_process(&probes, pid, &live.info, exited, live.spaces.remove(&pid))
        .map_err(after_start)?;
    let (counters, dropped_events) = accounting::counters::read(probes.ebpf_mut())
        .context("reading the error counters")
        .map_err(after_start)?;
    let meta = Meta {
        mode: opts.mode,
        duration_secs: elapsed,
        counters,
        dropped_events,
    };
    let report = report::build::assemble(meta, vec![raw], sym);
    Ok(Outcome {
        report,
        stop,
        child_status,
        probes,
    })
}

fn attach(pid: u32, alloc: &probes::Allocator) -> Result<(Probes, AsyncFd<RingBuf<MapData>>)> {
    let mut probes = Probes::load(&LoadConfig::from_env()).map_err(start_err)?;
    probes
        .add_target(pid, TARGET_MALLOC | TARGET_VM)
        .map_err(start_err)?;
    probes.attach_vm().map_err(start_err)?;
    let attached = probes.attach_malloc(pid, alloc).map_err(start_err)?;
    log::info!(
        "attached to {} in {}: {attached:?}",
        alloc.module,
        alloc.path.display()
    );
    let map = probes
        .ebpf_mut()
        .take_map(maps::EVENTS)
        .ok_or_else(|| start_err("BPF map events is missing from the object"))?;
    let ring = RingBuf::try_from(map).map_err(start_err)?;
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged,
    // for as long as the AsyncFd that owns the ring buffer.
    let fd = unsafe { AsyncFd::register(ring) }.map_err(|e| start_err(e.into_parts().1))?;
    Ok((probes, fd))
}

/// A pidfd of the target: it becomes readable when the process exits.
/// A setup step of a session: on failure, a held `run` child is killed
/// before its exec, so that no half-traced command runs on.
pub(crate) fn or_abort<T>(r: Result<T>, child: &mut Option<spawn::HeldChild>) -> Result<T> {
    if r.is_err() {
        if let Some(c) = child.take() {
            c.abort();
        }
    }
    r
}

/// The target's pidfd (readable once it exits), or a start error.
pub(crate) fn target_pidfd(
    pid: u32,
    child: &mut Option<spawn::HeldChild>,
) -> Result<AsyncFd<OwnedFd>> {
    let fd = pidfd_open(pid).map_err(|e| start_err(format!("no process with PID {pid} ({e})")));
    or_abort(fd, child)
}

pub(crate) fn pidfd_open(pid: u32) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: plain syscall; the returned fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor returned by pidfd_open, owned by the
    // OwnedFd, which the AsyncFd owns until it is dropped.
    unsafe { AsyncFd::register(OwnedFd::from_raw_fd(fd as i32)) }.map_err(|e| e.into_parts().1)
}

/// What the session watches while the target runs.
struct Live {
    pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    signals: Signals,
    events: AsyncFd<RingBuf<MapData>>,
    /// Self-made mappings per tgid, from the ring buffer.
    spaces: HashMap<u32, VmSpace>,
    /// The latest facts about the target, kept for after it dies.
    info: ProcInfo,
}

/// Completes at --duration, or never without one.
pub(crate) async fn deadline(opts: &SessionOptions) {
    match opts.duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// The per-interval ticker of a session's wait loop.
pub(crate) fn ticker(opts: &SessionOptions) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(opts.interval.max(Duration::from_millis(10)));
    // A slow step (the first symbol capture) must not be followed by a burst
    // of back-to-back ticks: the live view's growth rates would spike.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

impl Live {
    /// Waits for the end while keeping the ring buffer drained and process
    /// facts fresh.
    async fn wait(
        &mut self,
        opts: &SessionOptions,
        sym: &mut dyn SessionSymbolizer,
        tick: &mut dyn FnMut(&Live, &mut dyn SessionSymbolizer),
    ) -> Result<StopReason> {
        let deadline = deadline(opts);
        tokio::pin!(deadline);
        let mut ticker = ticker(opts);
        loop {
            tokio::select! {
                _ = &mut deadline => return Ok(StopReason::Duration),
                _ = self.signals.int.recv() => return Ok(StopReason::Signal),
                _ = self.signals.term.recv() => return Ok(StopReason::Signal),
                // A pidfd becomes readable when the process exits (pidfd_open(2)).
                _ = self.pidfd.readable() => return Ok(StopReason::TargetExited),
                guard = self.events.readable_mut() => {
                    let mut guard = guard.context("polling the events ring buffer")?;
                    drain(guard.get_inner_mut(), &mut self.spaces);
                    guard.clear_ready();
                }
                _ = ticker.tick() => {
                    if let Some(now) = procinfo::snapshot(self.pid) {
                        self.info = now;
                        sym.on_tick(self.pid);
                    }
                    tick(self, sym);
                }
            }
        }
    }
}

fn drain(ring: &mut RingBuf<MapData>, spaces: &mut HashMap<u32, VmSpace>) {
    while let Some(item) = ring.next() {
        if item.len() < std::mem::size_of::<VmEvent>() {
            continue;
        }
        // SAFETY: the kernel wrote a struct vm_event (checked size; the ABI
        // test pins the layout); read_unaligned copes with any alignment.
        let ev: VmEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        spaces.entry(ev.hdr.tgid).or_default().apply(&ev);
    }
}

/// The report as it stands, for the live view: the maps are read while the
/// probes keep counting, so figures may be a few events apart.
fn snapshot(
    probes: &Probes,
    l: &Live,
    mode: Mode,
    secs: f64,
    sym: &mut dyn SessionSymbolizer,
) -> Result<Report> {
    let raw = raw_process(probes, l.pid, &l.info, false, l.spaces.get(&l.pid).cloned())?;
    let (counters, dropped_events) =
        accounting::counters::read(probes.ebpf()).context("reading the error counters")?;
    let meta = Meta {
        mode,
        duration_secs: secs,
        counters,
        dropped_events,
    };
    Ok(report::build::assemble(meta, vec![raw], sym))
}

/// Merges the malloc stacks and the self-made mappings into raw stacks.
fn raw_process(
    probes: &Probes,
    pid: u32,
    info: &ProcInfo,
    exited: bool,
    space: Option<VmSpace>,
) -> Result<RawProcess> {
    let ebpf = probes.ebpf();
    let stats = accounting::malloc::read_stack_stats(ebpf, pid).context("reading stack_stats")?;
    let resolver = accounting::malloc::StackResolver::new(ebpf).context("reading stack_traces")?;
    let sizes =
        accounting::dist::read_hist(ebpf, Dist::Sizes, pid, &stats).context("reading size_hist")?;
    let lifetimes = accounting::dist::read_hist(ebpf, Dist::Lifetimes, pid, &stats)
        .context("reading lifetime_hist")?;
    let mut stacks: HashMap<Vec<u64>, RawStack> = HashMap::new();
    accounting::malloc::merge_into(&mut stacks, &resolver, stats);
    if let Some(space) = space {
        accounting::malloc::merge_into(&mut stacks, &resolver, space.stack_stats());
    }
    accounting::dist::fill(&mut stacks, &resolver, sizes, lifetimes);
    Ok(RawProcess {
        pid,
        comm: info.comm.clone(),
        exe: info.exe.clone(),
        rss_bytes: info.rss_bytes,
        exited,
        stacks: stacks.into_values().collect(),
        ..RawProcess::default()
    })
}

/// Renders the report and writes it to --output (atomically) or stdout.
pub fn write_report(report: &Report, opts: &SessionOptions) -> Result<()> {
    // Rendering and writing tens of thousands of stacks takes seconds: show
    // it as a step on stderr so that the pause after tracing is explained.
    let stacks: usize = report.processes.iter().map(|p| p.stacks.len()).sum();
    let step = (stacks >= LARGE_REPORT_STACKS).then(|| {
        report::progress::Progress::new(format!(
            "writing the report ({stacks} stacks, {})",
            opts.format.as_str()
        ))
    });
    let res = write_rendered(report, opts);
    match (step, &res) {
        (Some(s), Ok(())) => s.done(),
        (Some(s), Err(_)) => s.failed(),
        (None, _) => {}
    }
    res
}

/// From this many stacks on, writing the report is shown as a step.
const LARGE_REPORT_STACKS: usize = 20_000;

fn write_rendered(report: &Report, opts: &SessionOptions) -> Result<()> {
    let bytes = report::render(
        report,
        opts.format,
        &RenderOptions {
            top: opts.top,
            value: opts.value,
        },
    )
    .map_err(|e| WriteFailure(e.to_string()))?;
    match &opts.output {
        Some(path) => report::write::write_atomic(path, &bytes)
            .map_err(|e| anyhow::Error::new(WriteFailure(e.to_string())))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)
                .and_then(|_| out.flush())
                .map_err(|e| WriteFailure(format!("writing the report to stdout: {e}")))?;
        }
    }
    Ok(())
}
