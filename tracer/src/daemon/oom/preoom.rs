//! Pre-OOM snapshots: one per upward crossing of the warning threshold of
//! a cgroup's limit.
use std::{collections::HashMap, path::Path, time::SystemTime};

use super::{culprit::top_line, names::timestamp, write_files, OomError, Owner, Written};
use crate::report::{fmt::human_bytes, Report};

/// Writes `<dir>/preoom-<owner>-<timestamp>.{json,txt,svg}`: the state of a
/// cgroup's processes when its usage crossed the warning threshold.
pub fn write_preoom(
    dir: &Path,
    report: &Report,
    owner: &Owner,
    usage: u64,
    limit: u64,
    now: SystemTime,
) -> Result<Written, OomError> {
    let stem = format!("preoom-{}-{}", owner.file_part(), timestamp(now));
    let (json, txt, svg) = write_files(dir, &stem, report)?;
    let pct = usage as f64 * 100.0 / limit.max(1) as f64;
    let log_line = format!(
        "offheap: memory at {pct:.0}% of the {} limit{} ({} used): snapshot {}; {}",
        human_bytes(limit),
        owner.phrase(),
        human_bytes(usage),
        json.display(),
        top_line(report, None)
    );
    Ok(Written {
        json,
        txt,
        svg,
        log_line,
    })
}

/// At most one pre-OOM snapshot per upward crossing of `percent` of a
/// cgroup's limit: a crossing disarms the cgroup, falling back below the
/// threshold re-arms it.
#[derive(Debug)]
pub struct PreOomWatch {
    percent: f64,
    disarmed: HashMap<String, ()>,
}

impl PreOomWatch {
    pub fn new(percent: f64) -> PreOomWatch {
        PreOomWatch {
            percent,
            disarmed: HashMap::new(),
        }
    }

    /// Feeds one reading; true when a snapshot should be written now.
    /// Unlimited cgroups never trigger.
    pub fn observe(&mut self, cgroup: &str, usage: u64, limit: Option<u64>) -> bool {
        let Some(limit) = limit.filter(|&l| l > 0) else {
            return false;
        };
        let above = usage as f64 >= limit as f64 * self.percent / 100.0;
        if !above {
            self.disarmed.remove(cgroup);
            return false;
        }
        self.disarmed.insert(cgroup.to_string(), ()).is_none()
    }

    /// Forgets a cgroup that went away.
    pub fn forget(&mut self, cgroup: &str) {
        self.disarmed.remove(cgroup);
    }
}
