//! `--format chart`: memory over time, one SVG drawn with plotters (SVG
//! backend): what an SRE looks at first when a Node process grows.
//!
//! What is drawn, per process:
//! - time on x, in seconds since tracing started (the clock of the
//!   report's `series` and of its `duration_secs`);
//! - the buckets as stacked areas, in `Bucket::ALL` order (`v8_heap` at the
//!   bottom), on a y axis in MiB;
//! - the RSS line and the V8 heap line (today the `v8_heap` bucket, so it
//!   runs along the top of the lowest area);
//! - requests/s on a second y axis, only when the series carries traffic
//!   (`SeriesPoint::accepted_connections`, per interval);
//! - for an OOM post-mortem (`Report::oom`), on the victim's panel: the kill
//!   as a vertical line at `duration_secs` (the agent builds the report when
//!   the kernel's `oom/mark_victim` event arrives) and the cgroup's memory
//!   limit as a horizontal line;
//! - a legend naming every line and area, with units.
//!
//! Choices:
//! - Several processes: one panel per process, stacked vertically in the
//!   same SVG, in report order; at most [`MAX_PANELS`], the rest named in a
//!   last line (their figures stay in the JSON).
//! - Fewer than two samples (a trace shorter than two intervals): the one
//!   sample is drawn as a narrow column ending at it; without any series
//!   (a report from elsewhere), the final buckets and RSS are that sample,
//!   at `duration_secs`. The panel's title says which. A report without any
//!   process is an error (exit 3 from `offheap report`).
//! - One vertex per sample, no downsampling: what is drawn is what was
//!   measured.
//!
//! For machines (and the tests), every layer is an SVG group carrying its
//! own figures: `<g data-series="rss" data-kind="line" data-max-bytes=…>`
//! around plotters' elements of that layer, inside a panel group whose
//! `data-px-*` attributes give the pixels that the axis ends map to, so a
//! drawn coordinate can be turned back into bytes. Text from the target
//! (comm) goes through plotters, which escapes `<>&"'`; characters XML 1.0
//! forbids (controls, U+FFFE/U+FFFF) are replaced by `?` first.
mod draw;

use super::{
    fmt::{clean, human_bytes},
    Bucket, Report, SeriesPoint,
};

/// Panels drawn at most; a cgroup's pre-OOM snapshot can hold many workers.
pub const MAX_PANELS: usize = 16;
/// Bytes per MiB, the unit of the memory axis.
pub const MIB: f64 = 1_048_576.0;

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("nothing to chart: the report has no process")]
    NoProcess,
    /// plotters writing into a String: only a layout error can get here.
    #[error("drawing the chart")]
    Draw(#[source] plotters::drawing::DrawingAreaErrorKind<std::io::Error>),
}

/// The kill of a post-mortem, as drawn on the victim's panel.
#[derive(Clone, Debug, PartialEq)]
pub struct Kill {
    pub t_secs: f64,
    pub limit_bytes: Option<u64>,
}

/// One process's chart, in the units it is drawn in.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    pub pid: u32,
    /// Safe for XML text.
    pub comm: String,
    /// The samples as drawn, by time; at least two (one sample is drawn as
    /// a narrow column: the same point twice).
    pub points: Vec<SeriesPoint>,
    /// Samples in the report's series (0: drawn from the final buckets).
    pub samples: usize,
    /// (t_secs, requests per second), empty when the series has no traffic.
    pub requests: Vec<(f64, f64)>,
    pub kill: Option<Kill>,
    pub x: (f64, f64),
    /// Top of the memory axis, bytes.
    pub y_max_bytes: f64,
    /// Top of the requests axis, requests/s (0 without traffic).
    pub y2_max: f64,
}

/// The layers of a panel, bottom to top; each becomes one SVG group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Area(Bucket),
    V8Heap,
    Rss,
    Requests,
    Limit,
    Kill,
}

impl Layer {
    /// The `data-series` name.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Area(b) => b.as_str(),
            Layer::V8Heap => "v8_heap",
            Layer::Rss => "rss",
            Layer::Requests => "requests",
            Layer::Limit => "memory_limit",
            Layer::Kill => "oom_kill",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Layer::Area(b) => b.as_str(),
            Layer::V8Heap => "V8 heap",
            Layer::Rss => "RSS",
            Layer::Requests => "requests/s",
            Layer::Limit => "memory limit",
            Layer::Kill => "OOM kill",
        }
    }
}

/// Text from the target, made safe for an XML text node: XML 1.0 allows no
/// C0 controls but tab/LF/CR and no U+FFFE/U+FFFF, which `clean` escapes.
pub fn xml_text(s: &str) -> String {
    clean(s)
}

/// Requests per second at each sample from the second on: the connections
/// accepted in the interval ending there over its length. The first
/// sample's interval has no known start (a watch target joins the agent's
/// clock late), so it gives no rate. Empty when no sample has traffic.
pub fn requests_per_sec(points: &[SeriesPoint]) -> Vec<(f64, f64)> {
    if points.iter().all(|p| p.accepted_connections.is_none()) {
        return Vec::new();
    }
    points
        .windows(2)
        .filter_map(|w| {
            let dt = w[1].t_secs - w[0].t_secs;
            let n = w[1].accepted_connections?;
            (dt > 0.0).then(|| (w[1].t_secs, n as f64 / dt))
        })
        .collect()
}

/// Stacked bounds of `bucket` at a sample: (below it, its top), bytes.
pub fn stacked(p: &SeriesPoint, bucket: Bucket) -> (u64, u64) {
    let mut low = 0;
    for b in Bucket::ALL {
        let v = p.buckets.get(b);
        if b == bucket {
            return (low, low + v);
        }
        low += v;
    }
    (low, low)
}

impl Panel {
    pub fn of(report: &Report, p: &super::ProcessReport) -> Panel {
        let mut points: Vec<SeriesPoint> = p
            .series
            .iter()
            .filter(|s| s.t_secs.is_finite())
            .cloned()
            .collect();
        points.sort_by(|a, b| a.t_secs.total_cmp(&b.t_secs));
        let samples = points.len();
        if points.is_empty() {
            points.push(SeriesPoint {
                t_secs: report.duration_secs.max(0.0),
                rss_bytes: p.rss_bytes,
                buckets: p.buckets,
                ..SeriesPoint::default()
            });
        }
        let requests = requests_per_sec(&points);
        let kill = report
            .oom
            .as_ref()
            .filter(|o| o.pid == p.pid)
            .map(|o| Kill {
                t_secs: report.duration_secs,
                limit_bytes: o.memory_limit_bytes,
            });
        let first = points[0].t_secs;
        let mut last = points[points.len() - 1].t_secs;
        if let Some(k) = &kill {
            last = last.max(k.t_secs);
        }
        // From tracing's start when the one point is the final figures; a
        // lone real sample of a watch target has no known start.
        let start = match (samples, points.len()) {
            (0, _) => first.min(0.0),
            (_, 1) => first - 1.0,
            _ => first,
        };
        let mut x = (start, last.max(start + 1.0));
        if kill.is_some() {
            // Room right of the kill line for its label.
            x.1 += (x.1 - x.0) / 40.0;
        }
        if points.len() == 1 {
            // A column a fiftieth of the axis wide, ending at the sample.
            let only = points[0].clone();
            let t_secs = only.t_secs - (x.1 - x.0) / 50.0;
            points.insert(0, SeriesPoint { t_secs, ..only });
        }
        let top = points
            .iter()
            .map(|s| s.rss_bytes.max(s.buckets.total()))
            .chain(kill.as_ref().and_then(|k| k.limit_bytes))
            .max()
            .unwrap_or(0);
        let y2 = requests.iter().map(|r| r.1).fold(0.0, f64::max);
        Panel {
            pid: p.pid,
            comm: xml_text(&p.comm),
            points,
            samples,
            requests,
            kill,
            x,
            // Headroom above the highest line, and at least 1 MiB of axis.
            y_max_bytes: (top as f64 * 1.08).max(MIB),
            y2_max: if y2 > 0.0 { y2 * 1.08 } else { 0.0 },
        }
    }

    /// The layers this panel draws, bottom to top.
    pub fn layers(&self) -> Vec<Layer> {
        let mut l: Vec<Layer> = Bucket::ALL.iter().map(|&b| Layer::Area(b)).collect();
        l.extend([Layer::V8Heap, Layer::Rss]);
        if !self.requests.is_empty() {
            l.push(Layer::Requests);
        }
        if let Some(k) = &self.kill {
            if k.limit_bytes.is_some() {
                l.push(Layer::Limit);
            }
            l.push(Layer::Kill);
        }
        l
    }

    /// `data-*` attributes of a layer's group: its figures, exact.
    pub fn figures(&self, layer: Layer) -> Vec<(&'static str, String)> {
        let bytes = |f: &dyn Fn(&SeriesPoint) -> u64| self.max_bytes(f).to_string();
        match layer {
            Layer::Area(b) => vec![
                ("data-kind", "area".into()),
                ("data-max-bytes", bytes(&|s| s.buckets.get(b))),
                ("data-max-stacked-bytes", bytes(&|s| stacked(s, b).1)),
            ],
            Layer::V8Heap => vec![
                ("data-kind", "line".into()),
                ("data-max-bytes", bytes(&|s| s.buckets.v8_heap)),
            ],
            Layer::Rss => vec![
                ("data-kind", "line".into()),
                ("data-max-bytes", bytes(&|s| s.rss_bytes)),
            ],
            Layer::Requests => vec![
                ("data-kind", "line".into()),
                ("data-axis", "right".into()),
                ("data-max-per-sec", self.max_requests().to_string()),
            ],
            Layer::Limit => vec![
                ("data-kind", "line".into()),
                (
                    "data-bytes",
                    self.kill
                        .as_ref()
                        .and_then(|k| k.limit_bytes)
                        .unwrap_or(0)
                        .to_string(),
                ),
            ],
            Layer::Kill => vec![
                ("data-kind", "marker".into()),
                (
                    "data-t-secs",
                    self.kill.as_ref().map_or(0.0, |k| k.t_secs).to_string(),
                ),
            ],
        }
    }

    fn max_bytes(&self, f: impl Fn(&SeriesPoint) -> u64) -> u64 {
        self.points.iter().map(f).max().unwrap_or(0)
    }

    fn max_requests(&self) -> f64 {
        self.requests.iter().map(|r| r.1).fold(0.0, f64::max)
    }

    /// A layer's legend line: what it is, its unit, its highest value.
    pub fn legend(&self, l: Layer) -> String {
        let name = l.label();
        match l {
            Layer::Area(b) => format!(
                "{name} (stacked) · max {}",
                human_bytes(self.max_bytes(|s| s.buckets.get(b)))
            ),
            Layer::V8Heap => format!(
                "{name} · max {}",
                human_bytes(self.max_bytes(|s| s.buckets.v8_heap))
            ),
            Layer::Rss => format!(
                "{name} · max {}",
                human_bytes(self.max_bytes(|s| s.rss_bytes))
            ),
            Layer::Requests => format!("{name} (right axis) · max {:.1}", self.max_requests()),
            Layer::Limit => format!(
                "{name} {}",
                human_bytes(self.kill.as_ref().and_then(|k| k.limit_bytes).unwrap_or(0))
            ),
            Layer::Kill => format!(
                "{name} at {:.1} s",
                self.kill.as_ref().map_or(0.0, |k| k.t_secs)
            ),
        }
    }

    pub fn title(&self, mode: &str) -> String {
        let what = match self.samples {
            0 => format!(
                "no time series in this report: the final figures at {:.1} s",
                self.points.last().map_or(0.0, |s| s.t_secs)
            ),
            1 => "one sample".to_string(),
            n => format!(
                "{n} samples over {:.1} s",
                self.points[n - 1].t_secs - self.points[0].t_secs
            ),
        };
        format!(
            "{} (pid {}) · {mode} mode · {what}{}",
            self.comm,
            self.pid,
            if self.kill.is_some() {
                " · OOM-killed"
            } else {
                ""
            }
        )
    }
}

/// The chart of a report: one panel per process (at most [`MAX_PANELS`]).
pub fn render(report: &Report) -> Result<Vec<u8>, ChartError> {
    if report.processes.is_empty() {
        return Err(ChartError::NoProcess);
    }
    let panels: Vec<Panel> = report
        .processes
        .iter()
        .take(MAX_PANELS)
        .map(|p| Panel::of(report, p))
        .collect();
    let left_out = report.processes.len() - panels.len();
    draw::svg(report.mode.as_str(), &panels, left_out)
        .map(String::into_bytes)
        .map_err(ChartError::Draw)
}

#[cfg(test)]
mod tests;
