//! `cargo xtask setup`: bring a Debian machine to what the build, tests, demo and
//! bench need. Idempotent: an equipped machine gets one summary line and no action;
//! each action taken prints one line.
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::proc::{describe, is_root, run_cmd, runs};

/// Debian packages, each with the reason it is here.
pub const APT_PACKAGES: &[(&str, &str)] = &[
    ("clang-19", "compiles the BPF programs (tracer/build.rs)"),
    ("llvm-19", "llvm-strip/objdump for BPF objects"),
    (
        "libbpf-dev",
        "bpf_helpers.h, bpf_tracing.h, bpf_core_read.h",
    ),
    ("linux-libc-dev", "kernel UAPI headers for the BPF build"),
    ("libc6-dev", "headers for the C test fixtures"),
    ("gcc", "`cc` for the C test fixtures and addons"),
    ("bpftrace", "the bench floor and cross-checks in tests"),
    ("util-linux", "unshare and setpriv (privilege-drop tests)"),
    ("python3", "helper scripts in tests"),
];

/// PyPI packages the tests need; `python3-pip` is installed only when this is
/// non-empty. The lead extends it.
pub const PIP_PACKAGES: &[&str] = &[];

/// Where the Node headers must be for addon fixtures (`cc -I/usr/include/node`).
const NODE_API_HEADER: &str = "/usr/include/node/node_api.h";

const TRACEFS: &str = "/sys/kernel/tracing";

/// Whether a `dpkg-query -W -f='${Status}'` answer means "installed".
/// Statuses look like `install ok installed`, `hold ok installed`,
/// `deinstall ok config-files`; the last word is the state.
pub fn dpkg_status_installed(status: &str) -> bool {
    status.split_whitespace().last() == Some("installed")
}

fn apt_installed(pkg: &str) -> bool {
    // dpkg-query exits non-zero for a package it never heard of: not installed.
    match Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
    {
        Ok(out) => {
            out.status.success() && dpkg_status_installed(&String::from_utf8_lossy(&out.stdout))
        }
        Err(_) => false,
    }
}

/// The apt packages to install: the fixed list, plus node and its headers when absent.
fn missing_apt_packages() -> Vec<&'static str> {
    let mut missing: Vec<&'static str> = APT_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !apt_installed(p))
        .collect();
    if !PIP_PACKAGES.is_empty() && !apt_installed("python3-pip") {
        missing.push("python3-pip");
    }
    // node may come from Debian (`nodejs`) or NodeSource (also `nodejs`, with the
    // headers); check what the tests use, not which package supplied it.
    if !runs("node", "--version") {
        missing.push("nodejs");
    }
    if !Path::new(NODE_API_HEADER).exists() {
        // Debian's nodejs ships no headers; libnode-dev does. NodeSource's nodejs
        // (which conflicts with libnode-dev) always has them, so never gets here.
        missing.push("libnode-dev");
    }
    missing
}

fn pip_installed(pkg: &str) -> bool {
    Command::new("python3")
        .args(["-m", "pip", "show", "--quiet", pkg])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn pip_install(pkg: &str) -> Result<()> {
    println!("setup: pip install {pkg}");
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "pip", "install", "--quiet", pkg]);
    if run_cmd(&mut cmd).is_ok() {
        return Ok(());
    }
    // Debian's python3 refuses system-wide pip installs (PEP 668); a test machine
    // is ours to change, so say so explicitly.
    cmd.arg("--break-system-packages");
    run_cmd(&mut cmd)
}

fn tracefs_mounted() -> bool {
    Path::new(TRACEFS).join("events").exists()
}

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("setup needs root (apt-get, mount, BPF); run it as root, e.g. `sudo -E cargo xtask setup`");
    }
    let mut actions = 0;

    let missing = missing_apt_packages();
    if !missing.is_empty() {
        println!("setup: apt-get update");
        run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
        println!("setup: apt-get install {}", missing.join(" "));
        let mut install = Command::new("apt-get");
        install
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing);
        run_cmd(&mut install)?;
        let still = missing_apt_packages();
        if !still.is_empty() {
            bail!(
                "after `{}` still missing: {}",
                describe(&install),
                still.join(" ")
            );
        }
        actions += 1;
    }

    for pkg in PIP_PACKAGES {
        if !pip_installed(pkg) {
            pip_install(pkg)?;
            actions += 1;
        }
    }

    if !tracefs_mounted() {
        // The tracepoint attach path reads tracefs; a fresh VM or container may
        // not have it mounted.
        println!("setup: mount -t tracefs nodev {TRACEFS}");
        run_cmd(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]))?;
        actions += 1;
    }

    if actions == 0 {
        println!(
            "setup: nothing to do ({} apt packages, node, {} pip packages present; tracefs mounted)",
            APT_PACKAGES.len(),
            PIP_PACKAGES.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_statuses() {
        assert!(dpkg_status_installed("install ok installed"));
        assert!(dpkg_status_installed("hold ok installed"));
        assert!(!dpkg_status_installed("deinstall ok config-files"));
        assert!(!dpkg_status_installed("install ok half-installed"));
        assert!(!dpkg_status_installed("unknown ok not-installed"));
        assert!(!dpkg_status_installed(""));
    }
}
