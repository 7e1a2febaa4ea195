//! Front ends. Each one chooses targets and outputs, then hands over to the
//! shared tracing session; none knows how a probe works.
pub mod record;
pub mod run;
pub mod watch;

use std::time::Duration;

use crate::{
    cli::{Command, TraceOpts},
    session::SessionOptions,
};

pub mod diff;
pub mod report;

pub const EXIT_USAGE: u8 = 1;
pub const EXIT_START: u8 = 2;
pub const EXIT_WRITE: u8 = 3;

/// Marks an error that happened before tracing started (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// Marks a usage error found after parsing (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Marks a failure to write the report after tracing ran (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WriteFailure(pub String);

pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<UsageError>() {
            return EXIT_USAGE;
        }
        if cause.is::<WriteFailure>() {
            return EXIT_WRITE;
        }
    }
    EXIT_START
}

pub async fn dispatch(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Record(args) => record::run(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Report(args) => report::run(&args),
        Command::Diff(args) => diff::run(&args),
        Command::Watch(args) => watch::run(args).await,
    }
}

/// A positive, finite number of seconds.
fn seconds(flag: &str, v: f64) -> Result<Duration, UsageError> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(UsageError(format!(
            "{flag} must be a positive number of seconds, not {v}"
        )))
    }
}

/// Session options from the shared tracing flags.
pub fn session_options(t: &TraceOpts) -> Result<SessionOptions, UsageError> {
    Ok(SessionOptions {
        mode: t.mode,
        duration: t.duration.map(|d| seconds("--duration", d)).transpose()?,
        interval: seconds("--interval", t.interval)?,
        format: t.output.format,
        output: t.output.output.clone(),
        top: t.output.top,
        value: t.output.value,
        live: crate::report::live::wanted(t.live, t.no_live),
    })
}
