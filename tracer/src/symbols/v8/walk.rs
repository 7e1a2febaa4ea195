//! A frame-pointer walk in userspace that decodes JS frames the way the BPF
//! walker does (the same decoder, `frame::decode_frame`): the reference the
//! tests hold the kernel's stacks to, and a way to check a node build before
//! any BPF runs. And the decoder of frames that userspace unwinds from a
//! raw stack copy (`RawStackFrames`).
use std::time::{Duration, Instant};

use tracer_common::{V8ProcConfig, MAX_STACK_DEPTH};

use super::{
    frame::{decode_frame, Taken},
    memory::{Memory, ProcessMemory},
    process::JsObserver,
};
use crate::{
    accounting::unwind::{JsFrameDecoder, StackWindow},
    symbols::MapEntry,
};

/// One frame of a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkedFrame {
    /// The return address (the registers' pc for the first frame).
    pub pc: u64,
    /// The frame pointer of the function `pc` lies in (0 when unknown).
    pub fp: u64,
    /// What the stack records: `pc`, or the JS frame tag that replaces it.
    pub word: u64,
}

/// Walks the %rbp chain from the registers (pc, fp) of a stopped thread,
/// as tracer-ebpf's walker does: frame 0 is `pc` itself (its own frame is
/// not known: at a function's entry %rbp is still the caller's), then each
/// frame record [fp] = caller's fp, [fp+8] = return address, until a saved
/// fp that does not lie above the current one (x86-64 stacks grow down).
/// `exec_maps`: the process's executable mappings, which say whether a pc
/// is JIT code (anonymous) for the decoder.
pub fn reference_walk(
    cfg: &V8ProcConfig,
    mem: &dyn Memory,
    exec_maps: &[MapEntry],
    pc: u64,
    mut fp: u64,
) -> Vec<WalkedFrame> {
    let jit = |pc: u64| {
        exec_maps
            .iter()
            .any(|m| pc >= m.start && pc < m.end && m.is_anon())
    };
    let mut out = vec![WalkedFrame {
        pc,
        fp: 0,
        word: pc,
    }];
    while out.len() < MAX_STACK_DEPTH && fp != 0 && fp & 7 == 0 {
        let (Ok(next), Ok(ret)) = (mem.read_u64(fp), mem.read_u64(fp + 8)) else {
            break;
        };
        let word = decode_frame(cfg, mem, ret, next, jit(ret), Taken::Live).unwrap_or(ret);
        out.push(WalkedFrame {
            pc: ret,
            fp: next,
            word,
        });
        if next <= fp {
            break;
        }
        fp = next;
    }
    out
}

/// The JS frames of stacks that userspace unwinds from a raw copy (resident
/// mode's mmap and fault stacks whose walk in the kernel stopped early: the
/// kernel copies the stack and `accounting::unwind` walks it with CFI). The
/// BPF decoder never sees those frames; this one turns them into the same
/// words, from the copy (the frame's slots lie just below its frame
/// pointer, inside it) and the live process (the JSFunction and its map, in
/// V8's heap). The copy is decoded when userspace drains it, after the
/// process ran on: a scavenge may have moved a young JSFunction since, so
/// its forwarding pointer is followed (`Taken::Copied`). That is not
/// enough when the old copy's page was reused meanwhile, which is why a
/// mapping's stack is the walker's when its walk is whole: decoding every
/// mmap's copy here, node 22 lost a third of its runs of
/// tests/e2e/js_frames.rs's resident test, and 1 in 10 with the forwarding
/// pointers followed (node 20).
pub struct RawStackFrames {
    pub config: V8ProcConfig,
    pid: u32,
    /// Executable mappings (start, end, anonymous): anonymous ones are V8's
    /// JIT code (the decoder's `jit`).
    exec: Vec<(u64, u64, bool)>,
    reread: Option<Instant>,
    /// Resolves the words of new stacks while the process lives.
    observer: Option<JsObserver>,
}

/// How often a pc in no known executable mapping makes the maps be read
/// again: V8 maps code pages as it compiles, and the mmap that follows a
/// compilation (a Buffer made by the new code) can be unwound before the
/// tracer has heard of the page; garbage pcs must not re-read each time.
const REREAD_EVERY: Duration = Duration::from_millis(20);

impl RawStackFrames {
    /// Knows no JIT code until `maps_changed` (the unwinder calls it).
    pub fn new(pid: u32, config: V8ProcConfig) -> RawStackFrames {
        RawStackFrames {
            config,
            pid,
            exec: Vec::new(),
            reread: None,
            observer: None,
        }
    }

    /// Resolves the JS words of the stacks the model first meets through
    /// `observer` (`JsFrameDecoder::observe`).
    pub fn observing(mut self, observer: Option<JsObserver>) -> RawStackFrames {
        self.observer = observer;
        self
    }

    /// Whether pc is JIT code, None when it is in no executable mapping known.
    fn jit(&self, pc: u64) -> Option<bool> {
        self.exec
            .iter()
            .find(|&&(s, e, _)| pc >= s && pc < e)
            .map(|&(_, _, anon)| anon)
    }
}

/// A raw stack copy, then the live process for what is outside it.
struct CopyThenProcess<'a> {
    window: StackWindow<'a>,
    process: ProcessMemory,
}

impl Memory for CopyThenProcess<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let off = addr.checked_sub(self.window.base).map(|o| o as usize);
        if let Some(b) = off.and_then(|o| self.window.bytes.get(o..o.checked_add(buf.len())?)) {
            buf.copy_from_slice(b);
            return Ok(());
        }
        self.process.read(addr, buf)
    }
}

impl JsFrameDecoder for RawStackFrames {
    fn word(&mut self, pc: u64, fp: u64, window: StackWindow<'_>) -> Option<u64> {
        let jit = match self.jit(pc) {
            Some(j) => j,
            None if self.reread.is_none_or(|t| t.elapsed() >= REREAD_EVERY) => {
                self.reread = Some(Instant::now());
                if let Ok(maps) = crate::symbols::read_exec_maps(self.pid) {
                    self.maps_changed(&maps);
                }
                self.jit(pc).unwrap_or(false)
            }
            None => false,
        };
        let mem = CopyThenProcess {
            window,
            process: ProcessMemory { pid: self.pid },
        };
        decode_frame(&self.config, &mem, pc, fp, jit, Taken::Copied)
    }

    fn observe(&mut self, words: &[u64]) {
        if let Some(o) = &self.observer {
            o.observe(words);
        }
    }

    fn maps_changed(&mut self, exec_maps: &[MapEntry]) {
        self.exec = exec_maps
            .iter()
            .filter(|m| m.executable())
            .map(|m| (m.start, m.end, m.is_anon()))
            .collect();
    }
}
