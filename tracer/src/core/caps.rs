//! The stack caps of `watch` (--max-stacks-per-process, --max-stacks-total):
//! which stacks to evict when a process, or all of them together, hold more
//! than allowed. The smallest go first (live bytes, then bytes ever
//! allocated): they matter least for finding where memory went.
use std::collections::{HashMap, HashSet};

use crate::report::raw::RawStack;

/// One stack as the caps see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sized {
    pub live_bytes: u64,
    pub total_bytes: u64,
    /// False for stacks whose data lives outside the BPF maps (mappings
    /// rebuilt from events each time): evicting them would free nothing.
    pub evictable: bool,
}

/// How the caps see a raw stack.
pub fn sized(s: &RawStack, evictable: bool) -> Sized {
    Sized {
        live_bytes: s.live_bytes,
        total_bytes: s.total_bytes,
        evictable,
    }
}

/// `(pid, index into that pid's list)` of every stack to evict, so that each
/// process keeps at most `per_process` stacks and all together at most
/// `total` (non-evictable stacks count but stay).
pub fn choose(
    stacks: &HashMap<u32, Vec<Sized>>,
    per_process: usize,
    total: usize,
) -> HashSet<(u32, usize)> {
    let order =
        |a: &Sized, b: &Sized| (a.live_bytes, a.total_bytes).cmp(&(b.live_bytes, b.total_bytes));
    let mut evict = HashSet::new();
    let mut kept: Vec<(u32, usize, Sized)> = Vec::new();
    let mut fixed = 0usize;
    for (&pid, list) in stacks {
        let mut cands: Vec<(usize, Sized)> = Vec::new();
        for (i, s) in list.iter().enumerate() {
            if s.evictable {
                cands.push((i, *s));
            } else {
                fixed += 1;
            }
        }
        cands.sort_by(|a, b| order(&a.1, &b.1).then(a.0.cmp(&b.0)));
        let over = list.len().saturating_sub(per_process).min(cands.len());
        for (i, _) in &cands[..over] {
            evict.insert((pid, *i));
        }
        kept.extend(cands[over..].iter().map(|(i, s)| (pid, *i, *s)));
    }
    let over = (fixed + kept.len()).saturating_sub(total).min(kept.len());
    if over > 0 {
        kept.sort_by(|a, b| order(&a.2, &b.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        evict.extend(kept[..over].iter().map(|(pid, i, _)| (*pid, *i)));
    }
    evict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(live: u64, total: u64) -> Sized {
        Sized {
            live_bytes: live,
            total_bytes: total,
            evictable: true,
        }
    }

    fn sorted(h: HashSet<(u32, usize)>) -> Vec<(u32, usize)> {
        let mut v: Vec<_> = h.into_iter().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn per_process_cap_evicts_the_smallest_by_live_then_total() {
        let m = HashMap::from([(7, vec![s(10, 10), s(1, 50), s(1, 5), s(100, 100)])]);
        assert_eq!(sorted(choose(&m, 2, 100)), vec![(7, 1), (7, 2)]);
        assert_eq!(sorted(choose(&m, 4, 100)), vec![]);
    }

    #[test]
    fn total_cap_evicts_across_processes() {
        let m = HashMap::from([
            (1, vec![s(5, 5), s(50, 50)]),
            (2, vec![s(3, 3), s(40, 40), s(60, 60)]),
        ]);
        // 5 stacks, total cap 3: the two smallest anywhere go.
        assert_eq!(sorted(choose(&m, 10, 3)), vec![(1, 0), (2, 0)]);
        // Both caps: pid 2 first loses its smallest (cap 2), then the total
        // (4 left, cap 3) takes the smallest remaining, pid 1's 5 bytes.
        assert_eq!(sorted(choose(&m, 2, 3)), vec![(1, 0), (2, 0)]);
        assert_eq!(sorted(choose(&m, 2, 2)), vec![(1, 0), (2, 0), (2, 1)]);
    }

    #[test]
    fn non_evictable_stacks_count_but_stay() {
        let mut fixed = s(0, 0);
        fixed.evictable = false;
        let m = HashMap::from([(1, vec![fixed, s(9, 9), s(8, 8)])]);
        assert_eq!(sorted(choose(&m, 2, 10)), vec![(1, 2)]);
        assert_eq!(sorted(choose(&m, 1, 10)), vec![(1, 1), (1, 2)]);
        assert_eq!(sorted(choose(&m, 0, 0)), vec![(1, 1), (1, 2)]);
    }
}
