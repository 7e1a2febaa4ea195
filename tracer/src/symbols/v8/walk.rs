//! A frame-pointer walk in userspace that decodes JS frames the way the BPF
//! walker does (the same decoder, `frame::decode_frame`): the reference the
//! tests hold the kernel's stacks to, and a way to check a node build before
//! any BPF runs.
use tracer_common::{V8ProcConfig, MAX_STACK_DEPTH};

use super::{frame::decode_frame, memory::Memory};
use crate::symbols::MapEntry;

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
        let word = decode_frame(cfg, mem, ret, next, jit(ret)).unwrap_or(ret);
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
