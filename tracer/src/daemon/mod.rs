//! Building blocks of `watch`, the long-running agent (`agent`: the tracing
//! core with targets that come and go): which processes and cgroups to
//! trace, the metrics server, and the OOM post-mortem writer.
pub mod agent;
pub mod metrics;
pub mod oom;
pub mod targets;

/// Read from /proc and /sys (crate::proc), named here too for the daemon's
/// code and tests.
pub use crate::proc::{cgroup, kube};
