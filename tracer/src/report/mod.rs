//! The Report model and its outputs, one file per format. Outputs only read a
//! `Report`; they know nothing about probes.
pub mod build;
pub mod chart;
pub mod diff;
pub mod fmt;
pub mod folded;
pub mod frames;
pub mod hist;
pub mod json;
pub mod live;
pub mod model;
pub mod pprof;
pub mod progress;
pub mod raw;
pub mod svg;
pub mod text;
pub mod verdict;
pub mod write;

pub use model::*;

/// Output formats selectable with `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// For a person: summary per process, then the top stacks per bucket.
    #[default]
    Text,
    /// The `offheap.report.v1` contract.
    Json,
    /// Folded stacks (`outer;…;inner bytes`), the input of flame graph tools.
    Folded,
    /// Gzipped `perftools.profiles.Profile` for `go tool pprof`, Pyroscope, speedscope.
    Pprof,
    /// A flame graph, coloured by bucket.
    Svg,
    /// Memory over time (SVG): buckets stacked, RSS, V8 heap, traffic, the OOM kill.
    Chart,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Folded => "folded",
            Format::Pprof => "pprof",
            Format::Svg => "svg",
            Format::Chart => "chart",
        }
    }
}

/// Which byte count a folded stack or flame graph carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum ValueKind {
    /// Bytes still allocated (resident) when the report was taken.
    #[default]
    Live,
    /// Bytes ever allocated, freed or not.
    Total,
}

impl ValueKind {
    pub fn of(self, s: &StackReport) -> u64 {
        match self {
            ValueKind::Live => s.live_bytes,
            ValueKind::Total => s.total_bytes,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ValueKind::Live => "live",
            ValueKind::Total => "total",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("encoding the report as JSON")]
    Json(#[source] serde_json::Error),
    /// Compressing the pprof profile, or writing a flame graph (inferno
    /// writes through io::Write).
    #[error("encoding the report as {format}")]
    Io {
        format: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The view has nothing to show: a flame graph of no bytes, a diff as a
    /// profile.
    #[error("cannot render {format}: {why}")]
    Nothing { format: &'static str, why: String },
    #[error(transparent)]
    Chart(#[from] chart::ChartError),
}

/// Options that shape a rendering without changing the data.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// Text output: how many stacks to show per bucket (None: all).
    pub top: Option<usize>,
    /// Folded and SVG output: live or total bytes.
    pub value: ValueKind,
    /// Text output: fold runs of runtime frames, or show every frame.
    pub frames: text::FrameView,
}

pub fn render(
    report: &Report,
    format: Format,
    opts: &RenderOptions,
) -> Result<Vec<u8>, RenderError> {
    match format {
        Format::Text => Ok(text::render(report, opts).into_bytes()),
        Format::Json => json::render(report),
        Format::Folded => Ok(folded::render(report, opts.value).into_bytes()),
        Format::Pprof => pprof::render(report),
        Format::Svg => svg::render(report, opts.value),
        Format::Chart => Ok(chart::render(report)?),
    }
}
