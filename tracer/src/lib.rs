//! offheap: attribute a Node.js process's memory, on and off the V8 heap, to the
//! code that allocated it. See ../../shared/DESIGN.md for the data flow:
//! probes -> accounting -> symbols -> classify -> report.
pub mod accounting;
pub mod classify;
pub mod cli;
pub mod commands;
pub mod core;
pub mod daemon;
pub mod error;
pub mod probes;
pub mod proc;
pub mod report;
pub mod symbols;
pub mod sync;
