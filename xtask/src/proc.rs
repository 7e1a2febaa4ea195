//! Running child processes: the workspace root, a command's printable form, and
//! "run it and fail with one clear line if it fails".
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// `prog arg1 arg2`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` with inherited stdio; a non-zero exit is an error naming the command.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let what = describe(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{what}`"))?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}

/// `cargo`, the one that runs us when there is one (cargo sets $CARGO for its children).
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

/// Whether we run with effective uid 0 (apt-get, mount and BPF need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail (POSIX).
    unsafe { libc::geteuid() == 0 }
}

/// Whether `prog` runs at all (found in PATH and executable).
pub fn runs(prog: &str, arg: &str) -> bool {
    Command::new(prog)
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The stdout of `node SCRIPT` run untraced in `root` (a bench workload),
/// failing when node does.
pub fn node_stdout(root: &Path, script: &str) -> Result<String> {
    let out = Command::new("node")
        .arg(script)
        .current_dir(root)
        .output()
        .context("could not start node")?;
    anyhow::ensure!(
        out.status.success(),
        "node {script} failed ({})",
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
