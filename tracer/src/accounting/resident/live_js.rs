//! A mapping's stack: the CFI unwind of the raw copy taken at its mmap, with
//! the JS words of the walker's stack of the same moment.
//!
//! Why both: the unwind decodes its JS frames from the copy when userspace
//! drains it, and a GC may have moved the JSFunctions meanwhile (a scavenge
//! moves young ones, and an old copy's page may be reused: `Taken::Copied`
//! follows forwarding pointers only while they last; tests/e2e/js_frames.rs
//! lost TurboFan Buffers so on node 20 and 22), while the walker decoded them
//! live, at the syscall (V8 moves objects only at a safepoint, and a thread
//! in the kernel is at none). The walker's native frames are not taken: its
//! table step out of glibc's sysmalloc_mmap sometimes lands on a stale frame
//! and goes on from there, not truncated (seen on node 20's Buffer mmaps,
//! tests/e2e/chart_run.rs), so the unwind's frames stay, and each run of the
//! walk's JS words replaces the same positions of the unwind only where the
//! two stacks agree on every native frame from the start up to the end of it.
use crate::symbols::v8::JsFrameTag;

/// `frames`: the unwind (frame 0 the syscall's address `ip`); `walk`: the
/// walker's stack after it (its frame 0 is the unwind's frame 1).
pub(super) fn merge(frames: &mut [u64], ip: u64, walk: &[u64]) {
    let walk: Vec<u64> = std::iter::once(ip).chain(walk.iter().copied()).collect();
    let js = |w: u64| JsFrameTag::decode(w).is_some();
    let n = frames.len().min(walk.len());
    let mut i = 0;
    while i < n {
        if !js(walk[i]) {
            if frames[i] != walk[i] {
                return;
            }
            i += 1;
            continue;
        }
        // A run of JS frames: the native frame after it must agree too.
        let end = (i..n).find(|&k| !js(walk[k])).unwrap_or(n);
        if end == n || frames[end] != walk[end] {
            return;
        }
        frames[i..end].copy_from_slice(&walk[i..end]);
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::v8::Tier;

    fn js(sfi: u64) -> u64 {
        JsFrameTag {
            sfi,
            tier: Tier::Optimized,
            bytecode_offset: None,
        }
        .encode()
        .unwrap()
    }

    #[test]
    fn takes_the_walks_js_words_where_the_stacks_agree() {
        let (ip, libc, v8, entry, main) = (0x10, 0x20, 0x30, 0x40, 0x50);
        // The copy's JS frames: one decoded (a stale SFI), one left a pc.
        let mut frames = vec![ip, libc, v8, js(0x1000), 0x7000, entry, main, 0x60];
        merge(&mut frames, ip, &[libc, v8, js(0x2000), js(0x3000), entry, main]);
        assert_eq!(
            frames,
            [ip, libc, v8, js(0x2000), js(0x3000), entry, main, 0x60]
        );
    }

    #[test]
    fn keeps_the_unwind_where_the_walk_went_astray() {
        let (ip, libc, v8) = (0x10, 0x20, 0x30);
        let unwind = vec![ip, libc, v8, 0x7000, 0x40];
        // The walk skipped frames (a stale return address), then JS.
        let mut frames = unwind.clone();
        merge(&mut frames, ip, &[libc, 0x99, js(0x2000), 0x40]);
        assert_eq!(frames, unwind);
        // A JS run not followed by a frame both agree on.
        let mut frames = unwind.clone();
        merge(&mut frames, ip, &[libc, v8, js(0x2000), 0x41]);
        assert_eq!(frames, unwind);
        let mut frames = unwind.clone();
        merge(&mut frames, ip, &[libc, v8, js(0x2000)]);
        assert_eq!(frames, unwind);
    }
}
