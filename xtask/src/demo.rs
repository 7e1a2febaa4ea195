//! `cargo xtask demo`: trace the bundled leaking Node program and print the report.
use std::path::PathBuf;

use anyhow::{ensure, Result};

use crate::proc::{cargo, run_cmd, workspace_root};
use crate::{setup, TraceMode};

pub fn run(mode: TraceMode, duration: u32, offheap: Option<PathBuf>) -> Result<()> {
    setup::run()?;
    let root = workspace_root();
    let offheap = match offheap {
        Some(path) => path,
        None => {
            println!("demo: cargo build --release -p tracer");
            run_cmd(cargo().args(["build", "--release", "-p", "tracer"]))?;
            root.join("target/release/offheap")
        }
    };
    let leak = root.join("demo/leak.js");
    ensure!(offheap.exists(), "{} was not built", offheap.display());
    ensure!(leak.exists(), "{} is missing", leak.display());

    println!(
        "demo: tracing node demo/leak.js for {duration} s in {} mode (it leaks Buffers, \
         zlib streams and a JS Map every 100 ms)",
        mode.as_str()
    );
    // No node flags: the JS functions are named from V8's own frames (what a
    // production pod gets), and node leaves no /tmp/perf-PID.map or isolate
    // log behind, as --perf-basic-prof did.
    let mut cmd = std::process::Command::new(&offheap);
    cmd.current_dir(&root)
        // The leaking program ends itself soon after tracing stops, so the
        // demo leaves nothing running behind it.
        .env("LEAK_SECONDS", (duration + 2).to_string())
        .args(["run", "--mode", mode.as_str(), "--top", "3", "--duration"])
        .arg(duration.to_string())
        .args(["--", "node"])
        .arg(&leak);
    run_cmd(&mut cmd)
}
