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
