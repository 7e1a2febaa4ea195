//! Finds the allocator a process really uses: the module that defines `malloc`
//! (glibc, or a preloaded/linked-in jemalloc, tcmalloc, mimalloc), the file
//! offsets of its malloc-family functions for per-PID uprobes, and the module
//! that defines C++'s operator new and delete when it is another one
//! (libstdc++, libc++, or an executable linked with one of them statically).
//!
//! The dynamic linker binds `malloc` to the first definition in its search
//! order: the executable, then LD_PRELOAD objects, then libraries in load
//! order (ld.so(8)). So a definition outside libc wins over libc's; the same
//! holds for operator new, which C++ (\[replacement.functions\]) lets a
//! program replace.
//!
//! When the malloc module defines operator new itself (a preloaded jemalloc
//! or tcmalloc), its new is left alone: a throwing new is matched with the
//! malloc call it makes (malloc.bpf.c), and such a new allocates without one.
use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSection, ObjectSymbol};
use tracer_common::programs::MALLOC_FAMILY;

pub mod loader;

#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    #[error("no process with PID {0}")]
    NoProcess(u32),
    #[error("reading {path}")]
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

/// A traced function of a module: the file offset of its first
/// instruction (where a uprobe goes) and its length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    pub offset: u64,
    pub len: u64,
}

/// Attach-table symbol -> function, for one module.
pub type Functions = BTreeMap<&'static str, Function>;

/// A module to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// The path as the process sees it (e.g. /usr/lib/x86_64-linux-gnu/libc.so.6).
    pub module: String,
    /// The same file reached from here: for a running process, the
    /// mapping's /proc/PID/map_files entry (see `for_pid`).
    pub path: PathBuf,
    pub functions: Functions,
}

/// The allocator of a process: its malloc module (the fields, kept flat for
/// the callers that name it) and its C++ allocation module, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocator {
    pub module: String,
    pub path: PathBuf,
    /// The malloc family's functions in `module` (never its C++ ones).
    pub functions: Functions,
    /// The module defining operator new and delete, when that is not
    /// `module`: its C++ functions.
    pub cxx: Option<Module>,
}

/// The allocator of a running process, from /proc/PID/maps.
///
/// Each module is read, and later probed, through the
/// `/proc/PID/map_files/START-END` link of one of its mappings: a magic link
/// to the very file the process mapped (proc(5); root with CAP_SYS_ADMIN),
/// also when it was deleted or replaced since. Its path inside the target
/// would not do: the process can replace it by a symlink, and a path walk
/// through /proc/PID/root resolves an absolute symlink from offheap's root,
/// onto a host file (path_resolution(7)); the uprobe would then be placed
/// in that file's inode too, as the kernel resolves the attach path the
/// same way.
pub fn for_pid(pid: u32) -> Result<Allocator, AllocatorError> {
    let maps = crate::proc::maps::read(pid).map_err(|e| {
        if e.is_gone() {
            AllocatorError::NoProcess(pid)
        } else {
            AllocatorError::Maps(e)
        }
    })?;
    let modules = crate::proc::maps::modules(&maps);
    let mapped = mapped_files(pid, &maps);
    let exe = crate::proc::info::exe(pid);
    Scan::new(Files::Mapped(mapped))
        .choose(exe.as_deref(), &modules)
        .ok_or(AllocatorError::NotFound(pid))
}

/// Each file `maps` (of process `pid`) maps, by the path the process sees,
/// and the `/proc/PID/map_files/START-END` link of its first mapping: the
/// way to reach a running process's module (see `for_pid`).
pub fn mapped_files(pid: u32, maps: &[crate::proc::maps::Mapping]) -> HashMap<String, PathBuf> {
    let mut mapped = HashMap::new();
    for m in maps {
        if let Some(path) = m.path() {
            mapped.entry(path.to_string()).or_insert_with(|| {
                PathBuf::from(format!("/proc/{pid}/map_files/{}", m.map_files_name()))
            });
        }
    }
    mapped
}

/// The allocator a command will use once exec'd by a child of this process:
/// its executable if it defines malloc, else an LD_PRELOAD object that does,
/// else a library its dynamic linker will load (`loader`), else the libc
/// mapped here (a forked child resolves the same system libc).
pub fn for_exec(exe: &Path, ld_preload: Option<&str>) -> Result<Allocator, AllocatorError> {
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
    match loader::loaded_objects(exe) {
        Ok(objects) => candidates.extend(objects),
        // A script, a static executable: what it loads is not known
        // before it runs; its malloc is libc's or its own.
        Err(e) => log::info!(
            "libraries of {}: {}",
            exe.display(),
            crate::error::one_line(&e)
        ),
    }
    let maps = crate::proc::maps::read(std::process::id()).map_err(AllocatorError::Maps)?;
    candidates.extend(crate::proc::maps::modules(&maps));
    Scan::new(Files::Host)
        .choose(Some(&exe_s), &candidates)
        .ok_or(AllocatorError::NotFound(std::process::id()))
}

fn file_name(module: &str) -> &str {
    module.rsplit('/').next().unwrap_or(module)
}

fn is_libc(module: &str) -> bool {
    let name = file_name(module);
    name.starts_with("libc.so") || name.starts_with("libc-")
}

fn is_dynamic_linker(module: &str) -> bool {
    file_name(module).starts_with("ld-")
}

/// The C++ runtimes that define operator new and delete for everything
/// linked against them: GCC's libstdc++, and LLVM's libc++, whose new and
/// delete live in libc++abi when that is built with them (Debian's is).
fn is_cxx_runtime(module: &str) -> bool {
    let name = file_name(module);
    ["libstdc++.so", "libc++.so", "libc++abi.so"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Where the files of the modules are reached from here.
enum Files {
    /// By their path: this process's own files (a command it will exec).
    Host,
    /// Module path -> its /proc/PID/map_files link (`for_pid`).
    Mapped(HashMap<String, PathBuf>),
}

/// Modules parsed once each, by the path the process sees.
struct Scan {
    files: Files,
    parsed: HashMap<String, Option<Functions>>,
}

impl Scan {
    fn new(files: Files) -> Scan {
        Scan {
            files,
            parsed: HashMap::new(),
        }
    }

    /// The file of `module` from here; empty (unopenable) for a module
    /// the process does not map.
    fn path(&self, module: &str) -> PathBuf {
        match &self.files {
            Files::Host => PathBuf::from(module),
            Files::Mapped(m) => m.get(module).cloned().unwrap_or_default(),
        }
    }

    /// The attach-table functions a module defines (None: unreadable).
    fn functions(&mut self, module: &str) -> Option<&Functions> {
        if !self.parsed.contains_key(module) {
            let found = table_functions(&self.path(module)).ok();
            self.parsed.insert(module.to_string(), found);
        }
        self.parsed.get(module)?.as_ref()
    }

    fn defines(&mut self, module: &str, symbol: &str) -> bool {
        self.functions(module)
            .is_some_and(|f| f.contains_key(symbol))
    }

    /// The malloc module: the first module defining malloc, preferring the
    /// executable and any non-libc object (they interpose libc's definition).
    /// Then the C++ module: the executable if it defines operator new, else
    /// the first C++ runtime that does, unless that is the malloc module.
    fn choose(&mut self, exe: Option<&str>, modules: &[String]) -> Option<Allocator> {
        let is_exe = |m: &String| Some(m.as_str()) == exe;
        let mut ordered: Vec<&String> = Vec::new();
        ordered.extend(modules.iter().filter(|m| is_exe(m)));
        ordered.extend(
            modules
                .iter()
                .filter(|m| !is_exe(m) && !is_libc(m) && !is_dynamic_linker(m)),
        );
        ordered.extend(modules.iter().filter(|m| is_libc(m)));
        let malloc = ordered.into_iter().find(|m| self.defines(m, "malloc"))?;
        let cxx = modules
            .iter()
            .filter(|m| is_exe(m))
            .chain(modules.iter().filter(|m| !is_exe(m) && is_cxx_runtime(m)))
            .find(|m| self.defines(m, "_Znwm"))
            .filter(|m| *m != malloc)
            .map(|m| Module {
                module: m.clone(),
                path: self.path(m),
                functions: self.only(m, true),
            });
        Some(Allocator {
            module: malloc.clone(),
            path: self.path(malloc),
            functions: self.only(malloc, false),
            cxx,
        })
    }

    /// A module's C++ functions (`cxx`) or its malloc-family ones.
    fn only(&mut self, module: &str, cxx: bool) -> Functions {
        let is_cxx = |s: &str| MALLOC_FAMILY.iter().any(|p| p.symbol == s && p.is_cxx());
        self.functions(module)
            .map(|f| {
                f.iter()
                    .filter(|(s, _)| is_cxx(s) == cxx)
                    .map(|(s, f)| (*s, *f))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// x86-64 `endbr64` (CET indirect branch tracking), which GCC and clang put
/// first in every function built with -fcf-protection (Debian's libstdc++,
/// every function of Ubuntu's and Fedora's glibc).
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// Where to probe a function that starts at file offset `start`: after a
/// leading endbr64. A uprobe on an instruction the kernel cannot emulate is
/// single-stepped out of line, a second trap per hit
/// (arch/x86/kernel/uprobes.c emulates branches, calls and push only), and
/// endbr64 is one of those. It changes no register and no memory, so the
/// state one instruction later is the state at entry (arguments, [sp] the
/// return address), and every call passes there. Only a jump back to that
/// second instruction would hit the probe again; libstdc++ 12's new and
/// delete have none (their retry loops restart after the size test).
/// libstdc++'s new[] and delete go on with a jmp, which is emulated: a
/// new/sized-delete pair measured 42 -> 23 us under tracing on this
/// project's VM (malloc/free: 12 us).
fn past_endbr(data: &[u8], start: u64, len: u64) -> Function {
    let at = usize::try_from(start).unwrap_or(usize::MAX);
    let first = at.checked_add(4).and_then(|end| data.get(at..end));
    if len > 4 && first == Some(&ENDBR64[..]) {
        Function {
            offset: start + 4,
            len: len - 4,
        }
    } else {
        Function { offset: start, len }
    }
}

/// The attach-table functions an ELF file defines.
pub fn table_functions(path: &Path) -> Result<Functions, AllocatorError> {
    functions_named(path, |name| {
        MALLOC_FAMILY
            .iter()
            .find(|p| p.symbol == name)
            .map(|p| p.symbol)
    })
}

/// The functions an ELF file defines (in its dynamic symbols or its
/// .symtab, so static ones too) among those `wanted` knows: it maps a
/// symbol name to the table's own string.
pub fn functions_named(
    path: &Path,
    wanted: impl Fn(&str) -> Option<&'static str>,
) -> Result<Functions, AllocatorError> {
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
    for sym in crate::symbols::symbol_table(&obj) {
        if sym.is_undefined() || sym.kind() != object::SymbolKind::Text {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        let Some(symbol) = wanted(name) else {
            continue;
        };
        if out.contains_key(symbol) {
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
        let start = sym.address() - section.address() + file_off;
        out.insert(symbol, past_endbr(&data, start, sym.size()));
    }
    Ok(out)
}

impl Allocator {
    /// Fails when a function every supported allocator defines is missing.
    pub fn check_required(&self) -> Result<(), AllocatorError> {
        for p in MALLOC_FAMILY.iter().filter(|p| p.required) {
            if !self.functions.contains_key(p.symbol) {
                return Err(AllocatorError::MissingRequired(
                    self.module.clone(),
                    p.symbol,
                ));
            }
        }
        Ok(())
    }

    /// Every module to probe, with its functions: the malloc module, then
    /// the C++ one.
    pub fn modules(&self) -> impl Iterator<Item = (&Path, &Functions)> {
        std::iter::once((self.path.as_path(), &self.functions))
            .chain(self.cxx.iter().map(|m| (m.path.as_path(), &m.functions)))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn own_allocator_is_glibc_with_every_function() {
        let exe = std::env::current_exe().unwrap();
        let a = for_exec(&exe, None).unwrap();
        assert!(is_libc(&a.module), "{}", a.module);
        a.check_required().unwrap();
        // glibc 2.26+ defines the whole C family; its C++ functions are
        // libstdc++'s, which this Rust program does not load.
        let c_family = MALLOC_FAMILY.iter().filter(|p| !p.is_cxx()).count();
        assert_eq!(a.functions.len(), c_family, "{:?}", a.functions);
        assert_eq!(a.cxx, None);
    }

    #[test]
    fn running_process_allocator_found_through_map_files() {
        let a = for_pid(std::process::id()).unwrap();
        assert!(a
            .path
            .starts_with(format!("/proc/{}/map_files/", std::process::id())));
        assert!(is_libc(&a.module));
        // The link names the file mapped there.
        let meta = fs::metadata(&a.path).unwrap();
        assert_eq!(meta.ino(), fs::metadata(&a.module).unwrap().ino());
    }

    /// Compiles `source` (file name `file`) with `compiler` and `args` in
    /// `dir`; returns the program.
    pub(super) fn compile(
        compiler: &str,
        args: &[&str],
        file: &str,
        source: &str,
        dir: &Path,
    ) -> PathBuf {
        let src = dir.join(file);
        fs::write(&src, source).unwrap();
        let bin = dir.join("prog");
        let ok = std::process::Command::new(compiler)
            .args(args)
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .status()
            .unwrap()
            .success();
        assert!(ok, "{compiler} {file}");
        bin
    }

    /// A C++ program that news and deletes, waiting on stdin.
    fn cxx_program(dir: &Path, extra: &[&str]) -> PathBuf {
        let source =
            "#include <cstdio>\nint main() { int *p = new int[4]; getchar(); delete[] p; }\n";
        compile("g++", extra, "p.cc", source, dir)
    }

    fn cxx_symbols() -> Vec<&'static str> {
        let mut v: Vec<_> = MALLOC_FAMILY
            .iter()
            .filter(|p| p.is_cxx())
            .map(|p| p.symbol)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_cxx_program_probes_every_new_and_delete_of_libstdcxx() {
        let dir = tempfile::tempdir().unwrap();
        let bin = cxx_program(dir.path(), &[]);
        let a = for_exec(&bin, None).unwrap();
        assert!(is_libc(&a.module), "{}", a.module);
        let cxx = a.cxx.as_ref().expect("libstdc++ found through the loader");
        assert!(is_cxx_runtime(&cxx.module), "{}", cxx.module);
        // libstdc++ 7+ defines all 20 (the aligned ones since C++17).
        assert_eq!(
            cxx.functions.keys().copied().collect::<Vec<_>>(),
            cxx_symbols()
        );
        assert!(cxx.functions.values().all(|f| f.len > 0), "{cxx:?}");
        assert_eq!(a.modules().count(), 2);
    }

    #[test]
    fn static_libstdcxx_makes_the_executable_the_cxx_module() {
        let dir = tempfile::tempdir().unwrap();
        let bin = cxx_program(dir.path(), &["-static-libstdc++"]);
        let a = for_exec(&bin, None).unwrap();
        assert!(is_libc(&a.module), "{}", a.module);
        let cxx = a.cxx.unwrap();
        assert_eq!(cxx.module, bin.to_string_lossy());
        assert!(cxx.functions.contains_key("_Znwm"), "{cxx:?}");
    }

    #[test]
    fn running_cxx_program_probed_through_map_files() {
        let dir = tempfile::tempdir().unwrap();
        let bin = cxx_program(dir.path(), &[]);
        let mut child = std::process::Command::new(&bin)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Wait for the loader to map libstdc++.
        let mut a = for_pid(pid);
        for _ in 0..200 {
            if matches!(&a, Ok(a) if a.cxx.is_some()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            a = for_pid(pid);
        }
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        let cxx = a.unwrap().cxx.unwrap();
        assert!(cxx.path.starts_with(format!("/proc/{pid}/map_files/")));
        assert_eq!(
            cxx.functions.keys().copied().collect::<Vec<_>>(),
            cxx_symbols()
        );
    }

    #[test]
    fn probes_go_past_a_leading_endbr64() {
        let code = [0x90, 0xf3, 0x0f, 0x1e, 0xfa, 0xeb, 0xfe, 0x90];
        assert_eq!(past_endbr(&code, 1, 6), Function { offset: 5, len: 2 });
        // Not endbr64, or the function is nothing else, or out of the file.
        assert_eq!(past_endbr(&code, 0, 8), Function { offset: 0, len: 8 });
        assert_eq!(past_endbr(&code, 1, 4), Function { offset: 1, len: 4 });
        assert_eq!(past_endbr(&code, 6, 9), Function { offset: 6, len: 9 });
    }

    #[test]
    fn unknown_pid_is_reported() {
        assert!(matches!(
            for_pid(u32::MAX - 1),
            Err(AllocatorError::NoProcess(_))
        ));
    }
}
