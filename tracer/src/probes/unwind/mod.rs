//! Unwind tables for the BPF stack walker (issue 12). CONTRACT: written below
//! once the pieces exist.
pub mod cfi;
pub mod elf;
pub mod loader;
pub mod mappings;
pub mod step;
pub mod table;

use std::path::PathBuf;

pub use cfi::{CfiStats, Row, Rule};
pub use elf::{ElfFile, ModuleId};
pub use loader::{ModuleFigures, UnwindCounters, UnwindTables, DEFAULT_CAP_BYTES};
pub use step::{apply, Frame, Step};
pub use table::{NoTable, Table};

#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file: {source}")]
    Elf {
        path: PathBuf,
        #[source]
        source: object::Error,
    },
    #[error("reading the executable mappings of PID {pid}: {source}")]
    Maps {
        pid: u32,
        #[source]
        source: Box<crate::symbols::SymbolError>,
    },
    #[error("BPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("BPF map {what}: {source}")]
    Map {
        what: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("an unwind table of 2^32 entries or more")]
    TableTooLarge,
    #[error("mapping an unwind table: {0}")]
    Mmap(#[source] std::io::Error),
}
