//! `offheap record --pid PID`: attach to a running process.
use anyhow::Result;

use crate::{cli::RecordArgs, core::Tracer};

pub async fn run(args: RecordArgs) -> Result<()> {
    let opts = super::trace_options(&args.trace, args.children)?;
    super::trace::preflight(&args.trace)?;
    let mut tracer = Tracer::start_for_pid(opts, args.pid).map_err(super::start_error)?;
    tracer.add_pid(args.pid, None).map_err(super::start_error)?;
    super::trace::trace(tracer, args.pid, &args.trace).await?;
    Ok(())
}
