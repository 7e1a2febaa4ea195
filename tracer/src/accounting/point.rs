//! What a series point carries besides RSS and the buckets, read once per
//! interval for every live target: its traffic (`traffic`) and, in malloc
//! mode, what glibc's arenas hold (`arenas`). The tracing core's tick takes
//! the rest of each point from here.
use std::collections::HashMap;

use aya::Ebpf;

use super::{arenas::Arenas, traffic::Traffic};
use crate::report::{Mode, SeriesPoint};

/// The readers whose state lasts from one interval to the next.
#[derive(Debug, Default)]
pub struct PointReaders {
    /// None when traffic is not counted (`Probes::traffic`): the points'
    /// traffic fields stay None, which says "no data", never zero.
    traffic: Option<Traffic>,
    arenas: Arenas,
}

/// One interval's extra figures, per pid.
#[derive(Debug, Default)]
pub struct Extras(HashMap<u32, SeriesPoint>);

impl Extras {
    /// The extra fields of `pid`'s point (the others default): the base of
    /// the point the tick makes.
    pub fn point(&self, pid: u32) -> SeriesPoint {
        self.0.get(&pid).cloned().unwrap_or_default()
    }
}

impl PointReaders {
    /// Readers of every figure; `traffic`: whether traffic is counted.
    pub fn new(traffic: bool) -> PointReaders {
        PointReaders {
            traffic: traffic.then(Traffic::default),
            arenas: Arenas::default(),
        }
    }

    /// Reads this interval's figures of every pid of `live`. A reader that
    /// fails leaves its fields empty (None) and says why in the log.
    pub fn read(&mut self, ebpf: &mut Ebpf, mode: Mode, live: &[u32]) -> Extras {
        let mut out: HashMap<u32, SeriesPoint> =
            live.iter().map(|&p| (p, SeriesPoint::default())).collect();
        match self.traffic.as_mut().map(|t| t.interval(ebpf, live)) {
            None => {}
            Some(Ok(t)) => {
                for (pid, i) in t {
                    if let Some(p) = out.get_mut(&pid) {
                        p.accepted_connections = Some(i.accepted_connections);
                        p.received_bytes = Some(i.received_bytes);
                    }
                }
            }
            Some(Err(e)) => log::warn!("reading the traffic: {}", crate::error::one_line(&e)),
        }
        if mode == Mode::Malloc {
            match self.arenas.read(ebpf, live) {
                Ok(a) => {
                    for (pid, f) in a {
                        if let Some(p) = out.get_mut(&pid) {
                            p.arena_resident_bytes = Some(f.resident_bytes);
                            p.arena_free_bytes = Some(f.free_bytes);
                        }
                    }
                }
                Err(e) => log::warn!("reading the malloc arenas: {}", crate::error::one_line(&e)),
            }
        }
        Extras(out)
    }
}
