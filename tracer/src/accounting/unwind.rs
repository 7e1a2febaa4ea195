//! Unwinds a raw copy of a user stack with the `.eh_frame` CFI of the modules
//! its addresses fall in (x86-64 only).
//!
//! Why: allocator-made mappings are created inside glibc, and Debian's glibc is
//! built without frame pointers (%rbp is a general register there), so the
//! kernel's frame-pointer walk at mmap stops after one frame. `.eh_frame` is
//! always present on x86-64 (the ABI requires it for C++ exceptions and thread
//! cancellation), so CFI gets through libc; code with no CFI at all (V8's JIT
//! code) keeps frame pointers, and there the walk follows %rbp. V8's JS
//! frames are handed to a `JsFrameDecoder` (symbols::v8) on the way, which
//! turns them into the words the BPF walker would have put there.
use std::{
    collections::HashMap,
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

use addr2line::gimli::{
    self, BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection, X86_64,
};
use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSegment};

use crate::proc::root::Root;

/// Most frames an unwind returns (the kernel's limit for stack traces).
pub const MAX_FRAMES: usize = tracer_common::MAX_STACK_DEPTH;

#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    #[error(transparent)]
    Maps(#[from] crate::proc::MapsError),
}

/// A copy of user memory: `bytes` were at `base` in the process.
#[derive(Clone, Copy, Debug)]
pub struct StackWindow<'a> {
    pub base: u64,
    pub bytes: &'a [u8],
}

impl StackWindow<'_> {
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let off = addr.checked_sub(self.base)? as usize;
        let b = self.bytes.get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

/// User registers at the point the stack was copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// Turns a frame into the stack word of a JS frame (offheap.h's V8
/// encoding), as the BPF walker's V8 decoder does for the stacks it walks.
pub trait JsFrameDecoder: Send {
    /// The word for the frame whose code holds `pc` (a return address) and
    /// whose frame pointer is `fp`, or None when it is not a JS frame.
    /// `window`: the stack copy the unwind reads.
    fn word(&mut self, pc: u64, fp: u64, window: StackWindow<'_>) -> Option<u64>;
    /// The process's executable mappings, read again.
    fn maps_changed(&mut self, exec_maps: &[crate::proc::Mapping]);
    /// A stack first met (its JS words may be resolved now, while the
    /// process lives: it may exit before the next interval).
    fn observe(&mut self, _words: &[u64]) {}
}

/// One executable file mapping of the process.
#[derive(Clone, Debug)]
struct Region {
    start: u64,
    end: u64,
    offset: u64,
    path: PathBuf,
}

/// The CFI of one ELF file, kept mapped for the session.
struct ElfCfi {
    map: Mmap,
    /// (file offset, size, address) of .eh_frame and .eh_frame_hdr.
    eh_frame: (usize, usize, u64),
    eh_frame_hdr: Option<(usize, usize, u64)>,
    text_addr: u64,
    /// PT_LOAD segments: (file offset, file size, address).
    loads: Vec<(u64, u64, u64)>,
}

impl ElfCfi {
    fn open(file: &File) -> Option<ElfCfi> {
        // SAFETY: the file is only read; a module replaced on disk while mapped
        // could change under us, which at worst yields a wrong frame.
        let map = unsafe { Mmap::map(file) }.ok()?;
        let obj = object::File::parse(&*map).ok()?;
        let range = |name: &str| -> Option<(usize, usize, u64)> {
            let s = obj.section_by_name(name)?;
            let (off, size) = s.file_range()?;
            Some((off as usize, size as usize, s.address()))
        };
        let eh_frame = range(".eh_frame")?;
        let eh_frame_hdr = range(".eh_frame_hdr");
        let text_addr = obj.section_by_name(".text").map_or(0, |s| s.address());
        let loads = obj
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (off, size, s.address())
            })
            .collect();
        drop(obj);
        Some(ElfCfi {
            map,
            eh_frame,
            eh_frame_hdr,
            text_addr,
            loads,
        })
    }

    /// The address in the ELF file (svma) of file offset `off`.
    fn svma_of_offset(&self, off: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|(o, size, _)| off >= *o && off < o + size)
            .map(|(o, _, addr)| off - o + addr)
    }

    /// The CFA and the rules for the return address and %rbp at `svma`.
    fn rules_at(&self, svma: u64, ctx: &mut UnwindContext<usize>) -> Option<Rules> {
        let (off, size, addr) = self.eh_frame;
        let eh = EhFrame::new(self.map.get(off..off + size)?, LittleEndian);
        let mut bases = BaseAddresses::default()
            .set_eh_frame(addr)
            .set_text(self.text_addr);
        let row = if let Some((hoff, hsize, haddr)) = self.eh_frame_hdr {
            bases = bases.set_eh_frame_hdr(haddr);
            let hdr = EhFrameHdr::new(self.map.get(hoff..hoff + hsize)?, LittleEndian)
                .parse(&bases, 8)
                .ok()?;
            match hdr.table() {
                Some(t) => t
                    .unwind_info_for_address(&eh, &bases, ctx, svma, EhFrame::cie_from_offset)
                    .ok()?
                    .clone(),
                None => eh
                    .unwind_info_for_address(&bases, ctx, svma, EhFrame::cie_from_offset)
                    .ok()?
                    .clone(),
            }
        } else {
            eh.unwind_info_for_address(&bases, ctx, svma, EhFrame::cie_from_offset)
                .ok()?
                .clone()
        };
        let cfa = match row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => (*register, *offset),
            // DWARF expressions (PLT stubs, signal frames): not evaluated.
            CfaRule::Expression(_) => return None,
        };
        Some(Rules {
            cfa,
            ra: row.register(X86_64::RA),
            bp: row.register(X86_64::RBP),
        })
    }
}

#[derive(Clone)]
struct Rules {
    cfa: (gimli::Register, i64),
    ra: RegisterRule<usize>,
    bp: RegisterRule<usize>,
}

/// Unwinds stacks of one process. Keeps its module list and the CFI of every
/// module it met; call `refresh` when a new module may have been mapped.
pub struct Unwinder {
    pid: u32,
    /// The process's root, where its modules are opened by path.
    root: Option<Root>,
    regions: Vec<Region>,
    cfi: HashMap<PathBuf, Option<Arc<ElfCfi>>>,
    /// Rules per looked-up address: the same call sites recur in every stack.
    rules: HashMap<u64, Option<Rules>>,
    ctx: UnwindContext<usize>,
    refreshed: Option<std::time::Instant>,
    /// The process's V8 frame decoder, once it is known to run V8.
    js: Option<Box<dyn JsFrameDecoder>>,
}

impl Unwinder {
    pub fn new(pid: u32) -> Result<Unwinder, UnwindError> {
        let mut u = Unwinder {
            pid,
            root: Root::of_process(pid).ok(),
            regions: Vec::new(),
            cfi: HashMap::new(),
            rules: HashMap::new(),
            ctx: UnwindContext::new(),
            refreshed: None,
            js: None,
        };
        u.refresh()?;
        Ok(u)
    }

    /// Re-reads the executable file mappings from /proc/PID/maps.
    pub fn refresh(&mut self) -> Result<(), UnwindError> {
        let maps = crate::proc::maps::read(self.pid)?;
        self.regions = maps.iter().filter_map(exec_region).collect();
        if let Some(js) = self.js.as_mut() {
            let exec: Vec<_> = maps.into_iter().filter(|m| m.executable()).collect();
            js.maps_changed(&exec);
        }
        self.regions.sort_by_key(|r| r.start);
        self.rules.clear();
        self.refreshed = Some(std::time::Instant::now());
        Ok(())
    }

    /// Refreshes unless that was done less than `min` ago (a process that
    /// keeps producing short stacks must not make us re-read maps each time).
    pub fn refresh_at_most_every(&mut self, min: std::time::Duration) -> Result<bool, UnwindError> {
        if self.refreshed.is_some_and(|t| t.elapsed() < min) {
            return Ok(false);
        }
        self.refresh().map(|()| true)
    }

    /// Decodes the process's JS frames from now on (it runs V8); call it
    /// again when the process mapped code (the decoder tells JIT code by
    /// its mappings). The CFI rules are kept: files did not change.
    pub fn set_js(&mut self, mut js: Box<dyn JsFrameDecoder>) -> Result<(), UnwindError> {
        let exec: Vec<_> = crate::proc::maps::read(self.pid)?
            .into_iter()
            .filter(|m| m.executable())
            .collect();
        js.maps_changed(&exec);
        self.js = Some(js);
        Ok(())
    }

    /// A stack first met: its JS words go to the decoder (`observe`).
    pub fn observe_js(&mut self, words: &[u64]) {
        if let Some(js) = self.js.as_mut() {
            js.observe(words);
        }
    }

    fn region(&self, addr: u64) -> Option<&Region> {
        let i = self.regions.partition_point(|r| r.start <= addr);
        let r = self.regions.get(i.checked_sub(1)?)?;
        (addr < r.end).then_some(r)
    }

    /// The module file containing `addr`, if `addr` is in a file mapping.
    pub fn module_of(&self, addr: u64) -> Option<&Path> {
        self.region(addr).map(|r| r.path.as_path())
    }

    fn rules(&mut self, addr: u64) -> Option<Rules> {
        if let Some(r) = self.rules.get(&addr) {
            return r.clone();
        }
        let r = self.lookup_rules(addr);
        self.rules.insert(addr, r.clone());
        r
    }

    fn lookup_rules(&mut self, addr: u64) -> Option<Rules> {
        let r = self.region(addr)?.clone();
        let pid = self.pid;
        let root = self.root.as_ref();
        let cfi = self
            .cfi
            .entry(r.path.clone())
            .or_insert_with(|| {
                // The inode it maps (/proc/PID/map_files, proc(5): right even
                // when the file was replaced), else by path inside the
                // process's root (a container's files), never the host's.
                let file = File::open(format!("/proc/{pid}/map_files/{:x}-{:x}", r.start, r.end))
                    .ok()
                    .or_else(|| root.and_then(|root| root.open(&r.path).ok()))?;
                ElfCfi::open(&file).map(Arc::new)
            })
            .clone()?;
        let svma = cfi.svma_of_offset(addr - r.start + r.offset)?;
        cfi.rules_at(svma, &mut self.ctx)
    }

    /// True when, at `ip`, the return address is at [sp]: the function has
    /// not set up a frame (a leaf such as glibc's memset), which the kernel's
    /// frame-pointer walk skips.
    pub fn return_address_at_sp(&mut self, ip: u64) -> bool {
        match self.rules(ip) {
            Some(r) => r.cfa == (X86_64::RSP, 8) && r.ra == RegisterRule::Offset(-8),
            None => false,
        }
    }

    /// One step from `regs` to the caller's registers, by the CFI at
    /// `regs.ip` (at `regs.ip - 1` unless `first`: a return address points
    /// after its call), or by frame pointers where there is none. None: the
    /// stack cannot be read there.
    pub fn step(&mut self, regs: Regs, stack: StackWindow<'_>, first: bool) -> Option<Regs> {
        let lookup = if first {
            regs.ip
        } else {
            regs.ip.wrapping_sub(1)
        };
        let (ra, sp, bp) = match self.rules(lookup) {
            Some(r) => {
                let base = match r.cfa.0 {
                    X86_64::RSP => regs.sp,
                    X86_64::RBP => regs.bp,
                    _ => return None,
                };
                let cfa = base.wrapping_add_signed(r.cfa.1);
                let ra = match r.ra {
                    RegisterRule::Offset(o) => stack.read_u64(cfa.wrapping_add_signed(o))?,
                    // The outermost frame: glibc's _start and clone3's child
                    // mark the return address undefined (DWARF 5, 6.4.1: "the
                    // end of the stack"). A caller of 0 is that end for
                    // unwind_full, so the stack is not truncated.
                    RegisterRule::Undefined => 0,
                    _ => return None,
                };
                let bp = match r.bp {
                    RegisterRule::Offset(o) => stack.read_u64(cfa.wrapping_add_signed(o))?,
                    _ => regs.bp,
                };
                (ra, cfa, bp)
            }
            None => {
                // No CFI (JIT code, or an unreadable module): frame pointers.
                let saved_bp = stack.read_u64(regs.bp)?;
                let ra = stack.read_u64(regs.bp.wrapping_add(8))?;
                (ra, regs.bp.wrapping_add(16), saved_bp)
            }
        };
        Some(Regs { ip: ra, sp, bp })
    }

    /// Return addresses, innermost (`regs.ip`) first.
    pub fn unwind(&mut self, regs: Regs, stack: StackWindow<'_>) -> Vec<u64> {
        self.unwind_full(regs, stack).0
    }

    /// Return addresses, innermost first, and whether the unwind stopped
    /// before the outermost frame (a return address of 0 ends a stack where
    /// its thread started; anything else that stops it truncates).
    pub fn unwind_full(&mut self, regs: Regs, stack: StackWindow<'_>) -> (Vec<u64>, bool) {
        let mut frames = vec![regs.ip];
        let mut regs = regs;
        let mut first = true;
        while frames.len() < MAX_FRAMES {
            let Some(next) = self.step(regs, stack, first) else {
                return (frames, true);
            };
            first = false;
            if next.ip == 0 {
                return (frames, false);
            }
            // A word that cannot be code is no caller: the stack went wrong
            // (a rule applied to the wrong frame, a stale copy). It ends the
            // stack; the report never shows it (issue 12).
            if !user_code_address(next.ip) {
                return (frames, true);
            }
            // The stack grows down: a caller's frame is always above.
            if next.sp <= regs.sp {
                return (frames, true);
            }
            // The caller's %rbp is the frame pointer of the function its
            // return address is in: what V8's frame decoder reads from.
            let word = self
                .js
                .as_mut()
                .and_then(|j| j.word(next.ip, next.bp, stack));
            frames.push(word.unwrap_or(next.ip));
            regs = next;
        }
        (frames, true)
    }
}

/// Whether `ip` can be in code of an x86-64 user process: user space is the
/// lower half below 2^47 (4-level paging; with 5 levels the kernel maps
/// above it only when asked, mmap(2) "hint"), and the first page is never
/// mapped (vm.mmap_min_addr, 4 KiB at the least on distributions).
pub fn user_code_address(ip: u64) -> bool {
    (0x1000..1 << 47).contains(&ip)
}

/// The region of an executable file mapping.
fn exec_region(m: &crate::proc::Mapping) -> Option<Region> {
    let path = m.path().filter(|_| m.executable())?;
    Some(Region {
        start: m.start,
        end: m.end,
        offset: m.offset,
        path: PathBuf::from(path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_user_space_addresses_can_be_code() {
        assert!(user_code_address(0x5555_5555_4000));
        assert!(user_code_address(0x7fff_f7dd_0000));
        // Garbage words seen as callers (e2e, before this check).
        assert!(!user_code_address(0x22));
        assert!(!user_code_address(0x29fd_a914_0000_0000));
        assert!(!user_code_address(0xffff_ffff_8100_0000));
    }

    #[test]
    fn parses_exec_regions_only() {
        let line = |l: &str| crate::proc::maps::parse_line(l).unwrap();
        let r = exec_region(&line(
            "7f0000001000-7f0000002000 r-xp 00001000 08:01 123 /usr/lib/x86_64-linux-gnu/libc.so.6",
        ))
        .unwrap();
        assert_eq!(
            (r.start, r.end, r.offset),
            (0x7f0000001000, 0x7f0000002000, 0x1000)
        );
        assert!(exec_region(&line("7f00-7f10 rw-p 00000000 00:00 0 [heap]")).is_none());
        assert!(exec_region(&line("7f00-7f10 r--p 00000000 08:01 1 /usr/bin/node")).is_none());
    }

    /// Unwinds this very test's stack, copied from the live process, through
    /// libc-free Rust frames built with CFI: the caller chain must contain the
    /// return address into `outer`.
    #[test]
    fn unwinds_own_stack_with_cfi() {
        #[inline(never)]
        fn inner() -> (Regs, Vec<u8>, u64) {
            let (sp, bp, ip): (u64, u64, u64);
            // SAFETY: reads registers only.
            unsafe {
                std::arch::asm!("mov {}, rsp", "mov {}, rbp", "lea {}, [rip]",
                    out(reg) sp, out(reg) bp, out(reg) ip);
            }
            // Page by page through /proc/self/mem, as the BPF side reads: the
            // top of this thread's stack may be less than 16 KiB away.
            use std::os::unix::fs::FileExt;
            let base = sp & !4095;
            let mem = File::open("/proc/self/mem").unwrap();
            let mut bytes = Vec::new();
            let mut page = [0u8; 4096];
            for i in 0..4u64 {
                if mem.read_exact_at(&mut page, base + i * 4096).is_err() {
                    break;
                }
                bytes.extend_from_slice(&page);
            }
            (Regs { ip, sp, bp }, bytes, base)
        }
        #[inline(never)]
        fn outer() -> (Regs, Vec<u8>, u64, u64) {
            let (r, b, base) = std::hint::black_box(inner());
            let here = outer as *const () as usize as u64;
            (r, b, base, here)
        }
        let (regs, bytes, base, outer_addr) = outer();
        let mut u = Unwinder::new(std::process::id()).unwrap();
        let frames = u.unwind(
            regs,
            StackWindow {
                base,
                bytes: &bytes,
            },
        );
        assert!(frames.len() >= 3, "{frames:x?}");
        // frames[1] returns into outer(): within a few hundred bytes of its entry.
        assert!(
            frames[1] > outer_addr && frames[1] < outer_addr + 512,
            "frames {frames:x?} outer {outer_addr:#x}"
        );
    }
}
