//! The kernel memory of the unwind tables of one process's modules, as the
//! tracer loads them (`probes::unwind::UnwindTables` into the BPF object's
//! maps; bytes are each table array's `memlock`, what the kernel charges):
//! `cargo run --release -p tracer --example unwind_memory PID`. Needs root.
//! `cargo xtask bench --only unwind` runs it on node with an addon loaded.
//!
//! Prints one line per module with a table,
//! `unwind_memory module=PATH rows=N bytes=B`, then
//! `unwind_memory total rows=N bytes=B modules=M frame_pointer=F failed=X`.
use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use aya::EbpfLoader;
use offheap::probes::{
    object::OBJECT,
    unwind::{ElfFile, UnwindTables, DEFAULT_CAP_BYTES},
};
use tracer_common::maps;

fn main() -> Result<()> {
    let Some(pid) = std::env::args().nth(1) else {
        bail!("usage: unwind_memory PID");
    };
    let pid: u32 = pid.parse().context("PID must be a number")?;
    // Only the unwind maps are used: the others shrink to one entry, so
    // that loading the object pins little besides the tables.
    let mut loader = EbpfLoader::new();
    loader.allow_unsupported_maps();
    for name in [
        maps::ALLOCS,
        maps::STACK_STATS,
        maps::HASHED_STACKS,
        maps::FAULT_PAGES,
        maps::FAULT_SKIP,
    ] {
        loader.map_max_entries(name, 1);
    }
    let mut ebpf = loader.load(OBJECT).context("loading the BPF object")?;
    let mut tables = UnwindTables::new(&mut ebpf, DEFAULT_CAP_BYTES)?;
    tables.add_process(pid)?;

    // Which file each loaded table is of: the modules are keyed by build-id.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut paths = HashMap::new();
    for path in maps
        .lines()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains('x')))
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/'))
    {
        let root_path = format!("/proc/{pid}/root{path}");
        if let Ok(elf) = ElfFile::open(root_path.as_ref()) {
            paths.insert(elf.id.clone(), path.to_string());
        }
    }
    for f in tables.figures() {
        let name = paths
            .get(&f.id)
            .cloned()
            .unwrap_or_else(|| f.id.to_string());
        println!(
            "unwind_memory module={name} rows={} bytes={}",
            f.rows, f.bytes
        );
    }
    let c = tables.counters;
    println!(
        "unwind_memory total rows={} bytes={} modules={} frame_pointer={} failed={}",
        c.rows, c.table_bytes, c.modules_loaded, c.modules_frame_pointer, c.modules_failed
    );
    Ok(())
}
