//! The executable mappings a symbolizer captures, from the one maps parser
//! (`crate::proc::maps`).
use super::SymbolError;

/// One executable mapping of `/proc/PID/maps`.
pub use crate::proc::Mapping as MapEntry;

/// The executable mappings of a live process, in address order.
pub fn read_exec_maps(pid: u32) -> Result<Vec<MapEntry>, SymbolError> {
    let mut out: Vec<MapEntry> = crate::proc::maps::read(pid)
        .map_err(|e| SymbolError::NoProcess {
            pid,
            source: e.source,
        })?
        .into_iter()
        .filter(MapEntry::executable)
        .collect();
    out.sort_by_key(|m| m.start);
    Ok(out)
}
