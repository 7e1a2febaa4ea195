//! Symbolization benchmark: `cargo run --release -p tracer --example symbench [PID] [STACKS] [DEPTH]`.
//!
//! Without a PID it starts `node` and benchmarks that. Builds STACKS (10,000)
//! synthetic stacks of DEPTH (16) frames from real text addresses of the
//! process's executable, then times capture (first parse) and report assembly
//! (symbolize + classify) separately. Prints one line the xtask bench can parse:
//! `symbench stacks=... frames=... unique=... named=... capture_ms=... symbolize_ms=...`
use std::process::{Command, Stdio};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: usize| -> anyhow::Result<usize> {
        args.get(i).map_or(Ok(default), |s| {
            s.parse()
                .map_err(|_| anyhow::anyhow!("argument {} must be a number, got {s:?}", i + 1))
        })
    };
    let stacks = num(1, 10_000)?;
    let depth = num(2, 16)?;
    let mut child = None;
    let pid = match args.first().filter(|a| *a != "-") {
        Some(p) => p
            .parse()
            .map_err(|_| anyhow::anyhow!("PID must be a number, got {p:?}"))?,
        None => {
            let mut c = Command::new("node")
                .args(["-e", "console.log('ready'); setInterval(() => {}, 1000)"])
                .stdout(Stdio::piped())
                .spawn()?;
            // Wait until node ran JS, i.e. every startup module is mapped.
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(c.stdout.take().expect("piped")),
                &mut line,
            )?;
            let pid = c.id();
            child = Some(c);
            pid
        }
    };
    let r = offheap::symbols::bench_symbolize(pid, stacks, depth);
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    let r = r?;
    println!(
        "symbench stacks={} frames={} unique={} named={} capture_ms={:.1} symbolize_ms={:.1}",
        r.stacks,
        r.frames,
        r.unique_addresses,
        r.named_frames,
        r.capture.as_secs_f64() * 1e3,
        r.symbolize.as_secs_f64() * 1e3
    );
    Ok(())
}
