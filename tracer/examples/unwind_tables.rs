//! Prints the unwind tables' rows and bytes for modules (default: node,
//! glibc, libstdc++): `cargo run --release --example unwind_tables [FILE...]`.
use std::path::PathBuf;

use offheap::probes::unwind::{cfi, ElfFile, Table};

fn main() {
    let mut files: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if files.is_empty() {
        files = [
            "/usr/bin/node",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libstdc++.so.6",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
    }
    let mut total = 0;
    for f in &files {
        let elf = match ElfFile::open(f) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("{e}");
                continue;
            }
        };
        let t0 = std::time::Instant::now();
        let (rows, st) = cfi::module_rows(&elf);
        let table = Table::build(&rows);
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let (nrows, npages, bytes) = match &table {
            Ok(t) => (t.rows(), t.npages, t.bytes()),
            Err(_) => (0, 0, 0),
        };
        total += bytes;
        println!(
            "{}: {} FDEs ({} frame-pointer), {} CFI rows -> {} rows + {} pages = {} bytes ({:.2} MiB); {} unsupported, {} bad FDEs; {:.0} ms",
            f.display(), st.fdes, st.fp_fdes, st.cfi_rows, nrows, npages, bytes, bytes as f64 / 1048576.0,
            st.unsupported_rows, st.bad_fdes, ms
        );
    }
    println!("total: {total} bytes ({:.2} MiB)", total as f64 / 1048576.0);
}
