//! One parsed ELF module: load segments, symbols (.symtab + .dynsym), build-id,
//! and DWARF line info (parsed lazily, on the first lookup that needs it).
use std::{
    borrow::Cow,
    collections::HashMap,
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

use super::{
    demangle::demangle,
    dynamic::DynamicNames,
    v8::{MetadataError, V8Metadata},
    SymbolError,
};
use crate::proc::root::Root;

type Reader = gimli::EndianArcSlice<gimli::RunTimeEndian>;

/// A PT_LOAD segment: file bytes `[offset, offset+filesz)` live at `vaddr`.
#[derive(Clone, Copy, Debug)]
struct Segment {
    offset: u64,
    filesz: u64,
    vaddr: u64,
}

#[derive(Clone, Copy, Debug)]
struct Sym {
    addr: u64,
    size: u64,
    name_start: u32,
    name_len: u32,
}

enum Dwarf {
    NotLoaded,
    Absent,
    Loaded(Box<addr2line::Context<Reader>>),
}

/// A source location found in DWARF; several when the address is in inlined code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFrame {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// A parsed module, shared (Arc) by every process that maps the same file.
pub struct Module {
    pub build_id: Option<Vec<u8>>,
    /// The separate debug file used, if any (found by build-id).
    pub debug_file: Option<PathBuf>,
    segments: Vec<Segment>,
    symbols: Vec<Sym>,
    names: String,
    /// The mapped file that holds `.debug_info`: the module itself or its debug file.
    /// Kept mapped so DWARF can be parsed after the process died or the file was deleted.
    dwarf_source: Option<Arc<Mmap>>,
    dwarf: Mutex<Dwarf>,
    /// Demangled names by symbol index: demangling costs microseconds and the
    /// same function is hit by many return addresses and processes.
    demangled: Mutex<HashMap<u32, Arc<str>>>,
    /// V8's postmortem metadata, when the module holds V8 (node, libnode):
    /// read once per build (~5 ms for node), shared like the module.
    pub v8: Option<Result<Arc<V8Metadata>, Arc<MetadataError>>>,
    /// DT_SONAME and DT_NEEDED, for the addon rule (classify/addon.rs).
    pub dynamic: DynamicNames,
}

fn map(file: &File, what: &Path) -> Result<Mmap, SymbolError> {
    // SAFETY: the mapping is private and read-only; a file truncated under us
    // could SIGBUS, which is the accepted risk of every symbolizer that maps
    // binaries (perf, gdb). Deleting or replacing the file is safe: the mapping
    // keeps the old inode alive.
    unsafe { Mmap::map(file) }.map_err(|e| SymbolError::Io {
        path: what.to_path_buf(),
        source: e,
    })
}

fn parse<'a>(data: &'a [u8], what: &Path) -> Result<object::File<'a>, SymbolError> {
    object::File::parse(data).map_err(|e| SymbolError::Elf {
        path: what.to_path_buf(),
        reason: e.to_string(),
    })
}

fn has_dwarf(obj: &object::File<'_>) -> bool {
    obj.section_by_name(".debug_info")
        .is_some_and(|s| s.size() > 0)
}

/// Reads only the build-id note, cheaply (no symbol parsing).
pub fn read_build_id(data: &[u8]) -> Option<Vec<u8>> {
    object::File::parse(data)
        .ok()?
        .build_id()
        .ok()
        .flatten()
        .map(<[u8]>::to_vec)
}

/// Where distributions install separate debug info:
/// `/usr/lib/debug/.build-id/<first byte>/<rest>.debug` (gdb's "build-id method").
pub fn debug_file_path(build_id: &[u8]) -> Option<PathBuf> {
    let (first, rest) = build_id.split_first()?;
    let rest: String = rest.iter().map(|b| format!("{b:02x}")).collect();
    Some(PathBuf::from(format!(
        "/usr/lib/debug/.build-id/{first:02x}/{rest}.debug"
    )))
}

impl Module {
    /// Parses an opened module. `roots` are the directories under which to look
    /// for a separate debug file (the host's `/`, then the process's root);
    /// it is opened inside each, never followed out of it.
    pub fn load(file: &File, what: &Path, roots: &[&Root]) -> Result<Module, SymbolError> {
        let data = Arc::new(map(file, what)?);
        let obj = parse(&data, what)?;
        let build_id = obj.build_id().ok().flatten().map(<[u8]>::to_vec);
        let segments = obj
            .segments()
            .map(|s| {
                let (offset, filesz) = s.file_range();
                Segment {
                    offset,
                    filesz,
                    vaddr: s.address(),
                }
            })
            .collect();
        let mut names = String::new();
        let mut symbols = Vec::new();
        collect_symbols(&obj, &mut symbols, &mut names);
        let mut dwarf_source = has_dwarf(&obj).then(|| data.clone());

        let mut debug_file = None;
        if let Some(rel) = build_id.as_deref().and_then(debug_file_path) {
            for root in roots {
                let candidate = root.path().join(rel.strip_prefix("/").unwrap_or(&rel));
                let Ok(f) = root.open(&rel) else {
                    continue;
                };
                let Ok(dbg) = map(&f, &candidate) else {
                    continue;
                };
                let dbg = Arc::new(dbg);
                let Ok(dobj) = object::File::parse(&**dbg) else {
                    continue;
                };
                // A stripped binary keeps only .dynsym; its debug file has the full .symtab.
                if obj.symbols().next().is_none() {
                    collect_symbols(&dobj, &mut symbols, &mut names);
                }
                if dwarf_source.is_none() && has_dwarf(&dobj) {
                    dwarf_source = Some(dbg.clone());
                }
                debug_file = Some(rel.clone());
                break;
            }
        }
        drop(obj);
        finish_symbols(&mut symbols, &names);
        let v8 = match V8Metadata::from_elf(&data) {
            Ok(m) => Some(Ok(Arc::new(m))),
            Err(MetadataError::NoMetadata) => None,
            Err(e) => Some(Err(Arc::new(e))),
        };
        let dynamic = DynamicNames::read(&data);
        Ok(Module {
            build_id,
            dynamic,
            debug_file,
            segments,
            symbols,
            names,
            dwarf: Mutex::new(if dwarf_source.is_some() {
                Dwarf::NotLoaded
            } else {
                Dwarf::Absent
            }),
            dwarf_source,
            demangled: Mutex::new(HashMap::new()),
            v8,
        })
    }

    /// The link-time virtual address of a file offset, through the PT_LOAD
    /// segment that maps it. Works for PIE and non-PIE alike: a runtime address
    /// `a` in a mapping with file offset `off` starting at `start` is at file
    /// offset `a - start + off` (mmap(2) maps page-aligned offsets 1:1).
    pub fn file_offset_to_vaddr(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| offset >= s.offset && offset < s.offset.saturating_add(s.filesz))
            .map(|s| (offset - s.offset).wrapping_add(s.vaddr))
    }

    /// The inverse of `file_offset_to_vaddr`.
    pub fn vaddr_to_file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr < s.vaddr.saturating_add(s.filesz))
            .map(|s| (vaddr - s.vaddr).wrapping_add(s.offset))
    }

    pub fn symbol_count(&self) -> usize {
        self.symbols.len()
    }

    /// An address inside each sized function (its middle), link-time; the
    /// bench builds stacks from these as a return address would land.
    pub fn function_addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.symbols
            .iter()
            .filter(|s| s.size > 0)
            .map(|s| s.addr.saturating_add(s.size / 2))
    }

    /// The raw (mangled) name of the symbol containing `vaddr`.
    pub fn symbol_at(&self, vaddr: u64) -> Option<&str> {
        self.symbol_index(vaddr)
            .map(|i| self.name(&self.symbols[i]))
    }

    /// The demangled name of the symbol containing `vaddr`.
    pub fn function_name(&self, vaddr: u64) -> Option<Arc<str>> {
        let i = self.symbol_index(vaddr)?;
        let mut memo = match self.demangled.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        Some(
            memo.entry(i as u32)
                .or_insert_with(|| demangle(self.name(&self.symbols[i])).into())
                .clone(),
        )
    }

    fn symbol_index(&self, vaddr: u64) -> Option<usize> {
        let idx = self.symbols.partition_point(|s| s.addr <= vaddr);
        if idx == 0 {
            return None;
        }
        // Sized symbols may nest or be followed by unsized labels; look back a
        // little for one whose [addr, addr+size) holds the address.
        for i in (idx.saturating_sub(8)..idx).rev() {
            let s = &self.symbols[i];
            if s.size > 0 && vaddr < s.addr.saturating_add(s.size) {
                return Some(i);
            }
        }
        // An unsized symbol (hand-written assembly) names what follows it,
        // but only if it is the nearest one.
        (self.symbols[idx - 1].size == 0).then_some(idx - 1)
    }

    fn name(&self, s: &Sym) -> &str {
        &self.names[s.name_start as usize..(s.name_start + s.name_len) as usize]
    }

    /// DWARF frames for `vaddr`, innermost (inlined) first. Empty without DWARF.
    pub fn source_frames(&self, vaddr: u64) -> Vec<SourceFrame> {
        let mut guard = match self.dwarf.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if matches!(*guard, Dwarf::NotLoaded) {
            *guard = match self.dwarf_source.as_deref().and_then(load_dwarf) {
                Some(ctx) => Dwarf::Loaded(Box::new(ctx)),
                None => Dwarf::Absent,
            };
        }
        let Dwarf::Loaded(ctx) = &*guard else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let Ok(mut frames) = ctx.find_frames(vaddr).skip_all_loads() else {
            return out;
        };
        while let Ok(Some(f)) = frames.next() {
            out.push(SourceFrame {
                function: f
                    .function
                    .as_ref()
                    .and_then(|n| n.raw_name().ok().map(|r| demangle(r.as_ref()))),
                file: f.location.as_ref().and_then(|l| l.file.map(str::to_string)),
                line: f.location.as_ref().and_then(|l| l.line),
            });
        }
        out
    }
}

/// A module's symbols: its .symtab, or its .dynsym when .symtab was
/// stripped. Never both: the linker writes every symbol of .dynsym to
/// .symtab too, so reading both read node's 75k dynamic symbols twice
/// (107k in .symtab), on the attach path.
pub fn symbol_table<'d, 'f>(obj: &'f object::File<'d>) -> object::SymbolIterator<'d, 'f> {
    if obj.symbols().next().is_some() {
        obj.symbols()
    } else {
        obj.dynamic_symbols()
    }
}

fn collect_symbols(obj: &object::File<'_>, out: &mut Vec<Sym>, names: &mut String) {
    for s in symbol_table(obj) {
        if s.kind() != SymbolKind::Text || !s.is_definition() || s.address() == 0 {
            continue;
        }
        let Ok(name) = s.name() else { continue };
        if name.is_empty() {
            continue;
        }
        out.push(Sym {
            addr: s.address(),
            size: s.size(),
            name_start: names.len() as u32,
            name_len: name.len() as u32,
        });
        names.push_str(name);
    }
}

/// Sorts by address and keeps one symbol per address: the sized one, then the
/// public spelling of an alias (glibc exports `malloc` and `__libc_malloc` at
/// one address), then the first seen (.symtab before .dynsym).
fn finish_symbols(symbols: &mut Vec<Sym>, names: &str) {
    let underscores = |s: &Sym| {
        names[s.name_start as usize..(s.name_start + s.name_len) as usize]
            .bytes()
            .take_while(|&b| b == b'_')
            .count()
    };
    // Unstable, with the order seen as the last key: the same order as a
    // stable sort, at about half its cost (node: 180k symbols, on the
    // attach path). Names are read only for ties of address and size.
    symbols.sort_unstable_by(|a, b| {
        a.addr
            .cmp(&b.addr)
            .then(b.size.cmp(&a.size))
            .then_with(|| underscores(a).cmp(&underscores(b)))
            .then(a.name_start.cmp(&b.name_start))
    });
    symbols.dedup_by_key(|s| s.addr);
}

fn load_dwarf(data: &Mmap) -> Option<addr2line::Context<Reader>> {
    let obj = object::File::parse(&**data).ok()?;
    let endian = if obj.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    // Sections are copied (decompressed if SHF_COMPRESSED) into Arc buffers so
    // the context owns its data and the module can be shared between threads.
    let load = |id: gimli::SectionId| -> Result<Reader, gimli::Error> {
        let bytes: Cow<'_, [u8]> = obj
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
            .unwrap_or(Cow::Borrowed(&[]));
        Ok(gimli::EndianArcSlice::new(Arc::from(&*bytes), endian))
    };
    let dwarf = gimli::Dwarf::load(load).ok()?;
    addr2line::Context::from_dwarf(dwarf).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_path_from_build_id() {
        assert_eq!(
            debug_file_path(&[0xeb, 0xea, 0xf2, 0xdf]).unwrap(),
            PathBuf::from("/usr/lib/debug/.build-id/eb/eaf2df.debug")
        );
        assert!(debug_file_path(&[]).is_none());
    }

    #[test]
    fn garbage_and_truncated_files_are_errors_not_panics() {
        let mut junk = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut junk, b"#!/bin/sh\necho not an ELF\n").unwrap();
        let err = Module::load(&junk, Path::new("/x/script"), &[])
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("/x/script is not a usable ELF file"),
            "{err}"
        );

        // The first page of node: a valid ELF header whose tables point past the end.
        let head = std::fs::read("/usr/bin/node").unwrap();
        let mut cut = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut cut, &head[..4096]).unwrap();
        if let Ok(m) = Module::load(&cut, Path::new("/x/cut"), &[]) {
            assert_eq!(m.symbol_at(0xbbe4a0), None);
            assert!(m.source_frames(0xbbe4a0).is_empty());
        }
    }

    #[test]
    fn node_binary_symbols_and_segments() {
        let f = File::open("/usr/bin/node").expect("node v20 is installed on the test machine");
        let m = Module::load(&f, Path::new("/usr/bin/node"), &[]).unwrap();
        assert!(m.symbol_count() > 50_000, "{}", m.symbol_count());
        // node is non-PIE: the text segment at file offset 0x772000 is linked at 0xb72000.
        assert_eq!(m.file_offset_to_vaddr(0x772000), Some(0xb72000));
        let addr = 0x0bbe4a0; // node::NodeArrayBufferAllocator::Allocate(unsigned long)
        let raw = m.symbol_at(addr + 4).unwrap();
        assert_eq!(
            demangle(raw),
            "node::NodeArrayBufferAllocator::Allocate(unsigned long)"
        );
        assert_eq!(
            m.build_id.as_deref().map(|b| b.len()),
            Some(20),
            "node has a sha1 build-id"
        );
    }
}
