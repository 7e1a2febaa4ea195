//! OOM post-mortems and pre-OOM snapshots: the report of a process at the
//! moment the kernel killed it (or its cgroup neared its limit), written
//! where an SRE will find it, plus one log line that already names the culprit.
//!
//! One job per file: `postmortem` (a kill), `preoom` (a threshold
//! crossing), `culprit` (what the log line says of the report), `dir` (the
//! directory, checked at start), `names` (file names); here, the files of
//! one event and whose they are.
use std::path::{Path, PathBuf};

use crate::{
    daemon::cgroup::MemoryCgroup,
    report::{self, write::write_atomic, Format, RenderOptions, Report},
};

mod culprit;
mod dir;
mod names;
mod postmortem;
mod preoom;
#[cfg(test)]
mod tests;

pub use culprit::{describe_stack, top_off_heap, verdict_part};
pub use dir::{prepare_dir, OomDirError};
use names::sanitize;
pub use names::timestamp;
pub use postmortem::{oom_info, postmortem, postmortem_line, write_postmortem};
pub use preoom::{write_preoom, PreOomWatch};

#[derive(Debug, thiserror::Error)]
pub enum OomError {
    #[error(transparent)]
    Write(#[from] report::write::WriteError),
    #[error(transparent)]
    Render(#[from] report::RenderError),
}

/// Files written for one event, and the line to log about them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub json: PathBuf,
    pub txt: PathBuf,
    /// The memory-over-time chart; None when it could not be drawn (a
    /// snapshot without processes): the report is written regardless.
    pub svg: Option<PathBuf>,
    pub log_line: String,
}

/// `<stem>.txt`, `<stem>.svg` (the chart) and `<stem>.json`, in that order:
/// the JSON is what the log line names, so once it exists the others do.
fn write_files(
    dir: &Path,
    stem: &str,
    report: &Report,
) -> Result<(PathBuf, PathBuf, Option<PathBuf>), OomError> {
    let json = dir.join(format!("{stem}.json"));
    let txt = dir.join(format!("{stem}.txt"));
    let opts = RenderOptions {
        top: Some(10),
        ..RenderOptions::default()
    };
    write_atomic(&txt, &report::render(report, Format::Text, &opts)?)?;
    let svg = match report::render(report, Format::Chart, &opts) {
        Ok(bytes) => {
            let svg = dir.join(format!("{stem}.svg"));
            write_atomic(&svg, &bytes)?;
            Some(svg)
        }
        Err(e) => {
            log::warn!(
                "no chart beside {}: {}",
                json.display(),
                crate::error::one_line(&e)
            );
            None
        }
    };
    write_atomic(&json, &report::render(report, Format::Json, &opts)?)?;
    Ok((json, txt, svg))
}

/// Where a process lived, for names and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Pod(String),
    Cgroup(String),
    Host,
}

impl Owner {
    pub fn of(cgroup: Option<&MemoryCgroup>) -> Owner {
        match cgroup {
            Some(c) => match c.pod() {
                Some(p) => Owner::Pod(p.pod_uid),
                None => Owner::Cgroup(c.short_name()),
            },
            None => Owner::Host,
        }
    }

    fn file_part(&self) -> String {
        match self {
            Owner::Pod(s) | Owner::Cgroup(s) => sanitize(s),
            Owner::Host => "host".to_string(),
        }
    }

    fn phrase(&self) -> String {
        match self {
            Owner::Pod(s) => format!(" in pod {s}"),
            Owner::Cgroup(s) => format!(" in cgroup {s}"),
            Owner::Host => String::new(),
        }
    }
}
