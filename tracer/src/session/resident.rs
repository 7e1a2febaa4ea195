//! Resident mode's session (the default mode): attach the page-fault and
//! mapping tracepoints of fault.bpf.c, keep the ring buffer drained into the
//! `accounting::resident` models (on a thread of its own), take one sample
//! per --interval (RSS, the buckets, growth per stack), and build the report
//! from the last sample.
//! No uprobes: nothing is attached to the allocator.
use std::{
    os::fd::OwnedFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use anyhow::{Context, Result};
use aya::programs::TracePoint;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tracer_common::{resident_programs, TARGET_FAULTS};

use super::{
    or_abort, procinfo, spawn, start_err, target_pidfd, Outcome, SessionOptions, SessionSymbolizer,
    StopReason, Target,
};
use crate::{
    accounting::{
        self,
        resident::{classifier, ResidentSet},
    },
    probes::{preflight, LoadConfig, Probes},
    report::{self, build::Meta},
};

/// Default 1-in-N sampling of first-touch stacks (`OFFHEAP_FAULT_SAMPLE`
/// overrides; 1 takes every page). Mapping attribution is always exact.
pub const DEFAULT_FAULT_SAMPLE: u32 = 8;

/// Loads and attaches fault.bpf.c's programs (also used by `watch`).
pub fn attach_tracepoints(
    probes: &mut Probes,
) -> Result<Vec<aya::programs::trace_point::TracePointLinkId>> {
    let mut ids = Vec::new();
    for (name, category, event) in resident_programs::ALL {
        let prog: &mut TracePoint = probes
            .ebpf_mut()
            .program_mut(name)
            .ok_or_else(|| start_err(format!("BPF program {name} is missing from the object")))?
            .try_into()
            .map_err(start_err)?;
        prog.load()
            .map_err(|e| start_err(format!("loading {name}: {e}")))?;
        ids.push(
            prog.attach(category, event)
                .map_err(|e| start_err(format!("attaching {name} to {category}/{event}: {e}")))?,
        );
    }
    Ok(ids)
}

pub async fn trace(
    target: Target,
    opts: &SessionOptions,
    sym: &mut dyn SessionSymbolizer,
) -> Result<Outcome> {
    if let Some(out) = &opts.output {
        report::write::check_writable(out).map_err(start_err)?;
    }
    preflight::check().map_err(start_err)?;
    let (pid, mut child, comm_hint) = match &target {
        Target::Pid(pid) => (*pid, None, None),
        Target::Command(argv) => {
            let exe = spawn::resolve(&argv[0]).map_err(start_err)?;
            let child = spawn::spawn_held(argv).map_err(start_err)?;
            let comm = spawn::comm_of(&exe);
            (child.pid, Some(child), Some(comm))
        }
    };
    let setup = || -> Result<(Probes, ResidentSet)> {
        let mut probes = Probes::load(&LoadConfig::from_env()).map_err(start_err)?;
        let mut set = ResidentSet::new(probes.ebpf_mut()).map_err(start_err)?;
        let every = std::env::var("OFFHEAP_FAULT_SAMPLE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_FAULT_SAMPLE);
        set.set_sample_every(every).map_err(start_err)?;
        attach_tracepoints(&mut probes)?;
        probes.add_target(pid, TARGET_FAULTS).map_err(start_err)?;
        Ok((probes, set))
    };
    let (mut probes, mut set) = or_abort(setup(), &mut child)?;
    let pidfd = target_pidfd(pid, &mut child)?;
    let comm = match &comm_hint {
        Some(c) => c.clone(),
        None => procinfo::snapshot(pid).map(|p| p.comm).unwrap_or_default(),
    };
    if let Some(c) = child.as_mut() {
        if let Err(e) = c.release(&comm) {
            let _ = spawn::reap(c.pid);
            return Err(start_err(e));
        }
    }
    // After exec: the model's baseline and module list are the new image's.
    set.add(pid)
        .map_err(|e| start_err(format!("starting resident accounting of PID {pid}: {e}")))?;
    let set = Arc::new(Mutex::new(set));
    let drainer = Drainer::start(set.clone());
    // Before saying "attached": a Ctrl-C from then on must end tracing
    // gracefully, even while the symbolizer is still reading debug info.
    let signals = Signals {
        int: signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
        term: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
    };
    eprintln!("offheap: attached to PID {pid} ({comm}), mode resident");
    let started = Instant::now();
    sym.on_attached(pid);

    let mut screen = super::live::Screen::new(opts.live);
    let live = screen.is_some();
    let mut tick = |sym: &mut dyn SessionSymbolizer, mut raws: Vec<accounting::RawProcess>| {
        let Some(screen) = screen.as_mut() else {
            return;
        };
        for r in &mut raws {
            r.comm = if r.pid == pid {
                comm.clone()
            } else {
                procinfo::snapshot(r.pid)
                    .map(|p| p.comm)
                    .unwrap_or_default()
            };
        }
        let meta = Meta {
            mode: opts.mode,
            duration_secs: started.elapsed().as_secs_f64(),
            counters: Default::default(),
            dropped_events: accounting::counters::read(probes.ebpf()).map_or(0, |c| c.1),
        };
        screen.draw(report::build::assemble(meta, raws, sym));
    };
    let tick = live.then_some(&mut tick as &mut LiveTick<'_>);
    let stop = wait(opts, pid, &pidfd, &set, sym, signals, tick).await?;
    let elapsed = started.elapsed().as_secs_f64();
    probes.remove_target(pid).map_err(anyhow::Error::new)?;
    let exited = stop == StopReason::TargetExited || procinfo::snapshot(pid).is_none();
    sym.on_stop(pid, exited);
    let child_status = child.as_ref().and_then(|c| spawn::reap(c.pid));
    drop(drainer);
    let mut raws = lock(&set).finish_all(&mut classifier(sym));
    for r in &mut raws {
        r.exited |= exited;
        if r.comm.is_empty() {
            r.comm = comm.clone();
        }
    }
    let (counters, dropped_events) =
        accounting::counters::read(probes.ebpf()).context("reading the error counters")?;
    let meta = Meta {
        mode: opts.mode,
        duration_secs: elapsed,
        counters,
        dropped_events,
    };
    let report = report::build::assemble(meta, raws, sym);
    Ok(Outcome {
        report,
        stop,
        child_status,
        probes,
    })
}

/// Drains the ring buffer on its own thread, so that a slow step of the
/// session (the symbolizer parsing node's debug info at attach, a sample)
/// never lets the ring buffer overflow.
struct Drainer {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drainer {
    fn start(set: Arc<Mutex<ResidentSet>>) -> Drainer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("offheap-drain".into())
            .spawn(move || {
                let fd = set.lock().map(|g| g.ring_fd()).unwrap_or(-1);
                while !s.load(Ordering::Relaxed) {
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; the fd stays open while the
                    // set (shared with this thread) lives.
                    unsafe { libc::poll(&mut p, 1, 20) };
                    if let Ok(mut g) = set.lock() {
                        g.drain();
                    }
                }
            })
            .ok();
        Drainer { stop, handle }
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

/// Draws one live screen from the processes as of the last sample.
type LiveTick<'a> = dyn FnMut(&mut dyn SessionSymbolizer, Vec<accounting::RawProcess>) + 'a;

async fn wait(
    opts: &SessionOptions,
    pid: u32,
    pidfd: &AsyncFd<OwnedFd>,
    set: &Arc<Mutex<ResidentSet>>,
    sym: &mut dyn SessionSymbolizer,
    mut signals: Signals,
    // The live view's drawing, when it is on.
    mut tick: Option<&mut LiveTick<'_>>,
) -> Result<StopReason> {
    let deadline = super::deadline(opts);
    tokio::pin!(deadline);
    let mut ticker = super::ticker(opts);
    loop {
        tokio::select! {
            _ = &mut deadline => return Ok(StopReason::Duration),
            _ = signals.int.recv() => return Ok(StopReason::Signal),
            _ = signals.term.recv() => return Ok(StopReason::Signal),
            _ = pidfd.readable() => return Ok(StopReason::TargetExited),
            _ = ticker.tick() => {
                sym.on_tick(pid);
                // The live view symbolizes outside the lock: the drain thread
                // must not wait for it.
                let raws = {
                    let mut guard = lock(set);
                    guard.sample(&mut classifier(sym));
                    tick.is_some().then(|| guard.snapshot_all())
                };
                if let (Some(tick), Some(raws)) = (tick.as_mut(), raws) {
                    tick(sym, raws);
                }
            }
        }
    }
}

fn lock(set: &Mutex<ResidentSet>) -> std::sync::MutexGuard<'_, ResidentSet> {
    // A panic on the drain thread leaves the data as consistent as a drain
    // that stopped between two records: keep going.
    set.lock().unwrap_or_else(|e| e.into_inner())
}
