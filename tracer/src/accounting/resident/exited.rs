//! The figures of a process that exited before its first sample (a command
//! shorter than one interval): its pagemap went with its address space, so
//! what it made resident is taken from the fault programs' own record
//! instead: the pages that faulted in each mapping it created (the `touched`
//! bits of `fault_skip`, fault.bpf.c) and the first-touch pages it faulted
//! (`Resident::touched`, from the fault events). Why not one last pagemap
//! read at the exit: the kernel tears the address space down in the dying
//! task itself (kernel/exit.c, do_exit: `trace_sched_process_exit` and then
//! `exit_mm`, since Linux 6.16), long before userspace hears of the exit.
//! What it gives: the pages the process touched, not those resident at its
//! end (a Buffer freed and unmapped before the exit still counts).
use tracer_common::{FaultSkipRange, GRANULE_SHIFT};

use super::{Buckets, Classifier, Measure, Resident, PAGE};

/// The `fault_skip` entry of one granule of the process (None: no entry).
pub type SkipLookup<'a> = dyn FnMut(u64) -> Option<FaultSkipRange> + 'a;

impl Resident {
    /// Sets every stack's pages to those it touched (see the module doc)
    /// and makes that the last sample. Call it only when there is none.
    pub(super) fn count_touched(
        &mut self,
        skip: &mut SkipLookup<'_>,
        classify: &mut Classifier<'_>,
    ) {
        let mut pages = vec![0u64; self.stacks.len()];
        for (&start, m) in &self.mappings {
            let mut g = start >> GRANULE_SHIFT;
            while g << GRANULE_SHIFT < m.end {
                if let Some(r) = skip(g) {
                    pages[m.stack as usize] += touched_between(&r, g, start, m.end);
                }
                g += 1;
            }
        }
        for s in self.touched.values() {
            pages[*s as usize] += self.weight;
        }
        let mut buckets = Buckets::default();
        let mut attributed = 0;
        for (st, n) in self.stacks.iter_mut().zip(pages) {
            st.pages = n;
            st.peak_pages = st.peak_pages.max(n);
            if n > 0 {
                let b = *st.bucket.get_or_insert_with(|| classify(self.pid, &st.ips));
                *buckets.get_mut(b) += n * PAGE;
                attributed += n * PAGE;
            }
        }
        self.last = Some(Measure {
            t_secs: self.started.elapsed().as_secs_f64(),
            rss_bytes: 0,
            file_bytes: 0,
            attributed_bytes: attributed,
            preexisting: vec![0; self.kinds.len()],
            buckets,
        });
        self.touched_only = true;
    }
}

/// Pages of [start, end) in granule `g` whose touched bit is set.
fn touched_between(r: &FaultSkipRange, g: u64, start: u64, end: u64) -> u64 {
    let gs = g << GRANULE_SHIFT;
    let ge = gs + (1 << GRANULE_SHIFT);
    let (lo, hi) = (start.max(gs), end.min(ge));
    if lo >= hi {
        return 0;
    }
    ((lo - gs) / PAGE..(hi - gs).div_ceil(PAGE))
        .filter(|p| r.touched[(p / 64) as usize] >> (p % 64) & 1 == 1)
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_touched_pages_of_a_mapping_in_a_granule() {
        let mut r = FaultSkipRange::default();
        // Pages 0, 63, 64 and 511 of granule 3.
        r.touched[0] = 1 | 1 << 63;
        r.touched[1] = 1;
        r.touched[7] = 1 << 63;
        let gs = 3 << GRANULE_SHIFT;
        assert_eq!(touched_between(&r, 3, gs, gs + (2 << 20)), 4);
        // A mapping from page 63 to the middle of page 64: two pages.
        assert_eq!(
            touched_between(&r, 3, gs + 63 * PAGE, gs + 64 * PAGE + 1),
            2
        );
        // A mapping that starts in an earlier granule and ends in this one.
        assert_eq!(touched_between(&r, 3, gs - PAGE, gs + PAGE), 1);
        // One in another granule.
        assert_eq!(touched_between(&r, 3, gs + (2 << 20), gs + (3 << 20)), 0);
    }
}
