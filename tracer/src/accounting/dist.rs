//! Malloc mode's distributions per stack: allocation sizes (`size_hist`) and
//! lifetimes of freed allocations (`lifetime_hist`), which the uprobes count
//! in log-linear buckets (see struct hist_key in offheap.h). Each bucket is
//! replayed into an HDR `Recorder` at its lower bound, so the quantiles carry
//! the kernel's precision (exact for powers of two and below 16, within 1/8
//! otherwise) rather than the recorder's.
use std::collections::{HashMap, HashSet};

use aya::{maps::HashMap as BpfHashMap, Ebpf};
use tracer_common::{hist_lower_bound, maps, HistKey, InlineHist, StackKey, StackStats};

use super::malloc::{ReadError, StackResolver};
use crate::report::raw::RawStack;
use crate::report::{hist::Recorder, Quantiles};

/// Distributions are computed for this many stacks (the largest by live,
/// then total bytes): a recorder costs up to ~200 KiB while it is built.
pub const TOP_STACKS: usize = 256;

/// (bucket, count) pairs per stack key of one tgid.
pub type Buckets = HashMap<StackKey, Vec<(u32, u64)>>;

/// One of malloc mode's distributions.
#[derive(Clone, Copy, Debug)]
pub enum Dist {
    Sizes,
    Lifetimes,
}

impl Dist {
    /// The map that holds the buckets past a stack's inline ones.
    fn map(self) -> &'static str {
        match self {
            Dist::Sizes => maps::SIZE_HIST,
            Dist::Lifetimes => maps::LIFETIME_HIST,
        }
    }

    /// This distribution's half of a (sizes, lifetimes) pair.
    fn of(self, pair: &mut (Buckets, Buckets)) -> &mut Buckets {
        match self {
            Dist::Sizes => &mut pair.0,
            Dist::Lifetimes => &mut pair.1,
        }
    }

    /// The buckets counted in a stack's own stats entry.
    fn inline(self, s: &StackStats) -> &InlineHist {
        match self {
            Dist::Sizes => &s.sizes,
            Dist::Lifetimes => &s.lifetimes,
        }
    }
}

/// Every bucket the kernel counted for the `pids`, per pid: sizes and
/// lifetimes, those inline in their `stats` (read from `stack_stats`) and
/// those in the distributions' maps, each map read once for all pids.
pub fn read_all(
    ebpf: &Ebpf,
    pids: &HashSet<u32>,
    stats: &HashMap<u32, Vec<(StackKey, StackStats)>>,
) -> Result<HashMap<u32, (Buckets, Buckets)>, ReadError> {
    let mut out: HashMap<u32, (Buckets, Buckets)> = HashMap::new();
    for dist in [Dist::Sizes, Dist::Lifetimes] {
        for (pid, list) in stats {
            for (k, s) in list {
                let inline: Vec<(u32, u64)> = dist.inline(s).buckets().collect();
                if !inline.is_empty() {
                    dist.of(out.entry(*pid).or_default())
                        .entry(*k)
                        .or_default()
                        .extend(inline);
                }
            }
        }
        let map = dist.map();
        let m = ebpf.map(map).ok_or(ReadError::MissingMap(map))?;
        let hist: BpfHashMap<_, HistKey, u64> =
            BpfHashMap::try_from(m).map_err(|e| ReadError::Map(map, e))?;
        for entry in hist.iter() {
            // An entry deleted while iterating is skipped, not fatal.
            let Ok((k, n)) = entry else { continue };
            if pids.contains(&k.stack.tgid) && n > 0 {
                dist.of(out.entry(k.stack.tgid).or_default())
                    .entry(k.stack)
                    .or_default()
                    .push((k.bucket, n));
            }
        }
    }
    Ok(out)
}

/// Removes the buckets of the stacks `gone` selects from both maps (a target
/// that left, or stacks evicted by a cap): without this a long-running
/// daemon would fill them up. Returns how many entries went.
pub fn forget(ebpf: &mut Ebpf, gone: impl Fn(&StackKey) -> bool) -> Result<usize, ReadError> {
    let mut removed = 0;
    for map in [maps::SIZE_HIST, maps::LIFETIME_HIST] {
        let m = ebpf.map_mut(map).ok_or(ReadError::MissingMap(map))?;
        let mut hist: BpfHashMap<_, HistKey, u64> =
            BpfHashMap::try_from(m).map_err(|e| ReadError::Map(map, e))?;
        let keys: Vec<HistKey> = hist.keys().filter_map(Result::ok).collect();
        for k in keys.into_iter().filter(|k| gone(&k.stack)) {
            // Already gone (a concurrent delete) is as good as deleted.
            if hist.remove(&k).is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Quantiles of a set of buckets, None when empty.
pub fn quantiles(buckets: &[(u32, u64)]) -> Option<Quantiles> {
    let mut r = Recorder::new();
    for &(b, n) in buckets {
        r.record_n(hist_lower_bound(b), n);
    }
    r.quantiles()
}

/// Fills `sizes` and `lifetimes_ns` of the top stacks. Keys whose frames are
/// equal are one stack (as in `malloc::merge_into`).
pub fn fill(
    stacks: &mut HashMap<Vec<u64>, RawStack>,
    resolver: &StackResolver<'_>,
    sizes: Buckets,
    lifetimes: Buckets,
) {
    let mut order: Vec<(&Vec<u64>, u64, u64)> = stacks
        .iter()
        .map(|(k, s)| (k, s.live_bytes, s.total_bytes))
        .collect();
    order.sort_by_key(|s| std::cmp::Reverse((s.1, s.2)));
    let top: std::collections::HashSet<Vec<u64>> = order
        .into_iter()
        .take(TOP_STACKS)
        .map(|(k, _, _)| k.clone())
        .collect();
    let group = |b: Buckets| {
        let mut by_ips: HashMap<Vec<u64>, Vec<(u32, u64)>> = HashMap::new();
        for (key, v) in b {
            let ips = resolver.ips(&key);
            if top.contains(&ips) {
                by_ips.entry(ips).or_default().extend(v);
            }
        }
        by_ips
    };
    for (ips, b) in group(sizes) {
        if let Some(s) = stacks.get_mut(&ips) {
            s.sizes = quantiles(&b);
        }
    }
    for (ips, b) in group(lifetimes) {
        if let Some(s) = stacks.get_mut(&ips) {
            s.lifetimes_ns = quantiles(&b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::hist_bucket;

    #[test]
    fn kernel_buckets_give_exact_power_of_two_quantiles() {
        // 100 x 4096 + 1 x 1 MiB, bucketed as the kernel does.
        let b = vec![(hist_bucket(4096), 100), (hist_bucket(1 << 20), 1)];
        let q = quantiles(&b).unwrap();
        assert_eq!(
            (q.count, q.p50, q.p90, q.p99, q.max),
            (101, 4096, 4096, 4096, 1 << 20)
        );
        assert_eq!(quantiles(&[]), None);
    }

    #[test]
    fn odd_sizes_round_down_to_their_bucket() {
        // 1000 is in [960, 1024): bucket lower bound 960.
        let q = quantiles(&[(hist_bucket(1000), 3)]).unwrap();
        assert_eq!((q.p50, q.max), (960, 960));
    }
}
