//! The bench floors: what a bare counting uprobe on malloc+free costs the workload,
//! the price any uprobe-based tool pays before doing anything useful.
//!
//! - `per_pid`: xtask/floor/ (a counting BPF program and a libbpf loader) attached
//!   to the one PID, held before exec until attached: the honest floor, since the
//!   kernel then installs breakpoints in that process only, as offheap does.
//! - `bpftrace`: `bpftrace -c` with a `pid == cpid` predicate. bpftrace 0.17 cannot
//!   narrow a uprobe to one PID (its `-p` does not: measured, the count then included
//!   ~0.9M calls of other processes), so every process on the machine traps while it
//!   runs, which makes it a pessimistic floor on a busy machine.
//!   (Holding node on a stdin gate and attaching with `-p` also made its main thread
//!   count 0.2-0.35M calls instead of the steady 1.07M seen with `-c`.)
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use crate::proc::run_cmd;

/// The built per-PID counter.
pub struct PerPidCounter {
    bin: PathBuf,
    obj: PathBuf,
}

impl PerPidCounter {
    /// Compiles xtask/floor/ into target/xtask-floor/ (clang-19 and libbpf-dev,
    /// which setup installs; about a second).
    pub fn build(root: &Path) -> Result<Self> {
        let src = root.join("xtask/floor");
        let out = root.join("target/xtask-floor");
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let obj = out.join("count.bpf.o");
        let bin = out.join("floor-count");
        // -target bpf has no multiarch default; asm/types.h lives there.
        let multiarch = Command::new("cc")
            .arg("-print-multiarch")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "x86_64-linux-gnu".into());
        run_cmd(
            Command::new("clang-19")
                .args(["-target", "bpf", "-O2", "-g"])
                .arg(format!("-I/usr/include/{multiarch}"))
                .arg("-c")
                .arg(src.join("count.bpf.c"))
                .arg("-o")
                .arg(&obj),
        )?;
        run_cmd(
            Command::new("cc")
                .args(["-O2", "-Wall", "-Wextra"])
                .arg(src.join("floor.c"))
                .arg("-o")
                .arg(&bin)
                .arg("-lbpf"),
        )?;
        Ok(PerPidCounter { bin, obj })
    }

    /// Runs node with `node_args` from `root` under the counter; returns its stdout
    /// (the workload's lines, then `@n: <calls>`). `with_return`: a return probe on
    /// malloc as well (FLOOR_RETURN=1, see floor.c): what a tool that learns each
    /// block's address pays at least, since only malloc's return value has it.
    pub fn run(
        &self,
        root: &Path,
        libc: &Path,
        node_args: &[String],
        with_return: bool,
    ) -> Result<String> {
        let out = Command::new(&self.bin)
            .current_dir(root)
            .env("FLOOR_RETURN", if with_return { "1" } else { "0" })
            .arg(&self.obj)
            .arg(libc)
            .arg("node")
            .args(node_args)
            .stdin(Stdio::null())
            .output()
            .context("could not start floor-count")?;
        checked("floor-count", out)
    }
}

/// Runs node with `node_args` from `root` under bpftrace; returns its stdout.
pub fn bpftrace(root: &Path, libc: &Path, node_args: &[String]) -> Result<String> {
    // bpftrace -c wants one unique binary: PATH has /usr/bin/node and /bin/node
    // (usrmerge), so give it the absolute path.
    let node = which("node").ok_or_else(|| anyhow!("node is not in PATH"))?;
    let script = format!(
        "uprobe:{l}:malloc, uprobe:{l}:free /pid == cpid/ {{ @n = count(); }}",
        l = libc.display()
    );
    let child = std::iter::once(node.display().to_string())
        .chain(node_args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("bpftrace")
        .current_dir(root)
        .args(["-c", &child, "-e", &script])
        .stdin(Stdio::null())
        .output()
        .context("could not start bpftrace")?;
    checked("bpftrace", out)
}

fn checked(what: &str, out: std::process::Output) -> Result<String> {
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty());
        bail!(
            "{what} failed ({}): {}",
            out.status,
            last.unwrap_or("(no output)").trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The libc node really maps, read from a throwaway node's /proc/self/maps.
pub fn node_libc() -> PathBuf {
    Command::new("node")
        .args([
            "-e",
            "process.stdout.write(require('fs').readFileSync('/proc/self/maps', 'utf8'))",
        ])
        .output()
        .ok()
        .and_then(|o| libc_in_maps(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_else(|| PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"))
}

/// The libc path in a /proc/PID/maps text.
fn libc_in_maps(maps: &str) -> Option<PathBuf> {
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libc.so") || n.starts_with("libc-"))
        })
        .map(PathBuf::from)
}

/// `prog`'s absolute path from PATH.
fn which(prog: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libc_in_maps() {
        let maps = "\
55d0c0000000-55d0c4000000 r-xp 00000000 fe:00 1 /usr/bin/node
7f2e51277000-7f2e5129d000 r--p 00000000 fe:00 326279 /usr/lib/x86_64-linux-gnu/libc.so.6
7f2e5129d000-7f2e513f3000 r-xp 00026000 fe:00 326279 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            libc_in_maps(maps),
            Some(PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"))
        );
        assert_eq!(
            libc_in_maps("7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]\n"),
            None
        );
    }
}
