//! Readers of /proc for every other module: the one /proc/PID/maps parser
//! and the per-process facts (comm, exe, RSS, what a pid is). A leaf: it
//! depends on no other module of the crate.
pub mod info;
pub mod maps;
pub mod root;

pub use info::{innermost_pid, liveness, snapshot, Liveness, ProcInfo};
pub use maps::{Mapping, MapsError};
