use super::*;
use crate::report::{Buckets, Mode, OomInfo, ProcessReport};

fn point(t_secs: f64, rss: u64, ab: u64, conns: Option<u64>) -> SeriesPoint {
    SeriesPoint {
        t_secs,
        rss_bytes: rss,
        buckets: Buckets {
            v8_heap: 10,
            array_buffers: ab,
            node_native: 5,
            ..Buckets::default()
        },
        accepted_connections: conns,
        ..SeriesPoint::default()
    }
}

fn report(series: Vec<SeriesPoint>) -> Report {
    let mut r = Report::new(Mode::Resident);
    r.duration_secs = 12.0;
    r.processes.push(ProcessReport {
        pid: 7,
        comm: "node".into(),
        rss_bytes: 3 << 20,
        buckets: Buckets {
            array_buffers: 2 << 20,
            ..Buckets::default()
        },
        series,
        ..ProcessReport::default()
    });
    r
}

#[test]
fn stacks_in_bucket_order() {
    let p = point(0.0, 0, 100, None);
    assert_eq!(stacked(&p, Bucket::V8Heap), (0, 10));
    assert_eq!(stacked(&p, Bucket::ArrayBuffers), (10, 110));
    assert_eq!(stacked(&p, Bucket::NativeAddon), (110, 110));
    assert_eq!(stacked(&p, Bucket::NodeNative), (110, 115));
    assert_eq!(stacked(&p, Bucket::Other), (115, 115));
}

#[test]
fn requests_per_second_from_each_interval() {
    let none = [point(1.0, 0, 0, None), point(2.0, 0, 0, None)];
    assert!(requests_per_sec(&none).is_empty());
    let s = [
        point(1.0, 0, 0, Some(99)), // its interval's start is unknown
        point(3.0, 0, 0, Some(10)),
        point(3.5, 0, 0, Some(4)),
        point(4.5, 0, 0, None), // a gap in the traffic series
        point(6.5, 0, 0, Some(0)),
    ];
    assert_eq!(
        requests_per_sec(&s),
        vec![(3.0, 5.0), (3.5, 8.0), (6.5, 0.0)]
    );
}

#[test]
fn a_series_draws_its_layers_between_its_ends() {
    let r = report(vec![
        point(4.0, 1 << 20, 1000, Some(0)),
        point(2.0, 2 << 20, 3000, Some(0)), // out of order: sorted
        point(6.0, 1 << 20, 2000, Some(30)),
    ]);
    let p = Panel::of(&r, &r.processes[0]);
    assert_eq!(p.samples, 3);
    assert_eq!(p.x, (2.0, 6.0));
    assert_eq!(
        p.points.iter().map(|s| s.t_secs).collect::<Vec<_>>(),
        [2.0, 4.0, 6.0]
    );
    assert_eq!(p.requests, vec![(4.0, 0.0), (6.0, 15.0)]);
    assert_eq!(p.y_max_bytes, 2.0 * MIB * 1.08);
    assert_eq!(p.y2_max, 15.0 * 1.08);
    assert_eq!(p.layers().last(), Some(&Layer::Requests));
    let f = p.figures(Layer::Area(Bucket::ArrayBuffers));
    assert_eq!(f[1], ("data-max-bytes", "3000".to_string()));
    assert_eq!(f[2], ("data-max-stacked-bytes", "3010".to_string()));
    assert_eq!(
        p.title("resident"),
        "node (pid 7) · resident mode · 3 samples over 4.0 s"
    );
}

#[test]
fn no_series_is_one_column_of_the_final_figures() {
    let r = report(Vec::new());
    let p = Panel::of(&r, &r.processes[0]);
    assert_eq!(p.samples, 0);
    assert_eq!(p.x, (0.0, 12.0));
    assert_eq!(p.points.len(), 2);
    assert_eq!(p.points[0].t_secs, 12.0 - 12.0 / 50.0);
    assert_eq!(p.points[1].t_secs, 12.0);
    assert_eq!(p.points[0].buckets, p.points[1].buckets);
    assert_eq!(p.points[1].rss_bytes, 3 << 20);
    assert!(p.requests.is_empty());
    assert_eq!(p.layers().len(), 7);
    assert!(p
        .title("malloc")
        .ends_with("no time series in this report: the final figures at 12.0 s"));
}

#[test]
fn the_victim_gets_the_kill_and_its_limit() {
    let mut r = report(vec![
        point(0.0, 1 << 20, 0, None),
        point(10.0, 2 << 20, 0, None),
    ]);
    let mut other = r.processes[0].clone();
    other.pid = 8;
    r.processes.push(other);
    r.oom = Some(OomInfo {
        pid: 7,
        memory_limit_bytes: Some(4 << 20),
        ..OomInfo::default()
    });
    let victim = Panel::of(&r, &r.processes[0]);
    assert_eq!(
        victim.kill,
        Some(Kill {
            t_secs: 12.0,
            limit_bytes: Some(4 << 20)
        })
    );
    // Up to the kill, plus room for its label; the limit sets the axis.
    assert_eq!(victim.x, (0.0, 12.0 + 12.0 / 40.0));
    assert_eq!(victim.y_max_bytes, 4.0 * MIB * 1.08);
    assert_eq!(&victim.layers()[7..], [Layer::Limit, Layer::Kill]);
    assert_eq!(
        victim.figures(Layer::Kill)[1],
        ("data-t-secs", "12".to_string())
    );
    assert!(victim.title("resident").ends_with(" · OOM-killed"));
    let bystander = Panel::of(&r, &r.processes[1]);
    assert_eq!(bystander.kill, None);
    assert_eq!(bystander.layers().len(), 7);
}

#[test]
fn text_is_made_safe_for_xml() {
    assert_eq!(
        xml_text("no\u{1}de\u{fffe}\u{ffff}\t"),
        "no\\x01de\\u{fffe}\\u{ffff}\\x09"
    );
    assert_eq!(xml_text("<&>"), "<&>", "markup is plotters' to escape");
}

#[test]
fn an_empty_report_is_an_error() {
    let e = render(&Report::new(Mode::Malloc)).unwrap_err();
    assert_eq!(e.to_string(), "nothing to chart: the report has no process");
}

#[test]
fn panels_are_capped() {
    let mut r = report(Vec::new());
    let p = r.processes[0].clone();
    r.processes = vec![p; MAX_PANELS + 3];
    let svg = String::from_utf8(render(&r).unwrap()).unwrap();
    assert_eq!(svg.matches("<g class=\"panel\"").count(), MAX_PANELS);
    assert!(svg.contains("… and 3 more processes, not drawn (see the JSON report)"));
}
