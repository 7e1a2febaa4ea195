use super::*;
use crate::report::{Buckets, Frame, FrameKind, SeriesPoint, SizeFlag, StackReport};
use crate::report::{FlagSource, MemoryLimits};

fn point(t: f64, v8_mib: u64, ab_mib: u64, traffic: Option<u64>) -> SeriesPoint {
    SeriesPoint {
        t_secs: t,
        rss_bytes: 60 * MIB,
        buckets: Buckets {
            v8_heap: v8_mib * MIB,
            array_buffers: ab_mib * MIB,
            ..Buckets::default()
        },
        received_bytes: traffic,
        accepted_connections: traffic.map(|b| b / 100),
        ..SeriesPoint::default()
    }
}

fn js_stack(bucket: Bucket, live_mib: u64, function: &str) -> StackReport {
    StackReport {
        bucket: Some(bucket),
        live_bytes: live_mib * MIB,
        frames: vec![
            Frame {
                addr: "0x1".into(),
                symbol: Some("calloc".into()),
                module: Some("/usr/lib/x86_64-linux-gnu/libc.so.6".into()),
                ..Frame::default()
            },
            Frame {
                addr: "0x2".into(),
                symbol: Some(format!("JS:^{function} /app/app.js:3:23")),
                file: Some("/app/app.js".into()),
                kind: FrameKind::Js,
                ..Frame::default()
            },
        ],
        ..StackReport::default()
    }
}

fn process(series: Vec<SeriesPoint>, stacks: Vec<StackReport>) -> ProcessReport {
    ProcessReport {
        pid: 42,
        comm: "node".into(),
        buckets: series.last().map(|s| s.buckets).unwrap_or_default(),
        series,
        stacks,
        ..ProcessReport::default()
    }
}

const TRAFFIC: [u64; 8] = [0, 9000, 9000, 9000, 0, 0, 0, 0];

#[test]
fn a_buffer_cache_kept_after_traffic_is_off_heap_growth_at_its_js_function() {
    let ab = [1, 20, 40, 60, 60, 60, 60, 60];
    let series = ab
        .iter()
        .enumerate()
        .map(|(i, a)| point(i as f64, 5, *a, Some(TRAFFIC[i])))
        .collect();
    let v = judge(
        &process(
            series,
            vec![js_stack(Bucket::ArrayBuffers, 59, "cacheResponse")],
        ),
        Mode::Resident,
    );
    assert_eq!(v.kind, Kind::OffHeapGrowth);
    assert_eq!(v.shape.kind, ShapeKind::RetainedAfterLoad);
    let c = v.culprit.as_ref().unwrap();
    assert_eq!(
        (c.function.as_str(), c.kind, c.bucket),
        (
            "cacheResponse (/app/app.js:3:23)",
            CulpritKind::Js,
            Bucket::ArrayBuffers
        )
    );
    assert_eq!(
        v.headline,
        "off-heap grows: +59.0 MiB in 7 s (array_buffers +59.0 MiB), retained after traffic \
         stopped · culprit cacheResponse (/app/app.js:3:23)"
    );
    assert!(v.next_steps[0].starts_with("bound the cache or stream the payload at cacheResponse"));
    assert!(v.next_steps.iter().any(|s| s.contains("will not help")));
    assert!(!v.retention.as_ref().unwrap().known);
}

#[test]
fn memory_that_follows_traffic_down_tracks_load() {
    let ab = [1, 20, 40, 60, 30, 10, 3, 2];
    let series = ab
        .iter()
        .enumerate()
        .map(|(i, a)| point(i as f64, 5, *a, Some(TRAFFIC[i])))
        .collect();
    let v = judge(&process(series, vec![]), Mode::Resident);
    assert_eq!(v.kind, Kind::TracksLoad);
    assert!(
        v.headline
            .starts_with("tracks load, not a leak: rose 59.0 MiB under traffic"),
        "{}",
        v.headline
    );
}

#[test]
fn a_growing_js_heap_asks_for_a_heap_snapshot() {
    let series = (0..8)
        .map(|i| point(i as f64, 10 + 20 * i as u64, 1, None))
        .collect();
    let v = judge(
        &process(series, vec![js_stack(Bucket::V8Heap, 150, "remember")]),
        Mode::Malloc,
    );
    assert_eq!(v.kind, Kind::V8HeapGrowth);
    assert_eq!(v.shape.kind, ShapeKind::Steady);
    assert!(v.next_steps[0].contains("--heapsnapshot-signal=SIGUSR2"));
    assert!(v.next_steps[0].contains("`kill -USR2 42`"));
}

#[test]
fn freed_memory_held_by_glibc_is_retention_not_a_leak() {
    let mut series: Vec<SeriesPoint> = (0..5).map(|i| point(i as f64, 0, 0, None)).collect();
    for (i, p) in series.iter_mut().enumerate() {
        // 20 MiB of live blocks appear, 10 MiB of them are freed and stay
        // resident with 20 MiB more glibc keeps: the live memory gave half
        // back, the RSS did not.
        if i >= 2 {
            p.buckets.other = if i == 2 { 20 * MIB } else { 10 * MIB };
            p.arena_resident_bytes = Some(40 * MIB);
            p.arena_free_bytes = Some(30 * MIB);
        } else {
            p.arena_resident_bytes = Some(0);
            p.arena_free_bytes = Some(0);
        }
    }
    let v = judge(&process(series, vec![]), Mode::Malloc);
    assert_eq!(v.shape.kind, ShapeKind::GivesBack);
    assert_eq!(v.kind, Kind::AllocatorRetention);
    assert_eq!(
        v.headline,
        "glibc holds 30.0 MiB of freed memory (40.0 MiB of its arenas are resident): \
         fragmentation, not a leak"
    );
    assert!(v.next_steps[0].contains("MALLOC_ARENA_MAX=2"));
    assert!(v.findings.iter().any(|f| f.kind == Kind::OffHeapGrowth));
}

#[test]
fn a_heap_limit_too_close_to_the_container_is_a_finding_with_both_numbers() {
    let series = (0..4).map(|i| point(i as f64, 10, 20, None)).collect();
    let mut p = process(series, vec![]);
    p.limits = Some(MemoryLimits {
        node: true,
        host_memory_bytes: 24 << 30,
        cgroup_limit_bytes: Some(256 * MIB),
        max_old_space_size: Some(SizeFlag {
            mib: 240,
            from: FlagSource::CommandLine,
        }),
        ..MemoryLimits::default()
    });
    let v = judge(&p, Mode::Resident);
    assert_eq!(v.kind, Kind::NoGrowth);
    let f = v
        .findings
        .iter()
        .find(|f| f.kind == Kind::HeapLimitExceedsContainer)
        .unwrap();
    assert!(
        f.message.contains("243.0 MiB") && f.message.contains("256.0 MiB"),
        "{}",
        f.message
    );
    assert!(v.next_steps.iter().any(|s| s.contains("at most 169")));
}

#[test]
fn two_points_are_too_few() {
    let v = judge(
        &process(
            vec![point(0.0, 1, 1, None), point(1.0, 50, 50, None)],
            vec![],
        ),
        Mode::Resident,
    );
    assert_eq!(v.kind, Kind::InsufficientData);
    assert_eq!(lines(&v)[0], v.headline);
}
