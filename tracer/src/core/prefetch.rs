//! What `add_pid` reads of a process's files before attaching (its
//! allocator, its threadpool module, its symbols), read ahead while the
//! kernel verifies the BPF programs, for a front end that names its target
//! before starting (`record --pid`): about half of the time to attach
//! otherwise (node's ~100 MB executable is parsed for each).
//!
//! Nothing here is attached or changes what is traced: `add_pid` takes the
//! answers only if the process still maps the same files (it may have been
//! in the dynamic loader), and the symbols are a warmed cache that
//! `add_pid` refreshes.
use crate::{
    probes::{
        allocator::{self, Allocator},
        threadpool::{self, Skip, Threadpool},
    },
    proc::{self, Liveness},
    report::Mode,
    symbols::Symbolizer,
};

/// The answers read ahead for one process.
pub(super) struct Prefetched {
    pub pid: u32,
    /// The files it mapped then (`proc::maps::modules`).
    modules: Vec<String>,
    /// Malloc mode: its allocator, when found.
    alloc: Option<Allocator>,
    threadpool: Result<Threadpool, Skip>,
}

/// The files a process maps now; None when it is gone.
fn modules(pid: u32) -> Option<Vec<String>> {
    let maps = proc::maps::read(pid).ok()?;
    Some(proc::maps::modules(&maps))
}

impl Prefetched {
    /// Reads ahead for `pid` (a live process), capturing its symbols into
    /// `sym`. None for anything but a live process (`add_pid` says why).
    pub fn read(pid: u32, mode: Mode, sym: &mut Symbolizer) -> Option<Prefetched> {
        if proc::liveness(pid) != Liveness::Process {
            return None;
        }
        let modules = modules(pid)?;
        let alloc = match mode {
            Mode::Malloc => allocator::for_pid(pid).ok(),
            Mode::Resident => None,
        };
        let threadpool = threadpool::for_pid(pid);
        // A failure is told by add_pid, which captures again.
        let _ = sym.capture(pid);
        log::debug!("PID {pid}'s probes and symbols read ahead");
        Some(Prefetched {
            pid,
            modules,
            alloc,
            threadpool,
        })
    }

    /// The answers, if `pid` still maps what it mapped when they were read.
    pub fn take(self, pid: u32) -> Option<(Option<Allocator>, Result<Threadpool, Skip>)> {
        (self.pid == pid && modules(pid).as_ref() == Some(&self.modules))
            .then_some((self.alloc, self.threadpool))
    }
}
