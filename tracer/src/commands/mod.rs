//! Front ends. Each one chooses targets and outputs, then hands over to the
//! tracing core (`crate::core`); none knows how a probe works.
pub mod diff;
pub mod explain;
pub mod live;
pub mod record;
pub mod report;
pub mod run;
mod trace;
pub mod watch;

use std::time::Duration;

use crate::{
    cli::{Command, TraceOpts},
    core::{CoreError, TraceOptions},
    error::{StartError, UsageError},
};

pub async fn dispatch(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Record(args) => record::run(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Report(args) => report::run(&args),
        Command::Diff(args) => diff::run(&args),
        Command::Explain(args) => explain::run(&args),
        Command::Watch(args) => watch::run(args).await,
    }
}

/// A positive, finite number of seconds, below 1e9 (31 years). A value
/// out of range is shown in exponent form when large: f64's Display writes
/// every digit (1e300 is 301 of them).
fn seconds(flag: &str, v: f64) -> Result<Duration, UsageError> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        let shown = if v.abs() >= 1e9 {
            format!("{v:e}")
        } else {
            v.to_string()
        };
        Err(UsageError::new(format!(
            "{flag} must be a positive number of seconds below 1e9, not {shown}"
        )))
    }
}

/// The core's options from the shared tracing flags.
fn trace_options(t: &TraceOpts, follow_children: bool) -> Result<TraceOptions, UsageError> {
    Ok(TraceOptions {
        mode: t.mode,
        duration: t.duration.map(|d| seconds("--duration", d)).transpose()?,
        interval: seconds("--interval", t.interval)?,
        watch_exec: false,
        follow_children,
        caps: None,
    })
}

/// A failure of the core before tracing started: exit code 2, or 130 when
/// a signal interrupted the attach.
pub fn start_error(e: CoreError) -> anyhow::Error {
    match e {
        CoreError::Interrupted(i) => anyhow::Error::new(i),
        e => anyhow::Error::new(StartError::new(e)),
    }
}
