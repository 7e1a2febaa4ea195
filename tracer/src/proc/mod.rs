//! Readers of /proc (and of the cgroup files under /sys) for every other
//! module: the one /proc/PID/maps parser, the per-process facts (comm, exe,
//! RSS, what a pid is, node's heap flags, the memory limit), what is
//! resident (pagemap, smaps), and memory cgroups. A leaf: it depends on no
//! other module of the crate.
pub mod cgroup;
pub mod info;
pub mod kube;
pub mod limits;
pub mod maps;
pub mod pages;
pub mod root;

pub use info::{innermost_pid, liveness, snapshot, Liveness, ProcInfo};
pub use maps::{Mapping, MapsError};
