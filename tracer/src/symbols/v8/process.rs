//! One traced process's JS frames: its decoder config (for `v8_procs`), its
//! resolver, and the frames resolved so far, kept so that they still name
//! the stacks after the process died (an OOM post-mortem).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tracer_common::V8ProcConfig;

use super::{
    frame::{proc_config, JsFrameTag},
    memory::ProcessMemory,
    metadata::V8Metadata,
    resolve::V8Resolver,
};
use crate::{
    report::{Frame, FrameKind},
    symbols::{MapEntry, JIT_SYMBOL},
    sync::lock,
};

/// Resolved words kept per process; past this, words resolve every time.
const MAX_KEPT_FRAMES: usize = 1 << 18;

pub struct JsProcess {
    /// The value of `v8_procs[tgid]` (the BPF decoder's config).
    pub config: V8ProcConfig,
    /// Shared with the resident drain's raw-stack decoder (`observer`).
    state: Arc<Mutex<Resolution>>,
}

/// What resolving a process's JS words keeps.
struct Resolution {
    resolver: V8Resolver,
    /// `ips[]` word -> frame, resolved when the word was first seen.
    frames: HashMap<u64, Frame>,
    /// Words that could not be resolved (the process was gone, or the SFI
    /// was no longer there).
    unresolved: u64,
    /// Whether any JS word was seen: then the stacks come from a walker
    /// that decodes JS frames, and what stays JIT code is V8's other code.
    seen: bool,
}

/// Resolves the JS words of a process's stacks as another thread sees
/// them (`JsProcess::observer`): the resident drain, when it unwinds or
/// first meets a stack, so that a process that exits before the next
/// interval keeps its JS names.
#[derive(Clone)]
pub struct JsObserver(Arc<Mutex<Resolution>>);

impl JsObserver {
    /// `JsProcess::observe`, from the drain thread.
    pub fn observe(&self, words: &[u64]) {
        lock(&self.0).observe(words);
    }
}

impl JsProcess {
    /// `exec_maps`: the process's executable mappings; `path`: the module
    /// holding V8 as they name it (`/usr/bin/node`).
    pub fn new(pid: u32, meta: Arc<V8Metadata>, exec_maps: &[MapEntry], path: &str) -> JsProcess {
        let builtins = meta.builtins_in(exec_maps, path);
        JsProcess {
            config: proc_config(&meta, &builtins),
            state: Arc::new(Mutex::new(Resolution {
                resolver: V8Resolver::new(meta, Box::new(ProcessMemory { pid })),
                frames: HashMap::new(),
                unresolved: 0,
                seen: false,
            })),
        }
    }

    /// A handle that resolves words into this process's frames.
    pub fn observer(&self) -> JsObserver {
        JsObserver(Arc::clone(&self.state))
    }

    /// Resolves the JS words of a stack now (call when the stack is first
    /// seen: the GC may move or free the functions later).
    pub fn observe(&mut self, words: &[u64]) {
        lock(&self.state).observe(words);
    }

    /// The frame of a JS word: as first resolved, else resolved now.
    pub fn frame(&mut self, word: u64) -> Frame {
        lock(&self.state).frame(word)
    }

    /// Words that could not be resolved.
    pub fn unresolved(&self) -> u64 {
        lock(&self.state).unresolved
    }

    /// Whether any JS word was seen.
    pub fn seen(&self) -> bool {
        lock(&self.state).seen
    }
}

impl Resolution {
    fn observe(&mut self, words: &[u64]) {
        for &w in words {
            if JsFrameTag::decode(w).is_none() {
                continue;
            }
            self.seen = true;
            if !self.frames.contains_key(&w) {
                let f = self.resolve(w);
                if self.frames.len() < MAX_KEPT_FRAMES {
                    self.frames.insert(w, f);
                }
            }
        }
    }

    fn frame(&mut self, word: u64) -> Frame {
        match self.frames.get(&word) {
            Some(f) => f.clone(),
            None => {
                self.observe(&[word]);
                self.frames
                    .get(&word)
                    .cloned()
                    .unwrap_or_else(|| self.resolve(word))
            }
        }
    }

    fn resolve(&mut self, word: u64) -> Frame {
        let resolved = JsFrameTag::decode(word).and_then(|t| self.resolver.resolve(&t).ok());
        match resolved {
            Some(f) => f.to_report_frame(word),
            None => {
                self.unresolved += 1;
                Frame {
                    symbol: Some(JIT_SYMBOL.to_string()),
                    kind: FrameKind::Jit,
                    ..Frame::unknown(word)
                }
            }
        }
    }
}
