//! The shared objects a command's dynamic linker will load, known before the
//! command runs (malloc mode probes them before its exec).
//!
//! The linker itself is asked: `<PT_INTERP> --list EXE` (ld.so(8); musl's
//! loader takes the same option) loads EXE's dependencies without running
//! EXE, and prints where each one was found. It resolves DT_NEEDED through
//! DT_RPATH/DT_RUNPATH with `$ORIGIN`, LD_LIBRARY_PATH, LD_PRELOAD,
//! /etc/ld.so.cache and the glibc-hwcaps subdirectories exactly as it will
//! at the exec, which a resolver of our own (or the `lddtree` crate, which
//! reads neither the cache nor glibc-hwcaps) would only approximate. The
//! command inherits this process's environment, and so does the listing.
//!
//! Only an executable whose PT_INTERP is glibc's or musl's loader is listed:
//! a static executable has no loader (and `ld.so --list` crashes on one),
//! and an unknown interpreter might run the program instead of listing it.
use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use object::{
    elf,
    read::elf::{ElfFile64, ProgramHeader},
    Endianness,
};

/// How long the loader may take to list (node's ~10 objects: ~5 ms).
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a 64-bit ELF file")]
    NotElf(PathBuf),
    #[error("{path} has no dynamic linker we can ask (PT_INTERP {interp:?})")]
    NoLoader {
        path: PathBuf,
        interp: Option<String>,
    },
    #[error("{interp} --list {path}: {why}")]
    ListFailed {
        interp: String,
        path: PathBuf,
        why: String,
    },
}

/// The objects the dynamic linker maps for `exe`, in its load order (the
/// preloads, then DT_NEEDED breadth first), as absolute paths.
pub fn loaded_objects(exe: &Path) -> Result<Vec<String>, LoaderError> {
    let data = std::fs::read(exe).map_err(|source| LoaderError::Io {
        path: exe.to_path_buf(),
        source,
    })?;
    let interp = interpreter(&data).ok_or_else(|| LoaderError::NotElf(exe.to_path_buf()))?;
    let known = interp.as_deref().is_some_and(|i| {
        let name = i.rsplit('/').next().unwrap_or(i);
        name.starts_with("ld-linux") || name.starts_with("ld-musl")
    });
    let interp = match interp {
        Some(i) if known => i,
        interp => {
            return Err(LoaderError::NoLoader {
                path: exe.to_path_buf(),
                interp,
            })
        }
    };
    let failed = |why: String| LoaderError::ListFailed {
        interp: interp.clone(),
        path: exe.to_path_buf(),
        why,
    };
    let mut child = Command::new(&interp)
        .arg("--list")
        .arg(exe)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    // Read on a thread while waiting: a full pipe would stall the loader,
    // and a read here would wait past the timeout for a loader that hangs.
    let reader = child.stdout.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut out = String::new();
            s.read_to_string(&mut out).map(|_| out)
        })
    });
    let since = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if since.elapsed() < LIST_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed("timed out".into()));
            }
            Err(e) => return Err(failed(e.to_string())),
        }
    };
    let out = match reader.map(std::thread::JoinHandle::join) {
        Some(Ok(Ok(out))) => out,
        Some(Ok(Err(e))) => return Err(failed(e.to_string())),
        Some(Err(_)) | None => return Err(failed("no output".into())),
    };
    if !status.success() {
        return Err(failed(status.to_string()));
    }
    Ok(parse_list(&out))
}

/// PT_INTERP of a 64-bit ELF file: Some(None) for one without (static).
fn interpreter(data: &[u8]) -> Option<Option<String>> {
    let file = ElfFile64::<Endianness>::parse(data).ok()?;
    let endian = file.endian();
    for ph in file.elf_program_headers() {
        if ph.p_type(endian) != elf::PT_INTERP {
            continue;
        }
        let bytes = ph.data(endian, data).ok()?;
        let path = bytes.split(|&b| b == 0).next().unwrap_or(bytes);
        return Some(Some(String::from_utf8_lossy(path).into_owned()));
    }
    Some(None)
}

/// The paths in a `--list` listing: lines `\tNAME => PATH (0xADDR)`, or
/// `\tPATH (0xADDR)` for preloads and the loader itself; the vDSO (no path)
/// and `NAME => not found` lines name no file.
fn parse_list(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|line| {
            let line = line.trim();
            let target = line.split_once(" => ").map_or(line, |(_, t)| t);
            let path = target.rsplit_once(" (0x").map_or(target, |(p, _)| p);
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_lines() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd5b1f5000)\n\
                   \t/opt/lib/libpre load.so (0x00007f062f8a1000)\n\
                   \tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f1f84600000)\n\
                   \tlibmissing.so.1 => not found\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f1f8499a000)\n";
        assert_eq!(
            parse_list(out),
            [
                "/opt/lib/libpre load.so",
                "/lib/x86_64-linux-gnu/libstdc++.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn own_executable_loads_libc() {
        let exe = std::env::current_exe().unwrap();
        let objs = loaded_objects(&exe).unwrap();
        assert!(
            objs.iter()
                .any(|o| o.rsplit('/').next().unwrap().starts_with("libc.so")),
            "{objs:?}"
        );
    }

    #[test]
    fn a_static_executable_is_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let source = "int main(void) { return 0; }\n";
        let bin = super::super::tests::compile("cc", &["-static"], "s.c", source, dir.path());
        let src = dir.path().join("s.c");
        assert!(matches!(
            loaded_objects(&bin),
            Err(LoaderError::NoLoader { interp: None, .. })
        ));
        assert!(matches!(loaded_objects(&src), Err(LoaderError::NotElf(_))));
    }
}
