//! `offheap report FILE.json`: render a saved report again, in any format.
//! Also the output helpers every front end shares (`read_report`, `emit`).
use std::{
    io::{self, IsTerminal, Write},
    path::Path,
};

use anyhow::Context;

use crate::error::{UsageError, WriteFailure};
use crate::{
    cli::{OutputOpts, ReportArgs},
    report::{self, json, progress::Progress, write::write_atomic, Format, RenderOptions, Report},
};

/// Reports bigger than this announce their reading and writing on stderr.
const PROGRESS_BYTES: usize = 16 << 20;
/// Reports with more frames than this announce their rendering.
const PROGRESS_FRAMES: usize = 200_000;

pub fn render_options(o: &OutputOpts) -> RenderOptions {
    RenderOptions {
        top: o.top,
        value: o.value,
        frames: o.frames,
    }
}

/// Reads a JSON report; a missing, unreadable or foreign file is a usage error.
pub fn read_report(path: &Path) -> anyhow::Result<Report> {
    let bytes = std::fs::read(path)
        .map_err(|e| UsageError::new(format!("cannot read {}: {e}", path.display())))?;
    let progress = (bytes.len() > PROGRESS_BYTES).then(|| {
        Progress::new(format!(
            "reading {} ({} MB)",
            path.display(),
            bytes.len() >> 20
        ))
    });
    let r = json::parse(&bytes).map_err(|e| {
        UsageError::new(format!(
            "{} is not an offheap JSON report: {e}",
            path.display()
        ))
    })?;
    // Later schema versions only add fields (see model.rs), so any
    // offheap.report.* parses; anything else is someone else's JSON.
    if !r.schema.starts_with("offheap.report.") {
        anyhow::bail!(UsageError::new(format!(
            "{} has schema {:?}, not offheap.report.v1",
            path.display(),
            r.schema
        )));
    }
    if let Some(p) = progress {
        p.done();
    }
    let mut r = r;
    judge_unjudged(&mut r);
    Ok(r)
}

/// Gives a verdict to each process of a report written before verdicts
/// existed, from the report's own figures (its limits are unknown then).
fn judge_unjudged(r: &mut Report) {
    let mode = r.mode;
    for p in r.processes.iter_mut().filter(|p| p.verdict.is_none()) {
        p.verdict = Some(report::verdict::judge(p, mode));
    }
}

/// Writes an output atomically to `output`, or to stdout when there is none.
pub fn emit(bytes: &[u8], output: Option<&Path>) -> anyhow::Result<()> {
    match output {
        Some(path) => {
            let progress = (bytes.len() > PROGRESS_BYTES).then(|| {
                Progress::new(format!(
                    "writing {} ({} MB)",
                    path.display(),
                    bytes.len() >> 20
                ))
            });
            write_atomic(path, bytes).map_err(WriteFailure::new)?;
            if let Some(p) = progress {
                p.done();
            }
            Ok(())
        }
        None => {
            let mut out = io::stdout().lock();
            match out.write_all(bytes).and_then(|_| out.flush()) {
                // A closed pipe (`| head`) is the reader's choice, not a failure.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
                r => r
                    .map_err(|e| WriteFailure::new(format!("writing to stdout: {e}")))
                    .context("writing the report"),
            }
        }
    }
}

/// Renders a report, announcing the step on stderr when the report is big
/// (rendering tens of thousands of stacks takes seconds).
pub fn render(r: &Report, o: &OutputOpts) -> anyhow::Result<Vec<u8>> {
    let frames: usize = r
        .processes
        .iter()
        .flat_map(|p| &p.stacks)
        .map(|s| s.frames.len())
        .sum();
    let progress = (frames > PROGRESS_FRAMES)
        .then(|| Progress::new(format!("rendering {frames} frames as {:?}", o.format)));
    let bytes = report::render(r, o.format, &render_options(o)).map_err(WriteFailure::new)?;
    if let Some(p) = progress {
        p.done();
    }
    Ok(bytes)
}

/// Refuses to send gzipped pprof to a terminal, as gzip(1) does: it would
/// only garble the screen. Call before tracing, with the parsed options.
pub fn check_output(o: &OutputOpts) -> anyhow::Result<()> {
    if o.format == Format::Pprof && o.output.is_none() && io::stdout().is_terminal() {
        anyhow::bail!(UsageError::new(
            "pprof output is binary: give --output FILE or redirect stdout"
        ));
    }
    Ok(())
}

pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    check_output(&args.output)?;
    let r = read_report(&args.file)?;
    let bytes = render(&r, &args.output)?;
    emit(&bytes, args.output.output.as_deref())
}
