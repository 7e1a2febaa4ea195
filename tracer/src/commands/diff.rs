//! `offheap diff BEFORE.json AFTER.json`: rank the stacks that grew.
//!
//! Each report is read stack by stack into the diff's index, never held
//! whole (report::diff::stream): two reports of 200 000 stacks are
//! gigabytes once parsed.
use std::{io::BufReader, path::Path};

use super::report::{
    check_schema, emit_with, open_report, reading, render_options, ReportFileError,
};
use crate::{
    cli::DiffArgs,
    error::UsageError,
    report::{
        diff::{self, stream, DiffIndex},
        Format,
    },
};

pub fn run(args: &DiffArgs) -> anyhow::Result<()> {
    if matches!(args.output.format, Format::Pprof | Format::Chart) {
        anyhow::bail!(UsageError::new(
            "diff writes --format text, json, folded or svg"
        ));
    }
    let mut index = DiffIndex::default();
    let before = read_side(&args.before, &mut index, false)?;
    let after = read_side(&args.after, &mut index, true)?;
    if let (Some(b), Some(a)) = (before.mode, after.mode) {
        if a != b {
            eprintln!(
                "offheap: warning: comparing a {} report with a {} report: their bytes are not \
                 the same measure (malloc: bytes allocated; resident: pages resident)",
                b.as_str(),
                a.as_str()
            );
        }
    }
    let d = index.finish();
    let (format, opts) = (args.output.format, render_options(&args.output));
    emit_with(args.output.output.as_deref(), |w| {
        diff::render_to(&d, format, &opts, w)
    })
}

/// Streams one report into the index.
fn read_side(path: &Path, index: &mut DiffIndex, is_after: bool) -> anyhow::Result<stream::Side> {
    let (f, size) = open_report(path).map_err(UsageError::new)?;
    let progress = reading(path, size);
    let side = stream::read_into(BufReader::with_capacity(1 << 20, f), index, is_after).map_err(
        |source| {
            UsageError::new(ReportFileError::Parse {
                path: path.to_path_buf(),
                source,
            })
        },
    )?;
    check_schema(path, &side.schema).map_err(UsageError::new)?;
    if let Some(p) = progress {
        p.done();
    }
    Ok(side)
}
