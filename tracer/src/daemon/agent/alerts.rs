//! The alerting half of the agent: pre-OOM snapshots when a tracked
//! cgroup crosses --warn-at, and post-mortems when the kernel OOM-kills a
//! target.
use std::{
    collections::{HashMap, HashSet},
    io::Write,
    time::SystemTime,
};

use super::Agent;
use crate::{
    daemon::{
        lifecycle::OomVictim,
        oom::{self, Owner},
    },
    report::{self, build::Meta, ProcessReport, Report},
};

impl Agent {
    /// Writes a pre-OOM snapshot of a cgroup's targets once per upward
    /// crossing of --warn-at.
    pub(super) fn check_cgroups(&mut self, meta: &Meta, reports: &HashMap<u32, ProcessReport>) {
        let mut seen: HashSet<String> = HashSet::new();
        let cgroups: Vec<_> = self
            .targets
            .values()
            .filter_map(|t| t.tracked.cgroup.clone())
            .filter(|c| seen.insert(c.path.clone()))
            .collect();
        for cg in cgroups {
            let (Ok(usage), Ok(limit)) = (cg.usage_bytes(), cg.limit_bytes()) else {
                continue;
            };
            if !self.preoom.observe(&cg.path, usage, limit) {
                continue;
            }
            let (Some(dir), Some(limit)) = (&self.opts.oom_dir, limit) else {
                continue;
            };
            let mut report = Report::new(meta.mode);
            report.duration_secs = meta.duration_secs;
            report.counters = meta.counters.clone();
            report.dropped_events = meta.dropped_events;
            for (pid, t) in &self.targets {
                if t.tracked.cgroup.as_ref().map(|c| &c.path) == Some(&cg.path) {
                    if let Some(p) = reports.get(pid) {
                        report.processes.push(p.clone());
                    }
                }
            }
            let owner = Owner::of(Some(&cg));
            match oom::write_preoom(dir, &report, &owner, usage, limit, SystemTime::now()) {
                Ok(w) => say(&w.log_line),
                Err(e) => eprintln!("offheap: writing the pre-OOM snapshot of {}: {e}", cg.path),
            }
        }
    }

    /// The kernel chose an OOM victim: a target's post-mortem is built from
    /// what was captured while it lived (its maps may already be gone).
    pub(super) fn oom(&mut self, v: &OomVictim) {
        self.metrics.inc_oom_kills();
        if !self.targets.contains_key(&v.tgid) {
            return;
        }
        // Resident mode: the last sample stands (the victim is dying).
        let mut stacks = self.collect(false);
        let meta = self.meta();
        let t = &self.targets[&v.tgid];
        let raw = self.raw(v.tgid, t, stacks.remove(&v.tgid).unwrap_or_default());
        let cgroup = t.tracked.cgroup.clone();
        let report = report::build::assemble(meta, vec![raw], &mut self.frames.with(&mut self.sym));
        let Some(dir) = self.opts.oom_dir.clone() else {
            let top = oom::top_off_heap(&report, Some(v.tgid))
                .map(oom::describe_stack)
                .unwrap_or_else(|| "no off-heap stack recorded".into());
            say(&format!(
                "offheap: OOM kill of pid {} ({}): no --oom-dir, no report written; top off-heap: {top}",
                v.tgid, v.comm
            ));
            return;
        };
        match oom::postmortem(&dir, report, v, cgroup.as_ref(), SystemTime::now()) {
            Ok((_, w)) => say(&w.log_line),
            Err(e) => eprintln!("offheap: writing the post-mortem of PID {}: {e}", v.tgid),
        }
    }
}

/// One line on stdout, flushed at once: log collectors read it live.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
