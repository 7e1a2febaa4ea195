//! The Report model and its outputs, one file per format. Outputs only read a
//! `Report`; they know nothing about probes.
pub mod build;
pub mod json;
pub mod model;
pub mod text;
pub mod write;

pub use model::*;

/// Output formats selectable with `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("encoding the report as {0}: {1}")]
    Encode(&'static str, String),
}

/// Options that shape a rendering without changing the data.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// Text output: how many stacks to show per bucket (None: all).
    pub top: Option<usize>,
}

pub fn render(
    report: &Report,
    format: Format,
    opts: &RenderOptions,
) -> Result<Vec<u8>, RenderError> {
    match format {
        Format::Text => Ok(text::render(report, opts).into_bytes()),
        Format::Json => json::render(report),
    }
}
