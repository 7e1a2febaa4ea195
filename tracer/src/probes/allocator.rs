//! Finds the allocator a process really uses: the module that defines `malloc`
//! (glibc, or a preloaded/linked-in jemalloc, tcmalloc, mimalloc), and the
//! file offsets of its malloc-family functions for per-PID uprobes.
//!
//! The dynamic linker binds `malloc` to the first definition in its search
//! order: the executable, then LD_PRELOAD objects, then libraries in load
//! order (ld.so(8)). So a definition outside libc wins over libc's.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSection, ObjectSymbol};
use tracer_common::programs::MALLOC_FAMILY;

#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    #[error("no process with PID {0}")]
    NoProcess(u32),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Maps(crate::proc::MapsError),
    #[error("no module mapped by PID {0} defines malloc (statically linked without symbols?)")]
    NotFound(u32),
    #[error("{0} does not define the required function {1}")]
    MissingRequired(String, &'static str),
}

/// The allocator module of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocator {
    /// The path as the process sees it (e.g. /usr/lib/x86_64-linux-gnu/libc.so.6).
    pub module: String,
    /// The same file reached from here (through /proc/PID/root for a PID).
    pub path: PathBuf,
    /// Malloc-family symbol -> file offset of its first instruction.
    pub offsets: BTreeMap<&'static str, u64>,
}

/// The allocator of a running process, from /proc/PID/maps.
pub fn for_pid(pid: u32) -> Result<Allocator, AllocatorError> {
    let maps = crate::proc::maps::read(pid).map_err(|e| {
        if e.is_gone() {
            AllocatorError::NoProcess(pid)
        } else {
            AllocatorError::Maps(e)
        }
    })?;
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let modules = crate::proc::maps::modules(&maps);
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    choose(&root, exe.as_deref(), &modules).ok_or(AllocatorError::NotFound(pid))
}

/// The allocator a command will use once exec'd by a child of this process:
/// its executable if it defines malloc, else an LD_PRELOAD object that does,
/// else the libc mapped here (a forked child resolves the same system libc).
pub fn for_exec(exe: &Path, ld_preload: Option<&str>) -> Result<Allocator, AllocatorError> {
    let root = PathBuf::from("/");
    let exe_s = exe.to_string_lossy().into_owned();
    let mut candidates: Vec<String> = vec![exe_s.clone()];
    // ld.so(8): LD_PRELOAD entries are separated by spaces or colons.
    candidates.extend(
        ld_preload
            .unwrap_or("")
            .split([' ', ':'])
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    );
    let maps = crate::proc::maps::read(std::process::id()).map_err(AllocatorError::Maps)?;
    candidates.extend(crate::proc::maps::modules(&maps));
    choose(&root, Some(&exe_s), &candidates).ok_or(AllocatorError::NotFound(std::process::id()))
}

fn is_libc(module: &str) -> bool {
    let name = module.rsplit('/').next().unwrap_or(module);
    name.starts_with("libc.so") || name.starts_with("libc-")
}

fn is_dynamic_linker(module: &str) -> bool {
    module
        .rsplit('/')
        .next()
        .unwrap_or(module)
        .starts_with("ld-")
}

/// Picks the first module defining malloc, preferring the executable and any
/// non-libc object (they interpose libc's definition).
fn choose(root: &Path, exe: Option<&str>, modules: &[String]) -> Option<Allocator> {
    let mut ordered: Vec<&String> = Vec::new();
    ordered.extend(modules.iter().filter(|m| Some(m.as_str()) == exe));
    ordered.extend(
        modules
            .iter()
            .filter(|m| Some(m.as_str()) != exe && !is_libc(m) && !is_dynamic_linker(m)),
    );
    ordered.extend(modules.iter().filter(|m| is_libc(m)));
    ordered.into_iter().find_map(|m| {
        let path = root.join(m.trim_start_matches('/'));
        let offsets = malloc_offsets(&path).ok()?;
        offsets.contains_key("malloc").then(|| Allocator {
            module: m.clone(),
            path,
            offsets,
        })
    })
}

/// File offsets of the malloc-family functions an ELF file defines.
pub fn malloc_offsets(path: &Path) -> Result<BTreeMap<&'static str, u64>, AllocatorError> {
    let io = |source| AllocatorError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io)?;
    // SAFETY: read-only private mapping of a file we do not modify; a
    // concurrent truncation could fault, as for any mmap-based ELF reader.
    let data = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let obj = object::File::parse(&*data).map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e.to_string(),
        ))
    })?;
    let mut out = BTreeMap::new();
    for sym in obj.dynamic_symbols().chain(obj.symbols()) {
        if sym.is_undefined() || sym.kind() != object::SymbolKind::Text {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        let Some(probe) = MALLOC_FAMILY.iter().find(|p| p.symbol == name) else {
            continue;
        };
        if out.contains_key(probe.symbol) {
            continue;
        }
        // A uprobe is placed at a file offset: translate the symbol's virtual
        // address through its section (as aya's resolve_symbol does).
        let Some(index) = sym.section_index() else {
            continue;
        };
        let Ok(section) = obj.section_by_index(index) else {
            continue;
        };
        let Some((file_off, _)) = section.file_range() else {
            continue;
        };
        out.insert(probe.symbol, sym.address() - section.address() + file_off);
    }
    Ok(out)
}

impl Allocator {
    /// Fails when a function every supported allocator defines is missing.
    pub fn check_required(&self) -> Result<(), AllocatorError> {
        for p in MALLOC_FAMILY.iter().filter(|p| p.required) {
            if !self.offsets.contains_key(p.symbol) {
                return Err(AllocatorError::MissingRequired(
                    self.module.clone(),
                    p.symbol,
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_allocator_is_glibc_with_every_function() {
        let exe = std::env::current_exe().unwrap();
        let a = for_exec(&exe, None).unwrap();
        assert!(is_libc(&a.module), "{}", a.module);
        a.check_required().unwrap();
        // glibc 2.26+ defines the whole family.
        assert_eq!(a.offsets.len(), MALLOC_FAMILY.len(), "{:?}", a.offsets);
    }

    #[test]
    fn running_process_allocator_found_through_proc_root() {
        let a = for_pid(std::process::id()).unwrap();
        assert!(a
            .path
            .starts_with(format!("/proc/{}/root", std::process::id())));
        assert!(is_libc(&a.module));
    }

    #[test]
    fn unknown_pid_is_reported() {
        assert!(matches!(
            for_pid(u32::MAX - 1),
            Err(AllocatorError::NoProcess(_))
        ));
    }
}
