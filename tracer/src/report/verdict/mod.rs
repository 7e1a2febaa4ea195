//! The verdict on one process: the SRE's incident loop in one answer, from
//! its time series and its stacks.
//!
//! JSON contract (`processes[i].verdict`, additive to offheap.report.v1; later
//! versions add fields and kinds, never rename or remove these):
//! - `kind`: the main answer, one of `insufficient_data`, `no_growth`,
//!   `tracks_load`, `v8_heap_growth`, `off_heap_growth`,
//!   `allocator_retention` (see [`Kind`]);
//! - `headline`: that answer in one line, with its numbers;
//! - `growth`: each figure's change over the series (`shape::Growth`);
//! - `shape`: `{kind, detail}`, the rule in `shape.rs`;
//! - `culprit`: the top growing stack of the bucket(s) that grow, named by
//!   its first user frame (a JS function of the application, else an
//!   addon's function, else the first native frame past the allocator);
//! - `heap_limit`: for node, V8's effective heap limit against the
//!   container's (`heap_limit.rs`);
//! - `retention`: what the allocator holds beyond live blocks (malloc mode,
//!   glibc), or what cannot be known and how to find out (resident mode);
//! - `findings`: every kind that applies, the main one first, each
//!   `{kind, message}`; besides the main kinds, `heap_limit_exceeds_container`
//!   and `heap_limit_too_close`;
//! - `next_steps`: what to do, most useful first.
//!
//! Which kind is the main one: too few points is `insufficient_data`;
//! malloc mode's freed memory held by glibc, when significant (4 MiB and a
//! quarter of the arenas) and at least the larger growth of the V8 heap and
//! off-heap, is `allocator_retention` (live memory may well have come back
//! down: the RSS has not); a shape of `tracks_load` or `gives_back` is
//! `tracks_load` (not a leak); then the larger significant growth of
//! off-heap and V8 heap (`shape::significant`); else `no_growth`.
mod culprit;
pub mod heap_limit;
pub mod shape;

use serde::{Deserialize, Serialize};

use super::{
    fmt::{human_bytes, signed_bytes},
    Bucket, Mode, ProcessReport,
};
pub use culprit::{Culprit, CulpritKind};
pub use heap_limit::{Fit, HeapLimit, LimitSource};
pub use shape::{Growth, Shape, ShapeKind};

const MIB: u64 = 1 << 20;
/// Freed memory held by glibc matters from this much and this share of the
/// arenas' resident bytes.
const MIN_RETAINED: u64 = 4 * MIB;
const MIN_RETAINED_SHARE: f64 = 0.25;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Fewer than 3 points in the series.
    InsufficientData,
    NoGrowth,
    /// Memory follows traffic and comes back down: not a leak.
    TracksLoad,
    V8HeapGrowth,
    OffHeapGrowth,
    /// glibc holds freed memory: fragmentation, not a leak (malloc mode).
    AllocatorRetention,
    HeapLimitExceedsContainer,
    HeapLimitTooClose,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::InsufficientData,
        Kind::NoGrowth,
        Kind::TracksLoad,
        Kind::V8HeapGrowth,
        Kind::OffHeapGrowth,
        Kind::AllocatorRetention,
        Kind::HeapLimitExceedsContainer,
        Kind::HeapLimitTooClose,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::InsufficientData => "insufficient_data",
            Kind::NoGrowth => "no_growth",
            Kind::TracksLoad => "tracks_load",
            Kind::V8HeapGrowth => "v8_heap_growth",
            Kind::OffHeapGrowth => "off_heap_growth",
            Kind::AllocatorRetention => "allocator_retention",
            Kind::HeapLimitExceedsContainer => "heap_limit_exceeds_container",
            Kind::HeapLimitTooClose => "heap_limit_too_close",
        }
    }
}

/// What the allocator holds beyond the live blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    /// Whether this mode can tell (malloc mode on glibc).
    pub known: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arena_resident_bytes: Option<u64>,
    /// Freed memory glibc keeps resident, beyond the first point's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freed_held_bytes: Option<u64>,
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: Kind,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub kind: Kind,
    pub headline: String,
    pub growth: Growth,
    pub shape: Shape,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub culprit: Option<Culprit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap_limit: Option<HeapLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    pub findings: Vec<Finding>,
    pub next_steps: Vec<String>,
}

fn retention(p: &ProcessReport, mode: Mode) -> Option<Retention> {
    match mode {
        Mode::Resident => Some(Retention {
            known: false,
            arena_resident_bytes: None,
            freed_held_bytes: None,
            note: format!(
                "resident mode counts pages, not malloc calls: memory glibc keeps after free(3) \
                 looks live here; `offheap record --mode malloc --pid {}` (or `offheap run --mode \
                 malloc -- CMD`) measures it",
                p.pid
            ),
        }),
        Mode::Malloc => {
            let last = p
                .series
                .iter()
                .rev()
                .find(|s| s.arena_resident_bytes.is_some());
            let Some(last) = last else {
                return Some(Retention {
                    known: false,
                    arena_resident_bytes: None,
                    freed_held_bytes: None,
                    note: "the process does not use glibc's malloc (or had no interval yet): \
                           its allocator's retention is not measured"
                        .into(),
                });
            };
            let resident = last.arena_resident_bytes.unwrap_or(0);
            let freed = last.arena_free_bytes.unwrap_or(0);
            Some(Retention {
                known: true,
                arena_resident_bytes: Some(resident),
                freed_held_bytes: Some(freed),
                note: format!(
                    "glibc's arenas hold {} resident, of which {} is freed memory kept for reuse \
                     (counted from the first interval)",
                    human_bytes(resident),
                    human_bytes(freed)
                ),
            })
        }
    }
}

fn retention_matters(r: &Retention) -> bool {
    match (r.freed_held_bytes, r.arena_resident_bytes) {
        (Some(f), Some(res)) => f >= MIN_RETAINED && f as f64 >= MIN_RETAINED_SHARE * res as f64,
        _ => false,
    }
}

/// The off-heap buckets that make the off-heap growth (a tenth of it or
/// more), biggest first: `array_buffers +38.1 MiB, node_native +4.2 MiB`.
fn grown_buckets(g: &Growth) -> String {
    let mut v: Vec<(&str, i64)> = Bucket::ALL
        .iter()
        .filter(|b| b.is_off_heap())
        .map(|b| {
            (
                b.as_str(),
                g.by_bucket.get(b.as_str()).copied().unwrap_or(0),
            )
        })
        .filter(|(_, d)| *d > 0 && *d * 10 >= g.off_heap_bytes)
        .collect();
    v.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
    v.iter()
        .map(|(b, d)| format!("{b} {}", signed_bytes(*d)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn shape_phrase(s: &Shape) -> &'static str {
    match s.kind {
        ShapeKind::RetainedAfterLoad => "retained after traffic stopped",
        ShapeKind::Steady => "steady",
        ShapeKind::Bursty => "bursty",
        ShapeKind::TracksLoad => "tracks load",
        ShapeKind::GivesBack => "gives memory back",
        ShapeKind::Flat => "flat",
        ShapeKind::Unknown => "shape unknown",
    }
}

/// Judges one process of a report made in `mode`.
pub fn judge(p: &ProcessReport, mode: Mode) -> Verdict {
    let g = shape::growth(&p.series);
    let sh = shape::shape(&p.series);
    let base_rss = p.series.first().map_or(p.rss_bytes, |s| s.rss_bytes);
    let ret = retention(p, mode);
    let off_heap_peak = p
        .series
        .iter()
        .map(|s| s.buckets.off_heap())
        .chain([p.buckets.off_heap()])
        .max()
        .unwrap_or(0);
    let limit = p
        .limits
        .as_ref()
        .and_then(|l| heap_limit::heap_limit(l, off_heap_peak));
    let off = shape::significant(g.off_heap_bytes, base_rss);
    let v8 = shape::significant(g.v8_heap_bytes, base_rss);
    let retained = ret.as_ref().filter(|r| retention_matters(r));
    let largest_growth = g.off_heap_bytes.max(g.v8_heap_bytes).max(0);
    let kind = if p.series.len() < 3 {
        Kind::InsufficientData
    } else if retained.is_some_and(|r| r.freed_held_bytes.unwrap_or(0) as i64 >= largest_growth) {
        Kind::AllocatorRetention
    } else if matches!(sh.kind, ShapeKind::TracksLoad | ShapeKind::GivesBack) {
        Kind::TracksLoad
    } else if off && (!v8 || g.off_heap_bytes >= g.v8_heap_bytes) {
        Kind::OffHeapGrowth
    } else if v8 {
        Kind::V8HeapGrowth
    } else {
        Kind::NoGrowth
    };
    let culprit = match kind {
        Kind::OffHeapGrowth | Kind::AllocatorRetention => {
            culprit::culprit(&p.stacks, |b| b.is_off_heap())
        }
        Kind::V8HeapGrowth => culprit::culprit(&p.stacks, |b| b == Bucket::V8Heap),
        Kind::TracksLoad => culprit::culprit(&p.stacks, |_| true),
        _ => None,
    };
    let at = culprit
        .as_ref()
        .map(|c| format!(" · culprit {}", c.function))
        .unwrap_or_default();
    let secs = g.window_secs;
    let headline = match kind {
        Kind::InsufficientData => format!(
            "too few samples ({}) to judge the growth: trace for at least 3 intervals",
            p.series.len()
        ),
        Kind::NoGrowth => format!(
            "no significant growth over {secs:.0} s ({}): {}",
            shape_phrase(&sh),
            sh.detail
        ),
        Kind::TracksLoad => format!("tracks load, not a leak: {}{at}", sh.detail),
        Kind::OffHeapGrowth => format!(
            "off-heap grows: {} in {secs:.0} s ({}), {}{at}",
            signed_bytes(g.off_heap_bytes),
            grown_buckets(&g),
            shape_phrase(&sh)
        ),
        Kind::V8HeapGrowth => format!(
            "the V8 heap grows: {} in {secs:.0} s, {}{at}",
            signed_bytes(g.v8_heap_bytes),
            shape_phrase(&sh)
        ),
        Kind::AllocatorRetention => {
            let r = retained.expect("chosen because retention matters");
            format!(
                "glibc holds {} of freed memory ({} of its arenas are resident): fragmentation, \
                 not a leak",
                human_bytes(r.freed_held_bytes.unwrap_or(0)),
                human_bytes(r.arena_resident_bytes.unwrap_or(0))
            )
        }
        Kind::HeapLimitExceedsContainer | Kind::HeapLimitTooClose => unreachable!(),
    };
    let mut findings = vec![Finding {
        kind,
        message: headline.clone(),
    }];
    if kind != Kind::OffHeapGrowth && off && kind != Kind::TracksLoad {
        findings.push(Finding {
            kind: Kind::OffHeapGrowth,
            message: format!(
                "off-heap also grows: {} ({})",
                signed_bytes(g.off_heap_bytes),
                grown_buckets(&g)
            ),
        });
    }
    if kind != Kind::V8HeapGrowth && v8 && kind != Kind::TracksLoad {
        findings.push(Finding {
            kind: Kind::V8HeapGrowth,
            message: format!("the V8 heap also grows: {}", signed_bytes(g.v8_heap_bytes)),
        });
    }
    if let (Some(r), true) = (retained, kind != Kind::AllocatorRetention) {
        findings.push(Finding {
            kind: Kind::AllocatorRetention,
            message: format!(
                "glibc also holds {} of freed memory (fragmentation)",
                human_bytes(r.freed_held_bytes.unwrap_or(0))
            ),
        });
    }
    if let Some(h) = &limit {
        let k = match h.fit() {
            Fit::Exceeds => Some(Kind::HeapLimitExceedsContainer),
            Fit::TooClose => Some(Kind::HeapLimitTooClose),
            Fit::Fits => None,
        };
        if let Some(k) = k {
            findings.push(Finding {
                kind: k,
                message: h.describe(),
            });
        }
    }
    let next_steps = next_steps(p.pid, kind, culprit.as_ref(), limit.as_ref(), retained, &g);
    Verdict {
        kind,
        headline,
        growth: g,
        shape: sh,
        culprit,
        heap_limit: limit,
        retention: ret,
        findings,
        next_steps,
    }
}

fn next_steps(
    pid: u32,
    kind: Kind,
    culprit: Option<&Culprit>,
    limit: Option<&HeapLimit>,
    retained: Option<&Retention>,
    g: &Growth,
) -> Vec<String> {
    let mut out = Vec::new();
    let snapshot = format!(
        "take two heap snapshots minutes apart and compare them (Chrome DevTools, Memory tab): \
         start node with --heapsnapshot-signal=SIGUSR2, then run `kill -USR2 {pid}` each time \
         (node writes Heap.*.heapsnapshot in its working directory)"
    );
    match kind {
        Kind::InsufficientData => out.push("trace longer: at least 3 intervals".into()),
        Kind::NoGrowth => out.push(
            "nothing grows over this trace: trace under load, for longer, or compare two \
             reports with `offheap diff BEFORE.json AFTER.json`"
                .into(),
        ),
        Kind::TracksLoad => out.push(format!(
            "not a leak: size the container for the peak ({} tracked at the busiest)",
            human_bytes(g.peak_bytes)
        )),
        Kind::V8HeapGrowth => {
            out.push(snapshot);
            out.push(
                "raising --max-old-space-size only delays the crash of a heap that keeps \
                 growing"
                    .into(),
            );
        }
        Kind::OffHeapGrowth => {
            let site =
                culprit.map_or_else(|| "the top stack below".to_string(), |c| c.function.clone());
            out.push(format!(
                "bound the cache or stream the payload at {site}: what it keeps is {}, which \
                 heapUsed does not show",
                culprit.map_or("off the V8 heap", |c| c.bucket.as_str())
            ));
            if culprit.is_some_and(|c| c.bucket == Bucket::ArrayBuffers) {
                out.push(format!(
                    "to see which JS objects keep the Buffers alive, {snapshot}: look at the \
                     retainers of ArrayBuffer / Uint8Array"
                ));
            }
            out.push(
                "raising --max-old-space-size will not help: the growth is off the V8 heap".into(),
            );
        }
        Kind::AllocatorRetention => out.push(format!(
            "glibc holds {} of freed memory: fragmentation, not a leak; try \
             MALLOC_ARENA_MAX=2, or jemalloc (LD_PRELOAD=libjemalloc.so.2)",
            human_bytes(retained.and_then(|r| r.freed_held_bytes).unwrap_or(0))
        )),
        Kind::HeapLimitExceedsContainer | Kind::HeapLimitTooClose => {}
    }
    if let Some(h) = limit.filter(|h| h.fit() != Fit::Fits) {
        if let Some(mib) = h.advised_old_space_mib() {
            out.push(format!(
                "set --max-old-space-size to at most {mib} (75% of the container limit, less \
                 the off-heap memory and the young generation), or raise the container limit"
            ));
        }
    }
    out
}

/// The verdict for a person, first line its headline: the other findings,
/// the heap limit, the retention note, then the next steps.
pub fn lines(v: &Verdict) -> Vec<String> {
    let mut out = vec![v.headline.clone()];
    for f in v.findings.iter().skip(1) {
        out.push(format!("also: {}", f.message));
    }
    if let Some(h) = v.heap_limit.as_ref().filter(|h| h.fit() == Fit::Fits) {
        out.push(h.describe());
    }
    if let Some(r) = &v.retention {
        if v.kind != Kind::AllocatorRetention {
            out.push(r.note.clone());
        }
    }
    if !matches!(v.shape.kind, ShapeKind::Unknown) && v.kind != Kind::TracksLoad {
        out.push(format!("shape: {}", v.shape.detail));
    }
    for s in &v.next_steps {
        out.push(format!("next: {s}"));
    }
    out
}

#[cfg(test)]
mod tests;
