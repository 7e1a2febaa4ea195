//! The little statistics the bench needs, and reading the workload's self-timing.

/// Median of the samples (mean of the middle two for an even count); None when empty.
pub fn median(samples: &[f64]) -> Option<f64> {
    quantile(samples, 0.5)
}

/// The q-quantile of the samples, interpolated between the two nearest
/// (q = 0.5 is the median); None when empty.
pub fn quantile(samples: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    let next = v.get(i + 1).copied().unwrap_or(v[i]);
    Some(v[i] + (next - v[i]) * frac)
}

/// The workload's own timing: the last `alloc-loop: elapsed_ms=<ms>` line of its stdout.
pub fn parse_elapsed_ms(stdout: &str) -> Option<f64> {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("alloc-loop: elapsed_ms="))
        .and_then(|v| v.trim().parse().ok())
}

/// bpftrace's `@n: 1234` line, printed when it exits.
pub fn parse_bpftrace_count(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("@n:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn quartiles() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(quantile(&v, 0.25), Some(2.0));
        assert_eq!(quantile(&v, 0.75), Some(4.0));
        assert_eq!(quantile(&[1.0, 2.0], 0.25), Some(1.25));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&v, 1.0), Some(5.0));
    }

    #[test]
    fn workload_and_bpftrace_output() {
        let out = "alloc-loop: iterations=4000 sink=1\nalloc-loop: elapsed_ms=683.4\n";
        assert_eq!(parse_elapsed_ms(out), Some(683.4));
        assert_eq!(parse_elapsed_ms("nothing here\n"), None);
        let bt = "Attaching 3 probes...\nready\n\n\n@n: 1299150\n";
        assert_eq!(parse_bpftrace_count(bt), Some(1_299_150));
    }
}
