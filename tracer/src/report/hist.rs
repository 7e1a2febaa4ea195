//! Distributions of allocation sizes (bytes) and lifetimes (nanoseconds), kept
//! as HDR histograms and reported as `Quantiles` (p50/p90/p99/max).
//!
//! Three significant digits: a histogram up to 2^40 then costs ~200 KiB at
//! worst, so keep recorders for the top stacks only. Quantiles are reported as
//! the lower bound of their HDR bucket, which is the exact value for sizes up
//! to 2048 and for every power of two (the sizes allocators round to), and
//! within 0.1% otherwise; `max` is tracked exactly.
use hdrhistogram::Histogram;

use super::Quantiles;

#[derive(Clone, Debug)]
pub struct Recorder {
    hist: Histogram<u64>,
    max: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            // 3 significant digits is within hdrhistogram's 0..=5, and new()
            // auto-resizes, so neither this nor record() can fail.
            hist: Histogram::new(3).expect("3 significant digits is valid"),
            max: 0,
        }
    }

    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Records `count` samples of `value` (e.g. a batch of equal allocations).
    pub fn record_n(&mut self, value: u64, count: u64) {
        if count == 0 {
            return;
        }
        // Auto-resize only fails past u64::MAX / 2; such a size or lifetime
        // is garbage from a torn read, so it is clamped rather than lost.
        let v = value.min(u64::MAX / 4);
        if self.hist.record_n(v, count).is_ok() {
            self.max = self.max.max(v);
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        if self.hist.add(&other.hist).is_ok() {
            self.max = self.max.max(other.max);
        }
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    fn at(&self, q: f64) -> u64 {
        self.hist
            .lowest_equivalent(self.hist.value_at_quantile(q))
            .min(self.max)
    }

    /// None when nothing was recorded.
    pub fn quantiles(&self) -> Option<Quantiles> {
        if self.is_empty() {
            return None;
        }
        Some(Quantiles {
            count: self.count(),
            p50: self.at(0.50),
            p90: self.at(0.90),
            p99: self.at(0.99),
            max: self.max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_has_no_quantiles() {
        assert_eq!(Recorder::new().quantiles(), None);
    }

    #[test]
    fn exact_for_small_and_power_of_two_sizes() {
        let mut r = Recorder::new();
        // 50 x 64 B, 40 x 1000 B, 9 x 4096 B, 1 x 1 MiB.
        r.record_n(64, 50);
        r.record_n(1000, 40);
        r.record_n(4096, 9);
        r.record(1 << 20);
        assert_eq!(
            r.quantiles(),
            Some(Quantiles {
                count: 100,
                p50: 64,
                p90: 1000,
                p99: 4096,
                max: 1 << 20,
            })
        );
    }

    #[test]
    fn within_three_digits_and_max_exact() {
        let mut r = Recorder::new();
        for v in 1..=10_000u64 {
            r.record(v * 1_000_003);
        }
        let q = r.quantiles().unwrap();
        assert_eq!(q.count, 10_000);
        assert_eq!(q.max, 10_000 * 1_000_003);
        let want = 5_000.0 * 1_000_003.0;
        assert!((q.p50 as f64 - want).abs() / want < 0.001, "{q:?}");
    }

    #[test]
    fn merge_adds_counts() {
        let (mut a, mut b) = (Recorder::new(), Recorder::new());
        a.record_n(10, 3);
        b.record_n(20, 1);
        b.record(0);
        a.merge(&b);
        let q = a.quantiles().unwrap();
        assert_eq!((q.count, q.p50, q.max), (5, 10, 20));
        a.record_n(7, 0);
        assert_eq!(a.count(), 5);
    }
}
