//! Targets coming and going: a running process (`add_pid`), a command
//! started held before its exec (`spawn`), a followed child (`adopt`), a
//! new program in a target (`restart`), and `remove`.
use std::time::{Duration, Instant};

use tracer_common::{TARGET_FAULTS, TARGET_FOLLOW, TARGET_MALLOC, TARGET_VM};

use super::{interrupted, monotonic_ns, spawn, CoreError, Model, Target, Tracer};
use crate::{
    error::one_line,
    probes::{
        allocator::{self, Allocator, AllocatorError},
        threadpool::{self, Skip, Threadpool},
    },
    proc::{self, Liveness},
    report::{progress::Progress, Mode},
    sync::lock,
};

/// How long `add_pid` waits for a process still in the dynamic loader to
/// map its allocator (ld.so maps libc within milliseconds of exec).
const LOADER_WAIT: Duration = Duration::from_secs(2);
const LOADER_POLL: Duration = Duration::from_millis(10);
/// Executables from this size on take a noticeable time to parse (node:
/// ~100 MB, ~1.5 s): their first capture is shown as a step on stderr so
/// the pause never looks like a hang.
const SLOW_EXE_BYTES: u64 = 16_000_000;

impl Tracer {
    /// The `targets` flags of a new target in this mode.
    fn flags(&self) -> u32 {
        let follow = if self.opts.follow_children {
            TARGET_FOLLOW
        } else {
            0
        };
        follow
            | match self.opts.mode {
                Mode::Malloc => TARGET_MALLOC | TARGET_VM,
                Mode::Resident => TARGET_FAULTS,
            }
    }

    /// Starts tracing a running process; `cgroup` labels it in reports.
    pub fn add_pid(&mut self, pid: u32, cgroup: Option<String>) -> Result<(), CoreError> {
        match proc::liveness(pid) {
            Liveness::Process => {}
            Liveness::Thread { tgid } => return Err(CoreError::Thread { pid, tgid }),
            Liveness::Zombie => return Err(CoreError::Zombie(pid)),
            Liveness::KernelThread => return Err(CoreError::KernelThread(pid)),
            Liveness::Gone => return Err(CoreError::NoProcess(pid)),
        }
        let since = Instant::now();
        // What start_for_pid read ahead, if the process still maps the
        // same files (see `prefetch`).
        let (alloc, tp) = match self.prefetched.take().and_then(|p| p.take(pid)) {
            Some((alloc, tp)) => (alloc, Some(tp)),
            None => (None, None),
        };
        let alloc = match (self.opts.mode, alloc) {
            (Mode::Malloc, Some(a)) => {
                a.check_required()?;
                Some(a)
            }
            (Mode::Malloc, None) => Some(self.allocator_of(pid)?),
            (Mode::Resident, _) => None,
        };
        let found = tp.unwrap_or_else(|| threadpool::for_pid(pid));
        let tp = self.threadpool(pid, found);
        self.attach(pid, alloc.as_ref(), tp.as_ref())?;
        self.adopted(pid, monotonic_ns(), cgroup)?;
        log::debug!("PID {pid} added in {:?}", since.elapsed());
        Ok(())
    }

    /// The unwind tables of `pid`'s modules. A failure leaves its stacks to
    /// frame pointers (and says so).
    fn load_tables(&mut self, pid: u32) {
        if let Err(e) = self.probes.load_tables(pid) {
            eprintln!("offheap: warning: unwind tables of PID {pid}: {}; its stacks follow frame pointers only", one_line(&e));
        }
    }

    /// `pid` mapped code (an addon's dlopen, V8 code pages): its tables,
    /// its modules and its V8 layout are brought up to date.
    pub(super) fn code_mapped(&mut self, pid: u32) {
        self.load_tables(pid);
        self.modules_changed(pid);
    }

    /// `pid`'s modules and V8 layout, after its tables were brought up to
    /// date (by `code_mapped`, or by the drain thread on a code mapping).
    pub(super) fn modules_changed(&mut self, pid: u32) {
        if let Err(e) = self.sym.refresh(pid) {
            log::debug!("refreshing the symbols of PID {pid}: {}", one_line(&e));
        }
        self.set_v8_config(pid);
    }

    /// The V8 layout of `pid`, for the walker's JS frames (none without V8).
    fn set_v8_config(&mut self, pid: u32) {
        if let Some(cfg) = self.sym.v8_config(pid) {
            if let Err(e) = self.probes.set_v8_config(pid, &cfg) {
                log::warn!("V8 layout of PID {pid}: {}", one_line(&e));
            }
            // Resident mode unwinds mmap stacks in userspace: the same words.
            if let Model::Resident(set) = &self.model {
                let js = crate::symbols::v8::RawStackFrames::new(pid, cfg)
                    .observing(self.sym.js_observer(pid));
                lock(set).set_js(pid, Box::new(js));
            }
        }
    }

    /// `interrupted`, remembered for `next`: the signal it takes must
    /// still end tracing when the attach was one made while tracing (a
    /// followed child, a restart, watch's new target), not be lost with the
    /// failed attach.
    fn check_signal(&mut self) -> Result<(), CoreError> {
        let r = interrupted(&mut self.signals);
        self.signal_seen |= r.is_err();
        r
    }

    /// The allocator of `pid`, waiting for a process that is still in the
    /// dynamic loader (started a moment ago) to map it.
    fn allocator_of(&mut self, pid: u32) -> Result<Allocator, CoreError> {
        let since = Instant::now();
        loop {
            match allocator::for_pid(pid) {
                Ok(a) => {
                    a.check_required()?;
                    return Ok(a);
                }
                Err(AllocatorError::NotFound(_)) if since.elapsed() < LOADER_WAIT => {
                    self.check_signal()?;
                    std::thread::sleep(LOADER_POLL);
                }
                Err(AllocatorError::NotFound(_)) => {
                    return Err(CoreError::NoAllocator {
                        pid,
                        secs: LOADER_WAIT.as_secs(),
                    })
                }
                Err(AllocatorError::NoProcess(_)) => {
                    return Err(CoreError::ExitedWhileAttaching(pid))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The threadpool module to probe in `pid`, if any; a process whose
    /// threadpool cannot be followed is counted (`THREADPOOL_UNPROBED`),
    /// and warned about when it has libuv (a stripped libuv.so).
    fn threadpool(&mut self, pid: u32, found: Result<Threadpool, Skip>) -> Option<Threadpool> {
        if threadpool::disabled() || !self.threadpool_links {
            return None;
        }
        match found {
            Ok(tp) => Some(tp),
            Err(skip) => {
                self.threadpool_unprobed += 1;
                match skip {
                    Skip::NoLibuv => log::info!("threadpool of PID {pid} not followed: {skip}"),
                    Skip::Missing { .. } => eprintln!(
                        "offheap: warning: PID {pid}: threadpool work is not followed to the code that queued it: {skip}"
                    ),
                }
                None
            }
        }
    }

    /// Puts `pid` in `targets` and attaches its uprobes (malloc mode's,
    /// the threadpool's); undoes both on failure.
    fn attach(
        &mut self,
        pid: u32,
        alloc: Option<&Allocator>,
        tp: Option<&Threadpool>,
    ) -> Result<(), CoreError> {
        // The uprobes first, then the target: its probes count from the
        // moment every one of them is in place (and its first tables with
        // them, which add_target waits for).
        let attached = match alloc {
            Some(a) => self.probes.attach_malloc(pid, a).map(|syms| {
                log::info!("attached to {} in {}: {syms:?}", a.module, a.path.display())
            }),
            None => Ok(()),
        };
        let attached = attached.and_then(|()| match tp {
            Some(t) => self
                .probes
                .attach_threadpool(pid, t)
                .map(|()| log::info!("threadpool probes in {} ({})", t.module, t.path.display())),
            None => Ok(()),
        });
        let flags = self.flags();
        let attached = attached
            .and_then(|()| self.probes.add_target(pid, flags))
            .map_err(CoreError::from)
            .and_then(|()| self.check_signal());
        if let Err(e) = attached {
            self.probes.detach_uprobes(pid);
            let _ = self.probes.remove_target(pid);
            return Err(e);
        }
        Ok(())
    }

    /// The userspace half of a target whose probes are in place: its model
    /// (resident mode: the baseline of what is resident now), its symbols
    /// (captured while it lives) and its /proc facts.
    fn adopted(
        &mut self,
        pid: u32,
        since_ns: u64,
        cgroup: Option<String>,
    ) -> Result<(), CoreError> {
        self.adopt_or(pid, since_ns, cgroup, None)
    }

    /// `adopted`, with what to report of a process that is already gone:
    /// None fails (it exited while attaching: nothing was traced), Some
    /// keeps it as an exited target with those facts (a command `run`
    /// started, traced from its exec, that ran to its end already).
    fn adopt_or(
        &mut self,
        pid: u32,
        since_ns: u64,
        cgroup: Option<String>,
        if_gone: Option<proc::ProcInfo>,
    ) -> Result<(), CoreError> {
        let modelled = match &mut self.model {
            Model::Malloc(m) => {
                m.add(pid);
                Ok(())
            }
            Model::Resident(set) => lock(set).add(pid).map_err(CoreError::from),
        };
        // The model first (resident mode: its baseline), then the unwind
        // tables (~50 ms for node's), then the symbols.
        self.load_tables(pid);
        let info = proc::snapshot(pid);
        match (modelled, info, if_gone) {
            (Ok(()), Some(info), _) => {
                self.capture_symbols(pid);
                self.set_v8_config(pid);
                self.insert_target(pid, info, since_ns, cgroup);
                Ok(())
            }
            (Ok(()), None, Some(info)) => {
                self.insert_target(pid, info, since_ns, cgroup);
                self.mark_exited(pid, None);
                Ok(())
            }
            (Err(e), Some(_), _) => {
                self.forget(pid);
                Err(e)
            }
            (_, None, _) => {
                self.forget(pid);
                Err(CoreError::ExitedWhileAttaching(pid))
            }
        }
    }

    fn insert_target(
        &mut self,
        pid: u32,
        info: proc::ProcInfo,
        since_ns: u64,
        cgroup: Option<String>,
    ) {
        self.targets.insert(
            pid,
            Target {
                info,
                series: Vec::new(),
                since_ns,
                cgroup,
                exited: false,
                wait_status: None,
                stacks: Vec::new(),
                code: super::code_digest(pid),
            },
        );
    }

    /// Captures a process's modules now, while it lives (names survive its
    /// exit); a failure leaves frames with their addresses, and is said.
    fn capture_symbols(&mut self, pid: u32) {
        let big = std::fs::metadata(format!("/proc/{pid}/exe"))
            .is_ok_and(|m| m.len() >= SLOW_EXE_BYTES)
            && !self.sym.is_captured(pid);
        let step = big.then(|| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            Progress::new(format!("reading the symbols of {}", exe.display()))
        });
        match self.sym.capture(pid) {
            Ok(()) => {
                if let Some(s) = step {
                    s.done();
                }
            }
            Err(e) => {
                if let Some(s) = step {
                    s.failed();
                }
                eprintln!("offheap: warning: {}", one_line(&e));
            }
        }
    }

    /// Starts `argv` held before its exec, attaches its probes, then lets it
    /// exec: nothing it does is missed. Returns its pid.
    pub fn spawn(&mut self, argv: &[String]) -> Result<u32, CoreError> {
        let exe = spawn::resolve(&argv[0])?;
        let alloc = match self.opts.mode {
            Mode::Malloc => {
                let preload = std::env::var("LD_PRELOAD").ok();
                let a = allocator::for_exec(&exe, preload.as_deref())?;
                a.check_required()?;
                Some(a)
            }
            Mode::Resident => None,
        };
        let mut child = spawn::spawn_held(argv)?;
        let pid = child.pid;
        let tp = self.threadpool(pid, threadpool::for_exec(&exe));
        if let Err(e) = self.attach(pid, alloc.as_ref(), tp.as_ref()) {
            child.abort();
            return Err(e);
        }
        // Its executable's symbols now, while it waits: captured after its
        // exec, a short command is then named before it can exit.
        self.sym.preload(&exe);
        if let Err(e) = child.release(&spawn::comm_of(&exe)) {
            let _ = spawn::reap(pid);
            let _ = self.probes.remove_target(pid);
            self.probes.detach_uprobes(pid);
            return Err(e.into());
        }
        // After the exec: the tables, the model's baseline and the modules
        // are the new image's (before it, the child was a copy of this
        // process), and the exec record of that very exec is stale.
        self.held = Some(child);
        let if_gone = proc::ProcInfo {
            comm: spawn::comm_of(&exe),
            exe: exe.display().to_string(),
            rss_bytes: 0,
            limits: Default::default(),
        };
        self.adopt_or(pid, monotonic_ns(), None, Some(if_gone))?;
        Ok(pid)
    }

    /// A child a followed target forked: the kernel made it a target
    /// already (TARGET_FOLLOW), before it ran; this attaches the rest.
    pub(super) fn adopt(&mut self, child: u32) -> Result<(), CoreError> {
        let alloc = match self.opts.mode {
            Mode::Malloc => match self.allocator_of(child) {
                Ok(a) => Some(a),
                Err(e) => {
                    let _ = self.probes.remove_target(child);
                    return Err(e);
                }
            },
            Mode::Resident => None,
        };
        let tp = self.threadpool(child, threadpool::for_pid(child));
        self.attach(child, alloc.as_ref(), tp.as_ref())?;
        self.adopted(child, monotonic_ns(), None)
    }

    /// Target `pid` exec'd a new program: its allocator, modules and model
    /// are new. Its figures so far are dropped (they are of the old image).
    pub fn restart(&mut self, pid: u32) -> Result<(), CoreError> {
        let cgroup = self.targets.get(&pid).and_then(|t| t.cgroup.clone());
        self.remove(pid);
        self.add_pid(pid, cgroup)
    }

    /// Stops tracing `pid` and drops everything kept about it: probes, map
    /// entries, model, symbols.
    pub fn remove(&mut self, pid: u32) {
        self.forget(pid);
        self.targets.remove(&pid);
        self.sym.forget(pid);
        self.frames.forget(pid);
        self.sym.prune();
    }

    fn forget(&mut self, pid: u32) {
        let _ = self.probes.remove_target(pid);
        self.probes.drop_tables(pid);
        self.probes.detach_uprobes(pid);
        match &mut self.model {
            Model::Malloc(m) => {
                m.remove(self.probes.ebpf_mut(), pid);
            }
            Model::Resident(set) => {
                lock(set).remove(pid);
            }
        }
    }
}
