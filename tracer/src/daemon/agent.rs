//! The `watch` agent: the tracing core with targets that come and go, plus
//! the metrics server and the OOM writer. Targets come from a /proc scan at
//! start and then from EXEC records (never from polling /proc); an EXIT
//! drops everything kept about a process. Every interval each target's
//! report is published (metrics, `/report?pid=N`) and each tracked cgroup's
//! usage is checked against its limit; an OOM kill of a target writes its
//! post-mortem.
mod alerts;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;

use crate::{
    core::{Happening, TraceOptions, Tracer},
    daemon::{
        cgroup::Mounts,
        metrics::{self, MetricsState},
        oom::PreOomWatch,
        targets::{Selector, Tracked},
    },
    error::{StartError, UsageError},
    report::{self, Format, Mode, ProcessReport, RenderOptions},
};

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub selector: Selector,
    pub oom_dir: Option<PathBuf>,
    pub warn_at: f64,
    pub listen: String,
    pub mode: Mode,
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub max_stacks_per_process: usize,
    pub max_stacks_total: usize,
}

/// Latest JSON report per pid, read by the metrics thread.
type Latest = Arc<Mutex<HashMap<u32, Arc<Vec<u8>>>>>;

pub struct Agent {
    opts: AgentOptions,
    mounts: Mounts,
    tracer: Tracer,
    /// What was known of each target when tracing it started (its cgroup,
    /// labels): at OOM or exit time /proc/PID may be gone.
    tracked: BTreeMap<u32, Tracked>,
    metrics: Arc<MetricsState>,
    latest: Latest,
    preoom: PreOomWatch,
}

/// Runs the agent until SIGINT, SIGTERM or --duration.
pub async fn run(opts: AgentOptions) -> Result<()> {
    if opts.selector.is_empty() {
        return Err(
            UsageError::new("watch needs at least one of --cgroup, --comm, --all-node").into(),
        );
    }
    if let Some(dir) = &opts.oom_dir {
        crate::daemon::oom::prepare_dir(dir).map_err(StartError::new)?;
    }
    let mounts = Mounts::of_this_host().map_err(StartError::new)?;
    let tracer = Tracer::start(TraceOptions {
        mode: opts.mode,
        duration: opts.duration,
        interval: opts.interval,
        watch_exec: true,
        follow_children: false,
        caps: Some((opts.max_stacks_per_process, opts.max_stacks_total)),
    })
    .map_err(crate::commands::start_error)?;

    let metrics = MetricsState::new().map_err(StartError::new)?;
    let server = metrics::serve(&opts.listen, Arc::clone(&metrics)).map_err(StartError::new)?;
    eprintln!("offheap: serving metrics on http://{}/metrics", server.addr);
    let latest: Latest = Arc::default();
    let l = Arc::clone(&latest);
    metrics.set_report_provider(Box::new(move |pid| {
        let m = l.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&pid).map(|j| j.as_ref().clone())
    }));

    let mut agent = Agent {
        preoom: PreOomWatch::new(opts.warn_at),
        opts,
        mounts,
        tracer,
        tracked: BTreeMap::new(),
        metrics: Arc::clone(&metrics),
        latest,
    };
    for p in agent.opts.selector.scan(&agent.mounts) {
        agent.add(p.pid);
    }
    agent.tracer.begin();
    metrics.set_ready(true);
    eprintln!(
        "offheap: watching {} processes, mode {}",
        agent.tracked.len(),
        agent.opts.mode.as_str()
    );
    loop {
        match agent.tracer.next().await {
            Happening::Tick => agent.tick(),
            Happening::Exec { pid, target, .. } => {
                // A target's new program may not be one to trace.
                if target {
                    agent.remove(pid);
                }
                agent.add_if_selected(pid);
            }
            Happening::Exited { pid, wait_status } => {
                if let Some(t) = agent.remove(pid) {
                    eprintln!(
                        "offheap: PID {pid} ({}) exited (wait status {})",
                        t.info.comm,
                        wait_status.unwrap_or(-1)
                    );
                }
            }
            Happening::Oom(v) => agent.oom(&v),
            Happening::Forked { .. } => {}
            Happening::Stop(_) => break,
        }
    }
    metrics.set_ready(false);
    server.shutdown();
    Ok(())
}

impl Agent {
    /// Starts tracing `pid` if it still exists; failures are logged, the
    /// agent goes on with the others.
    fn add(&mut self, pid: u32) {
        let Some(tracked) = Tracked::new(pid, &self.mounts) else {
            return;
        };
        let cgroup = tracked.cgroup.as_ref().map(|c| c.path.clone());
        if let Err(e) = self.tracer.add_pid(pid, cgroup) {
            eprintln!(
                "offheap: cannot trace PID {pid} ({}): {}",
                tracked.info.comm,
                crate::error::one_line(&e)
            );
            return;
        }
        let what = match self.opts.mode {
            Mode::Malloc => "malloc-family calls",
            Mode::Resident => "page faults",
        };
        eprintln!(
            "offheap: tracing PID {pid} ({}), {what}{}",
            tracked.info.comm,
            tracked
                .cgroup
                .as_ref()
                .map(|c| format!(", cgroup {}", c.path))
                .unwrap_or_default()
        );
        self.tracked.insert(pid, tracked);
    }

    fn add_if_selected(&mut self, pid: u32) {
        let selected = crate::daemon::targets::proc_info(pid, &self.mounts)
            .is_some_and(|p| self.opts.selector.matches(&p));
        if selected {
            self.add(pid);
        }
    }

    /// Drops every trace of `pid`: probes, map entries, symbols, metrics.
    fn remove(&mut self, pid: u32) -> Option<Tracked> {
        let t = self.tracked.remove(&pid)?;
        self.tracer.remove(pid);
        self.metrics.remove_process(pid);
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
        if let Some(cg) = &t.cgroup {
            let still = self
                .tracked
                .values()
                .any(|o| o.cgroup.as_ref().map(|c| &c.path) == Some(&cg.path));
            if !still {
                self.preoom.forget(&cg.path);
            }
        }
        Some(t)
    }

    /// One interval: every target's report, published; then the cgroups'
    /// pre-OOM check.
    fn tick(&mut self) {
        let report = self.tracer.report();
        self.metrics
            .set_dropped_events_total(report.dropped_events + self.tracer.lost_to_caps());
        let mut reports: HashMap<u32, ProcessReport> = HashMap::new();
        for p in &report.processes {
            let Some(t) = self.tracked.get(&p.pid) else {
                continue;
            };
            self.metrics.update_process(p, &t.labels);
            let one = report.with_processes(vec![p.clone()]);
            match report::render(&one, Format::Json, &RenderOptions::default()) {
                Ok(json) => {
                    self.latest
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(p.pid, Arc::new(json));
                }
                Err(e) => log::warn!(
                    "rendering the report of PID {}: {}",
                    p.pid,
                    crate::error::one_line(&e)
                ),
            }
            reports.insert(p.pid, p.clone());
        }
        self.check_cgroups(&report, &reports);
    }
}
