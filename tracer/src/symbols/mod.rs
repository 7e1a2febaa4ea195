//! Symbolization: turns the return addresses of a traced process into frames a
//! Node engineer can read (native symbols with file:line, JS names from V8's
//! perf map, `[JIT]` otherwise).
//!
//! The address -> module mapping is captured while the process lives (`capture`,
//! `refresh` after a dlopen) and every module is opened and mapped at that
//! moment, so stacks still symbolize after the process died or its binary was
//! deleted or replaced on disk. Parsed modules are shared between processes,
//! keyed by GNU build-id (or dev+inode+size+mtime when there is none).
//!
//! Addresses are looked up as given. A return address points after its call
//! instruction, so callers that want the call's own line (and the right
//! function when the call is the last instruction before another function)
//! pass `ip - 1` for every frame but the innermost, as perf and gdb do.
mod addons;
mod bench;
mod demangle;
mod dynamic;
mod maps;
mod module;
mod perf_frames;
mod perfmap;
pub mod v8;
mod v8name;

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
};

pub use bench::{bench_symbolize, BenchResult};
pub use demangle::demangle;
pub use maps::{read_exec_maps, MapEntry};
pub use module::{symbol_table, Module, SourceFrame};
pub use perfmap::{
    JsSymbol, PerfMap, MAX_PERF_MAP_BYTES, MAX_PERF_MAP_ENTRIES, MAX_SYMBOL_BYTES, TRUNCATED_MARKER,
};

use crate::{
    proc::{info as proc_info, root::Root},
    report::{build::Symbolize, Frame, FrameKind},
};

#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error("process {pid} is gone or unreadable (/proc/{pid}/maps)")]
    NoProcess { pid: u32, source: std::io::Error },
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable ELF file: {reason}")]
    Elf { path: PathBuf, reason: String },
}

/// Symbol shown for JIT code that no perf map names.
pub const JIT_SYMBOL: &str = "[JIT]";

/// How many times one process's maps are re-read because an address fell
/// outside every known mapping; bounds the cost of garbage addresses.
const MAX_AUTO_REFRESH: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct StatKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl StatKey {
    fn of(m: &std::fs::Metadata) -> StatKey {
        StatKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }
}

struct Mapped {
    entry: MapEntry,
    module: Option<Arc<Module>>,
}

struct Process {
    /// Sorted by start, non-overlapping.
    maps: Vec<Mapped>,
    /// JS frames decoded from V8's heap, when the process runs V8.
    js: Option<v8::JsProcess>,
    perf: Option<PerfMap>,
    /// The perf map path as the process sees it (`/tmp/perf-<NSpid>.map`).
    perf_path: String,
    /// Its root directory, where its perf map and debug files are opened
    /// (None once it could not be opened: the process was gone).
    root: Option<Arc<Root>>,
    /// Its real, effective, saved and filesystem uids: a perf map must be
    /// owned by one of them.
    uids: Vec<u32>,
    /// It maps node (or libnode): a missing perf map is worth a warning.
    runs_node: bool,
    /// What stays true of it (its perf map was refused, or is missing).
    warnings: Vec<String>,
    auto_refreshes: u32,
    /// Module path -> the package of the addon it belongs to (addons.rs).
    addons: HashMap<String, String>,
    package_names: addons::PackageNames,
}

impl Process {
    /// Which modules belong to an addon, and its package (addons.rs); read
    /// while the process lives, after each capture.
    fn find_addons(&mut self, pid: u32) {
        let maps = self.maps.iter().map(|m| (&m.entry, m.module.as_deref()));
        self.addons = addons::of_process(pid, maps, &mut self.package_names);
    }

    fn find(&self, addr: u64) -> Option<&Mapped> {
        let idx = self.maps.partition_point(|m| m.entry.start <= addr);
        let m = self.maps.get(idx.checked_sub(1)?)?;
        (addr < m.entry.end).then_some(m)
    }
}

/// Names the addresses of captured processes. Implements `report::build::Symbolize`.
#[derive(Default)]
pub struct Symbolizer {
    by_stat: HashMap<StatKey, Arc<Module>>,
    by_build_id: HashMap<Vec<u8>, Arc<Module>>,
    procs: HashMap<u32, Process>,
    warnings: Vec<String>,
    warned: HashSet<String>,
}

impl Symbolizer {
    pub fn new() -> Symbolizer {
        Symbolizer::default()
    }

    /// Snapshots the executable mappings of a live process, opens and parses
    /// every module now, and opens its perf map if there is one. Capturing an
    /// already captured pid refreshes it.
    pub fn capture(&mut self, pid: u32) -> Result<(), SymbolError> {
        if self.procs.contains_key(&pid) {
            return self.refresh(pid);
        }
        let entries = maps::read_exec_maps(pid)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let nspid = proc_info::parse_nspid(&status).unwrap_or(pid);
        let mut proc = Process {
            maps: Vec::new(),
            js: None,
            perf: None,
            perf_path: format!("/tmp/perf-{nspid}.map"),
            root: Root::of_process(pid).ok().map(Arc::new),
            uids: proc_info::parse_uids(&status),
            runs_node: entries.iter().any(MapEntry::is_node),
            warnings: Vec::new(),
            auto_refreshes: 0,
            addons: HashMap::new(),
            package_names: addons::PackageNames::default(),
        };
        for entry in entries {
            let module = self.open_module(pid, proc.root.as_deref(), &entry);
            proc.maps.push(Mapped { entry, module });
        }
        self.open_perf_map(pid, &mut proc);
        proc.find_addons(pid);
        self.open_js(pid, &mut proc);
        self.procs.insert(pid, proc);
        Ok(())
    }

    /// The JS frame decoding of a process whose modules include V8 (node or
    /// libnode). When node's V8 cannot be walked (its v8dbg_* metadata was
    /// stripped, or describes a layout the decoder does not know), says so
    /// once for the process, on stderr and in its reports' warnings: its JS
    /// frames then stay unnamed unless node writes a perf map.
    fn open_js(&mut self, pid: u32, proc: &mut Process) {
        if proc.js.is_some() || !v8::decoding_enabled() {
            return;
        }
        let found = proc.maps.iter().find_map(|m| {
            let v8 = m.module.as_ref()?.v8.clone()?;
            Some((m.entry.path()?.to_string(), v8))
        });
        let why = match found {
            Some((path, Ok(meta))) => {
                let entries: Vec<MapEntry> = proc.maps.iter().map(|m| m.entry.clone()).collect();
                proc.js = Some(v8::JsProcess::new(pid, meta, &entries, &path));
                return;
            }
            Some((path, Err(e))) => format!("{path}: {}", crate::error::one_line(&*e)),
            None => {
                // A node (or libnode) module without any metadata: stripped.
                let Some(path) = proc
                    .maps
                    .iter()
                    .filter(|m| m.entry.is_node() && m.module.is_some())
                    .find_map(|m| m.entry.path())
                else {
                    return;
                };
                format!("{path}: {}", v8::MetadataError::NoMetadata)
            }
        };
        let msg = format!(
            "pid {pid}: {why}: its JS frames will be unnamed ({JIT_SYMBOL}); to name them, \
             run node with --perf-basic-prof --interpreted-frames-native-stack (NODE_OPTIONS)"
        );
        if !self.warned.contains(&msg) {
            eprintln!("offheap: warning: {msg}");
        }
        self.warn_about(proc, msg);
    }

    /// The config of the BPF V8 frame decoder for `pid` (the `v8_procs`
    /// value), when it runs V8 whose metadata offheap can use.
    pub fn v8_config(&self, pid: u32) -> Option<tracer_common::V8ProcConfig> {
        self.procs.get(&pid)?.js.as_ref().map(|j| j.config)
    }

    /// A handle that resolves the JS words of `pid` into the frames this
    /// symbolizer names them with, from another thread (the resident
    /// drain, as stacks arrive), when it runs V8 offheap can walk.
    pub fn js_observer(&self, pid: u32) -> Option<v8::JsObserver> {
        self.procs.get(&pid)?.js.as_ref().map(|j| j.observer())
    }

    /// Re-reads the maps of a captured (or new) process and opens only the
    /// modules mapped since (an addon loaded by `require` -> dlopen(3)).
    /// Mappings that went away are kept unless new ones overlap them, so that
    /// stacks recorded before a dlclose still symbolize.
    pub fn refresh(&mut self, pid: u32) -> Result<(), SymbolError> {
        let Some(mut proc) = self.procs.remove(&pid) else {
            return self.capture(pid);
        };
        let entries = match maps::read_exec_maps(pid) {
            Ok(e) => e,
            Err(e) => {
                self.procs.insert(pid, proc);
                return Err(e);
            }
        };
        let mut old: Vec<Mapped> = std::mem::take(&mut proc.maps);
        let mut new: Vec<Mapped> = Vec::with_capacity(entries.len());
        for entry in entries {
            let module = match old.iter().position(|m| m.entry == entry) {
                Some(i) => old.swap_remove(i).module,
                None => self.open_module(pid, proc.root.as_deref(), &entry),
            };
            new.push(Mapped { entry, module });
        }
        let kept: Vec<Mapped> = old
            .into_iter()
            .filter(|o| {
                !new.iter()
                    .any(|n: &Mapped| n.entry.start < o.entry.end && o.entry.start < n.entry.end)
            })
            .collect();
        new.extend(kept);
        new.sort_by_key(|m| m.entry.start);
        proc.runs_node |= new.iter().any(|m| m.entry.is_node());
        proc.maps = new;
        proc.find_addons(pid);
        self.open_js(pid, &mut proc);
        match proc.perf.as_mut() {
            Some(p) => {
                p.reload();
            }
            None => self.open_perf_map(pid, &mut proc),
        }
        self.procs.insert(pid, proc);
        Ok(())
    }

    /// Drops what is known about a process (modules stay cached for others).
    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    /// Drops cached modules that no captured process maps any more, so a
    /// long-running daemon watching short-lived processes does not grow.
    pub fn prune(&mut self) {
        let live: HashSet<*const Module> = self
            .procs
            .values()
            .flat_map(|p| p.maps.iter())
            .filter_map(|m| m.module.as_ref().map(Arc::as_ptr))
            .collect();
        self.by_stat.retain(|_, m| live.contains(&Arc::as_ptr(m)));
        self.by_build_id
            .retain(|_, m| live.contains(&Arc::as_ptr(m)));
    }

    /// Whether `pid` has been captured.
    pub fn is_captured(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    /// Number of distinct parsed modules in the cache.
    pub fn cached_modules(&self) -> usize {
        let mut seen: Vec<*const Module> = self
            .by_stat
            .values()
            .chain(self.by_build_id.values())
            .map(Arc::as_ptr)
            .collect();
        seen.sort();
        seen.dedup();
        seen.len()
    }

    fn warn(&mut self, msg: String) {
        if self.warned.insert(msg.clone()) {
            self.warnings.push(msg);
        }
    }

    /// A warning about one process: given once in `take_warnings`, and for
    /// every report of it in `process_warnings`.
    fn warn_about(&mut self, proc: &mut Process, msg: String) {
        if !proc.warnings.contains(&msg) {
            proc.warnings.push(msg.clone());
        }
        self.warn(msg);
    }

    /// Opens a file-backed mapping's module through `/proc/PID/map_files`
    /// (the inode actually mapped, even if deleted or replaced; needs
    /// CAP_SYS_ADMIN; a magic link on purpose), else by its path inside the
    /// process's root (its mount namespace, for containers).
    fn open_module(
        &mut self,
        pid: u32,
        root: Option<&Root>,
        entry: &MapEntry,
    ) -> Option<Arc<Module>> {
        if !entry.is_file() {
            return None;
        }
        let path = entry.path()?.to_string();
        let via_map_files =
            PathBuf::from(format!("/proc/{pid}/map_files/{}", entry.map_files_name()));
        let via_root = PathBuf::from(format!("/proc/{pid}/root{path}"));
        let in_root = || {
            root.ok_or(())
                .and_then(|r| r.open(Path::new(&path)).map_err(|_| ()))
        };
        let (file, opened) = match File::open(&via_map_files) {
            Ok(f) => (f, via_map_files),
            Err(_) => match in_root() {
                Ok(f) if !entry.deleted => (f, via_root),
                Ok(_) | Err(()) => {
                    self.warn(format!(
                        "cannot open module {path} of pid {pid} (deleted or not readable): its frames stay unnamed"
                    ));
                    return None;
                }
            },
        };
        self.load_module(&file, &opened, root)
            .map_err(|e| self.warn(format!("module {path} of pid {pid}: {e}")))
            .ok()
    }

    /// Parses the module of an executable that is about to be exec'd (`run`
    /// holds its command before exec), so that capturing the process after
    /// its exec finds it cached: a short command may be gone before node's
    /// symbols are parsed (0.8 s in a debug build), and its frames then
    /// stayed unnamed. A file that cannot be parsed is left to the capture.
    pub fn preload(&mut self, exe: &Path) {
        if let Ok(file) = File::open(exe) {
            let _ = self.load_module(&file, exe, None);
        }
    }

    /// The module of an open file: from the cache (same file, or same
    /// build id), else parsed. Err: why it cannot be parsed, one line.
    fn load_module(
        &mut self,
        file: &File,
        opened: &Path,
        root: Option<&Root>,
    ) -> Result<Arc<Module>, String> {
        let key = StatKey::of(&file.metadata().map_err(|e| e.to_string())?);
        if let Some(m) = self.by_stat.get(&key) {
            return Ok(m.clone());
        }
        // SAFETY: read-only private mapping, dropped at the end of this block;
        // see module::map for the truncation caveat.
        let build_id = unsafe { memmap2::Mmap::map(file) }
            .ok()
            .and_then(|d| module::read_build_id(&d));
        if let Some(m) = build_id.as_ref().and_then(|b| self.by_build_id.get(b)) {
            let m = m.clone();
            self.by_stat.insert(key, m.clone());
            return Ok(m);
        }
        // Separate debug files: the host's, then the container's.
        let host = Root::host().ok();
        let roots: Vec<&Root> = host.iter().chain(root).collect();
        let m =
            Arc::new(Module::load(file, opened, &roots).map_err(|e| crate::error::one_line(&e))?);
        self.by_stat.insert(key, m.clone());
        if let Some(b) = &m.build_id {
            self.by_build_id.insert(b.clone(), m.clone());
        }
        Ok(m)
    }

    /// All frames for one address of a process, innermost first. A JS frame
    /// word of the V8 walk (v8::JsFrameTag) gives its resolved frame.
    pub fn frames(&mut self, pid: u32, addr: u64) -> Vec<Frame> {
        if !self.procs.contains_key(&pid) {
            if let Err(e) = self.capture(pid) {
                self.warn(format!(
                    "pid {pid}: no memory map captured before it exited, its frames stay unnamed ({})",
                    crate::error::one_line(&e)
                ));
                return vec![Frame::unknown(addr)];
            }
        }
        if v8::JsFrameTag::decode(addr).is_some() {
            if let Some(js) = self.procs.get_mut(&pid).and_then(|p| p.js.as_mut()) {
                return vec![js.frame(addr)];
            }
            return vec![Frame {
                symbol: Some(JIT_SYMBOL.to_string()),
                kind: FrameKind::Jit,
                ..Frame::unknown(addr)
            }];
        }
        if let Some(f) = self.lookup(pid, addr) {
            return f;
        }
        // Outside every known mapping: the process may have mapped code since
        // the capture; re-read its maps a bounded number of times.
        let may_refresh = self
            .procs
            .get_mut(&pid)
            .map(|p| {
                p.auto_refreshes += 1;
                p.auto_refreshes <= MAX_AUTO_REFRESH
            })
            .unwrap_or(false);
        if may_refresh && self.refresh(pid).is_ok() {
            if let Some(f) = self.lookup(pid, addr) {
                return f;
            }
        }
        // Perhaps JIT code in memory mapped after the last capture.
        self.js_frame(pid, addr)
            .map(|f| vec![f])
            .unwrap_or_else(|| vec![Frame::unknown(addr)])
    }

    /// None when the address is in no known mapping.
    fn lookup(&mut self, pid: u32, addr: u64) -> Option<Vec<Frame>> {
        let proc = self.procs.get(&pid)?;
        let mapped = proc.find(addr)?;
        let entry = mapped.entry.clone();
        let module = mapped.module.clone();
        if entry.is_anon() {
            // V8's copy of its embedded builtins (short builtin calls remap
            // them next to the JIT code): the same code as node's text,
            // named there.
            if let Some(text) = proc
                .js
                .as_ref()
                .and_then(|js| remapped_builtin(&js.config, addr))
            {
                if let Some(mut frames) = self.lookup(pid, text) {
                    for f in &mut frames {
                        f.addr = format!("{addr:#x}");
                    }
                    return Some(frames);
                }
            }
            return Some(vec![self.js_frame(pid, addr).unwrap_or_else(|| Frame {
                symbol: Some(JIT_SYMBOL.to_string()),
                kind: FrameKind::Jit,
                ..Frame::unknown(addr)
            })]);
        }
        let base = Frame {
            module: entry.name.clone(),
            addon: entry.path().and_then(|p| proc.addons.get(p)).cloned(),
            ..Frame::unknown(addr)
        };
        let Some(module) = module else {
            return Some(vec![base]);
        };
        let Some(vaddr) = module.file_offset_to_vaddr(addr - entry.start + entry.offset) else {
            return Some(vec![base]);
        };
        let symbol = module.function_name(vaddr).map(|s| s.to_string());
        let source = module.source_frames(vaddr);
        if source.is_empty() {
            return Some(vec![Frame { symbol, ..base }]);
        }
        let last = source.len() - 1;
        Some(
            source
                .into_iter()
                .enumerate()
                .map(|(i, s)| Frame {
                    // The outermost DWARF frame is the real function: its
                    // symbol-table name carries the C++ signature.
                    symbol: if i == last {
                        symbol.clone().or(s.function)
                    } else {
                        s.function.or_else(|| symbol.clone())
                    },
                    file: s.file,
                    line: s.line,
                    ..base.clone()
                })
                .collect(),
        )
    }
}

impl Symbolize for Symbolizer {
    fn symbolize(&mut self, pid: u32, addr: u64) -> Vec<Frame> {
        self.frames(pid, addr)
    }

    fn process_warnings(&mut self, pid: u32) -> Vec<String> {
        let Some(p) = self.procs.get(&pid) else {
            return Vec::new();
        };
        let mut out = p.warnings.clone();
        out.extend(p.perf.iter().flat_map(PerfMap::problems));
        out
    }

    fn take_warnings(&mut self) -> Vec<String> {
        let problems: Vec<String> = self
            .procs
            .values()
            .filter_map(|p| p.perf.as_ref())
            .flat_map(PerfMap::problems)
            .collect();
        for p in problems {
            self.warn(p);
        }
        let unresolved: Vec<String> = self
            .procs
            .iter()
            .filter_map(|(pid, p)| p.js.as_ref().map(|j| (pid, j.unresolved())))
            .filter(|(_, n)| *n > 0)
            .map(|(pid, n)| {
                format!(
                    "pid {pid}: {n} JS frames could not be named (gone from V8's heap when \
                     their stacks were first seen); they show as {JIT_SYMBOL}"
                )
            })
            .collect();
        for u in unresolved {
            self.warn(u);
        }
        std::mem::take(&mut self.warnings)
    }
}

// The daemon keeps a Symbolizer across tokio tasks.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Symbolizer>();
};

/// The address in node's own text of `addr` when it lies in V8's remapped
/// copy of the embedded builtins (the same bytes at another address).
fn remapped_builtin(cfg: &tracer_common::V8ProcConfig, addr: u64) -> Option<u64> {
    (cfg.remap_start < cfg.remap_end
        && (cfg.remap_start..cfg.remap_end).contains(&addr)
        && cfg.builtins_start < cfg.builtins_end)
        .then(|| cfg.builtins_start + (addr - cfg.remap_start))
        .filter(|a| *a < cfg.builtins_end)
}
