//! `offheap report FILE.json`: render a saved report again, in any format.
//! Also the output helpers every front end shares (`read_report`, `emit`).
use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, IsTerminal, Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::Context;

use crate::error::{UsageError, WriteFailure};
use crate::{
    cli::{OutputOpts, ReportArgs},
    report::{self, json, progress::Progress, write, Format, RenderOptions, Report, SCHEMA},
};

/// Reports bigger than this announce their reading and writing on stderr.
const PROGRESS_BYTES: usize = 16 << 20;

/// The largest report read: a report of 200 000 stacks is about 500 MB,
/// and `report` holds it parsed (several times the file) in memory.
pub const MAX_REPORT_BYTES: u64 = 2 << 30;

/// Why a saved report cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReportFileError {
    #[error("cannot read {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path} is {size} bytes, more than the {MAX_REPORT_BYTES} a report may be")]
    TooBig { path: PathBuf, size: u64 },
    #[error("{path} is not an offheap JSON report")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} has schema {schema:?}, not {SCHEMA}")]
    Foreign { path: PathBuf, schema: String },
}

/// Opens a saved report for reading: a regular file only (a FIFO or a
/// device such as /dev/zero would block or never end; O_NONBLOCK makes the
/// open of a FIFO return at once, fifo(7)), at most MAX_REPORT_BYTES, and
/// read no further than that even if it grows. Returns it and its size.
pub fn open_report(path: &Path) -> Result<(impl Read, u64), ReportFileError> {
    let f: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| ReportFileError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let m = f.metadata().map_err(|source| ReportFileError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !m.is_file() {
        return Err(ReportFileError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    if m.len() > MAX_REPORT_BYTES {
        return Err(ReportFileError::TooBig {
            path: path.to_path_buf(),
            size: m.len(),
        });
    }
    Ok((f.take(MAX_REPORT_BYTES), m.len()))
}

/// Refuses JSON that is not an offheap report; warns (on stderr) about a
/// later schema version: later versions only add fields (model.rs), so it
/// parses, but what they added is not shown.
pub fn check_schema(path: &Path, schema: &str) -> Result<(), ReportFileError> {
    if schema == SCHEMA {
        return Ok(());
    }
    if !schema.starts_with("offheap.report.") {
        return Err(ReportFileError::Foreign {
            path: path.to_path_buf(),
            schema: schema.to_string(),
        });
    }
    eprintln!(
        "offheap: warning: {} has schema {schema}, which this offheap does not know \
         (it reads {SCHEMA}): fields added since are not shown",
        path.display()
    );
    Ok(())
}
/// Reports with more frames than this announce their rendering.
const PROGRESS_FRAMES: usize = 200_000;

pub fn render_options(o: &OutputOpts) -> RenderOptions {
    RenderOptions {
        top: o.top,
        value: o.value,
        frames: o.frames,
    }
}

/// A step shown on stderr while a big file is read.
pub fn reading(path: &Path, size: u64) -> Option<Progress> {
    (size > PROGRESS_BYTES as u64)
        .then(|| Progress::new(format!("reading {} ({} MB)", path.display(), size >> 20)))
}

/// Reads a JSON report; a missing, unreadable, special or foreign file is a
/// usage error.
pub fn read_report(path: &Path) -> anyhow::Result<Report> {
    let (mut f, size) = open_report(path).map_err(UsageError::new)?;
    let progress = reading(path, size);
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|source| {
        UsageError::new(ReportFileError::Open {
            path: path.to_path_buf(),
            source,
        })
    })?;
    let r = json::parse(&bytes).map_err(|source| {
        UsageError::new(ReportFileError::Parse {
            path: path.to_path_buf(),
            source,
        })
    })?;
    check_schema(path, &r.schema).map_err(UsageError::new)?;
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
    let progress = output.filter(|_| bytes.len() > PROGRESS_BYTES).map(|path| {
        Progress::new(format!(
            "writing {} ({} MB)",
            path.display(),
            bytes.len() >> 20
        ))
    });
    emit_with(output, |w| w.write_all(bytes))?;
    if let Some(p) = progress {
        p.done();
    }
    Ok(())
}

/// `emit` of what `make` writes, as it writes it (not held whole first).
pub fn emit_with(
    output: Option<&Path>,
    make: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> anyhow::Result<()> {
    match output {
        Some(path) => {
            write::write_with(path, make).map_err(WriteFailure::new)?;
            Ok(())
        }
        None => {
            let mut out = BufWriter::new(io::stdout().lock());
            match make(&mut out).and_then(|()| out.flush()) {
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
