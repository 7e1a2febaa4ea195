//! `offheap diff BEFORE.json AFTER.json`: rank the stacks that grew.
use super::report::{emit, read_report, render_options};
use crate::{
    cli::DiffArgs,
    error::{UsageError, WriteFailure},
    report::{diff, Format},
};

pub fn run(args: &DiffArgs) -> anyhow::Result<()> {
    if args.output.format == Format::Pprof {
        anyhow::bail!(UsageError::new(
            "diff writes --format text, json, folded or svg"
        ));
    }
    let before = read_report(&args.before)?;
    let after = read_report(&args.after)?;
    let d = diff::diff(&before, &after);
    let bytes = diff::render(&d, args.output.format, &render_options(&args.output))
        .map_err(WriteFailure::new)?;
    emit(&bytes, args.output.output.as_deref())
}
