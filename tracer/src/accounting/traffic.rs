//! Traffic per interval: the connections each target accepted and the bytes
//! it received on sockets, from the `traffic` map (traffic.bpf.c: per-CPU
//! running totals per tgid, since the tgid's entry was made). This module is
//! the map's one reader: each interval it sums the CPUs, hands out the
//! difference with the previous interval, and deletes the entries of
//! processes that are no longer live targets, so that a pid reused later
//! starts from zero.
use std::collections::HashMap;

use aya::{
    maps::{MapError, PerCpuHashMap},
    Ebpf,
};
use tracer_common::{maps, TrafficCounts};

use crate::probes::is_not_found;

/// What one target received during one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interval {
    pub accepted_connections: u64,
    pub received_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error("BPF map traffic is missing from the object")]
    MissingMap,
    #[error("reading BPF map traffic")]
    Map(#[source] MapError),
}

/// The running totals seen at the previous interval, per target.
#[derive(Debug, Default)]
pub struct Traffic {
    seen: HashMap<u32, TrafficCounts>,
}

impl Traffic {
    /// The traffic of every pid of `live` since the previous call (for a
    /// pid's first call: since it became a target). Pids seen before and
    /// absent now are forgotten, here and in the kernel.
    pub fn interval(
        &mut self,
        ebpf: &mut Ebpf,
        live: &[u32],
    ) -> Result<HashMap<u32, Interval>, TrafficError> {
        let map = ebpf
            .map_mut(maps::TRAFFIC)
            .ok_or(TrafficError::MissingMap)?;
        let mut counts: PerCpuHashMap<_, u32, TrafficCounts> =
            PerCpuHashMap::try_from(map).map_err(TrafficError::Map)?;
        let mut out = HashMap::with_capacity(live.len());
        for &pid in live {
            let now = match counts.get(&pid, 0) {
                Ok(per_cpu) => sum(per_cpu.iter()),
                // No socket read or accept yet.
                Err(e) if is_not_found(&e) => TrafficCounts::default(),
                Err(e) => return Err(TrafficError::Map(e)),
            };
            let before = self.seen.insert(pid, now).unwrap_or_default();
            out.insert(pid, difference(before, now));
        }
        let gone: Vec<u32> = self
            .seen
            .keys()
            .filter(|p| !live.contains(p))
            .copied()
            .collect();
        for pid in gone {
            self.seen.remove(&pid);
            match counts.remove(&pid) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(TrafficError::Map(e)),
            }
        }
        Ok(out)
    }
}

fn sum<'a>(per_cpu: impl Iterator<Item = &'a TrafficCounts>) -> TrafficCounts {
    per_cpu.fold(TrafficCounts::default(), |a, c| TrafficCounts {
        accepted: a.accepted + c.accepted,
        received_bytes: a.received_bytes + c.received_bytes,
    })
}

/// The counts added since `before`. Totals only grow while an entry lives;
/// smaller ones mean the entry was made anew (a target left and came back
/// within one interval), whose totals are all new.
fn difference(before: TrafficCounts, now: TrafficCounts) -> Interval {
    if now.accepted < before.accepted || now.received_bytes < before.received_bytes {
        return Interval {
            accepted_connections: now.accepted,
            received_bytes: now.received_bytes,
        };
    }
    Interval {
        accepted_connections: now.accepted - before.accepted,
        received_bytes: now.received_bytes - before.received_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(accepted: u64, received_bytes: u64) -> TrafficCounts {
        TrafficCounts {
            accepted,
            received_bytes,
        }
    }

    #[test]
    fn cpus_add_up_and_intervals_are_differences() {
        assert_eq!(sum([c(1, 10), c(2, 20)].iter()), c(3, 30));
        assert_eq!(
            difference(c(3, 30), c(5, 100)),
            Interval {
                accepted_connections: 2,
                received_bytes: 70
            }
        );
        // An entry made anew: everything in it is new.
        assert_eq!(
            difference(c(3, 30), c(1, 5)),
            Interval {
                accepted_connections: 1,
                received_bytes: 5
            }
        );
    }
}
