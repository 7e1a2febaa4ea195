//! Bounding a resident model for a long-running agent: the smallest stacks
//! are folded into aggregates that keep their pages and mappings.
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::{Classifier, Resident, Stack};
use crate::report::{Attribution, Bucket};

impl Resident {
    /// Bounds the model to about `max` stacks, so that a long-running agent's
    /// memory stays bounded: the stacks with the fewest resident pages (as of
    /// the last sample) are folded into one aggregate per bucket and
    /// attribution. The aggregate takes over their pages and mappings, so the
    /// buckets stay whole, while their frames and histories are freed. Returns
    /// how many stacks were folded.
    pub fn evict_to(&mut self, max: usize, classify: &mut Classifier<'_>) -> usize {
        if self.stacks.len() <= max {
            return 0;
        }
        let pid = self.pid;
        let mut real: Vec<u32> = (0..self.stacks.len() as u32)
            .filter(|i| self.stacks[*i as usize].folded == 0)
            .collect();
        real.sort_by_key(|i| std::cmp::Reverse(self.stacks[*i as usize].pages));
        // Room for the aggregates (at most one per bucket and attribution).
        let keep = max.saturating_sub(2 * Bucket::ALL.len()).max(1);
        if real.len() <= keep {
            return 0;
        }
        let doomed: HashSet<u32> = real[keep..].iter().copied().collect();
        let old = std::mem::take(&mut self.stacks);
        let mut remap = vec![0u32; old.len()];
        let mut aggregates: HashMap<(Bucket, bool), u32> = HashMap::new();
        self.index.clear();
        let mut folded = 0;
        for (i, mut st) in old.into_iter().enumerate() {
            let mapping = st.attribution == Attribution::Mapping;
            if st.folded > 0 || doomed.contains(&(i as u32)) {
                let bucket = *st.bucket.get_or_insert_with(|| classify(pid, &st.ips));
                let next = self.stacks.len() as u32;
                let a = *aggregates.entry((bucket, mapping)).or_insert(next);
                if a == next {
                    self.stacks.push(Stack {
                        ips: Vec::new(),
                        attribution: st.attribution,
                        bucket: Some(bucket),
                        pages: 0,
                        peak_pages: 0,
                        events: 0,
                        history: VecDeque::new(),
                        map_sizes: BTreeMap::new(),
                        folded: 0,
                        truncated: false,
                    });
                }
                let agg = &mut self.stacks[a as usize];
                agg.pages += st.pages;
                agg.peak_pages += st.peak_pages;
                agg.events += st.events;
                for (b, n) in st.map_sizes {
                    *agg.map_sizes.entry(b).or_default() += n;
                }
                if st.folded > 0 {
                    agg.folded += st.folded;
                } else {
                    agg.folded += 1;
                    folded += 1;
                }
                remap[i] = a;
            } else {
                let n = self.stacks.len() as u32;
                self.index.insert((st.ips.clone(), mapping), n);
                self.stacks.push(st);
                remap[i] = n;
            }
        }
        for s in self.touched.values_mut() {
            *s = remap[*s as usize];
        }
        for m in self.mappings.values_mut() {
            m.stack = remap[m.stack as usize];
        }
        folded
    }
}
