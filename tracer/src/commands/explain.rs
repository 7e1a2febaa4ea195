//! `offheap explain FILE.json`: the verdict of a saved report, per process
//! (the one it was written with; reports older than verdicts get one made
//! from their own figures when read).
use std::fmt::Write;

use super::report::{emit, read_report};
use crate::{cli::ExplainArgs, error::UsageError, report::text::verdict_block};

pub fn run(args: &ExplainArgs) -> anyhow::Result<()> {
    let r = read_report(&args.file)?;
    if r.processes.is_empty() {
        anyhow::bail!(UsageError::new(format!(
            "{} has no process to explain",
            args.file.display()
        )));
    }
    let mut out = String::new();
    for (i, p) in r.processes.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        verdict_block(&mut out, p);
    }
    if let Some(oom) = &r.oom {
        let _ = writeln!(
            out,
            "\nthe report was written when the kernel OOM-killed pid {} ({})",
            oom.pid, oom.comm
        );
    }
    emit(out.as_bytes(), None)
}
