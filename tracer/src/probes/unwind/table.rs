//! A module's table as it goes into BPF: a page index, then the rows
//! (offheap.h, `union unwind_entry`), and the lookup the BPF side does
//! (include/unwind.bpf.h, `unwind_find`), written again here for tests and
//! for userspace callers.
use tracer_common::{UnwindEntry, UnwindPage, UnwindRow, UNWIND_PAGE_SHIFT};

use super::cfi::{Row, Rule};

const PAGE: u64 = 1 << UNWIND_PAGE_SHIFT;

/// A built table. Row pcs are offsets from `base` (a page-aligned
/// link-time address), so `pc - bias` in BPF is `svma - base`.
#[derive(Clone)]
pub struct Table {
    pub base: u64,
    pub npages: u32,
    /// `npages` page entries, then the rows.
    pub entries: Vec<UnwindEntry>,
}

/// Why a module gets no table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoTable {
    /// Every pc is the frame-pointer step: nothing to look up.
    AllFramePointer,
    /// The code spans 4 GiB or more (row pcs are 32-bit).
    TooLarge,
}

impl Table {
    pub fn build(rows: &[Row]) -> Result<Table, NoTable> {
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Err(NoTable::AllFramePointer);
        };
        let base = first.pc & !(PAGE - 1);
        // The last row is the frame-pointer step from the end of the last
        // FDE: pages up to the one holding it.
        let span = last.pc - base + 1;
        if span > u64::from(u32::MAX) {
            return Err(NoTable::TooLarge);
        }
        let npages = span.div_ceil(PAGE) as u32;
        let nrows = rows.len() as u32;
        let mut entries = Vec::with_capacity(npages as usize + rows.len());
        let mut lo = 0usize; // last row with pc <= page start, or 0
        let mut hi = 0usize; // first row with pc >= page end
        for p in 0..u64::from(npages) {
            let start = base + p * PAGE;
            while lo + 1 < rows.len() && rows[lo + 1].pc <= start {
                lo += 1;
            }
            while hi < rows.len() && rows[hi].pc < start + PAGE {
                hi += 1;
            }
            entries.push(UnwindEntry {
                page: UnwindPage {
                    first: npages + lo as u32,
                    count: hi.saturating_sub(lo) as u32,
                },
            });
        }
        debug_assert!(hi as u32 == nrows);
        entries.extend(rows.iter().map(|r| UnwindEntry {
            row: UnwindRow {
                pc: (r.pc - base) as u32,
                kind: r.rule.kind,
                rbp: r.rule.rbp,
                cfa: r.rule.cfa,
            },
        }));
        Ok(Table {
            base,
            npages,
            entries,
        })
    }

    pub fn rows(&self) -> usize {
        self.entries.len() - self.npages as usize
    }

    /// Bytes of the BPF array holding it (8 per entry; the kernel's array
    /// header aside).
    pub fn bytes(&self) -> u64 {
        self.entries.len() as u64 * 8
    }

    /// The rule at `off` (= svma - base), as unwind_find computes it: the
    /// page's entry, then a binary search of its rows. Outside every row:
    /// the frame-pointer step.
    pub fn lookup(&self, off: u64) -> Rule {
        let page = off >> UNWIND_PAGE_SHIFT;
        if page >= u64::from(self.npages) {
            return Rule::FP;
        }
        // SAFETY (union reads): entries [0, npages) are pages, the rest rows,
        // as built above; both variants are plain integers.
        let UnwindPage { first, count } = unsafe { self.entries[page as usize].page };
        let (mut lo, mut hi) = (first, first + count);
        let start = lo;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let row = unsafe { self.entries[mid as usize].row };
            if u64::from(row.pc) <= off {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == start {
            return Rule::FP;
        }
        let row = unsafe { self.entries[lo as usize - 1].row };
        Rule {
            kind: row.kind,
            rbp: row.rbp,
            cfa: row.cfa,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::unwind_row_kind as kind;

    fn rsp(n: i16) -> Rule {
        Rule {
            kind: kind::RSP,
            rbp: 0,
            cfa: n,
        }
    }

    /// Rows across page boundaries, a page with no row starting in it, and
    /// addresses before the first and after the last row.
    #[test]
    fn lookup_finds_the_row_covering_each_address() {
        let rows = vec![
            Row {
                pc: 0x1010,
                rule: rsp(8),
            },
            Row {
                pc: 0x1011,
                rule: rsp(16),
            },
            Row {
                pc: 0x1ff0,
                rule: Rule::FP,
            },
            Row {
                pc: 0x4000,
                rule: rsp(8),
            },
            Row {
                pc: 0x4004,
                rule: Rule::FP,
            },
        ];
        let t = Table::build(&rows).unwrap();
        assert_eq!((t.base, t.npages, t.rows()), (0x1000, 4, 5));
        let at = |svma: u64| t.lookup(svma.wrapping_sub(t.base));
        assert_eq!(at(0xfff), Rule::FP);
        assert_eq!(at(0x1000), Rule::FP);
        assert_eq!(at(0x100f), Rule::FP);
        assert_eq!(at(0x1010), rsp(8));
        assert_eq!(at(0x1011), rsp(16));
        assert_eq!(at(0x1fef), rsp(16));
        assert_eq!(at(0x1ff0), Rule::FP);
        assert_eq!(at(0x2800), Rule::FP);
        assert_eq!(at(0x3fff), Rule::FP);
        assert_eq!(at(0x4000), rsp(8));
        assert_eq!(at(0x4003), rsp(8));
        assert_eq!(at(0x4004), Rule::FP);
        assert_eq!(at(0x5000), Rule::FP);
        assert_eq!(Table::build(&[]).err(), Some(NoTable::AllFramePointer));
    }
}
