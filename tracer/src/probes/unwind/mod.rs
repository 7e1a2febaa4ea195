//! Unwind tables for the BPF stack walker (issue 12): from each executable
//! module's `.eh_frame` (through `.eh_frame_hdr`) or `.debug_frame`, rows
//! saying how to find the caller where a frame-pointer step would be wrong,
//! loaded into BPF maps and shared by build-id.
//!
//! # Contract with the walker (tracer-ebpf/include/unwind.bpf.h)
//!
//! **Maps** (defined by unwind.bpf.h, ABI in offheap.h "unwind tables",
//! owned here by [`UnwindTables`]):
//! - `unwind_mappings`: LPM trie, BPF_F_NO_PREALLOC, max
//!   `OFFHEAP_MAX_UNWIND_MAPPINGS` (65536) prefixes. Key `struct
//!   unwind_mapping_key {u32 prefixlen; u32 tgid_be; u64 addr_be}` (tgid and
//!   address big-endian, prefixlen = 32 + address bits); value `struct
//!   unwind_mapping {u64 start, end, bias; u32 module, npages, kind, _pad}`
//!   (40 bytes). Per process: one entry per aligned power-of-two block of each
//!   executable mapping (kind TABLE with the module's slot and bias, FP for a
//!   file with no table, JIT for anonymous executable memory), plus the
//!   catch-all (prefixlen 32, kind NONE): "in no executable mapping". A
//!   process with no entries at all (not added) answers FP everywhere.
//! - `unwind_tables`: array of maps, `OFFHEAP_MAX_UNWIND_MODULES` (1024)
//!   slots, inner maps BPF_MAP_TYPE_ARRAY with BPF_F_INNER_MAP |
//!   BPF_F_MMAPABLE, value 8 bytes (`union unwind_entry`), sized to each
//!   module: entries [0, npages) are `struct unwind_page {u32 first, count}`
//!   (per 4 KiB of code: the rows to search), then the rows, `struct
//!   unwind_row {u32 pc; u8 kind; u8 rbp; s16 cfa}` sorted by pc (`pc` is
//!   `pc - bias`, the offset from the table's page-aligned base).
//!
//! **Per mode**: both maps are used by every mode that walks stacks (malloc
//! uprobes, mmap/brk tracepoints, faults). A mode that walks none sets
//! `unwind_tables` to 1 entry and `unwind_mappings` to 1 before load
//! (`map_max_entries`); neither preallocates (the trie allocates per insert,
//! each table is an array of exactly its rows, the outer array is 8 KiB).
//!
//! **Who fills them, when**: userspace, here.
//! - At attach: [`UnwindTables::add_process`] for each target (before its
//!   probes fire, so its first stacks have tables). It reads
//!   /proc/PID/maps (symbols::read_exec_maps), opens each file through
//!   /proc/PID/map_files (fallback /proc/PID/root), builds or reuses the
//!   module's table (by build-id, else (dev, inode, size, mtime)), and
//!   inserts the prefixes. node + glibc + libstdc++ build in ~50 ms.
//! - Later mappings (dlopen of an addon): the exit of an mmap that maps a
//!   file executable, for a target, sends `OFFHEAP_EV_EXEC_MAP` on the
//!   events ring (vm.bpf.c in malloc mode, fault.bpf.c's resident_map_exit
//!   in resident mode). The drain thread (core/events.rs) calls
//!   [`UnwindTables::refresh_process`] as it reads the record, without
//!   waiting for the front end's loop (which may be in a tick for a
//!   second): /proc/PID/maps is read again, the new modules are loaded and
//!   the entries brought up to date (entries no longer mapped are removed).
//!   Until then a frame in the new mapping is walked on a guess of frame
//!   pointers (walk.bpf.c's `unmapped_class`). V8's code pages (anonymous)
//!   need no record: the entries give all anonymous memory to JIT, and the
//!   tick brings the runs up to date when the process's code mappings
//!   change.
//! - On exit/exec: [`UnwindTables::remove_process`] (exec: then add again).
//!   A module no process maps keeps its table until the cap needs the room.
//!
//! **Walker calls** (unwind.bpf.h; see its top comment):
//! `int unwind_find(__u32 tgid, __u64 pc, int leaf, struct unwind_cursor *c)`
//! returns UNWIND_FP, UNWIND_TABLE (c->row is the rule), UNWIND_JIT or
//! UNWIND_NONE; `leaf` is 1 for the first frame and after a signal frame (pc
//! looked up as is), else 0 (pc - 1). `int unwind_step(int class, const
//! struct unwind_cursor *c, struct unwind_regs *r)` moves r = {pc, sp, bp} to
//! the caller: 0 (caller's pc is a return address), 2 (signal frame: next is
//! a leaf), 1 (END row: the stack is complete), < 0 (STOP row or unreadable).
//! Zero the cursor before a walk. Stack (verifier's "stack depth"): the
//! cursor (56 bytes) and regs (24) live in the caller's frame; unwind_find
//! takes 64 bytes, its search callback 8. The test walker's whole chain is
//! 128 + 72 + 64 + 8 = 272 of the 512 bytes.
//!
//! **Verifier cost** (vstat, kernel 6.18): unwind_find is a global function,
//! checked once per program (~230 insns). The test walker
//! (tracer/tests/bpf/unwind_walk.bpf.c: a 32-frame bpf_loop calling
//! unwind_find + unwind_step per frame) takes 3,618 processed insns, 5-11 ms
//! to load; with unwind_find inlined instead, 11,198. unwind_step reads the
//! stack with bpf_probe_read_user only: reading from a stack copy when it
//! holds the word made the same walk 24k-42k insns.
//!
//! # The rule and its consequence for leaf frames
//! See cfi.rs: functions that set up a frame pointer keep only their
//! prologue rows; everything after the frame setup is the frame-pointer
//! step. Return addresses (all frames but the first) get the exact CFI rule
//! (tests/unwind_tables.rs: every return address of glibc and libstdc++ and
//! 3 MiB of node); a first frame at the `ret` after `leave`/`pop %rbp` of
//! such a function skips its direct caller (173 of glibc's 336k
//! instructions, 269 of libstdc++'s 260k).
//!
//! # Why gimli, not framehop
//! framehop's x86_64 `UnwindRuleX86_64` is close to these rows, but it
//! converts CFI lazily, one address at a time during an unwind, and keeps
//! that conversion private: there is no way to list a module's rules by
//! address range, which is what a table needs. It also leaves DWARF
//! expressions (PLT, signal frames, DRAP) to an uncacheable slow path, and
//! pulls gimli 0.32 next to the workspace's 0.31. gimli's UnwindTable gives
//! every row of every FDE directly.
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
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file")]
    Elf {
        path: PathBuf,
        #[source]
        source: object::Error,
    },
    #[error("reading the executable mappings of PID {pid}")]
    Maps {
        pid: u32,
        #[source]
        source: Box<crate::symbols::SymbolError>,
    },
    #[error("BPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("BPF map {what}")]
    Map {
        what: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("an unwind table of 2^32 entries or more")]
    TableTooLarge,
    #[error("mapping an unwind table")]
    Mmap(#[source] std::io::Error),
}
