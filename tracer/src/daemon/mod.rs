//! Building blocks of `watch`, the long-running agent (`agent`: the tracing
//! core with targets that come and go): which processes and cgroups to
//! trace, the metrics server, and the OOM post-mortem writer.
pub mod agent;
pub mod cgroup;
pub mod kube;
pub mod metrics;
pub mod oom;
pub mod targets;
