//! Where a process's memory grew over its time series, and the shape of
//! that growth.
//!
//! Growth is each figure's last point less its first. The shape is judged
//! on the tracked memory (every bucket: the V8 heap and everything off it),
//! by these rules, in order:
//! - fewer than 3 points: `unknown`;
//! - it never rose by a significant amount above its first point
//!   (`significant`: at least 4 MiB and 5% of the first RSS): `flat`;
//! - traffic stopped (the series carries traffic, some interval had some,
//!   and at least the last 2 intervals had at most a tenth of the busiest
//!   one's): `tracks_load` when the memory gave back at least half of its
//!   rise (peak less first point) by the last point, else
//!   `retained_after_load`;
//! - no such traffic signal: `gives_back` when it gave back at least half of
//!   its rise; else `bursty` when one interval brought at least half of all
//!   the increases; else `steady`.
use serde::{Deserialize, Serialize};

use super::super::{
    fmt::{human_bytes, signed_bytes},
    Bucket, SeriesPoint,
};

const MIB: u64 = 1 << 20;
/// Growth below this is noise (allocator and GC churn).
const MIN_GROWTH: u64 = 4 * MIB;
/// Intervals with traffic at most this share of the busiest are quiet.
const QUIET_SHARE: f64 = 0.1;
/// Quiet intervals at the end that make "traffic stopped".
const QUIET_TAIL: usize = 2;

/// Each figure's change from the first point to the last.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Growth {
    pub window_secs: f64,
    pub points: usize,
    pub rss_bytes: i64,
    pub v8_heap_bytes: i64,
    pub off_heap_bytes: i64,
    /// Every bucket's change, by name.
    pub by_bucket: std::collections::BTreeMap<String, i64>,
    /// The most memory tracked (all buckets) at any point.
    pub peak_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShapeKind {
    Unknown,
    Flat,
    Steady,
    Bursty,
    GivesBack,
    TracksLoad,
    RetainedAfterLoad,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    pub kind: ShapeKind,
    /// The figures behind it, for a person.
    pub detail: String,
}

/// Whether a change of `bytes` matters for a process that started at
/// `base_rss`.
pub fn significant(bytes: i64, base_rss: u64) -> bool {
    bytes > 0 && bytes as u64 >= MIN_GROWTH.max(base_rss / 20)
}

fn delta(a: u64, b: u64) -> i64 {
    b as i64 - a as i64
}

pub fn growth(series: &[SeriesPoint]) -> Growth {
    let (Some(first), Some(last)) = (series.first(), series.last()) else {
        return Growth::default();
    };
    Growth {
        window_secs: last.t_secs - first.t_secs,
        points: series.len(),
        rss_bytes: delta(first.rss_bytes, last.rss_bytes),
        v8_heap_bytes: delta(first.buckets.v8_heap, last.buckets.v8_heap),
        off_heap_bytes: delta(first.buckets.off_heap(), last.buckets.off_heap()),
        by_bucket: Bucket::ALL
            .iter()
            .map(|b| {
                (
                    b.as_str().to_string(),
                    delta(first.buckets.get(*b), last.buckets.get(*b)),
                )
            })
            .collect(),
        peak_bytes: series.iter().map(|p| p.buckets.total()).max().unwrap_or(0),
    }
}

/// Traffic of one interval per second: bytes received, or connections when
/// no bytes were counted at all; None without traffic figures.
fn traffic_rates(series: &[SeriesPoint]) -> Option<(Vec<f64>, &'static str)> {
    if series.iter().all(|p| p.received_bytes.is_none()) {
        return None;
    }
    let bytes = series.iter().any(|p| p.received_bytes.unwrap_or(0) > 0);
    let mut out = Vec::with_capacity(series.len());
    for (i, p) in series.iter().enumerate() {
        let dt = if i == 0 {
            p.t_secs.max(1e-3)
        } else {
            (p.t_secs - series[i - 1].t_secs).max(1e-3)
        };
        let v = if bytes {
            p.received_bytes.unwrap_or(0)
        } else {
            p.accepted_connections.unwrap_or(0)
        };
        out.push(v as f64 / dt);
    }
    Some((
        out,
        if bytes {
            "B/s received"
        } else {
            "connections/s"
        },
    ))
}

pub fn shape(series: &[SeriesPoint]) -> Shape {
    let shape = |kind, detail: String| Shape { kind, detail };
    if series.len() < 3 {
        return shape(
            ShapeKind::Unknown,
            format!("{} points: too few to tell", series.len()),
        );
    }
    let m: Vec<u64> = series.iter().map(|p| p.buckets.total()).collect();
    let (first, last) = (m[0], m[m.len() - 1]);
    let (peak_i, peak) = m
        .iter()
        .enumerate()
        .max_by_key(|(_, v)| **v)
        .map(|(i, v)| (i, *v))
        .unwrap_or((0, first));
    let rise = delta(first, peak);
    if !significant(rise, series[0].rss_bytes) {
        return shape(
            ShapeKind::Flat,
            format!(
                "tracked memory stayed within {} of its first point",
                human_bytes(rise.max(0) as u64)
            ),
        );
    }
    let back = peak - last;
    let back_share = back as f64 / rise as f64;
    let rates = traffic_rates(series);
    // Without traffic figures (a kernel without the traffic tracepoint, an
    // older report) load cannot be told from a leak: said, not guessed.
    let no_traffic = |s: Shape| match &rates {
        Some(_) => s,
        None => Shape {
            detail: format!("{}; no traffic data", s.detail),
            ..s
        },
    };
    if let Some((rates, unit)) = &rates {
        let busiest = rates.iter().cloned().fold(0.0, f64::max);
        let quiet = rates
            .iter()
            .rev()
            .take_while(|r| **r <= QUIET_SHARE * busiest)
            .count();
        if busiest > 0.0 && quiet >= QUIET_TAIL && quiet < rates.len() {
            let stopped_at = series[series.len() - quiet].t_secs;
            let quiet_secs = series[series.len() - 1].t_secs - stopped_at;
            let busy = format!(
                "rose {} under traffic (busiest interval {:.0} {unit})",
                human_bytes(rise as u64),
                busiest
            );
            return if back_share >= 0.5 {
                shape(
                    ShapeKind::TracksLoad,
                    format!(
                        "{busy}, gave back {:.0}% of it in the {quiet_secs:.0} s after traffic stopped",
                        back_share * 100.0
                    ),
                )
            } else {
                shape(
                    ShapeKind::RetainedAfterLoad,
                    format!(
                        "{busy}, still holds {} ({:.0}%) {quiet_secs:.0} s after traffic stopped",
                        human_bytes(delta(first, last).max(0) as u64),
                        (1.0 - back_share) * 100.0
                    ),
                )
            };
        }
    }
    if back_share >= 0.5 {
        return no_traffic(shape(
            ShapeKind::GivesBack,
            format!(
                "rose {} by {:.1} s, then gave back {:.0}% of it",
                human_bytes(rise as u64),
                series[peak_i].t_secs,
                back_share * 100.0
            ),
        ));
    }
    let ups: Vec<(usize, u64)> = m
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[1] > w[0])
        .map(|(i, w)| (i + 1, w[1] - w[0]))
        .collect();
    let total_up: u64 = ups.iter().map(|(_, d)| d).sum();
    let (big_i, big) = ups
        .iter()
        .copied()
        .max_by_key(|(_, d)| *d)
        .unwrap_or((0, 0));
    let secs = series[series.len() - 1].t_secs - series[0].t_secs;
    no_traffic(if big * 2 >= total_up {
        shape(
            ShapeKind::Bursty,
            format!(
                "{} of its {} rise came in one interval (at {:.1} s)",
                human_bytes(big),
                human_bytes(total_up),
                series[big_i].t_secs
            ),
        )
    } else {
        shape(
            ShapeKind::Steady,
            format!(
                "grew in {} of {} intervals, {}/s on average",
                ups.len(),
                m.len() - 1,
                signed_bytes((delta(first, last) as f64 / secs.max(1e-3)) as i64)
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Buckets;

    fn point(t: f64, ab_mib: u64, bytes: Option<u64>) -> SeriesPoint {
        SeriesPoint {
            t_secs: t,
            rss_bytes: 50 * MIB,
            buckets: Buckets {
                array_buffers: ab_mib * MIB,
                ..Buckets::default()
            },
            received_bytes: bytes,
            accepted_connections: bytes.map(|b| b / 100),
            ..SeriesPoint::default()
        }
    }

    fn series(ab: &[u64], traffic: &[u64]) -> Vec<SeriesPoint> {
        ab.iter()
            .enumerate()
            .map(|(i, v)| point(i as f64 + 1.0, *v, traffic.get(i).copied()))
            .collect()
    }

    #[test]
    fn shapes_by_the_documented_rules() {
        let t = [0, 5000, 5000, 5000, 0, 0, 0];
        let kind = |ab: &[u64], tr: &[u64]| shape(&series(ab, tr)).kind;
        assert_eq!(
            kind(&[10, 30, 50, 70, 70, 70, 70], &t),
            ShapeKind::RetainedAfterLoad
        );
        assert_eq!(
            kind(&[10, 30, 50, 70, 40, 20, 12], &t),
            ShapeKind::TracksLoad
        );
        assert_eq!(kind(&[10, 11, 10, 12, 11, 10, 11], &t), ShapeKind::Flat);
        // No traffic figures.
        assert_eq!(kind(&[10, 20, 30, 40, 50, 60, 70], &[]), ShapeKind::Steady);
        assert_eq!(kind(&[10, 10, 60, 61, 62, 62, 63], &[]), ShapeKind::Bursty);
        assert_eq!(
            kind(&[10, 40, 70, 40, 20, 15, 12], &[]),
            ShapeKind::GivesBack
        );
        // Traffic that never stops is no signal.
        let busy = [5000; 7];
        assert_eq!(
            kind(&[10, 20, 30, 40, 50, 60, 70], &busy),
            ShapeKind::Steady
        );
        assert_eq!(kind(&[10, 20], &[]), ShapeKind::Unknown);
        let d = shape(&series(&[10, 30, 50, 70, 70, 70, 70], &t)).detail;
        assert!(d.contains("rose 60.0 MiB under traffic"), "{d}");
        assert!(d.contains("still holds 60.0 MiB (100%) 2 s after"), "{d}");
        // Without traffic figures the shape says so; with them it does not.
        let d = shape(&series(&[10, 20, 30, 40, 50, 60, 70], &[])).detail;
        assert_eq!(
            d,
            "grew in 6 of 6 intervals, +10.0 MiB/s on average; no traffic data"
        );
        let d = shape(&series(&[10, 20, 30, 40, 50, 60, 70], &busy)).detail;
        assert!(!d.contains("no traffic data"), "{d}");
    }

    #[test]
    fn growth_per_bucket() {
        let g = growth(&series(&[10, 30, 25], &[]));
        assert_eq!(g.off_heap_bytes, 15 * MIB as i64);
        assert_eq!(g.by_bucket["array_buffers"], 15 * MIB as i64);
        assert_eq!(g.by_bucket["v8_heap"], 0);
        assert_eq!(g.peak_bytes, 30 * MIB);
        assert_eq!((g.window_secs, g.points), (2.0, 3));
        assert!(significant(4 * MIB as i64, 50 * MIB));
        assert!(!significant(4 * MIB as i64, 200 * MIB), "5% of the RSS");
    }
}
