//! JSON output: the `offheap.report.v1` contract, pretty-printed.
use super::{RenderError, Report};

pub fn render(report: &Report) -> Result<Vec<u8>, RenderError> {
    let mut out = serde_json::to_vec_pretty(report).map_err(RenderError::Json)?;
    out.push(b'\n');
    Ok(out)
}

pub fn parse(bytes: &[u8]) -> Result<Report, serde_json::Error> {
    serde_json::from_slice(bytes)
}
