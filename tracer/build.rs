//! Compiles the kernel programs (`tracer-ebpf/src/*.bpf.c`, one compilation unit
//! rooted at `offheap.bpf.c`) with clang as CO-RE BPF, into OUT_DIR, where
//! `probes::object` embeds them with `aya::include_bytes_aligned!`.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

const CLANG_CANDIDATES: &[&str] = &["clang-19", "clang"];
const LIBBPF_HEADER: &str = "/usr/include/bpf/bpf_helpers.h";

fn find_clang() -> Result<String> {
    if let Ok(c) = env::var("OFFHEAP_CLANG") {
        return Ok(c);
    }
    for c in CLANG_CANDIDATES {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok((*c).to_string());
        }
    }
    bail!("clang not found: install Debian's clang-19 and libbpf-dev, or run `cargo xtask setup`")
}

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf = manifest.join("../tracer-ebpf");
    let src = ebpf.join("src");
    let include = ebpf.join("include");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", include.display());
    println!("cargo:rerun-if-env-changed=OFFHEAP_CLANG");

    if !Path::new(LIBBPF_HEADER).exists() {
        bail!("{LIBBPF_HEADER} not found: install Debian's libbpf-dev, or run `cargo xtask setup`");
    }
    let clang = find_clang()?;
    let out = PathBuf::from(env::var("OUT_DIR")?).join("offheap.bpf.o");
    let arch_include = format!(
        "/usr/include/{}-linux-gnu",
        env::var("CARGO_CFG_TARGET_ARCH")?
    );
    let status = Command::new(&clang)
        .args([
            "-target",
            "bpf",
            "-g",
            "-O2",
            "-Wall",
            "-Werror",
            "-D__TARGET_ARCH_x86",
        ])
        .arg(format!("-I{}", include.display()))
        .arg(format!("-I{arch_include}"))
        .arg("-c")
        .arg(src.join("offheap.bpf.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .with_context(|| format!("running {clang}"))?;
    if !status.success() {
        bail!("{clang} failed to compile tracer-ebpf/src/offheap.bpf.c (see the errors above)");
    }
    Ok(())
}
