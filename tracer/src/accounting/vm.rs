//! The anonymous memory a process mapped itself (mmap, mremap, brk), kept as
//! address ranges, each with the stack that created it. A partial munmap
//! removes only what was unmapped; mremap moves or resizes; brk growth and
//! shrink are ranges too.
//!
//! Malloc mode sums the live ranges per stack. A PROT_NONE mapping is a
//! reservation of address space, not memory: it is kept (a later munmap or
//! MAP_FIXED mapping over it must find it) but never summed; its pages
//! become memory through mprotect, which is not followed, so malloc mode asks
//! the kernel which of them are resident (`reservations`).
use std::collections::{BTreeMap, HashMap, HashSet};

use tracer_common::{event_kind, StackKey, StackStats, VmEvent};

/// A live piece of one mapping. Pieces of the same mapping share `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Identifies the mmap/brk call that created it (pieces keep it).
    pub id: u64,
    pub stack: StackKey,
    /// Mapped PROT_NONE: address space reserved, not memory.
    pub reserved: bool,
}

impl Mapping {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// One process's self-made anonymous ranges.
#[derive(Clone, Debug, Default)]
pub struct VmSpace {
    /// start -> mapping; ranges never overlap.
    ranges: BTreeMap<u64, Mapping>,
    next_id: u64,
    /// Bytes and mappings ever created, per stack.
    totals: HashMap<StackKey, (u64, u64)>,
}

impl VmSpace {
    /// Applies one event from the ring buffer. MADVISE changes no mapping.
    pub fn apply(&mut self, ev: &VmEvent) {
        match ev.hdr.kind {
            event_kind::MMAP => self.map_with(
                ev.addr,
                ev.addr.saturating_add(ev.len),
                ev.stack,
                ev.prot == 0,
            ),
            event_kind::MUNMAP => {
                self.unmap(ev.addr, ev.addr.saturating_add(ev.len));
            }
            event_kind::MREMAP => self.remap(ev.old_addr, ev.old_len, ev.addr, ev.len),
            event_kind::BRK => self.brk(ev.old_addr, ev.addr, ev.stack),
            _ => {}
        }
    }

    /// A new mapping of [start, end). Whatever it overlaps was replaced
    /// (MAP_FIXED over an old mapping unmaps it first, mmap(2)).
    pub fn map(&mut self, start: u64, end: u64, stack: StackKey) {
        self.map_with(start, end, stack, false);
    }

    /// A new mapping, `reserved` when it was mapped PROT_NONE (never summed
    /// into the totals).
    pub fn map_with(&mut self, start: u64, end: u64, stack: StackKey, reserved: bool) {
        if start >= end {
            return;
        }
        self.unmap(start, end);
        let id = self.next_id;
        self.next_id += 1;
        if !reserved {
            let t = self.totals.entry(stack).or_default();
            t.0 += end - start;
            t.1 += 1;
        }
        self.ranges.insert(
            start,
            Mapping {
                start,
                end,
                id,
                stack,
                reserved,
            },
        );
    }

    /// [start, end) was given back; returns the pieces that were live.
    pub fn unmap(&mut self, start: u64, end: u64) -> Vec<Mapping> {
        let mut removed = Vec::new();
        if start >= end {
            return removed;
        }
        // The range starting before `start` may reach into [start, end).
        let first = self
            .ranges
            .range(..start)
            .next_back()
            .filter(|(_, m)| m.end > start)
            .map(|(k, _)| *k);
        let keys: Vec<u64> = first
            .into_iter()
            .chain(self.ranges.range(start..end).map(|(k, _)| *k))
            .collect();
        for k in keys {
            let m = self.ranges.remove(&k).expect("key just listed");
            if m.start < start {
                self.ranges.insert(m.start, Mapping { end: start, ..m });
            }
            if m.end > end {
                self.ranges.insert(end, Mapping { start: end, ..m });
            }
            removed.push(Mapping {
                start: m.start.max(start),
                end: m.end.min(end),
                ..m
            });
        }
        removed
    }

    /// mremap(2): the live part of the old range moves to [new, new+new_len),
    /// keeping its mapping and stack; growth is charged to that stack.
    pub fn remap(&mut self, old: u64, old_len: u64, new: u64, new_len: u64) {
        let moved = self.unmap(old, old.saturating_add(old_len));
        let Some(first) = moved.first().copied() else {
            return;
        };
        let moved_bytes: u64 = moved.iter().map(Mapping::len).sum();
        if new_len > moved_bytes && !first.reserved {
            self.totals.entry(first.stack).or_default().0 += new_len - moved_bytes;
        }
        let end = new.saturating_add(new_len);
        self.unmap(new, end);
        if new < end {
            self.ranges.insert(
                new,
                Mapping {
                    start: new,
                    end,
                    ..first
                },
            );
        }
    }

    /// The break moved from `old` to `new` (brk(2)).
    pub fn brk(&mut self, old: u64, new: u64, stack: StackKey) {
        if new > old {
            self.map(old, new, stack);
        } else {
            self.unmap(new, old);
        }
    }

    /// The live mapping piece containing `addr`.
    pub fn find(&self, addr: u64) -> Option<Mapping> {
        self.ranges
            .range(..=addr)
            .next_back()
            .map(|(_, m)| *m)
            .filter(|m| addr < m.end)
    }

    pub fn live_bytes(&self) -> u64 {
        self.ranges
            .values()
            .filter(|m| !m.reserved)
            .map(Mapping::len)
            .sum()
    }

    /// The reserved (PROT_NONE at mmap) ranges, each with its stack.
    pub fn reservations(&self) -> impl Iterator<Item = &Mapping> {
        self.ranges.values().filter(|m| m.reserved)
    }

    /// Per-stack live and total figures, as malloc mode reports them: a
    /// mapping partly unmapped is still one live allocation.
    pub fn stack_stats(&self) -> HashMap<StackKey, StackStats> {
        let mut out: HashMap<StackKey, StackStats> = HashMap::new();
        let mut ids: HashSet<u64> = HashSet::new();
        for m in self.ranges.values().filter(|m| !m.reserved) {
            let s = out.entry(m.stack).or_default();
            s.live_bytes += m.len();
            if ids.insert(m.id) {
                s.live_allocs += 1;
            }
        }
        for (stack, (bytes, count)) in &self.totals {
            let s = out.entry(*stack).or_default();
            s.total_bytes += bytes;
            s.total_allocs += count;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    fn key(id: i32) -> StackKey {
        StackKey {
            tgid: 1,
            stack_id: id,
            ..StackKey::default()
        }
    }

    #[test]
    fn partial_munmap_in_the_middle_keeps_both_ends_as_one_allocation() {
        let mut v = VmSpace::default();
        v.map(10 * P, 20 * P, key(1));
        let gone = v.unmap(13 * P, 16 * P);
        assert_eq!(gone.iter().map(Mapping::len).sum::<u64>(), 3 * P);
        let s = v.stack_stats()[&key(1)];
        assert_eq!((s.live_bytes, s.live_allocs), (7 * P, 1));
        assert_eq!((s.total_bytes, s.total_allocs), (10 * P, 1));
        assert_eq!(v.find(12 * P).unwrap().start, 10 * P);
        assert!(v.find(14 * P).is_none());
        assert_eq!(v.find(16 * P).unwrap().end, 20 * P);
    }

    #[test]
    fn munmap_across_several_mappings() {
        let mut v = VmSpace::default();
        v.map(0, 4 * P, key(1));
        v.map(4 * P, 8 * P, key(2));
        v.unmap(2 * P, 6 * P);
        let s = v.stack_stats();
        assert_eq!(s[&key(1)].live_bytes, 2 * P);
        assert_eq!(s[&key(2)].live_bytes, 2 * P);
        assert_eq!(v.live_bytes(), 4 * P);
    }

    #[test]
    fn unmap_of_unknown_range_changes_nothing() {
        let mut v = VmSpace::default();
        v.map(0, 4 * P, key(1));
        assert!(v.unmap(100 * P, 200 * P).is_empty());
        assert_eq!(v.live_bytes(), 4 * P);
    }

    #[test]
    fn map_fixed_over_a_mapping_replaces_it() {
        let mut v = VmSpace::default();
        v.map(0, 4 * P, key(1));
        v.map(P, 2 * P, key(2));
        let s = v.stack_stats();
        assert_eq!(s[&key(1)].live_bytes, 3 * P);
        assert_eq!(s[&key(2)].live_bytes, P);
    }

    #[test]
    fn mremap_moves_and_grows_under_the_original_stack() {
        let mut v = VmSpace::default();
        v.map(0, 4 * P, key(1));
        v.remap(0, 4 * P, 100 * P, 6 * P);
        assert!(v.find(0).is_none());
        let s = v.stack_stats()[&key(1)];
        assert_eq!(
            (s.live_bytes, s.live_allocs, s.total_bytes),
            (6 * P, 1, 6 * P)
        );
    }

    #[test]
    fn reservations_are_kept_apart_and_replaced_by_mappings_over_them() {
        let mut v = VmSpace::default();
        v.map_with(0, 64 * P, key(7), true);
        assert_eq!(v.live_bytes(), 0);
        assert!(v.stack_stats().is_empty());
        // A piece trimmed off (V8 aligns its reservations), then a mapping
        // made read-write outright over part of it.
        v.unmap(48 * P, 64 * P);
        v.map(0, 8 * P, key(1));
        let r: Vec<(u64, u64)> = v.reservations().map(|m| (m.start, m.end)).collect();
        assert_eq!(r, vec![(8 * P, 48 * P)]);
        assert_eq!(v.live_bytes(), 8 * P);
        // A reservation moved by mremap stays one.
        v.remap(8 * P, 40 * P, 100 * P, 50 * P);
        let r: Vec<(u64, u64)> = v.reservations().map(|m| (m.start, m.end)).collect();
        assert_eq!(r, vec![(100 * P, 150 * P)]);
        assert_eq!(v.stack_stats()[&key(1)].total_bytes, 8 * P);
        assert!(!v.stack_stats().contains_key(&key(7)));
    }

    #[test]
    fn brk_grow_then_shrink() {
        let mut v = VmSpace::default();
        v.brk(1000 * P, 1016 * P, key(3));
        v.brk(1016 * P, 1012 * P, key(4));
        assert_eq!(v.stack_stats()[&key(3)].live_bytes, 12 * P);
        assert_eq!(v.live_bytes(), 12 * P);
    }
}
