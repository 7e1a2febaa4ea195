//! `offheap record --pid PID`: attach to a running process.
use anyhow::Result;

use crate::{
    cli::RecordArgs,
    report::build::NoSymbols,
    session::{self, Target},
};

pub async fn run(args: RecordArgs) -> Result<()> {
    let opts = super::session_options(&args.trace)?;
    let mut sym = NoSymbols;
    let outcome = session::trace(Target::Pid(args.pid), &opts, &mut sym).await?;
    session::write_report(&outcome.report, &opts)
}
