//! `offheap record --pid PID`: attach to a running process.
use anyhow::Result;

use crate::{
    cli::RecordArgs,
    session::{self, Target},
};

pub async fn run(args: RecordArgs) -> Result<()> {
    let opts = super::session_options(&args.trace)?;
    let mut sym = session::new_symbolizer();
    let outcome = session::trace(Target::Pid(args.pid), &opts, sym.as_mut()).await?;
    session::write_report(&outcome.report, &opts)
}
