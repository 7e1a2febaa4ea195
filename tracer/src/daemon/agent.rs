//! The `watch` agent: one loaded BPF object tracing many processes. Targets
//! come from a /proc scan at start and then from EXEC events (never from
//! polling /proc); an EXIT drops everything kept about a process. Every
//! interval each target's report is rebuilt (metrics, `/report?pid=N`, its
//! growth series) and each tracked cgroup's usage is checked against its
//! limit; an OOM kill of a target writes its post-mortem.
mod alerts;
mod caps;
mod malloc;
mod resident;
mod ring;
mod symcache;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use tokio::signal::unix::{signal, SignalKind};
use tracer_common::{maps, StackKey};

use crate::{
    accounting::{self, RawProcess, RawStack},
    commands::StartError,
    daemon::{
        cgroup::Mounts,
        lifecycle::{self, LifecycleEvent},
        metrics::{self, MetricsState},
        oom::PreOomWatch,
        targets::{Selector, Tracked},
    },
    probes::{preflight, LoadConfig, Probes},
    report::{self, build::Meta, Format, Mode, ProcessReport, RenderOptions, SeriesPoint},
    session::procinfo,
    symbols::Symbolizer,
};

use malloc::MallocTargets;
use resident::ResidentTargets;
use ring::{RingEvent, RingReader};
use symcache::FrameCache;

/// Counter added to each report's `counters`: stacks dropped by the caps,
/// cumulative (malloc mode: deleted from the BPF maps; resident mode: folded
/// into one aggregate per bucket and attribution, which keeps their bytes).
pub const STACKS_EVICTED: &str = "stacks_evicted";
/// Points kept in a process's growth series (an hour at the default interval).
const MAX_SERIES_POINTS: usize = 3600;

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

/// One traced process.
struct Target {
    tracked: Tracked,
    /// Latest /proc facts, kept for after it dies.
    info: procinfo::ProcInfo,
    series: Vec<SeriesPoint>,
    /// CLOCK_MONOTONIC when tracing started: older EXEC records are stale.
    since_ns: u64,
}

/// Latest JSON report per pid, read by the metrics thread.
type Latest = Arc<Mutex<HashMap<u32, Arc<Vec<u8>>>>>;

fn start_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(StartError(e.to_string()))
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own. CLOCK_MONOTONIC
    // is the clock of bpf_ktime_get_ns(), which stamps the ring's records.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Where the figures come from: uprobes and BPF maps, or page faults and
/// the resident models.
enum Backend {
    Malloc(MallocTargets),
    Resident(ResidentTargets),
}

pub struct Agent {
    opts: AgentOptions,
    mounts: Mounts,
    probes: Probes,
    backend: Backend,
    sym: Symbolizer,
    frames: FrameCache,
    targets: BTreeMap<u32, Target>,
    metrics: Arc<MetricsState>,
    latest: Latest,
    preoom: PreOomWatch,
    started: Instant,
    evicted: u64,
}

/// Runs the agent until SIGINT, SIGTERM or --duration.
pub async fn run(opts: AgentOptions) -> Result<()> {
    if opts.selector.is_empty() {
        return Err(anyhow::Error::new(crate::commands::UsageError(
            "watch needs at least one of --cgroup, --comm, --all-node".into(),
        )));
    }
    if let Some(dir) = &opts.oom_dir {
        if !dir.is_dir() {
            return Err(start_err(format!(
                "--oom-dir {} is not a directory",
                dir.display()
            )));
        }
    }
    preflight::check().map_err(start_err)?;
    let mounts = Mounts::of_this_host().map_err(start_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(start_err)?;
    let mut term = signal(SignalKind::terminate()).map_err(start_err)?;

    let metrics = MetricsState::new().map_err(start_err)?;
    let server = metrics::serve(&opts.listen, Arc::clone(&metrics)).map_err(start_err)?;
    eprintln!("offheap: serving metrics on http://{}/metrics", server.addr);
    let latest: Latest = Arc::default();
    let l = Arc::clone(&latest);
    metrics.set_report_provider(Box::new(move |pid| {
        let m = l.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&pid).map(|j| j.as_ref().clone())
    }));

    let cfg = LoadConfig {
        watch_exec: true,
        ..LoadConfig::from_env()
    };
    let mut probes = Probes::load(&cfg).map_err(start_err)?;
    lifecycle::attach(probes.ebpf_mut()).map_err(start_err)?;
    let backend = match opts.mode {
        Mode::Malloc => {
            probes.attach_vm().map_err(start_err)?;
            Backend::Malloc(MallocTargets::default())
        }
        Mode::Resident => {
            Backend::Resident(ResidentTargets::start(&mut probes).map_err(start_err)?)
        }
    };
    let map = probes
        .ebpf_mut()
        .take_map(maps::EVENTS)
        .ok_or_else(|| start_err("BPF map events is missing from the object"))?;
    // Started before the scan: a process exec'd during it is not missed.
    let (_reader, mut events) = RingReader::start(map).map_err(start_err)?;

    let mut agent = Agent {
        preoom: PreOomWatch::new(opts.warn_at),
        opts,
        mounts,
        probes,
        backend,
        sym: Symbolizer::new(),
        frames: FrameCache::default(),
        targets: BTreeMap::new(),
        metrics: Arc::clone(&metrics),
        latest,
        started: Instant::now(),
        evicted: 0,
    };
    for p in agent.opts.selector.scan(&agent.mounts) {
        agent.add(p.pid);
    }
    metrics.set_ready(true);
    eprintln!(
        "offheap: watching {} processes, mode {}",
        agent.targets.len(),
        agent.opts.mode.as_str()
    );

    let duration = agent.opts.duration;
    let deadline = async move {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(agent.opts.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = int.recv() => break,
            _ = term.recv() => break,
            ev = events.recv() => match ev {
                Some(ev) => agent.handle(ev),
                None => anyhow::bail!("the ring buffer thread stopped"),
            },
            _ = ticker.tick() => agent.tick(),
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
        let since_ns = monotonic_ns();
        let added = match &mut self.backend {
            Backend::Malloc(m) => m
                .add(&mut self.probes, pid)
                .map(|module| format!("allocator {module}"))
                .map_err(anyhow::Error::new),
            Backend::Resident(r) => r.add(&mut self.probes, pid).map(|()| "page faults".into()),
        };
        let what = match added {
            Ok(w) => w,
            Err(e) => {
                eprintln!(
                    "offheap: cannot trace PID {pid} ({}): {e}",
                    tracked.info.comm
                );
                return;
            }
        };
        // Captured now: at OOM or exit time /proc/PID/maps is gone.
        if let Err(e) = self.sym.capture(pid) {
            log::warn!("symbols of PID {pid}: {e}");
        }
        eprintln!(
            "offheap: tracing PID {pid} ({}), {what}{}",
            tracked.info.comm,
            tracked
                .cgroup
                .as_ref()
                .map(|c| format!(", cgroup {}", c.path))
                .unwrap_or_default()
        );
        let info = procinfo::snapshot(pid).unwrap_or_default();
        self.targets.insert(
            pid,
            Target {
                tracked,
                info,
                series: Vec::new(),
                since_ns,
            },
        );
    }

    /// Drops every trace of `pid`: probes, map entries, symbols, metrics.
    fn remove(&mut self, pid: u32) -> Option<Target> {
        let t = self.targets.remove(&pid)?;
        match &mut self.backend {
            Backend::Malloc(m) => m.remove(&mut self.probes, pid),
            Backend::Resident(r) => r.remove(&mut self.probes, pid),
        }
        self.sym.forget(pid);
        self.frames.forget(pid);
        self.sym.prune();
        self.metrics.remove_process(pid);
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
        if let Some(cg) = &t.tracked.cgroup {
            let still = self
                .targets
                .values()
                .any(|o| o.tracked.cgroup.as_ref().map(|c| &c.path) == Some(&cg.path));
            if !still {
                self.preoom.forget(&cg.path);
            }
        }
        Some(t)
    }

    fn handle(&mut self, ev: RingEvent) {
        match ev {
            RingEvent::Vm(v) => {
                if let Backend::Malloc(m) = &mut self.backend {
                    m.apply(&v);
                }
            }
            RingEvent::Life(LifecycleEvent::Exec { tgid, ts_ns, .. }) => {
                match self.targets.get(&tgid) {
                    // Found by the scan after this exec: already right.
                    Some(t) if ts_ns < t.since_ns => {}
                    // A new program in a traced process: new allocator,
                    // new modules, a new report.
                    Some(_) => {
                        self.remove(tgid);
                        self.add_if_selected(tgid);
                    }
                    None => self.add_if_selected(tgid),
                }
            }
            RingEvent::Life(LifecycleEvent::Exit {
                tgid, wait_status, ..
            }) => {
                if let Some(t) = self.remove(tgid) {
                    eprintln!(
                        "offheap: PID {tgid} ({}) exited (wait status {wait_status})",
                        t.info.comm
                    );
                }
            }
            RingEvent::Life(LifecycleEvent::Oom(v)) => self.oom(&v),
            RingEvent::Life(LifecycleEvent::Fork { .. }) => {}
        }
    }

    fn add_if_selected(&mut self, pid: u32) {
        let selected = crate::daemon::targets::proc_info(pid, &self.mounts)
            .is_some_and(|p| self.opts.selector.matches(&p));
        if selected {
            self.add(pid);
        }
    }

    fn meta(&mut self) -> Meta {
        let (mut counters, dropped) = accounting::counters::read(self.probes.ebpf())
            .map_err(|e| log::warn!("reading the error counters: {e}"))
            .unwrap_or_default();
        counters.insert(STACKS_EVICTED.to_string(), self.evicted);
        // Evicted malloc-mode stacks lose their bytes; folded resident ones
        // keep them in their aggregate.
        let lost = match self.backend {
            Backend::Malloc(_) => self.evicted,
            Backend::Resident(_) => 0,
        };
        self.metrics.set_dropped_events_total(dropped + lost);
        Meta {
            mode: self.opts.mode,
            duration_secs: self.started.elapsed().as_secs_f64(),
            counters,
            dropped_events: dropped,
        }
    }

    /// Stacks of every target, with the caps applied. Malloc mode deletes
    /// evicted stacks from the maps and counts them; resident mode leaves
    /// them out of the reports. `sample`: take a new resident sample first.
    fn collect(&mut self, sample: bool) -> HashMap<u32, Vec<RawStack>> {
        match &mut self.backend {
            Backend::Malloc(m) => {
                let mut all = match m.read(&self.probes) {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("offheap: reading the stacks: {e}");
                        return HashMap::new();
                    }
                };
                let evict = self.choose(all.iter().map(|(pid, l)| {
                    (
                        *pid,
                        l.iter().map(|k| (&k.stack, !k.keys.is_empty())).collect(),
                    )
                }));
                let mut keys: HashSet<StackKey> = HashSet::new();
                let mut out = HashMap::new();
                for (pid, list) in all.drain() {
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
                if let Backend::Malloc(m) = &mut self.backend {
                    if let Err(e) = m.evict(&mut self.probes, &keys) {
                        eprintln!("offheap: deleting evicted stacks: {e}");
                    }
                }
                out
            }
            Backend::Resident(r) => {
                if sample {
                    r.sample(&mut self.sym);
                }
                // The models themselves stay within the caps (memory), the
                // reports too (below).
                let per_process = self
                    .opts
                    .max_stacks_per_process
                    .min(self.opts.max_stacks_total / self.targets.len().max(1));
                self.evicted += r.evict_to(per_process, &mut self.sym);
                let mut all: HashMap<u32, Vec<RawStack>> = HashMap::new();
                for (pid, t) in self.targets.iter_mut() {
                    if let Some((stacks, last)) = r.read(*pid) {
                        if let Some(m) = last {
                            t.info.rss_bytes = m.rss_bytes;
                        }
                        all.insert(*pid, stacks);
                    }
                }
                all
            }
        }
    }

    /// The caps over (stack, evictable) lists.
    fn choose<'a>(
        &self,
        lists: impl Iterator<Item = (u32, Vec<(&'a RawStack, bool)>)>,
    ) -> HashSet<(u32, usize)> {
        let sizes: HashMap<u32, Vec<caps::Sized>> = lists
            .map(|(pid, l)| {
                let v = l
                    .into_iter()
                    .map(|(s, evictable)| caps::Sized {
                        live_bytes: s.live_bytes,
                        total_bytes: s.total_bytes,
                        evictable,
                    })
                    .collect();
                (pid, v)
            })
            .collect();
        caps::choose(
            &sizes,
            self.opts.max_stacks_per_process,
            self.opts.max_stacks_total,
        )
    }

    fn raw(&self, pid: u32, t: &Target, stacks: Vec<RawStack>) -> RawProcess {
        RawProcess {
            pid,
            comm: t.info.comm.clone(),
            exe: t.info.exe.clone(),
            rss_bytes: t.info.rss_bytes,
            exited: false,
            stacks,
            series: t.series.clone(),
            cgroup: t.tracked.cgroup.as_ref().map(|c| c.path.clone()),
            ..RawProcess::default()
        }
    }

    /// One interval: every target's report, metrics, series; then the
    /// cgroups' pre-OOM check.
    fn tick(&mut self) {
        let pids: Vec<u32> = self.targets.keys().copied().collect();
        // Facts and symbols first: resident sampling classifies new stacks.
        for &pid in &pids {
            let Some(now) = procinfo::snapshot(pid) else {
                continue;
            };
            if let Err(e) = self.sym.refresh(pid) {
                log::debug!("refreshing the symbols of PID {pid}: {e}");
            }
            if let Some(t) = self.targets.get_mut(&pid) {
                t.info = now;
            }
        }
        let mut stacks = self.collect(true);
        let meta = self.meta();
        let t_secs = meta.duration_secs;
        let mut reports: HashMap<u32, ProcessReport> = HashMap::new();
        for pid in pids {
            let Some(t) = self.targets.get(&pid) else {
                continue;
            };
            let raw = self.raw(pid, t, stacks.remove(&pid).unwrap_or_default());
            let mut report = report::build::assemble(
                self.copy_meta(&meta),
                vec![raw],
                &mut self.frames.with(&mut self.sym),
            );
            let Some(p) = report.processes.first_mut() else {
                continue;
            };
            let point = SeriesPoint {
                t_secs,
                rss_bytes: p.rss_bytes,
                buckets: p.buckets,
                ..SeriesPoint::default()
            };
            let t = self.targets.get_mut(&pid).expect("present above");
            t.series.push(point.clone());
            if t.series.len() > MAX_SERIES_POINTS {
                t.series.remove(0);
            }
            p.series.push(point);
            self.metrics.update_process(p, &t.tracked.labels);
            match report::render(&report, Format::Json, &RenderOptions::default()) {
                Ok(json) => {
                    self.latest
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(pid, Arc::new(json));
                }
                Err(e) => log::warn!("rendering the report of PID {pid}: {e}"),
            }
            if let Some(p) = report.processes.pop() {
                reports.insert(pid, p);
            }
        }
        self.check_cgroups(&meta, &reports);
    }

    fn copy_meta(&self, m: &Meta) -> Meta {
        Meta {
            mode: m.mode,
            duration_secs: m.duration_secs,
            counters: m.counters.clone(),
            dropped_events: m.dropped_events,
        }
    }
}
