//! `offheap watch`: the DaemonSet agent. Flags in, `daemon::agent` does the work.
use anyhow::Result;

use crate::{
    cli::WatchArgs,
    daemon::{
        agent::{self, AgentOptions},
        cgroup,
        targets::Selector,
    },
};

/// Runs before the async runtime starts its threads: cgroup namespaces are
/// per thread (setns(2)), and every later thread inherits this one's. Inside
/// a container the host's namespace makes /proc/PID/cgroup show full
/// (kubepods) paths. Outside one this changes nothing.
pub fn before_runtime(_args: &WatchArgs) {
    // Container runtimes (Docker, containerd) give containers a private
    // cgroup namespace by default only on cgroup v2 hosts; with the v1
    // memory hierarchy mounted, paths are the host's already.
    if cgroup::Mounts::of_this_host().is_ok_and(|m| m.v1_memory.is_some()) {
        return;
    }
    match cgroup::enter_host_cgroup_namespace() {
        Ok(true) => log::info!("entered the host's cgroup namespace"),
        Ok(false) => {}
        Err(e) => eprintln!(
            "offheap: warning: staying in this cgroup namespace ({}); cgroup paths may be relative to the container",
            crate::error::one_line(&e)
        ),
    }
}

pub async fn run(args: WatchArgs) -> Result<()> {
    let warn_at = args.warn_at;
    if !(warn_at.is_finite() && warn_at > 0.0 && warn_at <= 100.0) {
        return Err(crate::error::UsageError::new(format!(
            "--warn-at must be a percentage in (0, 100], not {warn_at}"
        ))
        .into());
    }
    let opts = AgentOptions {
        selector: Selector::from_args(&args)
            .checked()
            .map_err(crate::error::StartError::new)?,
        oom_dir: args.oom_dir,
        warn_at,
        listen: args.listen,
        mode: args.mode,
        duration: args
            .duration
            .map(|d| super::seconds("--duration", d))
            .transpose()?,
        interval: super::seconds("--interval", args.interval)?,
        max_stacks_per_process: args.max_stacks_per_process,
        max_stacks_total: args.max_stacks_total,
    };
    agent::run(opts).await
}
