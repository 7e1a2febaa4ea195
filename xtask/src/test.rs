//! `cargo xtask test`: setup, build everything, then every unit and end-to-end test,
//! serially (BPF tests share kernel state: maps pinned by name, tracefs, uprobes on
//! the same libc). Ends with one `xtask: N passed, M failed` line.
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::proc::{cargo, describe, run_cmd};
use crate::setup;

/// Counts from cargo test's `test result:` lines, summed over every test binary.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl Tally {
    /// Adds one `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; ...` line;
    /// other lines are ignored.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

pub fn run() -> Result<()> {
    setup::run()?;
    // CI-friendly: backtraces on panic, no colour codes in logs.
    std::env::set_var("RUST_BACKTRACE", "1");
    std::env::set_var("CARGO_TERM_COLOR", "never");

    println!("xtask: cargo build --workspace --all-targets");
    run_cmd(cargo().args(["build", "--workspace", "--all-targets"]))?;

    // --workspace: the e2e crate (offheap-e2e) is not a default member.
    // --no-fail-fast: one failing binary must not hide the others' results.
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--workspace",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ])
    .stdout(Stdio::piped());
    let what = describe(&cmd);
    println!("xtask: {what}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{what}`"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut tally = Tally::default();
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        tally.add_line(&line);
        writeln!(out, "{line}")?;
    }
    drop(out);
    let status = child.wait()?;

    let skipped = if tally.ignored > 0 {
        format!(", {} skipped", tally.ignored)
    } else {
        String::new()
    };
    println!(
        "xtask: {} passed, {} failed{skipped}",
        tally.passed, tally.failed
    );
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    if tally.failed > 0 {
        bail!("{} tests failed", tally.failed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_sums_result_lines() {
        let mut t = Tally::default();
        t.add_line("running 3 tests");
        t.add_line("test foo ... ok");
        t.add_line("test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.add_line("test result: FAILED. 5 passed; 2 failed; 0 ignored; 0 measured; 4 filtered out; finished in 1.20s");
        assert_eq!(
            t,
            Tally {
                passed: 8,
                failed: 2,
                ignored: 1
            }
        );
    }
}
