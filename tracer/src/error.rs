//! The three ways a command can fail, as the exit code tells them apart
//! (README, `offheap --help`): each wraps the error that caused it, whole, so
//! that the one-line message keeps every cause (`{:#}` prints the chain).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub const EXIT_USAGE: u8 = 1;
pub const EXIT_START: u8 = 2;
pub const EXIT_WRITE: u8 = 3;
/// SIGINT or SIGTERM before tracing started: nothing was traced, so no
/// report (128 + SIGINT, the shell's convention).
pub const EXIT_INTERRUPTED: u8 = 130;

/// A usage error found after parsing (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct UsageError(pub BoxError);

/// Tracing could not start (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StartError(pub BoxError);

/// Tracing ran, but the report could not be made or written (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct WriteFailure(pub BoxError);

/// A signal ended the command before tracing started (exit code 130).
#[derive(Debug, thiserror::Error)]
#[error(
    "interrupted while attaching: every probe attached so far was detached, nothing was traced"
)]
pub struct Interrupted;

impl UsageError {
    pub fn new(e: impl Into<BoxError>) -> UsageError {
        UsageError(e.into())
    }
}

impl StartError {
    pub fn new(e: impl Into<BoxError>) -> StartError {
        StartError(e.into())
    }
}

impl WriteFailure {
    pub fn new(e: impl Into<BoxError>) -> WriteFailure {
        WriteFailure(e.into())
    }
}

/// An error and its causes on one line, `error: cause: cause`, as main
/// prints a failure (anyhow's `{:#}`): for messages made of an error that
/// is not returned (a warning, a log line). Error types give their cause
/// through `source()` only, never also in their message, so nothing repeats.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The exit code of a failed command: the outermost marker in the chain, or
/// 2 when there is none (every failure before tracing is a start failure).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<UsageError>() {
            return EXIT_USAGE;
        }
        if cause.is::<WriteFailure>() {
            return EXIT_WRITE;
        }
        if cause.is::<Interrupted>() {
            return EXIT_INTERRUPTED;
        }
        if cause.is::<StartError>() {
            return EXIT_START;
        }
    }
    EXIT_START
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_markers_and_keep_the_message() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(WriteFailure::new(io)).context("writing /x");
        assert_eq!(exit_code(&e), EXIT_WRITE);
        assert_eq!(format!("{e:#}"), "writing /x: no such file");
        assert_eq!(exit_code(&anyhow::Error::new(UsageError::new("bad"))), 1);
        assert_eq!(exit_code(&anyhow::Error::new(Interrupted)), 130);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), 2);
    }
}

#[cfg(test)]
mod chains;
