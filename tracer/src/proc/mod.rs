//! Readers of /proc for every other module: the one /proc/PID/maps parser,
//! the per-process facts (comm, exe, RSS, what a pid is) and what is
//! resident (pagemap, smaps). A leaf: it depends on no other module of the
//! crate.
pub mod info;
pub mod maps;
pub mod pages;

pub use info::{innermost_pid, liveness, snapshot, Liveness, ProcInfo};
pub use maps::{Mapping, MapsError};
