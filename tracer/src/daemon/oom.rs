//! OOM post-mortems and pre-OOM snapshots: the report of a process at the
//! moment the kernel killed it (or its cgroup neared its limit), written
//! where an SRE will find it, plus one log line that already names the culprit.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    core::OomVictim,
    daemon::cgroup::MemoryCgroup,
    report::{
        self,
        fmt::{clean, human_bytes},
        write::write_atomic,
        Format, OomInfo, RenderOptions, Report, StackReport,
    },
};

mod dir;
mod names;

pub use dir::{prepare_dir, OomDirError};
use names::sanitize;
pub use names::timestamp;

#[derive(Debug, thiserror::Error)]
pub enum OomError {
    #[error(transparent)]
    Write(#[from] report::write::WriteError),
    #[error(transparent)]
    Render(#[from] report::RenderError),
}

/// Frames shown in a log line, innermost first.
const LOG_FRAMES: usize = 3;

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

/// The largest off-heap stack of `pid` (all processes when None).
pub fn top_off_heap(report: &Report, pid: Option<u32>) -> Option<&StackReport> {
    report
        .processes
        .iter()
        .filter(|p| pid.is_none_or(|pid| p.pid == pid))
        .flat_map(|p| &p.stacks)
        .filter(|s| s.bucket.is_some_and(|b| b.is_off_heap()))
        .max_by_key(|s| s.live_bytes)
}

/// `812.0 MiB array_buffers at handleRequest ← parseBody ← onData`.
/// `<bytes> <bucket> at <first frames past the allocator> ← … ← <first JS
/// frame>`: the native frames say what allocated, the JS frame whose code
/// asked for it.
pub fn describe_stack(s: &StackReport) -> String {
    let bucket = s.bucket.map_or("unclassified", |b| b.as_str());
    let mut out = format!("{} {bucket}", human_bytes(s.live_bytes));
    let frames = report::telling_frames(&s.frames);
    let mut names: Vec<String> = frames
        .iter()
        .take(LOG_FRAMES)
        .map(|f| clean(&f.display_name()))
        .collect();
    let js = frames
        .iter()
        .skip(LOG_FRAMES)
        .find(|f| f.kind == report::FrameKind::Js);
    match (report::queued_by(frames), js) {
        // Threadpool work: the JS (or native) code that queued it.
        (Some(q), _) => {
            names.push("…".into());
            names.push(report::ASYNC_FRAME.into());
            names.push(clean(&q.display_name()));
        }
        (None, Some(f)) => {
            names.push("…".into());
            names.push(clean(&f.display_name()));
        }
        (None, None) if frames.len() > LOG_FRAMES => names.push("…".into()),
        (None, None) => {}
    }
    if !names.is_empty() {
        out.push_str(" at ");
        out.push_str(&names.join(" ← "));
    }
    out
}

fn top_line(report: &Report, pid: Option<u32>) -> String {
    match top_off_heap(report, pid) {
        Some(s) => format!("top off-heap: {}", describe_stack(s)),
        None => "top off-heap: no off-heap stack recorded".to_string(),
    }
}

/// `; verdict: <headline>` of process `pid`, or nothing when it has none.
pub fn verdict_part(report: &Report, pid: u32) -> String {
    report
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .and_then(|p| p.verdict.as_ref())
        .map(|v| format!("; verdict: {}", v.headline))
        .unwrap_or_default()
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
            log::warn!("no chart beside {}: {e}", json.display());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Bucket, Frame, Mode, ProcessReport};
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A stack of threadpool work says which JS function queued it.
    #[test]
    fn a_threadpool_stack_names_the_code_that_queued_it() {
        let native = |s: &str| Frame {
            symbol: Some(s.into()),
            module: Some("/usr/bin/node".into()),
            ..Frame::default()
        };
        let js = |s: &str| Frame {
            symbol: Some(s.into()),
            kind: crate::report::FrameKind::Js,
            ..Frame::default()
        };
        let s = StackReport {
            bucket: Some(Bucket::NodeNative),
            live_bytes: 3 << 20,
            frames: vec![
                native("AllocForZlib"),
                native("deflateInit2_"),
                native("InitZlib"),
                native("DoThreadPoolWork"),
                native("worker"),
                Frame::async_marker(),
                native("node::ThreadPoolWork::ScheduleWork()"),
                js("JS:~processChunk node:zlib:480:22"),
                js("JS:~openDeflateStreams /srv/app.js:5:28"),
            ],
            ..StackReport::default()
        };
        assert_eq!(
            describe_stack(&s),
            "3.0 MiB node_native at AllocForZlib ← deflateInit2_ ← InitZlib ← … ← \
             [libuv threadpool] ← JS:~openDeflateStreams /srv/app.js:5:28"
        );
    }

    #[test]
    fn armed_disarmed_crossings() {
        let mut w = PreOomWatch::new(90.0);
        let lim = Some(1000);
        assert!(!w.observe("a", 899, lim));
        assert!(w.observe("a", 900, lim)); // crossing: one snapshot
        assert!(!w.observe("a", 950, lim)); // still above: none
        assert!(!w.observe("a", 1000, lim));
        assert!(w.observe("b", 990, lim)); // cgroups are independent
        assert!(!w.observe("a", 100, lim)); // back below: re-armed
        assert!(w.observe("a", 901, lim)); // second crossing
        assert!(!w.observe("c", u64::MAX, None)); // unlimited
        assert!(!w.observe("c", 5, Some(0)));
        w.forget("b");
        assert!(w.observe("b", 995, lim));
    }

    fn stack(bucket: Bucket, live: u64, frames: &[&str]) -> StackReport {
        StackReport {
            bucket: Some(bucket),
            live_bytes: live,
            frames: frames
                .iter()
                .map(|n| Frame {
                    symbol: Some((*n).to_string()),
                    ..Frame::unknown(0x1000)
                })
                .collect(),
            ..StackReport::default()
        }
    }

    fn report() -> Report {
        let mut r = Report::new(Mode::Resident);
        r.processes.push(ProcessReport {
            pid: 123,
            comm: "node".into(),
            stacks: vec![
                stack(Bucket::V8Heap, 900 << 20, &["v8::Heap::Allocate"]),
                stack(
                    Bucket::ArrayBuffers,
                    812 << 20,
                    &["handleRequest", "parseBody", "onData", "emit"],
                ),
                stack(Bucket::NativeAddon, 3 << 20, &["addon_alloc"]),
            ],
            ..ProcessReport::default()
        });
        r
    }

    #[test]
    fn postmortem_files_and_log_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = report();
        r.duration_secs = 3.5;
        r.processes[0].verdict = Some(report::verdict::judge(&r.processes[0], r.mode));
        let victim = OomVictim {
            tgid: 123,
            comm: "node".into(),
            total_vm_bytes: 2 << 30,
            anon_rss_bytes: 1 << 30,
            file_rss_bytes: 4096,
            shmem_rss_bytes: 0,
            pgtables_bytes: 8192,
            uid: 0,
            oom_score_adj: 0,
            ts_ns: 1,
        };
        r.oom = Some(oom_info(
            &victim,
            None,
            Some(1 << 30),
            Some(1 << 30),
            at(1_795_849_923),
        ));
        let owner = Owner::Pod("0f5c1a3e-8d4b-4c6a-9e21-7b3f2d1c0a99".into());
        let w = write_postmortem(dir.path(), &r, &owner, at(1_795_849_923)).unwrap();
        let stem = "oom-0f5c1a3e-8d4b-4c6a-9e21-7b3f2d1c0a99-123-20261128T071203Z";
        assert_eq!(w.json, dir.path().join(format!("{stem}.json")));
        assert_eq!(w.txt, dir.path().join(format!("{stem}.txt")));
        assert_eq!(
            w.log_line,
            format!(
                "offheap: OOM kill of pid 123 (node) in pod 0f5c1a3e-8d4b-4c6a-9e21-7b3f2d1c0a99: \
                 report {}; top off-heap: 812.0 MiB array_buffers at handleRequest ← parseBody ← onData ← …; \
                 verdict: too few samples (0) to judge the growth: trace for at least 3 intervals",
                w.json.display()
            )
        );
        let back = report::json::parse(&std::fs::read(&w.json).unwrap()).unwrap();
        assert_eq!(back, r);
        let oom = back.oom.unwrap();
        assert_eq!(
            (oom.anon_rss_bytes, oom.memory_limit_bytes),
            (1 << 30, Some(1 << 30))
        );
        assert!(std::fs::read_to_string(&w.txt)
            .unwrap()
            .contains("handleRequest"));
        // The chart beside them marks the kill (the report's time) and the
        // limit (report_chart.rs checks the drawing itself).
        let svg = w.svg.as_ref().expect("a chart");
        assert_eq!(svg, &dir.path().join(format!("{stem}.svg")));
        let chart = std::fs::read_to_string(svg).unwrap();
        assert!(
            chart.contains(&format!(
                "<g data-series=\"oom_kill\" data-kind=\"marker\" data-t-secs=\"{}\">",
                r.duration_secs
            )),
            "{chart}"
        );
        assert!(chart.contains("OOM kill at 3.5 s"), "{chart}");
        assert!(chart.contains(&format!(
            "<g data-series=\"memory_limit\" data-kind=\"line\" data-bytes=\"{}\">",
            1u64 << 30
        )));
        // Exactly the three files: no temporaries left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn preoom_snapshot_and_empty_report() {
        let dir = tempfile::tempdir().unwrap();
        let w = write_preoom(
            dir.path(),
            &Report::new(Mode::Resident),
            &Owner::Cgroup("web.service".into()),
            922 << 20,
            1 << 30,
            at(0),
        )
        .unwrap();
        assert_eq!(
            w.json,
            dir.path().join("preoom-web.service-19700101T000000Z.json")
        );
        assert_eq!(
            w.log_line,
            format!(
                "offheap: memory at 90% of the 1.0 GiB limit in cgroup web.service (922.0 MiB used): \
                 snapshot {}; top off-heap: no off-heap stack recorded",
                w.json.display()
            )
        );
        // No process, no chart; the snapshot itself is written.
        assert_eq!(w.svg, None);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn unwritable_dir_is_an_error_not_a_panic() {
        let r = report();
        let e = write_postmortem(Path::new("/proc/no-such-dir"), &r, &Owner::Host, at(0));
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("/proc/no-such-dir/oom-host-0-"));
    }
}
