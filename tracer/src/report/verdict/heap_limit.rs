//! V8's effective heap limit, and whether it fits the container.
//!
//! The limit is the old generation's plus the young generation's (what
//! `v8.getHeapStatistics().heap_size_limit` reports). Without flags node
//! sizes both from the memory it may use: the host's, or the cgroup's limit
//! when lower (node's SetIsolateCreateParamsForNode calls
//! ResourceConstraints::ConfigureDefaults with uv_get_constrained_memory).
//! V8 11 (node 20), x64 without pointer compression (node's builds), does:
//! - old generation: half the memory, at least 256 MiB, at most 2 GiB, or
//!   4 GiB on hosts with 16 GiB or more (Heap::HeapSizeFromPhysicalMemory,
//!   MaxOldGenerationSize), rounded down to V8's 256 KiB pages;
//! - a semi-space: the old generation / 256 up to 256 MiB of it, else / 128,
//!   between 1 and 16 MiB, rounded up to a power of two (ConfigureHeap);
//!   the young generation is three of them (two semi-spaces and the new
//!   large object space).
//!
//! `--max-old-space-size=N` replaces the old generation's figure and
//! `--max-semi-space-size=N` the semi-space's. Checked on this project's
//! machine against heap_size_limit for limits from 64 MiB to 20 GiB, with
//! and without the flags; other node versions may differ in the young
//! generation by a few MiB.
use serde::{Deserialize, Serialize};

use super::super::{fmt::human_bytes, FlagSource, MemoryLimits};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const V8_PAGE: u64 = 256 << 10;
/// Above this share of the container's limit the heap leaves too little room
/// for everything off it (Buffers, native code, thread stacks).
pub const MAX_SHARE: f64 = 0.75;

/// Where the heap limit comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitSource {
    CommandLine,
    NodeOptions,
    /// V8's default for the memory node may use.
    V8Default,
}

/// The effective V8 heap limit of a node process, against its container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeapLimit {
    /// Old plus young generation: V8's heap_size_limit.
    pub heap_limit_bytes: u64,
    pub old_space_bytes: u64,
    pub young_bytes: u64,
    pub source: LimitSource,
    /// The cgroup's effective limit (None: none set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_limit_bytes: Option<u64>,
    /// The most memory off the V8 heap seen (buckets other than v8_heap).
    pub off_heap_bytes: u64,
}

/// How the limit compares with the container's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    /// Heap limit plus off-heap exceed the container's limit: the kernel
    /// kills the process before V8 feels pressure.
    Exceeds,
    /// The heap limit alone is above MAX_SHARE of the container's limit.
    TooClose,
    Fits,
}

/// The old generation V8 chooses for `memory` bytes.
fn default_old(memory: u64) -> u64 {
    let max = if (memory + 512 * MIB) / GIB >= 16 {
        4 * GIB
    } else {
        2 * GIB
    };
    (memory / 2).clamp(256 * MIB, max) / V8_PAGE * V8_PAGE
}

/// One semi-space for an old generation of `old` bytes.
fn default_semi(old: u64) -> u64 {
    let ratio = if old <= 256 * MIB { 256 } else { 128 };
    (old / ratio).clamp(MIB, 16 * MIB).next_power_of_two()
}

/// The heap limit of a node process; None for other processes or when the
/// host's memory is unknown.
pub fn heap_limit(l: &MemoryLimits, off_heap_bytes: u64) -> Option<HeapLimit> {
    if !l.node || l.host_memory_bytes == 0 {
        return None;
    }
    let memory = match l.cgroup_limit_bytes {
        Some(c) if c < l.host_memory_bytes => c,
        _ => l.host_memory_bytes,
    };
    let old_default = default_old(memory);
    let (old, source) = match l.max_old_space_size {
        Some(f) => (
            f.mib * MIB,
            match f.from {
                FlagSource::CommandLine => LimitSource::CommandLine,
                FlagSource::NodeOptions => LimitSource::NodeOptions,
            },
        ),
        None => (old_default, LimitSource::V8Default),
    };
    let semi = match l.max_semi_space_size {
        Some(f) => (f.mib * MIB).next_power_of_two(),
        None => default_semi(old_default),
    };
    Some(HeapLimit {
        heap_limit_bytes: old + 3 * semi,
        old_space_bytes: old,
        young_bytes: 3 * semi,
        source,
        container_limit_bytes: l.cgroup_limit_bytes,
        off_heap_bytes,
    })
}

impl HeapLimit {
    pub fn fit(&self) -> Fit {
        let Some(limit) = self.container_limit_bytes else {
            return Fit::Fits;
        };
        if self.heap_limit_bytes + self.off_heap_bytes > limit {
            Fit::Exceeds
        } else if self.heap_limit_bytes as f64 > MAX_SHARE * limit as f64 {
            Fit::TooClose
        } else {
            Fit::Fits
        }
    }

    fn source_phrase(&self) -> String {
        let flag = format!("--max-old-space-size={}", self.old_space_bytes / MIB);
        match self.source {
            LimitSource::CommandLine => format!("{flag} on the command line"),
            LimitSource::NodeOptions => format!("{flag} in NODE_OPTIONS"),
            LimitSource::V8Default => "V8's default for this memory".to_string(),
        }
    }

    /// One line for any fit: `V8 heap limit 243.0 MiB (…) against …`.
    pub fn describe(&self) -> String {
        let base = format!(
            "V8 heap limit {} ({}, young generation {})",
            human_bytes(self.heap_limit_bytes),
            self.source_phrase(),
            human_bytes(self.young_bytes)
        );
        let Some(limit) = self.container_limit_bytes else {
            return format!("{base}; no container memory limit");
        };
        match self.fit() {
            Fit::Exceeds => format!(
                "{base} + off-heap {} = {} exceeds the container limit {}: the kernel kills \
                 the process before V8 feels any pressure",
                human_bytes(self.off_heap_bytes),
                human_bytes(self.heap_limit_bytes + self.off_heap_bytes),
                human_bytes(limit)
            ),
            Fit::TooClose => format!(
                "{base} is {:.0}% of the container limit {}: above {:.0}%, too little is left \
                 for memory off the V8 heap",
                self.heap_limit_bytes as f64 * 100.0 / limit as f64,
                human_bytes(limit),
                MAX_SHARE * 100.0
            ),
            Fit::Fits => format!(
                "{base} fits the container limit {} with off-heap {}",
                human_bytes(limit),
                human_bytes(self.off_heap_bytes)
            ),
        }
    }

    /// The --max-old-space-size that leaves the off-heap memory and a
    /// quarter of the container for the rest, in MiB.
    pub fn advised_old_space_mib(&self) -> Option<u64> {
        let limit = self.container_limit_bytes? as f64;
        let room = MAX_SHARE * limit - self.off_heap_bytes as f64 - self.young_bytes as f64;
        Some((room.max(0.0) as u64) / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::SizeFlag;

    fn limits(host_mib: u64, cgroup_mib: Option<u64>, old: Option<u64>) -> MemoryLimits {
        MemoryLimits {
            node: true,
            host_memory_bytes: host_mib * MIB,
            cgroup_limit_bytes: cgroup_mib.map(|c| c * MIB),
            max_old_space_size: old.map(|mib| SizeFlag {
                mib,
                from: FlagSource::CommandLine,
            }),
            ..MemoryLimits::default()
        }
    }

    /// heap_size_limit as node 20.20 printed it on this project's 24 GiB
    /// machine, in cgroups of these limits (MiB), without and with
    /// --max-old-space-size=50.
    #[test]
    fn limits_match_what_node_20_reports() {
        let measured: &[(u64, u64, u64)] = &[
            (64, 259, 53),
            (512, 259, 53),
            (600, 312, 62),
            (1024, 524, 62),
            (1500, 774, 74),
            (2048, 1048, 74),
            (3000, 1548, 98),
            (4096, 2096, 98),
            (8192, 2096, 98),
            (15872, 4144, 98),
            (20000, 4144, 98),
        ];
        for &(cgroup, default, flag50) in measured {
            let got = |old| {
                heap_limit(&limits(24105, Some(cgroup), old), 0)
                    .unwrap()
                    .heap_limit_bytes
                    / MIB
            };
            assert_eq!(got(None), default, "cgroup {cgroup} MiB");
            assert_eq!(got(Some(50)), flag50, "cgroup {cgroup} MiB, flag 50");
        }
        // No cgroup limit: the host's 24 GiB.
        assert_eq!(
            heap_limit(&limits(24105, None, None), 0)
                .unwrap()
                .heap_limit_bytes
                / MIB,
            4144
        );
        let mut semi = limits(24105, None, None);
        semi.max_semi_space_size = Some(SizeFlag {
            mib: 4,
            from: FlagSource::CommandLine,
        });
        assert_eq!(heap_limit(&semi, 0).unwrap().heap_limit_bytes / MIB, 4108);
        assert!(heap_limit(&MemoryLimits::default(), 0).is_none());
    }

    #[test]
    fn fit_against_the_container() {
        let h = |old, off| heap_limit(&limits(24105, Some(256), Some(old)), off * MIB).unwrap();
        // 100 + 3 young + 20 off-heap in 256: fits, under 75%.
        assert_eq!(h(100, 20).fit(), Fit::Fits);
        // 200 + 3 = 203 > 192 (75%), + 20 < 256.
        assert_eq!(h(200, 20).fit(), Fit::TooClose);
        assert_eq!(h(240, 20).fit(), Fit::Exceeds);
        let d = h(240, 20).describe();
        assert!(d.contains("243.0 MiB") && d.contains("256.0 MiB"), "{d}");
        assert_eq!(h(240, 20).advised_old_space_mib(), Some(169));
        let free = heap_limit(&limits(24105, None, Some(100)), 0).unwrap();
        assert_eq!(free.fit(), Fit::Fits);
    }
}
