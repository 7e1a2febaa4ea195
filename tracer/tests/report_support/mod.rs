//! Helpers shared by the report_* tests: run the real `offheap` binary on the
//! committed JSON fixtures.
#![allow(dead_code)]
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use offheap::report::{json, Report};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn load(name: &str) -> Report {
    json::parse(&std::fs::read(fixture(name)).unwrap()).unwrap()
}

pub fn offheap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_offheap"))
        .args(args)
        .output()
        .expect("running offheap")
}

/// Runs offheap and returns stdout, failing the test with stderr otherwise.
pub fn offheap_ok(args: &[&str]) -> Vec<u8> {
    let out = offheap(args);
    assert!(
        out.status.success(),
        "offheap {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Sum of a per-stack value over every process of a report.
pub fn sum(r: &Report, f: impl Fn(&offheap::report::StackReport) -> u64) -> u64 {
    r.processes.iter().flat_map(|p| &p.stacks).map(f).sum()
}

/// Installs the independent decoder (npm `pprof-format`, pure JS) once per
/// build directory. Failing to install fails the test: never a silent pass.
pub fn pprof_format() -> &'static Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pprof-format");
        if !dir.join("node_modules/pprof-format/package.json").exists() {
            std::fs::create_dir_all(&dir).unwrap();
            let out = Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir)
                .arg("pprof-format@2.3.2")
                .output()
                .expect("npm is needed to install the pprof decoder");
            assert!(
                out.status.success(),
                "npm install pprof-format failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dir.join("node_modules")
    })
}

/// A gzipped pprof profile decoded by the independent decoder
/// (tests/pprof/decode.cjs): sample types, totals, stacks, functions...
pub fn decode_pprof(pb: &Path) -> serde_json::Value {
    let out = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pprof/decode.cjs"))
        .arg(pb)
        .env("NODE_PATH", pprof_format())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
