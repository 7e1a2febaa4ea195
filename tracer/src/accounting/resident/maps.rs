//! Owner of resident mode's BPF maps (fault.bpf.c): drains `fault_events`
//! into the per-process models and resolves fault stack ids (`hashed_stacks`).
use std::{
    collections::HashMap,
    os::fd::{AsRawFd, RawFd},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, RingBuf},
    Ebpf,
};
use tracer_common::{
    maps, resident_event_kind, EventHeader, FaultConfig, FaultEvent, FaultPageKey, FaultSkipRange,
    MapEvent, StackIps, STACK_TRUNCATED,
};

use super::{procfs::ProcError, MapStack, Resident};
use crate::accounting::unwind::UnwindError;

#[derive(Debug, thiserror::Error)]
pub enum ResidentError {
    #[error("BPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("BPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error(transparent)]
    Maps(#[from] crate::proc::MapsError),
    #[error(transparent)]
    Unwind(#[from] UnwindError),
}

/// What one `drain` saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainStats {
    pub faults: u64,
    /// Of `faults`, those sent with a raw stack (the walk died in glibc).
    pub fault_stacks: u64,
    pub maps: u64,
    /// Records of processes with no model (exited, or not traced in this mode).
    pub ignored: u64,
    pub malformed: u64,
}

pub struct ResidentMaps {
    ring: RingBuf<MapData>,
    stacks: BpfHashMap<MapData, i32, StackIps>,
    config: Array<MapData, FaultConfig>,
    /// Granules of tracked mappings, with their touched pages.
    skip: BpfHashMap<MapData, FaultPageKey, FaultSkipRange>,
    sample_every: u32,
    /// A stack's id never changes hands (nothing deletes from
    /// hashed_stacks), so frames can be cached for the session.
    frames: HashMap<i32, Option<(Vec<u64>, bool)>>,
}

impl ResidentMaps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<ResidentMaps, ResidentError> {
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(ResidentError::MissingMap(name))
        };
        let ring = RingBuf::try_from(take(ebpf, maps::FAULT_EVENTS)?).map_err(|source| {
            ResidentError::Map {
                name: maps::FAULT_EVENTS,
                source,
            }
        })?;
        let stacks = BpfHashMap::try_from(take(ebpf, maps::HASHED_STACKS)?).map_err(|source| {
            ResidentError::Map {
                name: maps::HASHED_STACKS,
                source,
            }
        })?;
        let config = Array::try_from(take(ebpf, maps::FAULT_CONFIG)?).map_err(|source| {
            ResidentError::Map {
                name: maps::FAULT_CONFIG,
                source,
            }
        })?;
        let skip = BpfHashMap::try_from(take(ebpf, maps::FAULT_SKIP)?).map_err(|source| {
            ResidentError::Map {
                name: maps::FAULT_SKIP,
                source,
            }
        })?;
        Ok(ResidentMaps {
            ring,
            stacks,
            config,
            skip,
            sample_every: 1,
            frames: HashMap::new(),
        })
    }

    /// Takes the stack of 1 in `n` first-touch pages (1: every page). Set it
    /// before adding targets: each sampled page then stands for `n` pages.
    pub fn set_sample_every(&mut self, n: u32) -> Result<(), ResidentError> {
        let n = n.max(1);
        self.config
            .set(
                0,
                FaultConfig {
                    sample_every: n,
                    _pad: 0,
                },
                0,
            )
            .map_err(|source| ResidentError::Map {
                name: maps::FAULT_CONFIG,
                source,
            })?;
        self.sample_every = n;
        Ok(())
    }

    pub fn sample_every(&self) -> u32 {
        self.sample_every
    }

    /// The ring buffer's fd, readable when records are pending (for epoll or
    /// tokio's AsyncFd).
    pub fn ring_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// The `fault_skip` entry of granule `g` (address >> GRANULE_SHIFT) of
    /// `pid`. Nothing deletes a process's entries at its exit: they stay
    /// until the LRU evicts them, read here at the end of the trace.
    pub fn skip_range(&self, pid: u32, g: u64) -> Option<FaultSkipRange> {
        let key = FaultPageKey {
            tgid: pid,
            _pad: 0,
            page: g,
        };
        self.skip.get(&key, 0).ok()
    }

    /// The frames of a stack id and whether its walk was truncated.
    fn walk(&mut self, id: i32) -> Option<(Vec<u64>, bool)> {
        if id < 0 {
            return None;
        }
        let stacks = &self.stacks;
        self.frames
            .entry(id)
            .or_insert_with(|| {
                stacks
                    .get(&id, 0)
                    .ok()
                    .map(|s| (s.frames().to_vec(), s.flags & STACK_TRUNCATED != 0))
            })
            .clone()
    }

    /// The stack that queued the threadpool work a record's thread ran
    /// (`StackKey::async_stack`), when it did. A queuing stack that cannot
    /// be read is no frames, truncated: the marker still says the work was
    /// queued.
    fn queued(&mut self, async_stack: i32) -> Option<(Vec<u64>, bool)> {
        if async_stack <= 0 {
            return None;
        }
        Some(self.walk(async_stack - 1).unwrap_or((Vec::new(), true)))
    }

    /// Feeds every pending record to the model of its process.
    pub fn drain(&mut self, procs: &mut HashMap<u32, Resident>) -> DrainStats {
        let mut st = DrainStats::default();
        // Records are copied out first: the ring item borrows the ring.
        let mut pending: Vec<Vec<u8>> = Vec::new();
        while let Some(item) = self.ring.next() {
            pending.push(item.to_vec());
        }
        for rec in pending {
            let Some(hdr) = read::<EventHeader>(&rec) else {
                st.malformed += 1;
                continue;
            };
            if !procs.contains_key(&hdr.tgid) {
                st.ignored += 1;
                continue;
            }
            match hdr.kind {
                resident_event_kind::FAULT => {
                    let Some(ev) = read::<FaultEvent>(&rec) else {
                        st.malformed += 1;
                        continue;
                    };
                    let walk = self.walk(ev.stack_id);
                    let queued = self.queued(ev.async_stack);
                    let p = procs.get_mut(&hdr.tgid).expect("checked");
                    p.on_fault(
                        &ev,
                        walk.as_ref().map(|(f, t)| (f.as_slice(), *t)),
                        as_slice(&queued),
                    );
                    st.faults += 1;
                }
                resident_event_kind::MAP_STACK | resident_event_kind::FAULT_STACK => {
                    let Some(ev) = read::<MapEvent>(&rec) else {
                        st.malformed += 1;
                        continue;
                    };
                    let fixed = std::mem::size_of::<MapEvent>();
                    let end = (fixed + ev.stack_len as usize).min(rec.len());
                    let queued = self.queued(ev.async_stack);
                    let walk = self.walk(ev.stack_id);
                    let p = procs.get_mut(&hdr.tgid).expect("checked");
                    if hdr.kind == resident_event_kind::FAULT_STACK {
                        p.on_fault_stack(&ev, &rec[fixed..end], as_slice(&queued));
                        st.faults += 1;
                        st.fault_stacks += 1;
                    } else {
                        let stack = match &walk {
                            Some((f, t)) => MapStack::Walked(f, *t),
                            None => MapStack::Raw(&rec[fixed..end]),
                        };
                        p.on_map(&ev, stack, as_slice(&queued));
                        st.maps += 1;
                    }
                }
                _ => st.malformed += 1,
            }
        }
        st
    }
}

fn as_slice(q: &Option<(Vec<u64>, bool)>) -> Option<(&[u64], bool)> {
    q.as_ref().map(|(f, t)| (f.as_slice(), *t))
}

fn read<T: Copy>(b: &[u8]) -> Option<T> {
    (b.len() >= std::mem::size_of::<T>())
        // SAFETY: length checked; T is a plain repr(C) integer struct.
        .then(|| unsafe { std::ptr::read_unaligned(b.as_ptr() as *const T) })
}
