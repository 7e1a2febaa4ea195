//! Tests of the OOM files and lines.
use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::*;
use crate::{
    core::OomVictim,
    report::{Bucket, Frame, Mode, ProcessReport, StackReport},
};

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
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
