//! The resident-mode state of a whole session: the BPF maps' owner plus one
//! model per traced process. The session loop calls `drain` whenever the
//! ring buffer is readable (or every few milliseconds), `sample` once per
//! interval, and `finish` per process at the end.
use std::collections::HashMap;

use aya::Ebpf;

use super::{Classifier, DrainStats, Resident, ResidentError, ResidentMaps};
use crate::report::raw::RawProcess;

pub struct ResidentSet {
    maps: ResidentMaps,
    procs: HashMap<u32, Resident>,
    stats: DrainStats,
}

impl ResidentSet {
    /// Takes resident mode's maps out of a loaded object. The programs of
    /// `tracer_common::resident_programs::ALL` must be attached by the loader.
    pub fn new(ebpf: &mut Ebpf) -> Result<ResidentSet, ResidentError> {
        Ok(ResidentSet {
            maps: ResidentMaps::take(ebpf)?,
            procs: HashMap::new(),
            stats: DrainStats::default(),
        })
    }

    /// Starts tracing `pid`: call after its `targets` entry has
    /// `TARGET_FAULTS`, so that no page falls between the two.
    pub fn add(&mut self, pid: u32) -> Result<(), ResidentError> {
        let n = self.maps.sample_every();
        self.procs.insert(pid, Resident::start_sampled(pid, n)?);
        Ok(())
    }

    /// See `ResidentMaps::set_sample_every`; call before `add`.
    pub fn set_sample_every(&mut self, n: u32) -> Result<(), ResidentError> {
        self.maps.set_sample_every(n)
    }

    /// Stops modelling `pid` (it exited, or exec'd a new program) and hands
    /// its model back; records still in the ring for it are then ignored.
    pub fn remove(&mut self, pid: u32) -> Option<Resident> {
        self.procs.remove(&pid)
    }

    /// The JS frame decoder of a process's raw-stack unwinds (Resident::set_js).
    pub fn set_js(&mut self, pid: u32, js: Box<dyn crate::accounting::unwind::JsFrameDecoder>) {
        if let Some(r) = self.procs.get_mut(&pid) {
            r.set_js(js);
        }
    }

    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.procs.keys().copied()
    }

    pub fn get(&self, pid: u32) -> Option<&Resident> {
        self.procs.get(&pid)
    }

    /// Folds every model's smallest stacks beyond `max` (see
    /// `Resident::evict_to`); returns how many stacks were folded.
    pub fn evict_to(&mut self, max: usize, classify: &mut Classifier<'_>) -> u64 {
        self.procs
            .values_mut()
            .map(|r| r.evict_to(max, classify) as u64)
            .sum()
    }

    /// The ring buffer's fd, for epoll / tokio AsyncFd.
    pub fn ring_fd(&self) -> std::os::fd::RawFd {
        self.maps.ring_fd()
    }

    pub fn drain(&mut self) -> DrainStats {
        let s = self.maps.drain(&mut self.procs);
        self.stats.faults += s.faults;
        self.stats.fault_stacks += s.fault_stacks;
        self.stats.maps += s.maps;
        self.stats.ignored += s.ignored;
        self.stats.malformed += s.malformed;
        s
    }

    /// Totals of every drain so far.
    pub fn stats(&self) -> DrainStats {
        self.stats
    }

    /// One series point per live process.
    pub fn sample(&mut self, classify: &mut Classifier<'_>) {
        self.drain();
        for p in self.procs.values_mut() {
            p.sample(classify);
        }
    }

    /// Final models of every process (removed from the set).
    pub fn finish_all(&mut self, classify: &mut Classifier<'_>) -> Vec<RawProcess> {
        self.drain();
        let mut pids: Vec<u32> = self.procs.keys().copied().collect();
        pids.sort_unstable();
        let maps = &self.maps;
        pids.into_iter()
            .filter_map(|pid| self.procs.remove(&pid))
            .map(|mut p| {
                let pid = p.pid();
                p.finish(classify, &mut |g| maps.skip_range(pid, g))
            })
            .collect()
    }
}
