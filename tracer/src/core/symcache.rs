//! Frames of native code cached across ticks: the agent rebuilds every
//! target's report each interval, and the same return addresses come back
//! every time. Only frames named from an ELF module are kept: JIT code may
//! be named later (V8 appends to its perf map) or replaced at the same
//! address, so those are asked again each time.
use std::collections::HashMap;

use crate::{
    report::{build::Symbolize, Frame, FrameKind},
    symbols::Symbolizer,
};

/// Entries kept before the cache starts over (each is a few frames).
const MAX_ENTRIES: usize = 1 << 20;

#[derive(Default)]
pub struct FrameCache {
    frames: HashMap<u32, HashMap<u64, Vec<Frame>>>,
    entries: usize,
}

impl FrameCache {
    /// Drops a process's entries (it exited or exec'd).
    pub fn forget(&mut self, pid: u32) {
        if let Some(m) = self.frames.remove(&pid) {
            self.entries -= m.len();
        }
    }

    /// A `Symbolize` that looks here first, then asks `sym`.
    pub fn with<'a>(&'a mut self, sym: &'a mut Symbolizer) -> Cached<'a> {
        Cached { cache: self, sym }
    }
}

pub struct Cached<'a> {
    cache: &'a mut FrameCache,
    sym: &'a mut Symbolizer,
}

fn cacheable(frames: &[Frame]) -> bool {
    !frames.is_empty()
        && frames
            .iter()
            .all(|f| f.kind == FrameKind::Native && f.symbol.is_some())
}

impl Symbolize for Cached<'_> {
    fn symbolize(&mut self, pid: u32, addr: u64) -> Vec<Frame> {
        // No address: the accounting's join of a threadpool stack with the
        // stack that queued its work.
        if addr == tracer_common::ASYNC_MARKER {
            return vec![Frame::async_marker()];
        }
        if let Some(f) = self.cache.frames.get(&pid).and_then(|m| m.get(&addr)) {
            return f.clone();
        }
        let frames = self.sym.symbolize(pid, addr);
        if cacheable(&frames) {
            if self.cache.entries >= MAX_ENTRIES {
                self.cache.frames.clear();
                self.cache.entries = 0;
            }
            let m = self.cache.frames.entry(pid).or_default();
            if m.insert(addr, frames.clone()).is_none() {
                self.cache.entries += 1;
            }
        }
        frames
    }

    fn take_warnings(&mut self) -> Vec<String> {
        self.sym.take_warnings()
    }

    fn process_warnings(&mut self, pid: u32) -> Vec<String> {
        self.sym.process_warnings(pid)
    }
}
