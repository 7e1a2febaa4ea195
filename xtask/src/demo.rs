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

    // --perf-basic-prof makes node write /tmp/perf-PID.map, so JIT-compiled JS
    // frames get their function names in the report.
    let node_options = match std::env::var("NODE_OPTIONS") {
        Ok(existing) if !existing.is_empty() => format!("{existing} --perf-basic-prof"),
        _ => "--perf-basic-prof".to_string(),
    };
    println!(
        "demo: tracing node demo/leak.js for {duration} s in {} mode (it leaks Buffers, \
         zlib streams and a JS Map every 100 ms)",
        mode.as_str()
    );
    // With --perf-basic-prof, V8 also drops an isolate-*-v8.log into the working
    // directory (and --logfile is not allowed in NODE_OPTIONS): run from the temp
    // directory so the workspace stays clean.
    let mut cmd = std::process::Command::new(&offheap);
    cmd.current_dir(std::env::temp_dir())
        .env("NODE_OPTIONS", node_options)
        // The leaking program ends itself soon after tracing stops, so the
        // demo leaves nothing running behind it.
        .env("LEAK_SECONDS", (duration + 2).to_string())
        .args(["run", "--mode", mode.as_str(), "--top", "3", "--duration"])
        .arg(duration.to_string())
        .args(["--", "node"])
        .arg(&leak);
    run_cmd(&mut cmd)
}
