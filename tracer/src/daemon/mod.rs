//! Building blocks of `watch`, the long-running agent: which processes and
//! cgroups to trace, their lifecycle events, the metrics server, and the OOM
//! post-mortem writer. `commands/watch.rs` wires them together.
pub mod agent;
pub mod cgroup;
pub mod kube;
pub mod lifecycle;
pub mod metrics;
pub mod oom;
pub mod targets;
