//! One executable ELF file as the unwind tables need it: where its CFI is,
//! its load segments (to turn a mapping's file offset into a link-time
//! address) and who it is (build-id, or the file's identity).
use std::{fs::File, os::unix::fs::MetadataExt, path::Path};

use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSegment};

use super::UnwindError;

/// What a table is shared by: the GNU build-id note when the file has one
/// (two copies of one library in different container layers share a table),
/// else the file itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModuleId {
    BuildId(Vec<u8>),
    File {
        dev: u64,
        inode: u64,
        size: u64,
        mtime_ns: i64,
    },
}

impl std::fmt::Display for ModuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModuleId::BuildId(b) => b.iter().try_for_each(|x| write!(f, "{x:02x}")),
            ModuleId::File { dev, inode, .. } => write!(f, "dev {dev:#x} inode {inode}"),
        }
    }
}

/// A section's bytes in the file and its link-time address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SectionRange {
    pub offset: usize,
    pub size: usize,
    pub addr: u64,
}

/// A PT_LOAD segment: file bytes `[offset, offset + filesz)` at `vaddr`.
#[derive(Clone, Copy, Debug)]
struct Load {
    offset: u64,
    filesz: u64,
    vaddr: u64,
}

/// An opened, mapped ELF file.
pub struct ElfFile {
    map: Mmap,
    pub id: ModuleId,
    pub(crate) eh_frame: Option<SectionRange>,
    pub(crate) eh_frame_hdr: Option<SectionRange>,
    pub(crate) debug_frame: Option<SectionRange>,
    pub(crate) text: u64,
    loads: Vec<Load>,
}

impl ElfFile {
    pub fn open(path: &Path) -> Result<ElfFile, UnwindError> {
        let file = File::open(path).map_err(|source| UnwindError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        ElfFile::of_file(&file, path)
    }

    /// The ELF file open as `file`, named `path` in errors.
    pub fn of_file(file: &File, path: &Path) -> Result<ElfFile, UnwindError> {
        let io = |source| UnwindError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = file.metadata().map_err(io)?;
        // SAFETY: a private read-only mapping; a file truncated under us could
        // SIGBUS, the accepted risk of every tool that maps binaries (perf,
        // gdb). A file deleted or replaced keeps its old inode mapped.
        let map = unsafe { Mmap::map(file) }.map_err(io)?;
        let obj = object::File::parse(&*map).map_err(|source| UnwindError::Elf {
            path: path.to_path_buf(),
            source,
        })?;
        let range = |name: &str| {
            let s = obj.section_by_name(name)?;
            let (off, size) = s.file_range()?;
            Some(SectionRange {
                offset: usize::try_from(off).ok()?,
                size: usize::try_from(size).ok()?,
                addr: s.address(),
            })
        };
        let id = match obj.build_id().ok().flatten() {
            Some(b) if !b.is_empty() => ModuleId::BuildId(b.to_vec()),
            _ => ModuleId::File {
                dev: meta.dev(),
                inode: meta.ino(),
                size: meta.size(),
                mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            },
        };
        let eh_frame = range(".eh_frame");
        let eh_frame_hdr = range(".eh_frame_hdr");
        let debug_frame = range(".debug_frame");
        let text = obj.section_by_name(".text").map_or(0, |s| s.address());
        let loads = obj
            .segments()
            .map(|s| {
                let (offset, filesz) = s.file_range();
                Load {
                    offset,
                    filesz,
                    vaddr: s.address(),
                }
            })
            .collect();
        drop(obj);
        Ok(ElfFile {
            map,
            id,
            eh_frame,
            eh_frame_hdr,
            debug_frame,
            text,
            loads,
        })
    }

    pub(crate) fn bytes(&self, s: SectionRange) -> Option<&[u8]> {
        self.map.get(s.offset..s.offset.checked_add(s.size)?)
    }

    /// The link-time address of file offset `off`, through the PT_LOAD that
    /// maps it (mmap(2) maps page-aligned file offsets 1:1, so a runtime
    /// address `a` of a mapping at `start` with offset `o` is at file offset
    /// `a - start + o`).
    pub fn vaddr_of_offset(&self, off: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|l| off >= l.offset && off < l.offset.saturating_add(l.filesz))
            .map(|l| (off - l.offset).wrapping_add(l.vaddr))
    }
}
