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
    core::OomVictim,
    daemon::oom::{self, Owner},
    report::{ProcessReport, Report},
};

impl Agent {
    /// Writes a pre-OOM snapshot of a cgroup's targets once per upward
    /// crossing of --warn-at.
    pub(super) fn check_cgroups(&mut self, all: &Report, reports: &HashMap<u32, ProcessReport>) {
        let mut seen: HashSet<String> = HashSet::new();
        let cgroups: Vec<_> = self
            .tracked
            .values()
            .filter_map(|t| t.cgroup.clone())
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
            let processes = self
                .tracked
                .iter()
                .filter(|(_, t)| t.cgroup.as_ref().map(|c| &c.path) == Some(&cg.path))
                .filter_map(|(pid, _)| reports.get(pid).cloned())
                .collect();
            let report = all.with_processes(processes);
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
        let Some(cgroup) = self.tracked.get(&v.tgid).map(|t| t.cgroup.clone()) else {
            return;
        };
        let Some(report) = self.tracer.report_now(v.tgid) else {
            return;
        };
        let Some(dir) = self.opts.oom_dir.clone() else {
            let top = oom::top_off_heap(&report, Some(v.tgid))
                .map(oom::describe_stack)
                .unwrap_or_else(|| "no off-heap stack recorded".into());
            say(&format!(
                "offheap: OOM kill of pid {} ({}): no --oom-dir, no report written; top off-heap: {top}{}",
                v.tgid,
                v.comm,
                oom::verdict_part(&report, v.tgid)
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
