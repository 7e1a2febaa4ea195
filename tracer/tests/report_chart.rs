//! `offheap report FILE.json --format chart` on the committed reports:
//! after.json (malloc mode, 4 samples), oom.json (a resident-mode
//! post-mortem: 8 samples with traffic, killed at its 256 MiB limit).
//!
//! The SVG is parsed by python3's expat (which rejects anything that is not
//! well-formed XML); each layer's group carries its figures, and every drawn
//! maximum is turned back from pixels into bytes with the panel's axis
//! pixels, so the test checks both what the chart says and what it draws.
mod report_support;

use std::{collections::BTreeMap, path::Path, process::Command};

use offheap::report::{Bucket, Report, SeriesPoint};
use report_support::{fixture, load, offheap, offheap_ok};
use serde_json::Value;

const MIB: f64 = 1_048_576.0;

/// Panels of a chart as JSON: their attributes, texts, and per layer its
/// attributes and the vertices of its polygons and polylines.
fn parse(svg: &Path) -> Vec<Value> {
    let script = r#"
import sys, json, xml.etree.ElementTree as ET
ns = '{http://www.w3.org/2000/svg}'
root = ET.parse(sys.argv[1]).getroot()
def points(el):
    out = []
    for e in el.iter():
        if e.tag in (ns + 'polygon', ns + 'polyline'):
            out.append([[float(v) for v in p.split(',')] for p in e.get('points').split()])
    return out
panels = []
for g in root.findall(ns + 'g'):
    layers = [dict(attrs=s.attrib, shapes=points(s), texts=[t.text.strip() for t in s.iter(ns + 'text')])
              for s in g.findall(ns + 'g') if 'data-series' in s.attrib]
    panels.append(dict(attrs=g.attrib, layers=layers,
                       texts=[t.text.strip() for t in g.iter(ns + 'text') if t.text]))
print(json.dumps(panels))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(svg)
        .output()
        .expect("python3 is needed to check the SVG");
    assert!(
        out.status.success(),
        "the chart is not well-formed XML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn chart_of(report: &Path, dir: &Path) -> Vec<Value> {
    let svg = dir.join("mem.svg");
    offheap_ok(&[
        "report",
        report.to_str().unwrap(),
        "--format",
        "chart",
        "--output",
        svg.to_str().unwrap(),
    ]);
    parse(&svg)
}

fn num(v: &Value, attr: &str) -> f64 {
    v["attrs"][attr]
        .as_str()
        .unwrap_or_else(|| panic!("no {attr} in {}", v["attrs"]))
        .parse()
        .unwrap()
}

/// The panel's mapping from pixels back to seconds and bytes (plotters maps
/// linearly between the axis ends whose pixels the panel states).
struct Axes {
    x: (f64, f64, f64, f64),
    y: (f64, f64, f64),
    /// Pixels of the right axis's zero and top, and its top value.
    y2: Option<(f64, f64, f64)>,
}

impl Axes {
    fn of(panel: &Value) -> Axes {
        let y2 = num(panel, "data-y2-max-per-sec");
        Axes {
            x: (
                num(panel, "data-px-x-min"),
                num(panel, "data-px-x-max"),
                num(panel, "data-x-min-secs"),
                num(panel, "data-x-max-secs"),
            ),
            y: (
                num(panel, "data-px-y-zero"),
                num(panel, "data-px-y-max"),
                num(panel, "data-y-max-bytes"),
            ),
            y2: (y2 > 0.0).then(|| {
                (
                    num(panel, "data-px-y2-zero"),
                    num(panel, "data-px-y2-max"),
                    y2,
                )
            }),
        }
    }
    fn secs(&self, px: f64) -> f64 {
        let (p0, p1, s0, s1) = self.x;
        s0 + (px - p0) / (p1 - p0) * (s1 - s0)
    }
    fn secs_per_px(&self) -> f64 {
        (self.x.3 - self.x.2) / (self.x.1 - self.x.0)
    }
    fn bytes(&self, py: f64) -> f64 {
        let (zero, top, max) = self.y;
        (zero - py) / (zero - top) * max
    }
    fn bytes_per_px(&self) -> f64 {
        self.y.2 / (self.y.0 - self.y.1)
    }
    fn per_sec(&self, py: f64) -> f64 {
        let (zero, top, max) = self.y2.unwrap();
        (zero - py) / (zero - top) * max
    }
    fn per_sec_per_px(&self) -> f64 {
        let (zero, top, max) = self.y2.unwrap();
        max / (zero - top)
    }
}

fn layer<'a>(panel: &'a Value, name: &str, kind: &str) -> &'a Value {
    panel["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["attrs"]["data-series"] == name && l["attrs"]["data-kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:#}", panel["layers"]))
}

/// Every vertex of a layer's shapes.
fn vertices(l: &Value) -> Vec<(f64, f64)> {
    l["shapes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s.as_array().unwrap())
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

/// The highest drawn point of a layer, in bytes (the smallest y pixel).
fn drawn_max_bytes(axes: &Axes, l: &Value) -> f64 {
    let top = vertices(l).iter().map(|v| v.1).fold(f64::MAX, f64::min);
    axes.bytes(top)
}

/// Every text of a panel: title, axis labels, legend.
fn texts(panel: &Value) -> Vec<&str> {
    panel["texts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

fn max_of(series: &[SeriesPoint], f: impl Fn(&SeriesPoint) -> u64) -> u64 {
    series.iter().map(f).max().unwrap()
}

/// Checks one panel against its process's series: one area per bucket, the
/// RSS and V8 heap lines, each group's maximum exact, and each drawn
/// maximum within one pixel of it.
fn check_memory_layers(panel: &Value, series: &[SeriesPoint]) {
    let axes = Axes::of(panel);
    let px = axes.bytes_per_px();
    let mut below = vec![0u64; series.len()];
    for b in Bucket::ALL {
        let l = layer(panel, b.as_str(), "area");
        let want = max_of(series, |s| s.buckets.get(b));
        assert_eq!(num(l, "data-max-bytes"), want as f64, "{}", b.as_str());
        for (low, s) in below.iter_mut().zip(series) {
            *low += s.buckets.get(b);
        }
        let stacked = *below.iter().max().unwrap();
        assert_eq!(num(l, "data-max-stacked-bytes"), stacked as f64);
        let drawn = drawn_max_bytes(&axes, l);
        assert!(
            (drawn - stacked as f64).abs() <= px,
            "{}: drawn top {drawn} vs stacked max {stacked} (1 px = {px} bytes)",
            b.as_str()
        );
        assert_eq!(l["shapes"].as_array().unwrap().len(), 1, "one polygon");
    }
    for (name, f) in [
        (
            "rss",
            (|s: &SeriesPoint| s.rss_bytes) as fn(&SeriesPoint) -> u64,
        ),
        ("v8_heap", |s: &SeriesPoint| s.buckets.v8_heap),
    ] {
        let l = layer(panel, name, "line");
        let want = max_of(series, f);
        assert_eq!(num(l, "data-max-bytes"), want as f64, "{name}");
        let drawn = drawn_max_bytes(&axes, l);
        assert!(
            (drawn - want as f64).abs() <= px,
            "{name}: {drawn} vs {want}"
        );
        // One vertex per sample, the first and last at the series' ends.
        let v = vertices(l);
        assert_eq!(v.len(), series.len(), "{name}");
        let (t0, t1) = (series[0].t_secs, series[series.len() - 1].t_secs);
        let spx = axes.secs_per_px();
        assert!(
            (axes.secs(v[0].0) - t0).abs() <= spx,
            "{name} starts at {t0}"
        );
        assert!((axes.secs(v[v.len() - 1].0) - t1).abs() <= spx);
    }
}

#[test]
fn chart_of_a_fixture_has_every_bucket_rss_and_v8_heap_at_their_maxima() {
    let dir = tempfile::tempdir().unwrap();
    let panels = chart_of(&fixture("after.json"), dir.path());
    assert_eq!(panels.len(), 1);
    let p = &panels[0];
    let r = load("after.json");
    let series = &r.processes[0].series;
    assert_eq!(p["attrs"]["data-pid"], "2222");
    assert_eq!(p["attrs"]["data-samples"], "4");
    let names: Vec<String> = p["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| format!("{}:{}", l["attrs"]["data-series"], l["attrs"]["data-kind"]))
        .collect();
    // Exactly the five buckets stacked, then the two lines: no traffic, no kill.
    assert_eq!(
        names,
        [
            "\"v8_heap\":\"area\"",
            "\"array_buffers\":\"area\"",
            "\"native_addon\":\"area\"",
            "\"node_native\":\"area\"",
            "\"other\":\"area\"",
            "\"v8_heap\":\"line\"",
            "\"rss\":\"line\"",
        ]
    );
    check_memory_layers(p, series);
    // The fixture's own figures: RSS peaks at 76557024 bytes, the buckets
    // stack up to their final 16557024 (5 MiB of addon leak among them).
    assert_eq!(num(layer(p, "rss", "line"), "data-max-bytes"), 76_557_024.0);
    assert_eq!(
        num(layer(p, "other", "area"), "data-max-stacked-bytes"),
        16_557_024.0
    );
    let texts = texts(p);
    for want in [
        "node (pid 2222) · malloc mode · 4 samples over 22.5 s",
        "MiB",
        "seconds since tracing started",
        "native_addon (stacked) · max 5.0 MiB",
        "RSS · max 73.0 MiB",
        "V8 heap · max 8.0 MiB",
    ] {
        assert!(texts.contains(&want), "{want:?} not in {texts:?}");
    }
}

#[test]
fn postmortem_chart_marks_the_kill_the_limit_and_the_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let panels = chart_of(&fixture("oom.json"), dir.path());
    let r = load("oom.json");
    let (p, series) = (&panels[0], &r.processes[0].series);
    check_memory_layers(p, series);
    let axes = Axes::of(p);

    // The kill: a vertical line at the report's time (40.5 s), labelled.
    let kill = layer(p, "oom_kill", "marker");
    assert_eq!(num(kill, "data-t-secs"), 40.5);
    let v = vertices(kill);
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].0, v[1].0, "vertical");
    assert!((axes.secs(v[0].0) - 40.5).abs() <= axes.secs_per_px());
    assert_eq!(kill["texts"][0], "OOM kill at 40.5 s");
    // The limit: the cgroup's 256 MiB, drawn across at that height.
    let limit = layer(p, "memory_limit", "line");
    assert_eq!(num(limit, "data-bytes"), (256u64 << 20) as f64);
    for (_, y) in vertices(limit) {
        assert!((axes.bytes(y) - 256.0 * MIB).abs() <= axes.bytes_per_px());
    }

    // Traffic on the right axis: 50 more connections per 5 s interval, so
    // 10, 20, ... 80 requests/s from the second sample on.
    let req = layer(p, "requests", "line");
    assert_eq!(req["attrs"]["data-axis"], "right");
    assert_eq!(num(req, "data-max-per-sec"), 80.0);
    let v = vertices(req);
    assert_eq!(v.len(), series.len() - 1);
    let per_px = axes.per_sec_per_px();
    for (i, (_, y)) in v.iter().enumerate() {
        let want = 10.0 * (i + 2) as f64;
        assert!((axes.per_sec(*y) - want).abs() <= per_px, "{i}: {y}");
    }
    let texts = texts(p);
    for want in [
        "node (pid 4321) · resident mode · 8 samples over 35.0 s · OOM-killed",
        "requests/s",
        "requests/s (right axis) · max 80.0",
        "memory limit 256.0 MiB",
        "OOM kill at 40.5 s",
    ] {
        assert!(texts.contains(&want), "{want:?} not in {texts:?}");
    }
}

fn write_report(dir: &Path, r: &Report) -> std::path::PathBuf {
    let p = dir.join("in.json");
    std::fs::write(&p, offheap::report::json::render(r).unwrap()).unwrap();
    p
}

#[test]
fn several_processes_stack_and_hostile_names_stay_well_formed() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = load("after.json");
    let mut second = load("before.json").processes.remove(0);
    // Markup, quotes and characters XML 1.0 forbids, as a comm may hold.
    second.comm = "<w&\"k'>\u{1}\u{fffe}".into();
    r.processes.push(second.clone());
    let panels = chart_of(&write_report(dir.path(), &r), dir.path());
    assert_eq!(panels.len(), 2);
    assert_eq!(panels[0]["attrs"]["data-pid"], "2222");
    assert_eq!(panels[1]["attrs"]["data-pid"], "1111");
    check_memory_layers(&panels[1], &second.series);
    assert_eq!(
        panels[1]["texts"][0],
        "<w&\"k'>\\x01\\u{fffe} (pid 1111) · malloc mode · 4 samples over 22.5 s"
    );
    // Stacked vertically: the second panel's axis sits below the first's.
    assert!(num(&panels[1], "data-px-y-max") > num(&panels[0], "data-px-y-zero"));
}

#[test]
fn a_report_without_series_is_drawn_from_its_final_figures() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = load("after.json");
    r.processes[0].series.clear();
    let p = &r.processes[0];
    let final_point = SeriesPoint {
        t_secs: r.duration_secs,
        rss_bytes: p.rss_bytes,
        buckets: p.buckets,
        ..SeriesPoint::default()
    };
    let panels = chart_of(&write_report(dir.path(), &r), dir.path());
    let panel = &panels[0];
    assert_eq!(panel["attrs"]["data-samples"], "0");
    assert_eq!(panel["attrs"]["data-x-min-secs"], "0");
    assert_eq!(
        panel["texts"][0],
        "node (pid 2222) · malloc mode · no time series in this report: the final figures at 30.0 s"
    );
    // One sample drawn as a narrow column: two vertices of the same value.
    let axes = Axes::of(panel);
    let rss = layer(panel, "rss", "line");
    assert_eq!(num(rss, "data-max-bytes"), p.rss_bytes as f64);
    let v = vertices(rss);
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].1, v[1].1);
    assert!((axes.secs(v[1].0) - 30.0).abs() <= axes.secs_per_px());
    let by_bucket: BTreeMap<&str, f64> = Bucket::ALL
        .iter()
        .map(|b| {
            (
                b.as_str(),
                num(layer(panel, b.as_str(), "area"), "data-max-bytes"),
            )
        })
        .collect();
    for b in Bucket::ALL {
        assert_eq!(by_bucket[b.as_str()], final_point.buckets.get(b) as f64);
    }
}

#[test]
fn nothing_to_chart_is_one_line_and_exit_3_and_diff_refuses_chart() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = load("after.json");
    r.processes.clear();
    let input = write_report(dir.path(), &r);
    let out_path = dir.path().join("none.svg");
    let o = offheap(&[
        "report",
        input.to_str().unwrap(),
        "--format",
        "chart",
        "--output",
        out_path.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "offheap: error: nothing to chart: the report has no process\n"
    );
    assert!(!out_path.exists());

    let before = fixture("before.json");
    let after = fixture("after.json");
    let o = offheap(&[
        "diff",
        before.to_str().unwrap(),
        after.to_str().unwrap(),
        "--format",
        "chart",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "offheap: error: diff writes --format text, json, folded or svg\n"
    );
}
