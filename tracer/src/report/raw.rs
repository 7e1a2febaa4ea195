//! The report model before symbolization: what the accounting produces for
//! each process (return addresses, not names), and `report::build` turns
//! into a `Report`.
use super::{Attribution, Bucket, PreexistingLine, Quantiles, SeriesPoint};
use crate::proc::limits::MemoryLimits;

/// One stack as counted: return addresses, innermost (the allocation call) first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawStack {
    /// Return addresses, innermost first; see `leaf_is_ip` for `ips[0]`.
    pub ips: Vec<u64>,
    /// `ips[0]` is the interrupted instruction itself (a page fault), not a
    /// return address. Return addresses point after their call, so they are
    /// symbolized at `addr - 1` to name the call's line (and the right
    /// function when the call is the last instruction of one).
    pub leaf_is_ip: bool,
    pub live_bytes: u64,
    pub live_allocs: u64,
    pub total_bytes: u64,
    pub total_allocs: u64,
    pub attribution: Option<Attribution>,
    pub growth_bytes_per_sec: Option<f64>,
    pub sizes: Option<Quantiles>,
    pub lifetimes_ns: Option<Quantiles>,
    /// Set when the accounting already knows the bucket (an aggregate of
    /// evicted stacks has no frames to classify).
    pub bucket: Option<Bucket>,
    /// How many smaller stacks this one aggregates (0: a real stack).
    pub folded_stacks: u64,
    /// The walk stopped before the outermost frame (see
    /// `StackReport::truncated`).
    pub truncated: bool,
    /// Malloc mode: resident bytes inside the address space this stack
    /// reserved (PROT_NONE mappings, committed later by mprotect). They are
    /// memory of the V8 heap when the stack is V8's page allocator: the
    /// report adds them to `live_bytes` of `v8_heap` stacks only (see
    /// `report::build`); other reservations (thread stacks) are left out,
    /// as malloc mode always did.
    pub reserved_resident: Option<u64>,
}

/// Everything known about one traced process, before symbolization.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawProcess {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub rss_bytes: u64,
    pub exited: bool,
    pub stacks: Vec<RawStack>,
    pub series: Vec<SeriesPoint>,
    pub preexisting: Vec<PreexistingLine>,
    pub reconciliation: Option<String>,
    pub cgroup: Option<String>,
    /// What bounds its memory, as last read while it lived.
    pub limits: Option<MemoryLimits>,
}
