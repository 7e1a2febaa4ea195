//! The post-mortem of one OOM kill: the report at the kill, with what the
//! kernel and the cgroup say of it, its files, and the one log line.
use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use super::{
    culprit::{top_line, verdict_part},
    names::timestamp,
    write_files, OomError, Owner, Written,
};
use crate::{
    core::OomVictim,
    daemon::cgroup::MemoryCgroup,
    report::{fmt::clean, OomInfo, Report},
};

/// What the kernel told us about the kill, with the cgroup's figures read
/// right after it (the limit does not change; usage has not dropped yet
/// unless the victim already exited).
pub fn oom_info(
    v: &OomVictim,
    cgroup: Option<&MemoryCgroup>,
    limit: Option<u64>,
    usage: Option<u64>,
    now: SystemTime,
) -> OomInfo {
    OomInfo {
        pid: v.tgid,
        comm: v.comm.clone(),
        anon_rss_bytes: v.anon_rss_bytes,
        file_rss_bytes: v.file_rss_bytes,
        shmem_rss_bytes: v.shmem_rss_bytes,
        total_vm_bytes: v.total_vm_bytes,
        cgroup: cgroup.map(|c| c.path.clone()),
        memory_limit_bytes: limit,
        memory_usage_bytes: usage,
        time_unix_secs: unix_secs(now),
    }
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes `<dir>/oom-<owner>-<pid>-<timestamp>.{json,txt,svg}` for a report whose
/// `oom` is filled in (see [`oom_info`]).
pub fn write_postmortem(
    dir: &Path,
    report: &Report,
    owner: &Owner,
    now: SystemTime,
) -> Result<Written, OomError> {
    let (pid, comm) = report
        .oom
        .as_ref()
        .map_or((0, String::new()), |o| (o.pid, o.comm.clone()));
    let stem = format!("oom-{}-{pid}-{}", owner.file_part(), timestamp(now));
    let (json, txt, svg) = write_files(dir, &stem, report)?;
    let log_line = format!(
        "offheap: OOM kill of pid {pid} ({}){}: report {}; {}{}",
        clean(&comm),
        owner.phrase(),
        json.display(),
        top_line(report, Some(pid)),
        verdict_part(report, pid)
    );
    Ok(Written {
        json,
        txt,
        svg,
        log_line,
    })
}

/// The whole post-mortem of one kill: fills `report.oom` from the kernel's
/// record and the cgroup's limit and usage (None where unreadable), marks the
/// victim's process as exited, and writes the files. `cgroup` should be the
/// one recorded when tracing started: by now /proc/PID may be gone.
pub fn postmortem(
    dir: &Path,
    mut report: Report,
    victim: &OomVictim,
    cgroup: Option<&MemoryCgroup>,
    now: SystemTime,
) -> Result<(Report, Written), OomError> {
    let limit = cgroup.and_then(|c| c.limit_bytes().ok().flatten());
    let usage = cgroup.and_then(|c| c.usage_bytes().ok());
    report.oom = Some(oom_info(victim, cgroup, limit, usage, now));
    for p in report.processes.iter_mut().filter(|p| p.pid == victim.tgid) {
        p.exited = true;
        if p.cgroup.is_none() {
            p.cgroup = cgroup.map(|c| c.path.clone());
        }
    }
    let w = write_postmortem(dir, &report, &Owner::of(cgroup), now)?;
    Ok((report, w))
}

/// The one log line of a kill, whatever becomes of the files: it names the
/// culprit (the top off-heap stack) also when there is no `--oom-dir` or the
/// post-mortem could not be written, and then says why.
pub fn postmortem_line(
    dir: Option<&Path>,
    report: Report,
    victim: &OomVictim,
    cgroup: Option<&MemoryCgroup>,
    now: SystemTime,
) -> String {
    let head = format!(
        "offheap: OOM kill of pid {} ({}){}",
        victim.tgid,
        clean(&victim.comm),
        Owner::of(cgroup).phrase()
    );
    let top = format!(
        "{}{}",
        top_line(&report, Some(victim.tgid)),
        verdict_part(&report, victim.tgid)
    );
    let Some(dir) = dir else {
        return format!("{head}: no --oom-dir, no report written; {top}");
    };
    match postmortem(dir, report, victim, cgroup, now) {
        Ok((_, w)) => w.log_line,
        Err(e) => format!(
            "{head}: no report written ({}); {top}",
            crate::error::one_line(&e)
        ),
    }
}
