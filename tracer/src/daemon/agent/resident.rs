//! Resident mode for many processes: the fault and mapping tracepoints are
//! attached once, each target gets a `targets` entry and a model in the
//! shared `ResidentSet`, whose ring buffer a thread of its own keeps
//! drained. No uprobes.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
};

use tracer_common::TARGET_FAULTS;

use crate::{
    accounting::{
        resident::{classifier, Measure, ResidentSet},
        RawStack,
    },
    probes::Probes,
    session::resident::{attach_tracepoints, DEFAULT_FAULT_SAMPLE},
    symbols::Symbolizer,
};

pub struct ResidentTargets {
    set: Arc<Mutex<ResidentSet>>,
    stop: Arc<AtomicBool>,
    drainer: Option<JoinHandle<()>>,
}

fn lock(set: &Mutex<ResidentSet>) -> MutexGuard<'_, ResidentSet> {
    // A panic on the drain thread leaves the models as consistent as a
    // drain that stopped between two records: keep going.
    set.lock().unwrap_or_else(|e| e.into_inner())
}

impl ResidentTargets {
    /// Takes the fault maps out of the object and attaches the programs.
    pub fn start(probes: &mut Probes) -> anyhow::Result<ResidentTargets> {
        let mut set = ResidentSet::new(probes.ebpf_mut())?;
        let every = std::env::var("OFFHEAP_FAULT_SAMPLE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_FAULT_SAMPLE);
        set.set_sample_every(every)?;
        attach_tracepoints(probes)?;
        let set = Arc::new(Mutex::new(set));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, flag) = (Arc::clone(&set), Arc::clone(&stop));
        let drainer = std::thread::Builder::new()
            .name("offheap-faults".into())
            .spawn(move || {
                let fd = lock(&s).ring_fd();
                while !flag.load(Ordering::Relaxed) {
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; the fd stays open while the
                    // set (shared with this thread) lives.
                    unsafe { libc::poll(&mut p, 1, 20) };
                    lock(&s).drain();
                }
            })?;
        Ok(ResidentTargets {
            set,
            stop,
            drainer: Some(drainer),
        })
    }

    /// The `targets` entry first, then the model's baseline of what is
    /// already resident: no page falls between the two.
    pub fn add(&mut self, probes: &mut Probes, pid: u32) -> anyhow::Result<()> {
        probes.add_target(pid, TARGET_FAULTS)?;
        if let Err(e) = lock(&self.set).add(pid) {
            let _ = probes.remove_target(pid);
            return Err(e.into());
        }
        Ok(())
    }

    pub fn remove(&mut self, probes: &mut Probes, pid: u32) {
        let _ = probes.remove_target(pid);
        lock(&self.set).remove(pid);
    }

    /// One sample of every model.
    pub fn sample(&mut self, sym: &mut Symbolizer) {
        lock(&self.set).sample(&mut classifier(sym));
    }

    /// Folds each model's smallest stacks beyond `max`, bounding the
    /// agent's memory; returns how many stacks were folded.
    pub fn evict_to(&mut self, max: usize, sym: &mut Symbolizer) -> u64 {
        lock(&self.set).evict_to(max, &mut classifier(sym))
    }

    /// A model's stacks and last measure, as of its last sample.
    pub fn read(&self, pid: u32) -> Option<(Vec<RawStack>, Option<Measure>)> {
        let set = lock(&self.set);
        let r = set.get(pid)?;
        Some((r.raw_stacks(), r.last().cloned()))
    }
}

impl Drop for ResidentTargets {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.drainer.take() {
            let _ = h.join();
        }
    }
}
