//! `offheap run -- CMD ARGS`: start CMD held before exec, trace it.
use anyhow::Result;

use crate::{
    cli::RunArgs,
    session::{self, Target},
};

pub async fn run(args: RunArgs) -> Result<()> {
    let opts = super::session_options(&args.trace)?;
    let mut sym = session::new_symbolizer();
    let outcome = session::trace(Target::Command(args.command), &opts, sym.as_mut()).await?;
    session::write_report(&outcome.report, &opts)?;
    // The report was written: exit 0 whatever the child did, but say it.
    match (&outcome.child_status, outcome.report.processes.first()) {
        (Some(status), _) => eprintln!("offheap: the command {status}"),
        (None, Some(p)) => eprintln!("offheap: the command (PID {}) is still running", p.pid),
        (None, None) => {}
    }
    Ok(())
}
