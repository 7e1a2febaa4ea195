//! The core's reading of its models: one tick (facts, symbols, a resident
//! sample, every target's stacks, a series point each), the Report as it
//! stands, and the final Report.
use std::collections::{HashMap, HashSet};

use tracer_common::StackKey;

use super::{
    caps, cost, spawn, CoreError, Model, StacksByPid, Tracer, MAX_SERIES_POINTS, STACKS_EVICTED,
    THREADPOOL_UNPROBED,
};
use crate::{
    accounting,
    classify::stack_classifier,
    error::one_line,
    probes::Detacher,
    proc,
    report::{
        build::{assemble, Meta},
        raw::{RawProcess, RawStack},
        Report, SeriesPoint,
    },
    sync::lock,
};

/// What tracing leaves: the final report, how `run`'s command ended, and
/// the probes being detached in the background (a grace period per uprobe:
/// drop `detaching` after writing the report, to wait for the last).
pub struct Finished {
    pub report: Report,
    pub child_status: Option<String>,
    pub detaching: Detacher,
}

impl Tracer {
    /// One interval: every live target's /proc facts and new modules, a
    /// resident sample, every target's stacks, and a series point each.
    pub(super) fn tick(&mut self) {
        self.apply_queued();
        let live: Vec<u32> = self
            .targets
            .iter()
            .filter(|(_, t)| !t.exited)
            .map(|(p, _)| *p)
            .collect();
        for &pid in &live {
            let Some(now) = proc::snapshot(pid) else {
                continue;
            };
            let code = super::code_digest(pid);
            let Some(t) = self.targets.get_mut(&pid) else {
                continue;
            };
            t.info = now;
            if t.code != code {
                // Code mapped since (V8's code space, an addon): tables,
                // modules and V8 layout.
                t.code = code;
                self.code_mapped(pid);
            } else if let Err(e) = self.sym.refresh(pid) {
                log::debug!("refreshing the symbols of PID {pid}: {}", one_line(&e));
            }
        }
        let mut stacks = self.collect(true);
        for (pid, s) in stacks.drain() {
            if let Some(t) = self.targets.get_mut(&pid) {
                t.stacks = s;
            }
        }
        let report = self.report();
        let extras = self
            .point_readers
            .read(self.probes.ebpf_mut(), self.opts.mode, &live);
        let t_secs = report.duration_secs;
        for p in &report.processes {
            let Some(t) = self.targets.get_mut(&p.pid) else {
                continue;
            };
            if t.exited || !live.contains(&p.pid) {
                continue;
            }
            t.series.push(SeriesPoint {
                t_secs,
                rss_bytes: p.rss_bytes,
                buckets: p.buckets,
                ..extras.point(p.pid)
            });
            if t.series.len() > MAX_SERIES_POINTS {
                t.series.remove(0);
            }
        }
    }

    /// Applies the ring records queued so far (their happenings wait in
    /// `pending`), so that what is read next is as of now. A tick needs it:
    /// `next`'s select! picks among ready branches at random, and a tick
    /// that takes longer than the interval (hundreds of ms for ~12k stacks
    /// in a debug build) leaves the ticker ready again at once
    /// (MissedTickBehavior::Delay), so between two ticks only a record or two
    /// was applied and malloc mode's VmSpace lagged seconds behind the
    /// kernel: reservations V8 had made were missing, and with them the
    /// resident pages of its heap. Bounded by the count queued at the start:
    /// records arriving meanwhile wait for the next call.
    fn apply_queued(&mut self) {
        for _ in 0..self.rx.len() {
            let Ok(ev) = self.rx.try_recv() else { break };
            if let Some(h) = self.on_event(ev) {
                self.pending.push(h);
            }
        }
    }

    /// Every target's stacks now, with the caps applied: malloc mode deletes
    /// evicted stacks from the maps and counts them; resident mode folds
    /// them. `sample`: take a new resident sample first.
    fn collect(&mut self, sample: bool) -> StacksByPid {
        let pids: HashSet<u32> = self
            .targets
            .iter()
            .filter(|(_, t)| !t.exited)
            .map(|(p, _)| *p)
            .collect();
        match &mut self.model {
            Model::Malloc(m) => {
                let all = match m.read(self.probes.ebpf(), &pids) {
                    Ok(a) => a,
                    Err(e) => {
                        log::warn!("reading the stacks: {}", one_line(&e));
                        return HashMap::new();
                    }
                };
                let Some((per_process, total)) = self.opts.caps else {
                    return all
                        .into_iter()
                        .map(|(pid, l)| (pid, l.into_iter().map(|k| k.stack).collect()))
                        .collect();
                };
                let sizes: HashMap<u32, Vec<caps::Sized>> = all
                    .iter()
                    .map(|(pid, l)| {
                        (
                            *pid,
                            l.iter()
                                .map(|k| caps::sized(&k.stack, !k.keys.is_empty()))
                                .collect(),
                        )
                    })
                    .collect();
                let evict = caps::choose(&sizes, per_process, total);
                let mut keys: HashSet<StackKey> = HashSet::new();
                let mut out = HashMap::new();
                for (pid, list) in all {
                    let mut kept = Vec::with_capacity(list.len());
                    for (i, k) in list.into_iter().enumerate() {
                        if evict.contains(&(pid, i)) {
                            keys.extend(k.keys);
                        } else {
                            kept.push(k.stack);
                        }
                    }
                    out.insert(pid, kept);
                }
                self.evicted += evict.len() as u64;
                if let Err(e) = m.evict(self.probes.ebpf_mut(), &keys) {
                    log::warn!("deleting evicted stacks: {}", one_line(&e));
                }
                out
            }
            Model::Resident(set) => {
                let mut set = lock(set);
                let mut cached = self.frames.with(&mut self.sym);
                let mut classify = stack_classifier(&mut cached);
                if sample {
                    set.sample(&mut classify);
                }
                if let Some((per_process, total)) = self.opts.caps {
                    // The models themselves stay within the caps (memory),
                    // the reports too.
                    let max = per_process.min(total / pids.len().max(1));
                    self.evicted += set.evict_to(max, &mut classify);
                }
                let mut out = HashMap::new();
                for &pid in &pids {
                    let Some(r) = set.get(pid) else { continue };
                    if let (Some(m), Some(t)) = (r.last(), self.targets.get_mut(&pid)) {
                        t.info.rss_bytes = m.rss_bytes;
                    }
                    out.insert(pid, r.raw_stacks());
                }
                out
            }
        }
    }

    /// What every report of this moment says besides its processes.
    pub fn meta(&mut self) -> Meta {
        let (mut counters, dropped) = accounting::counters::read(self.probes.ebpf())
            .map_err(|e| log::warn!("reading the error counters: {}", one_line(&e)))
            .unwrap_or_default();
        if self.opts.caps.is_some() {
            counters.insert(STACKS_EVICTED.to_string(), self.evicted);
        }
        if self.threadpool_unprobed > 0 {
            counters.insert(THREADPOOL_UNPROBED.to_string(), self.threadpool_unprobed);
        }
        // What the unwind tables did: a module without one is walked with
        // frame pointers, so its stacks may end early.
        for (name, n) in self.probes.unwind_counters().named() {
            counters.insert(name.to_string(), n);
        }
        Meta {
            mode: self.opts.mode,
            duration_secs: self.started.elapsed().as_secs_f64(),
            counters,
            dropped_events: dropped,
            agent: Some(cost::measure()),
            warnings: self.warnings.clone(),
        }
    }

    /// Evicted malloc-mode stacks lose their bytes; folded resident ones
    /// keep them in their aggregate. What `/metrics` counts as dropped.
    pub fn lost_to_caps(&self) -> u64 {
        match self.model {
            Model::Malloc(_) => self.evicted,
            Model::Resident(_) => 0,
        }
    }

    /// The raw process of a target, from its stacks as of the last tick.
    fn raw(&self, pid: u32) -> Option<RawProcess> {
        let t = self.targets.get(&pid)?;
        Some(RawProcess {
            pid,
            comm: t.info.comm.clone(),
            exe: t.info.exe.clone(),
            rss_bytes: t.info.rss_bytes,
            exited: t.exited,
            stacks: t.stacks.clone(),
            series: t.series.clone(),
            cgroup: t.cgroup.clone(),
            limits: Some(t.info.limits.clone()),
            ..RawProcess::default()
        })
    }

    /// The report of every target as of the last tick.
    pub fn report(&mut self) -> Report {
        let raws: Vec<RawProcess> = self
            .pids()
            .into_iter()
            .filter_map(|p| self.raw(p))
            .collect();
        let meta = self.meta();
        assemble(meta, raws, &mut self.frames.with(&mut self.sym))
    }

    /// The report of one target, with its stacks read now (resident mode:
    /// as of the last sample): for an OOM victim, whose last moments count.
    pub fn report_now(&mut self, pid: u32) -> Option<Report> {
        let mut stacks = self.collect(false);
        let t = self.targets.get_mut(&pid)?;
        if let Some(s) = stacks.remove(&pid) {
            t.stacks = s;
        }
        let raw = self.raw(pid)?;
        let meta = self.meta();
        Some(assemble(
            meta,
            vec![raw],
            &mut self.frames.with(&mut self.sym),
        ))
    }

    /// Stops counting (every target leaves `targets` first, so the figures
    /// are one moment), takes the last records and builds the final report.
    pub fn finish(mut self) -> Result<Finished, CoreError> {
        for pid in self.pids() {
            self.probes.remove_target(pid)?;
        }
        // Nothing counts any more: detach while the report is built.
        let detaching = self.probes.detach();
        // The maps as they were while tracing: the drain thread holds the
        // events ring buffer, closed with it.
        let map_bytes = cost::bpf_map_bytes();
        // The drain thread stops; what it did not take is taken here.
        drop(self.drainer.take());
        self.apply_queued();
        for pid in self.pids() {
            if let Some(now) = proc::snapshot(pid) {
                if let Some(t) = self.targets.get_mut(&pid) {
                    t.info = now;
                }
            } else {
                self.mark_exited(pid, None);
            }
        }
        let raws = self.final_processes()?;
        let child_status = self.held.as_ref().and_then(|c| spawn::reap(c.pid));
        let mut meta = self.meta();
        if let Some(a) = meta.agent.as_mut() {
            a.bpf_map_bytes = map_bytes;
        }
        let report = assemble(meta, raws, &mut self.frames.with(&mut self.sym));
        Ok(Finished {
            report,
            child_status,
            detaching,
        })
    }

    /// The final raw process of every target: malloc mode reads the maps a
    /// last time; resident mode takes a last sample of each model, with its
    /// preexisting lines and reconciliation.
    fn final_processes(&mut self) -> Result<Vec<RawProcess>, CoreError> {
        let pids: HashSet<u32> = self.targets.keys().copied().collect();
        let mut raws = Vec::new();
        match &mut self.model {
            Model::Malloc(m) => {
                let mut all = m.read(self.probes.ebpf(), &pids)?;
                for pid in self.pids() {
                    let stacks: Vec<RawStack> = all
                        .remove(&pid)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|k| k.stack)
                        .collect();
                    if let Some(mut r) = self.raw(pid) {
                        r.stacks = stacks;
                        raws.push(r);
                    }
                }
            }
            Model::Resident(set) => {
                let mut set = lock(set);
                let mut cached = self.frames.with(&mut self.sym);
                let mut classify = stack_classifier(&mut cached);
                for mut r in set.finish_all(&mut classify) {
                    if let Some(t) = self.targets.get(&r.pid) {
                        r.exited |= t.exited;
                        r.comm = t.info.comm.clone();
                        r.exe = t.info.exe.clone();
                        r.cgroup = t.cgroup.clone();
                        // The tick's points, as in malloc mode: they carry
                        // the traffic, which the model's own samples lack.
                        r.series = t.series.clone();
                        r.limits = Some(t.info.limits.clone());
                        if r.rss_bytes == 0 {
                            r.rss_bytes = t.info.rss_bytes;
                        }
                    }
                    raws.push(r);
                }
            }
        }
        Ok(raws)
    }
}
