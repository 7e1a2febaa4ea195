//! Front ends. Each one chooses targets and outputs, then hands over to the
//! shared tracing session; none knows how a probe works.
use crate::cli::Command;

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
        Command::Report(args) => report::run(&args),
        Command::Diff(args) => diff::run(&args),
        Command::Record(_) | Command::Run(_) | Command::Watch(_) => {
            anyhow::bail!(StartError("not built yet".into()))
        }
    }
}
