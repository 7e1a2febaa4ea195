//! JS frames from V8's perf map: the map opened inside the process's root
//! and refused when it is not the process's own, then JIT addresses named
//! from it.
use std::{os::unix::fs::MetadataExt, path::Path};

use super::{PerfMap, Process, Symbolizer, JIT_SYMBOL};
use crate::report::Frame;

impl Symbolizer {
    /// A frame from the perf map, re-reading the map once if the address is
    /// not in it yet (V8 appends as it compiles).
    pub(super) fn js_frame(&mut self, pid: u32, addr: u64) -> Option<Frame> {
        let mut proc = self.procs.remove(&pid)?;
        if proc.perf.is_none() {
            self.open_perf_map(pid, &mut proc);
        }
        let frame = self.js_frame_of(pid, &mut proc, addr);
        self.procs.insert(pid, proc);
        frame
    }

    fn js_frame_of(&mut self, pid: u32, proc: &mut Process, addr: u64) -> Option<Frame> {
        let Some(perf) = proc.perf.as_mut() else {
            if proc.runs_node {
                // With V8's frames decoded (v8/), only V8's other code lacks names.
                let msg = if proc.js.as_ref().is_some_and(|j| j.seen()) {
                    format!(
                        "pid {pid}: no perf map {} found: V8 code that is not a JS function \
                         (stubs, regexps) shows as {JIT_SYMBOL}; run node with --perf-basic-prof to name it",
                        proc.perf_path
                    )
                } else {
                    format!(
                        "pid {pid}: no perf map {} found, JS frames show as {JIT_SYMBOL}; run node with --perf-basic-prof",
                        proc.perf_path
                    )
                };
                // One of the two, the latest: the first may no longer hold.
                let stale = format!("pid {pid}: no perf map ");
                proc.warnings.retain(|w| !w.starts_with(&stale));
                self.warn_about(proc, msg);
            }
            return None;
        };
        let sym = match perf.lookup(addr) {
            Some(s) => s,
            None => {
                if !perf.reload() {
                    return None;
                }
                perf.lookup(addr)?
            }
        };
        Some(Frame {
            symbol: Some(sym.name),
            module: Some(perf.path.clone()),
            file: sym.file,
            line: sym.line,
            kind: sym.kind,
            ..Frame::unknown(addr)
        })
    }

    /// Opens the process's perf map inside its root, if it has one and it
    /// is the process's own: the traced process writes that path, and
    /// offheap (root) must not read a file through it that the process
    /// could not read itself. A refusal is said once in the warnings.
    pub(super) fn open_perf_map(&mut self, pid: u32, proc: &mut Process) {
        let Some(root) = proc.root.clone() else {
            return;
        };
        let refused =
            |why: String| format!("perf map {} of pid {pid} refused: {why}", proc.perf_path);
        let file = match root.open(Path::new(&proc.perf_path)) {
            Ok(f) => f,
            Err(e) if e.is_not_found() => return,
            Err(e) => {
                let msg = refused(crate::error::one_line(&e));
                return self.warn_about(proc, msg);
            }
        };
        let owner = match file.metadata() {
            Ok(m) => m.uid(),
            Err(e) => {
                let msg = refused(crate::error::one_line(&e));
                return self.warn_about(proc, msg);
            }
        };
        if !proc.uids.contains(&owner) {
            let uid = proc
                .uids
                .get(1)
                .map_or_else(|| "unknown".to_string(), u32::to_string);
            let msg = refused(format!(
                "owned by uid {owner}, not by the process (uid {uid})"
            ));
            return self.warn_about(proc, msg);
        }
        proc.perf = Some(PerfMap::open(file, proc.perf_path.clone()));
    }
}
