//! Resident mode accounting: which stack made each resident page resident.
//!
//! Two rules, stated per stack (`RawStack.attribution`):
//! - `mapping`: an anonymous mapping created while tracing (a large malloc
//!   served by mmap, a V8 heap page, an addon's own mmap) serves one
//!   allocation, so all its resident pages are charged to the stack that
//!   created it, unwound from the raw stack copy (`unwind.rs`).
//! - `first_touch`: pages anywhere else (the brk `[heap]`, glibc's per-thread
//!   arenas, mappings that existed before tracing) are charged to the stack of
//!   the first fault on that page.
//!
//! What is resident is never inferred from events (but for a process that
//! exited before its first sample, `exited.rs`): every interval the model
//! asks the kernel (/proc/PID/pagemap) which of the attributed pages are still
//! present, so munmap, madvise(DONTNEED/FREE/REMOVE), brk shrink, swap-out and
//! mremap all stop counting without being modelled. Pages resident before
//! tracing started are remembered page by page at start and reported as
//! `preexisting` lines per mapping kind while they stay resident; file-backed
//! pages (code, mapped files) are reported as `file:PATH` lines at the end.
//!
//! In the resulting `RawStack`s, `live_bytes` are resident bytes,
//! `live_allocs` resident pages, `total_bytes` the peak resident bytes seen
//! at any sample, and `total_allocs` the mappings created (mapping) or pages
//! first touched (first_touch) by that stack.
mod evict;
mod exited;
mod maps;
mod output;
mod set;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::Instant,
};

use crate::proc::pages as procfs;
pub use crate::proc::pages::{Pagemap, ProcError, PAGE};
pub use exited::SkipLookup;
pub use maps::{DrainStats, ResidentError, ResidentMaps};
pub use set::ResidentSet;
use tracer_common::{FaultEvent, MapEvent};

use super::unwind::{Regs, StackWindow, Unwinder};
use crate::report::{Attribution, Bucket, Buckets, SeriesPoint};

/// Samples kept per stack for its growth rate (the "last window").
const GROWTH_WINDOW: usize = 10;
/// fault.bpf.c applies the same rule (OFFHEAP_GLIBC_HEAP_MAX) to skip stack
/// walks in glibc's thread arenas.
use super::arenas::GLIBC_HEAP_MAX;
const MAP_FIXED: u32 = 0x10;
const MAP_NORESERVE: u32 = 0x4000;

/// Classifies a stack (return addresses, innermost first) into a bucket; the
/// session provides it (symbolizer + `classify`), tests may use address ranges.
pub type Classifier<'a> = dyn FnMut(u32, &[u64]) -> Bucket + 'a;

#[derive(Debug)]
struct Stack {
    ips: Vec<u64>,
    attribution: Attribution,
    bucket: Option<Bucket>,
    /// Resident pages at the last sample, and the most ever seen.
    pages: u64,
    peak_pages: u64,
    /// Mappings created (mapping) or pages first touched (first_touch).
    events: u64,
    history: VecDeque<(f64, u64)>,
    /// Lengths of the mappings created, as (log-linear bucket, count): the
    /// kernel's `hist_bucket`, so both modes report sizes alike.
    map_sizes: BTreeMap<u32, u64>,
    /// The stacks folded into this one by `evict_to` (0: a real stack).
    folded: u64,
    /// Its walk stopped before the outermost frame.
    truncated: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mapping {
    end: u64,
    stack: u32,
}

/// Pages resident when tracing started, for one mapping of that time.
struct BaselineRegion {
    start: u64,
    end: u64,
    kind: u32,
    /// One bit per page of [start, end): resident at start and not since
    /// given back and faulted again.
    bits: Vec<u64>,
}

impl BaselineRegion {
    fn bit(&self, page: u64) -> Option<(usize, u64)> {
        if page < self.start || page >= self.end {
            return None;
        }
        let i = (page - self.start) / PAGE;
        Some(((i / 64) as usize, 1 << (i % 64)))
    }
}

/// Counts of one `sample`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measure {
    pub t_secs: f64,
    pub rss_bytes: u64,
    /// File-backed and shared resident bytes (reported per file, not per stack).
    pub file_bytes: u64,
    pub attributed_bytes: u64,
    /// Still-resident preexisting bytes per kind index.
    pub preexisting: Vec<u64>,
    pub buckets: Buckets,
}

/// The stack of a mapping event: the BPF walker's frames and whether it was
/// truncated, or (when that walk died at once, in code the unwind tables do
/// not cover yet) the raw user stack for the CFI unwinder.
#[derive(Clone, Copy, Debug)]
pub enum MapStack<'a> {
    Walked(&'a [u64], bool),
    Raw(&'a [u8]),
}

/// The resident-mode model of one process.
pub struct Resident {
    pid: u32,
    started: Instant,
    unwinder: Unwinder,
    pagemap: Pagemap,
    stacks: Vec<Stack>,
    /// (frames, is mapping attribution) -> index into `stacks`.
    index: HashMap<(Vec<u64>, bool), u32>,
    mappings: BTreeMap<u64, Mapping>,
    touched: BTreeMap<u64, u32>,
    baseline: Vec<BaselineRegion>,
    kinds: Vec<String>,
    series: Vec<SeriesPoint>,
    last: Option<Measure>,
    /// Unwinds of mapping stacks that got no further than the syscall wrapper.
    pub shallow_unwinds: u64,
    /// Pages each first-touch page stands for (the kernel's 1-in-N sampling).
    weight: u64,
    exited: bool,
    /// It exited before its first sample: the last sample is the pages it
    /// touched (`count_touched`), not a pagemap read.
    touched_only: bool,
}

impl Resident {
    /// Starts the model: remembers every page resident now. Call it after the
    /// probes are attached, so that no page falls between the two.
    pub fn start(pid: u32) -> Result<Resident, ResidentError> {
        Self::start_sampled(pid, 1)
    }

    /// As `start`, when the kernel samples 1 in `sample_every` first-touch
    /// pages (`ResidentMaps::set_sample_every`).
    pub fn start_sampled(pid: u32, sample_every: u32) -> Result<Resident, ResidentError> {
        let unwinder = Unwinder::new(pid)?;
        let mut pagemap = Pagemap::open(pid)?;
        let mut kinds: Vec<String> = Vec::new();
        let mut baseline = Vec::new();
        for m in crate::proc::maps::read(pid)? {
            // No access means nothing resident (V8 and glibc reservations).
            let special = matches!(m.name.as_deref(), Some("[vsyscall]" | "[vvar]"));
            if m.is_reservation() || special {
                continue;
            }
            let kind = m.kind();
            let k = match kinds.iter().position(|x| *x == kind) {
                Some(k) => k,
                None => {
                    kinds.push(kind);
                    kinds.len() - 1
                }
            } as u32;
            let pages = (m.end - m.start) / PAGE;
            let mut r = BaselineRegion {
                start: m.start,
                end: m.end,
                kind: k,
                bits: vec![0; pages.div_ceil(64) as usize],
            };
            let mut any = false;
            pagemap.for_each_resident(m.start, m.end, |p| {
                let i = (p - m.start) / PAGE;
                r.bits[(i / 64) as usize] |= 1 << (i % 64);
                any = true;
            });
            if any {
                baseline.push(r);
            }
        }
        Ok(Resident {
            pid,
            started: Instant::now(),
            unwinder,
            pagemap,
            stacks: Vec::new(),
            index: HashMap::new(),
            mappings: BTreeMap::new(),
            touched: BTreeMap::new(),
            baseline,
            kinds,
            series: Vec::new(),
            last: None,
            shallow_unwinds: 0,
            weight: u64::from(sample_every.max(1)),
            exited: false,
            touched_only: false,
        })
    }

    /// Decodes the JS frames of its raw-stack unwinds (mmap stacks) from
    /// now on, as the BPF walker decodes those of the stacks it walks.
    pub fn set_js(&mut self, js: Box<dyn crate::accounting::unwind::JsFrameDecoder>) {
        if let Err(e) = self.unwinder.set_js(js) {
            log::debug!("maps of PID {}: {e}", self.pid);
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn intern(&mut self, ips: Vec<u64>, attribution: Attribution, truncated: bool) -> u32 {
        let key = (ips, attribution == Attribution::Mapping);
        if let Some(i) = self.index.get(&key) {
            self.stacks[*i as usize].truncated |= truncated;
            return *i;
        }
        // A new stack: its JS words are resolved now, while the process
        // lives (the symbolizer names them from that after its exit).
        self.unwinder.observe_js(&key.0);
        let i = self.stacks.len() as u32;
        self.stacks.push(Stack {
            ips: key.0.clone(),
            attribution,
            bucket: None,
            pages: 0,
            peak_pages: 0,
            events: 0,
            history: VecDeque::new(),
            map_sizes: BTreeMap::new(),
            folded: 0,
            truncated,
        });
        self.index.insert(key, i);
        i
    }

    fn clear_baseline(&mut self, start: u64, end: u64) {
        for r in &mut self.baseline {
            if r.end <= start || r.start >= end {
                continue;
            }
            let mut p = start.max(r.start);
            while p < end.min(r.end) {
                if let Some((w, b)) = r.bit(p) {
                    r.bits[w] &= !b;
                }
                p += PAGE;
            }
        }
    }

    fn mapping_at(&self, addr: u64) -> Option<(u64, Mapping)> {
        let (s, m) = self.mappings.range(..=addr).next_back()?;
        (addr < m.end).then_some((*s, *m))
    }

    /// A user page fault. `walk` is the kernel's frame-pointer walk (frame 0
    /// is the faulting ip), or None when the stack could not be taken.
    /// `queued`: the stack that queued the threadpool work the faulting
    /// thread ran (`accounting::join_queued`), for each of these records.
    pub fn on_fault(
        &mut self,
        ev: &FaultEvent,
        walk: Option<(&[u64], bool)>,
        queued: Option<(&[u64], bool)>,
    ) {
        let page = ev.address & !(PAGE - 1);
        if !self.wants_first_touch(page) {
            return;
        }
        let (mut ips, mut truncated): (Vec<u64>, bool) = match walk {
            Some((w, t)) if !w.is_empty() => (w.to_vec(), t),
            _ => (vec![ev.ip], true),
        };
        // A frameless leaf (glibc memset/memcpy) keeps its return address at
        // [sp]; the frame-pointer walk skipped that caller. Only a word in a
        // module can be that return address (else it is data, and no frame).
        if ev.sp_word != 0
            && self.unwinder.module_of(ev.sp_word).is_some()
            && self.unwinder.return_address_at_sp(ev.ip)
        {
            ips.insert(1.min(ips.len()), ev.sp_word);
        }
        crate::accounting::join_queued(&mut ips, &mut truncated, queued);
        self.first_touch(page, ips, truncated);
    }

    /// A page fault whose frame-pointer walk died at once (in code without
    /// frame pointers), with the raw user stack for the CFI unwinder.
    pub fn on_fault_stack(&mut self, ev: &MapEvent, stack: &[u8], queued: Option<(&[u64], bool)>) {
        let page = ev.addr & !(PAGE - 1);
        if !self.wants_first_touch(page) {
            return;
        }
        let (mut ips, mut truncated) = self.unwind(ev, stack);
        crate::accounting::join_queued(&mut ips, &mut truncated, queued);
        self.first_touch(page, ips, truncated);
    }

    fn wants_first_touch(&self, page: u64) -> bool {
        self.mapping_at(page).is_none() && !self.touched.contains_key(&page)
    }

    fn first_touch(&mut self, page: u64, ips: Vec<u64>, truncated: bool) {
        log::trace!("pid {} first touch {page:#x} by {ips:x?}", self.pid);
        let s = self.intern(ips, Attribution::FirstTouch, truncated);
        self.stacks[s as usize].events += self.weight;
        self.touched.insert(page, s);
        self.clear_baseline(page, page + PAGE);
    }

    /// An anonymous mapping created (mmap) or moved (mremap), with its stack
    /// at the syscall's exit.
    pub fn on_map(&mut self, ev: &MapEvent, stack: MapStack<'_>, queued: Option<(&[u64], bool)>) {
        let start = ev.addr & !(PAGE - 1);
        let end = (ev.addr + ev.len).div_ceil(PAGE) * PAGE;
        if ev.syscall == tracer_common::event_kind::MREMAP {
            self.on_mremap(ev, start, end);
            return;
        }
        let is_arena = ev.prot == 0
            && ev.flags & MAP_NORESERVE != 0
            && (ev.len == GLIBC_HEAP_MAX || ev.len == 2 * GLIBC_HEAP_MAX);
        if is_arena {
            // A shared arena: its pages go to their first toucher.
            self.remove_mappings(start, end);
            return;
        }
        let (mut frames, mut truncated) = match stack {
            MapStack::Walked(f, t) => (f.to_vec(), t),
            MapStack::Raw(bytes) => {
                // The walker starts at the stub's caller (glibc's mmap and
                // mremap are stubs that push nothing, fault.bpf.c): so does
                // this, or one site would get two stacks.
                let (mut f, t) = self.unwind(ev, bytes);
                if f.len() > 1 {
                    f.remove(0);
                }
                (f, t)
            }
        };
        crate::accounting::join_queued(&mut frames, &mut truncated, queued);
        let s = self.intern(frames, Attribution::Mapping, truncated);
        self.stacks[s as usize].events += 1;
        *self.stacks[s as usize]
            .map_sizes
            .entry(tracer_common::hist_bucket(ev.len))
            .or_default() += 1;
        if ev.flags & MAP_FIXED != 0 {
            // An allocator re-mapping part of its own reservation (V8
            // decommits with mmap(MAP_FIXED, PROT_NONE)): the creator keeps it.
            self.insert_gaps(start, end, s);
        } else {
            // A new mapping cannot overlap a live one: what overlaps is stale.
            self.remove_mappings(start, end);
            self.mappings.insert(start, Mapping { end, stack: s });
        }
        let stale: Vec<u64> = self.touched.range(start..end).map(|(p, _)| *p).collect();
        for p in stale {
            self.touched.remove(&p);
        }
        self.clear_baseline(start, end);
    }

    fn unwind(&mut self, ev: &MapEvent, stack: &[u8]) -> (Vec<u64>, bool) {
        let regs = Regs {
            ip: ev.ip,
            sp: ev.sp,
            bp: ev.bp,
        };
        let window = StackWindow {
            base: ev.stack_base,
            bytes: stack,
        };
        // The syscall or fault ip is in a module (libc) we have not seen yet:
        // modules mapped since the last read (a process just exec'd loads
        // its libraries after the model started, dlopen later). Always read
        // the maps again then: a rate limit here lost the first mappings of
        // a process picked up at exec (its libc mapped a few ms after the
        // model's first read). Raw-stack events are rare (mmap, or a fault
        // whose frame-pointer walk died in libc), so this stays cheap.
        if self.unwinder.module_of(ev.ip).is_none() {
            let _ = self.unwinder.refresh();
        }
        let mut frames = self.unwinder.unwind_full(regs, window);
        if frames.0.len() <= 2 {
            // A module mapped since the last refresh (dlopen of an addon).
            if let Ok(true) = self
                .unwinder
                .refresh_at_most_every(std::time::Duration::from_millis(500))
            {
                frames = self.unwinder.unwind_full(regs, window);
            }
            if frames.0.len() <= 2 {
                self.shallow_unwinds += 1;
            }
        }
        frames
    }

    fn on_mremap(&mut self, ev: &MapEvent, start: u64, end: u64) {
        let old_start = ev.old_addr & !(PAGE - 1);
        let old_end = (ev.old_addr + ev.old_len).div_ceil(PAGE) * PAGE;
        let owner = self.mapping_at(old_start).map(|(_, m)| m.stack);
        if start == old_start {
            // Grown or shrunk in place.
            if let Some(s) = owner {
                self.remove_mappings(old_start, old_end.max(end));
                self.mappings.insert(start, Mapping { end, stack: s });
            }
            return;
        }
        // Moved: pages keep their owner at their new address.
        let moved: Vec<(u64, u32)> = self
            .touched
            .range(old_start..old_end)
            .map(|(p, s)| (*p, *s))
            .collect();
        for (p, s) in moved {
            self.touched.remove(&p);
            if p - old_start < end - start {
                self.touched.insert(p - old_start + start, s);
            }
        }
        self.remove_mappings(old_start, old_end);
        if let Some(s) = owner {
            self.remove_mappings(start, end);
            self.mappings.insert(start, Mapping { end, stack: s });
        }
    }

    /// Removes [start, end) from the tracked mappings, splitting any that
    /// straddle its ends.
    fn remove_mappings(&mut self, start: u64, end: u64) {
        if let Some((s, m)) = self.mapping_at(start) {
            if s < start {
                self.mappings.insert(s, Mapping { end: start, ..m });
                if m.end > end {
                    self.mappings.insert(end, Mapping { end: m.end, ..m });
                }
            }
        }
        let inside: Vec<u64> = self.mappings.range(start..end).map(|(s, _)| *s).collect();
        for s in inside {
            let m = self.mappings.remove(&s).expect("listed");
            if m.end > end {
                self.mappings.insert(end, m);
            }
        }
    }

    /// Tracks the parts of [start, end) no mapping covers, for stack `s`.
    fn insert_gaps(&mut self, start: u64, end: u64, s: u32) {
        let mut cur = start;
        while cur < end {
            match self.mapping_at(cur) {
                Some((_, m)) => cur = m.end,
                None => {
                    let next = self
                        .mappings
                        .range(cur..end)
                        .next()
                        .map_or(end, |(ns, _)| *ns);
                    self.mappings.insert(
                        cur,
                        Mapping {
                            end: next,
                            stack: s,
                        },
                    );
                    cur = next;
                }
            }
        }
    }

    /// Asks the kernel what is resident now; appends a series point. Returns
    /// false when the process is gone (the last sample then stands).
    pub fn sample(&mut self, classify: &mut Classifier<'_>) -> bool {
        let Ok((rss, file_bytes)) = procfs::rss_bytes(self.pid) else {
            self.exited = true;
            return false;
        };
        let t = self.started.elapsed().as_secs_f64();
        let mut pages = vec![0u64; self.stacks.len()];
        for (s, m) in &self.mappings {
            pages[m.stack as usize] += self.pagemap.count_resident(*s, m.end);
        }
        // Attributed single pages, read in runs of nearby pages.
        let keys: Vec<u64> = self.touched.keys().copied().collect();
        let mut i = 0;
        while i < keys.len() {
            let mut j = i;
            while j + 1 < keys.len() && keys[j + 1] - keys[j] <= 64 * PAGE {
                j += 1;
            }
            let touched = &self.touched;
            let weight = self.weight;
            self.pagemap
                .for_each_resident(keys[i], keys[j] + PAGE, |p| {
                    if let Some(s) = touched.get(&p) {
                        pages[*s as usize] += weight;
                    }
                });
            i = j + 1;
        }
        let mut pre = vec![0u64; self.kinds.len()];
        for r in &self.baseline {
            let (start, bits) = (r.start, &r.bits);
            self.pagemap.for_each_resident(r.start, r.end, |p| {
                let i = (p - start) / PAGE;
                if bits[(i / 64) as usize] & (1 << (i % 64)) != 0 {
                    pre[r.kind as usize] += PAGE;
                }
            });
        }
        // A process that exited between the two reads: keep the last sample.
        if procfs::rss_bytes(self.pid).is_err() {
            self.exited = true;
            return false;
        }
        let mut buckets = Buckets::default();
        let mut attributed = 0;
        for (st, n) in self.stacks.iter_mut().zip(pages) {
            st.pages = n;
            st.peak_pages = st.peak_pages.max(n);
            st.history.push_back((t, n));
            if st.history.len() > GROWTH_WINDOW {
                st.history.pop_front();
            }
            if n > 0 {
                let b = *st.bucket.get_or_insert_with(|| classify(self.pid, &st.ips));
                *buckets.get_mut(b) += n * PAGE;
                attributed += n * PAGE;
            }
        }
        self.series.push(SeriesPoint {
            t_secs: t,
            rss_bytes: rss,
            buckets,
            ..SeriesPoint::default()
        });
        self.last = Some(Measure {
            t_secs: t,
            rss_bytes: rss,
            file_bytes,
            attributed_bytes: attributed,
            preexisting: pre,
            buckets,
        });
        true
    }
}
