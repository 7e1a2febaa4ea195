//! One JS frame as the stack holds it: the `ips[]` word of offheap.h's V8
//! section, and the decoder that makes it from a frame's (pc, fp). The
//! decoder is the userspace twin of `v8_frame()` in tracer-ebpf/include/
//! v8.bpf.h, step for step, so that the reference walk (tests) and the BPF
//! walker produce the same words.
use std::ops::Range;

use tracer_common::{
    v8_tier, V8ProcConfig, V8_FRAME_BYTES, V8_FRAME_TAG, V8_JS_FUNCTION_BYTES, V8_OFFSET_MAX,
    V8_OFFSET_SHIFT, V8_SFI_MASK, V8_TIER_MASK, V8_TIER_SHIFT,
};

use super::{
    memory::{is_heap_object, is_smi, untag, Memory, HEAP_OBJECT_TAG, HEAP_OBJECT_TAG_MASK},
    metadata::V8Metadata,
};

/// Which of V8's tiers ran the frame's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Ignition bytecode.
    Interpreted,
    /// Sparkplug code, compiled from the bytecode without optimization.
    Baseline,
    /// Maglev or TurboFan code.
    Optimized,
}

impl Tier {
    /// The character V8's perf map puts before a function's name
    /// (`CodeKindToMarker`: `~` bytecode, `^` Sparkplug, `*` TurboFan; `+`
    /// Maglev, which the frame cannot tell from TurboFan).
    pub fn marker(self) -> &'static str {
        match self {
            Tier::Interpreted => "~",
            Tier::Baseline => "^",
            Tier::Optimized => "*",
        }
    }

    fn from_bits(b: u64) -> Option<Tier> {
        match b {
            v8_tier::INTERPRETED => Some(Tier::Interpreted),
            v8_tier::BASELINE => Some(Tier::Baseline),
            v8_tier::OPTIMIZED => Some(Tier::Optimized),
            _ => None,
        }
    }

    fn bits(self) -> u64 {
        match self {
            Tier::Interpreted => v8_tier::INTERPRETED,
            Tier::Baseline => v8_tier::BASELINE,
            Tier::Optimized => v8_tier::OPTIMIZED,
        }
    }
}

/// A decoded `ips[]` word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JsFrameTag {
    /// Untagged address of the SharedFunctionInfo when the frame was taken.
    pub sfi: u64,
    pub tier: Tier,
    /// Interpreted frames: the bytecode offset; `V8_OFFSET_MAX` means "that
    /// or more" (a function with more than 128 KiB of bytecode).
    pub bytecode_offset: Option<u32>,
}

impl JsFrameTag {
    /// The `ips[]` word, None when `sfi` does not fit (>= 2^47 or unaligned).
    pub fn encode(&self) -> Option<u64> {
        if self.sfi & 7 != 0 || self.sfi >> 47 != 0 {
            return None;
        }
        let off = self
            .bytecode_offset
            .map_or(0, |o| u64::from(o).min(V8_OFFSET_MAX));
        Some(
            V8_FRAME_TAG
                | self.tier.bits() << V8_TIER_SHIFT
                | off << V8_OFFSET_SHIFT
                | (self.sfi >> 3) & V8_SFI_MASK,
        )
    }

    /// The frame of an `ips[]` word, None for a plain return address.
    pub fn decode(word: u64) -> Option<JsFrameTag> {
        if word & V8_FRAME_TAG == 0 {
            return None;
        }
        let tier = Tier::from_bits((word >> V8_TIER_SHIFT) & V8_TIER_MASK)?;
        let off = ((word >> V8_OFFSET_SHIFT) & V8_OFFSET_MAX) as u32;
        Some(JsFrameTag {
            sfi: (word & V8_SFI_MASK) << 3,
            tier,
            bytecode_offset: (tier == Tier::Interpreted).then_some(off),
        })
    }
}

/// The BPF decoder's configuration for one process: `meta` placed at the
/// builtins' addresses in that process (`V8Metadata::builtins_in`: the
/// first two are used, the text and V8's remapped copy).
pub fn proc_config(meta: &V8Metadata, builtins: &[Range<u64>]) -> V8ProcConfig {
    let b = builtins.first().cloned().unwrap_or(0..0);
    let r = builtins.get(1).cloned().unwrap_or(0..0);
    let (interp, handlers) = meta.interpreter.clone().unwrap_or((0..0, 0));
    V8ProcConfig {
        builtins_start: b.start,
        builtins_end: b.end,
        remap_start: r.start,
        remap_end: r.end,
        interp_lo: interp.start,
        interp_hi: interp.end,
        handlers_lo: handlers,
        _pad: 0,
        fp_context: meta.fp_context as i16,
        fp_function: meta.fp_function as i16,
        fp_bytecode_array: meta.fp_bytecode_array as i16,
        fp_bytecode_offset: meta.fp_bytecode_offset as i16,
        off_map: meta.off_map,
        off_instance_type: meta.off_map_instance_type,
        off_shared: meta.off_js_function_shared,
        bytecode_offset_bias: meta.off_bytecode_array_data - 1,
        type_js_function_first: meta.type_js_function_first,
        type_js_function_last: meta.type_js_function_last,
        type_shared_function_info: meta.type_shared_function_info,
        type_bytecode_array: meta.type_bytecode_array,
        bytecode_array_map: 0,
        js_function_maps: [0; tracer_common::V8_LEARNED_MAPS],
    }
}

/// The instance type of the heap object `tagged` points to.
fn object_type(cfg: &V8ProcConfig, mem: &dyn Memory, tagged: u64) -> Option<u16> {
    let obj = untag(tagged)?;
    object_type_of_map(cfg, mem, mem.read_u64(obj + u64::from(cfg.off_map)).ok()?)
}

/// The instance type a map (tagged) gives its objects. The BPF decoder
/// remembers the maps it has checked (`v8_proc_config`'s learned maps); the
/// answer is the same.
fn object_type_of_map(cfg: &V8ProcConfig, mem: &dyn Memory, map: u64) -> Option<u16> {
    mem.read_u16(untag(map)? + u64::from(cfg.off_instance_type))
        .ok()
}

fn slot(frame: &[u8], off: i16) -> u64 {
    let i = (V8_FRAME_BYTES as i32 + i32::from(off)) as usize;
    u64::from_le_bytes(frame[i..i + 8].try_into().unwrap_or_default())
}

/// Forwarding pointers followed at most: a young object moved by one
/// scavenge, then again (promoted) by the next, was seen on node 22.
const MAX_FORWARDS: usize = 3;

/// Where the heap object that was at `obj` (untagged) is now. A GC that
/// moves an object (a scavenge copying a young JSFunction, a compaction)
/// leaves in its old copy's map word the address of the new copy: V8's
/// `MapWord::FromForwardingAddress` stores `object.ptr() - kHeapObjectTag`
/// (src/objects/map-word-inl.h, without V8_EXTERNAL_CODE_SPACE, which needs
/// pointer compression: node builds have neither), a word with the low two
/// bits clear (`kForwardingTag`), where a live object has its map, tagged
/// 0b01. The old copy keeps it until its page is reused: a stale address
/// whose page was reused holds another object's map, as it did before.
fn current_address(cfg: &V8ProcConfig, mem: &dyn Memory, mut obj: u64) -> Option<u64> {
    for _ in 0..MAX_FORWARDS {
        let word = mem.read_u64(obj + u64::from(cfg.off_map)).ok()?;
        if word & HEAP_OBJECT_TAG_MASK != 0 {
            return Some(obj);
        }
        // Not a forwarding pointer either (a zeroed or garbage word): V8
        // aligns objects to 8 bytes (kObjectAlignment).
        if word == 0 || word == obj || word & 7 != 0 {
            return None;
        }
        obj = word;
    }
    None
}

/// Where a frame is read: on the live stack of a thread stopped in the
/// kernel (the BPF decoder's case, and the reference walk's), or from a copy
/// of it taken earlier (resident mode's raw stacks, decoded when userspace
/// drains them: the process ran on since, and a GC may have moved the
/// JSFunction whose address the copy holds; its forwarding pointer is then
/// followed, `current_address`). A live frame needs none of this: V8 moves
/// objects only with every thread of the isolate at a safepoint, and a
/// thread in the kernel is at none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    Live,
    Copied,
}

/// The `ips[]` word of the frame whose frame pointer is `fp` and whose code
/// holds `pc` (for a frame record read at F, pc is [F+8] and fp is [F]), or
/// None when it is not a JS frame. `jit`: the walker found pc in anonymous
/// executable memory; pcs in V8's builtins are tried too, since interpreted
/// frames run in the interpreter's builtins (InterpreterEntryTrampoline and
/// the bytecode handlers).
pub fn decode_frame(
    cfg: &V8ProcConfig,
    mem: &dyn Memory,
    pc: u64,
    fp: u64,
    jit: bool,
    taken: Taken,
) -> Option<u64> {
    let base = if pc >= cfg.builtins_start && pc < cfg.builtins_end {
        Some(cfg.builtins_start)
    } else if pc >= cfg.remap_start && pc < cfg.remap_end {
        Some(cfg.remap_start)
    } else {
        None
    };
    if !jit && base.is_none() {
        return None;
    }
    // The interpreter's own code: the frame is interpreted.
    let interp = base.is_some_and(|b| {
        let off = pc - b;
        (off >= u64::from(cfg.interp_lo) && off < u64::from(cfg.interp_hi))
            || (cfg.handlers_lo != 0 && off >= u64::from(cfg.handlers_lo))
    });
    let mut frame = [0u8; V8_FRAME_BYTES as usize];
    mem.read(fp.checked_sub(u64::from(V8_FRAME_BYTES))?, &mut frame)
        .ok()?;
    // Typed frames (entry, exit, stub, construct, ...) hold a Smi marker
    // where JS frames hold their context (StackFrame::ComputeType).
    if !is_heap_object(slot(&frame, cfg.fp_context)) {
        return None;
    }
    let offset_slot = slot(&frame, cfg.fp_bytecode_offset);
    // In the builtins, only the interpreter's frames are taken (their
    // offset slot is a Smi): a builtin with JS linkage (Array.prototype.map)
    // keeps its pc, which node's symbol table names.
    if !jit && !is_smi(offset_slot) {
        return None;
    }
    let mut jsf = untag(slot(&frame, cfg.fp_function))?;
    if taken == Taken::Copied {
        jsf = current_address(cfg, mem, jsf)?;
    }
    let mut func = [0u8; V8_JS_FUNCTION_BYTES as usize];
    mem.read(jsf, &mut func).ok()?;
    let word = |off: u16| {
        let i = off as usize;
        u64::from_le_bytes(func[i..i + 8].try_into().unwrap_or_default())
    };
    let ty = object_type_of_map(cfg, mem, word(cfg.off_map))?;
    if ty < cfg.type_js_function_first || ty > cfg.type_js_function_last {
        return None;
    }
    // The SFI's own type is checked when userspace resolves it.
    let sfi = untag(word(cfg.off_shared))?;
    // Ignition and Sparkplug frames hold the BytecodeArray; Ignition's then
    // has the offset as a Smi where Sparkplug's has the feedback vector
    // (InterpreterFrameConstants, BaselineFrameConstants).
    // (A BytecodeArray is allocated old and rarely moves; a copied frame's
    // is followed all the same.)
    let array = slot(&frame, cfg.fp_bytecode_array);
    let array = match untag(array) {
        Some(a) if taken == Taken::Copied => {
            current_address(cfg, mem, a).map_or(array, |a| a | HEAP_OBJECT_TAG)
        }
        _ => array,
    };
    let bytecode = interp || object_type(cfg, mem, array) == Some(cfg.type_bytecode_array);
    let (tier, offset) = match (bytecode, is_smi(offset_slot)) {
        (true, true) => {
            let raw = (offset_slot >> 32) as i32;
            let off = raw
                .saturating_sub(i32::from(cfg.bytecode_offset_bias))
                .max(0);
            (Tier::Interpreted, Some(off as u32))
        }
        (true, false) => (Tier::Baseline, None),
        (false, _) if jit => (Tier::Optimized, None),
        (false, _) => return None,
    };
    JsFrameTag {
        sfi,
        tier,
        bytecode_offset: offset,
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words of a fake process.
    struct Words(std::collections::HashMap<u64, u64>);

    impl Memory for Words {
        fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
            for (i, chunk) in buf.chunks_mut(8).enumerate() {
                let a = addr + 8 * i as u64;
                let w = self.0.get(&(a & !7)).copied().unwrap_or(0);
                let b = w.to_le_bytes();
                let off = (a & 7) as usize;
                chunk.copy_from_slice(&b[off..off + chunk.len()]);
            }
            Ok(())
        }
    }

    /// A TurboFan frame whose JSFunction a scavenge moved after the stack
    /// was copied (its old copy's map word forwards to the new one): the
    /// copied frame's decoder finds the function where it is now; the live
    /// frames' decoder (the BPF twin) never sees a forwarded object.
    #[test]
    fn a_copied_frame_follows_its_moved_function() {
        let cfg = V8ProcConfig {
            fp_context: -8,
            fp_function: -16,
            fp_bytecode_array: -24,
            fp_bytecode_offset: -32,
            off_map: 0,
            off_instance_type: 12,
            off_shared: 24,
            type_js_function_first: 2066,
            type_js_function_last: 2082,
            type_bytecode_array: 180,
            ..V8ProcConfig::default()
        };
        let (fp, old, new, map, sfi) = (0x7ff0_0000_1000u64, 0x1000, 0x2000, 0x3000, 0x4000);
        let mut w = std::collections::HashMap::new();
        w.insert(fp - 8, 0x5001); // context: a heap object
        w.insert(fp - 16, old + 1);
        w.insert(old, new); // forwarded: the new copy's address, untagged
        w.insert(new, map + 1);
        w.insert(new + 24, sfi + 1);
        w.insert(map + 8, 2070 << 32); // instance type at map + 12
        let mem = Words(w);
        let want = JsFrameTag {
            sfi,
            tier: Tier::Optimized,
            bytecode_offset: None,
        }
        .encode();
        assert_eq!(
            decode_frame(&cfg, &mem, 0x1234, fp, true, Taken::Copied),
            want
        );
        assert_eq!(
            decode_frame(&cfg, &mem, 0x1234, fp, true, Taken::Live),
            None
        );
        // Three moves (scavenge, scavenge, compaction) at most; a loop of
        // forwards or a zeroed old copy is no function.
        let mut looped = Words(mem.0.clone());
        looped.0.insert(new, old);
        assert_eq!(
            decode_frame(&cfg, &looped, 0x1234, fp, true, Taken::Copied),
            None
        );
        let mut zeroed = Words(mem.0.clone());
        zeroed.0.insert(old, 0);
        assert_eq!(
            decode_frame(&cfg, &zeroed, 0x1234, fp, true, Taken::Copied),
            None
        );
    }

    #[test]
    fn tags_round_trip_and_saturate() {
        let t = JsFrameTag {
            sfi: 0x7f12_3456_7890,
            tier: Tier::Interpreted,
            bytecode_offset: Some(42),
        };
        let w = t.encode().unwrap();
        assert_eq!(w >> 63, 1);
        assert_eq!(JsFrameTag::decode(w), Some(t));
        let big = JsFrameTag {
            bytecode_offset: Some(1 << 20),
            ..t
        };
        assert_eq!(
            JsFrameTag::decode(big.encode().unwrap())
                .unwrap()
                .bytecode_offset,
            Some(V8_OFFSET_MAX as u32)
        );
        let opt = JsFrameTag {
            tier: Tier::Optimized,
            bytecode_offset: None,
            ..t
        };
        assert_eq!(JsFrameTag::decode(opt.encode().unwrap()), Some(opt));
        assert_eq!(JsFrameTag::decode(0x7f12_3456_7890), None);
        assert_eq!(JsFrameTag { sfi: 1 << 47, ..t }.encode(), None);
        assert_eq!(JsFrameTag { sfi: 0x1001, ..t }.encode(), None);
    }
}
