//! What the resident model gives out: its stacks, a cheap snapshot per
//! interval, and the end-of-trace process with its preexisting lines and the
//! reconciliation with RSS.
use std::collections::VecDeque;

use super::{procfs, Classifier, Measure, Resident, SkipLookup, PAGE};
use crate::accounting::dist;
use crate::report::raw::{RawProcess, RawStack};
use crate::report::{Attribution, PreexistingLine};

impl Resident {
    /// Every stack with resident pages at some sample, as of the last sample.
    pub fn raw_stacks(&self) -> Vec<RawStack> {
        self.stacks
            .iter()
            .filter(|s| s.peak_pages > 0)
            .map(|s| RawStack {
                ips: s.ips.clone(),
                // A first-touch stack starts at the faulting instruction; a
                // mapping's stack starts after the mmap `syscall` instruction,
                // a return address like the others.
                leaf_is_ip: s.attribution == Attribution::FirstTouch,
                live_bytes: s.pages * PAGE,
                live_allocs: s.pages,
                total_bytes: s.peak_pages * PAGE,
                total_allocs: s.events,
                attribution: Some(s.attribution),
                growth_bytes_per_sec: growth(&s.history),
                sizes: dist::quantiles(
                    &s.map_sizes
                        .iter()
                        .map(|(b, n)| (*b, *n))
                        .collect::<Vec<_>>(),
                ),
                lifetimes_ns: None,
                bucket: (s.folded > 0).then_some(s.bucket).flatten(),
                folded_stacks: s.folded,
                truncated: s.truncated,
                reserved_resident: None,
            })
            .collect()
    }

    /// The model as of the last sample, without the end-of-trace extras
    /// (preexisting lines, reconciliation): cheap enough for every interval
    /// of the live view.
    pub fn snapshot(&self) -> RawProcess {
        RawProcess {
            pid: self.pid,
            rss_bytes: self.last.as_ref().map_or(0, |m| m.rss_bytes),
            exited: self.exited,
            stacks: self.raw_stacks(),
            series: self.series.clone(),
            ..RawProcess::default()
        }
    }

    /// The last sample, if any.
    pub fn last(&self) -> Option<&Measure> {
        self.last.as_ref()
    }

    /// Takes a last sample (if the process still lives) and returns the raw
    /// per-stack model, with the preexisting lines and the reconciliation.
    /// A process that exited before its first sample gets the pages it
    /// touched instead (`count_touched`; `skip` reads `fault_skip`).
    pub fn finish(
        &mut self,
        classify: &mut Classifier<'_>,
        skip: &mut SkipLookup<'_>,
    ) -> RawProcess {
        if !self.sample(classify) && self.last.is_none() && self.exited {
            self.count_touched(skip, classify);
        }
        let m = self.last.clone().unwrap_or_default();
        // Per file while the process lives; after its exit only the total of
        // the last sample is known.
        let file_lines = match procfs::file_rss_by_path(self.pid) {
            Ok(l) if !self.exited => l,
            _ if m.file_bytes > 0 => vec![(
                "file-backed (per file: unknown, exited)".to_string(),
                m.file_bytes,
            )],
            _ => Vec::new(),
        };
        let mut preexisting: Vec<PreexistingLine> = self
            .kinds
            .iter()
            .zip(&m.preexisting)
            .filter(|(_, b)| **b > 0)
            .map(|(k, b)| PreexistingLine {
                kind: k.clone(),
                bytes: *b,
            })
            .collect();
        let pre_anon: u64 = preexisting.iter().map(|l| l.bytes).sum();
        let file_bytes: u64 = file_lines.iter().map(|(_, b)| b).sum();
        preexisting.extend(
            file_lines
                .into_iter()
                .map(|(kind, bytes)| PreexistingLine { kind, bytes }),
        );
        preexisting.sort_by_key(|l| std::cmp::Reverse(l.bytes));
        let stacks = self.raw_stacks();
        RawProcess {
            pid: self.pid,
            comm: std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
                .map(|c| c.trim().to_string())
                .unwrap_or_default(),
            exe: std::fs::read_link(format!("/proc/{}/exe", self.pid))
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            rss_bytes: m.rss_bytes,
            exited: self.exited,
            stacks,
            series: self.series.clone(),
            reconciliation: Some(if self.touched_only {
                touched_note(&m, self.weight)
            } else {
                reconcile(&m, pre_anon, file_bytes, self.exited, self.weight)
            }),
            preexisting,
            cgroup: None,
            limits: None,
        }
    }
}

/// Bytes per second over the window (None before two samples).
fn growth(h: &VecDeque<(f64, u64)>) -> Option<f64> {
    let (t0, p0) = *h.front()?;
    let (t1, p1) = *h.back()?;
    (t1 > t0).then(|| (p1 as f64 - p0 as f64) * PAGE as f64 / (t1 - t0))
}

/// The reconciliation line of a process that exited before its first
/// sample: no RSS was read, the stacks hold the pages it touched.
fn touched_note(m: &Measure, weight: u64) -> String {
    let sampling = if weight > 1 {
        format!("; first-touch pages sampled 1 in {weight}, each counted {weight} times")
    } else {
        String::new()
    };
    format!(
        "exited before its first sample: no RSS read; stacks {:.1} MiB are the pages it \
         touched (faults seen by the tracer, unmapped ones included){sampling}",
        m.attributed_bytes as f64 / (1 << 20) as f64,
    )
}

fn reconcile(m: &Measure, pre_anon: u64, file: u64, exited: bool, weight: u64) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let sum = m.attributed_bytes + pre_anon + file;
    let diff = m.rss_bytes as f64 - sum as f64;
    let pct = if m.rss_bytes > 0 {
        100.0 * diff.abs() / m.rss_bytes as f64
    } else {
        0.0
    };
    let sampling = if weight > 1 {
        format!("; first-touch pages sampled 1 in {weight}, each counted {weight} times")
    } else {
        String::new()
    };
    format!(
        "RSS {:.1} MiB at t={:.1}s{}: stacks {:.1} MiB + preexisting anonymous {:.1} MiB + \
         file-backed {:.1} MiB = {:.1} MiB, {} by {:.1} MiB ({:.1}%, {} 5%){sampling}",
        mib(m.rss_bytes),
        m.t_secs,
        if exited {
            " (last sample before exit)"
        } else {
            ""
        },
        mib(m.attributed_bytes),
        mib(pre_anon),
        mib(file),
        mib(sum),
        if diff >= 0.0 { "under" } else { "over" },
        diff.abs() / (1 << 20) as f64,
        pct,
        if pct <= 5.0 { "within" } else { "NOT within" },
    )
}
