//! Turns what the kernel side counted into a per-process model of raw stacks
//! (`report::raw`: addresses, not names). Symbolization and classification
//! happen later, in `report::build`, so that this module knows nothing about
//! how reports look.
pub mod arenas;
pub mod counters;
pub mod dist;
pub mod malloc;
pub mod point;
pub mod resident;
pub mod traffic;
pub mod unwind;
pub mod vm;

/// A stack of threadpool work, joined with the stack that queued the work
/// (`StackKey::async_stack`): the worker's frames, `ASYNC_MARKER`, then
/// the queuing stack's. The joined stack is truncated when either walk was.
/// `queued`: the queuing stack's frames and truncation, None for a stack
/// of no queued work (unchanged then).
pub fn join_queued(ips: &mut Vec<u64>, truncated: &mut bool, queued: Option<(&[u64], bool)>) {
    if let Some((frames, t)) = queued {
        ips.push(tracer_common::ASYNC_MARKER);
        ips.extend_from_slice(frames);
        *truncated |= t;
    }
}
