//! The culprit: the top growing stack of the buckets that grow, named by
//! its first user frame (`report::frames::first_user_frame`). Stacks are
//! ranked by their growth over the last window when the mode measures it
//! (resident mode), else by their live bytes (malloc mode's live bytes are
//! what was allocated while traced and not freed).
use serde::{Deserialize, Serialize};

use super::super::{
    frames::{first_user_frame, short_name, UserKind},
    Bucket, StackReport,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CulpritKind {
    Js,
    Addon,
    Native,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Culprit {
    /// The frame as the report names it (symbol).
    pub frame: String,
    /// A short name: the JS function with its script and line, or the
    /// native symbol.
    pub function: String,
    pub kind: CulpritKind,
    pub bucket: Bucket,
    pub live_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_bytes_per_sec: Option<f64>,
}

pub fn culprit(stacks: &[StackReport], wanted: impl Fn(Bucket) -> bool) -> Option<Culprit> {
    let candidates = stacks
        .iter()
        .filter(|s| s.bucket.is_some_and(&wanted) && s.live_bytes > 0);
    let growing = candidates
        .clone()
        .filter(|s| s.growth_bytes_per_sec.is_some_and(|g| g > 0.0))
        .max_by(|a, b| {
            a.growth_bytes_per_sec
                .unwrap_or(0.0)
                .total_cmp(&b.growth_bytes_per_sec.unwrap_or(0.0))
        });
    let top = growing.or_else(|| candidates.max_by_key(|s| s.live_bytes))?;
    let (frame, kind) = first_user_frame(&top.frames)?;
    Some(Culprit {
        frame: frame.display_name(),
        function: short_name(frame),
        kind: match kind {
            UserKind::Js => CulpritKind::Js,
            UserKind::Addon => CulpritKind::Addon,
            UserKind::Native => CulpritKind::Native,
        },
        bucket: top.bucket.unwrap_or(Bucket::Other),
        live_bytes: top.live_bytes,
        growth_bytes_per_sec: top.growth_bytes_per_sec,
    })
}
