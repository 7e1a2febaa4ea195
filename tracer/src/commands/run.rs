//! `offheap run -- CMD ARGS`: start CMD held before exec, trace it and the
//! processes it forks.
use anyhow::Result;

use crate::{cli::RunArgs, core::Tracer};

pub async fn run(args: RunArgs) -> Result<()> {
    let opts = super::trace_options(&args.trace, true)?;
    super::trace::preflight(&args.trace)?;
    let mut tracer = Tracer::start(opts).map_err(super::start_error)?;
    let pid = tracer.spawn(&args.command).map_err(super::start_error)?;
    let status = super::trace::trace(tracer, pid, &args.trace).await?;
    // The report was written: exit 0 whatever the child did, but say it.
    match status {
        Some(status) => eprintln!("offheap: the command {status}"),
        None => eprintln!("offheap: the command (PID {pid}) is still running"),
    }
    Ok(())
}
