//! The one parser of `/proc/PID/maps` (proc(5)): every reader in the crate
//! (the allocator finder, the symbolizer, the CFI unwinder, resident mode's
//! baseline) goes through it, so they agree on every line.
//!
//! A line is `start-end perms offset dev inode [name]`. The name is whatever
//! follows the inode after the padding: a path that may contain spaces (kept
//! whole), a pseudo name such as `[heap]`, `[stack]`, `[vdso]` or an
//! `[anon:NAME]` set by prctl(PR_SET_VMA_ANON_NAME) (Linux 5.17), or nothing
//! for anonymous memory. The kernel appends " (deleted)" to the path of a file
//! that was unlinked or replaced since it was mapped (fs/d_path.c); that is
//! stripped here and kept as a flag.
//!
//! The `procfs` crate parses these lines too, but keeps " (deleted)" inside
//! the path and has no notion of `map_files` names; a wrapper doing both over
//! it would be as long as this parser.
use std::path::PathBuf;

/// One line of /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// The four permission characters, e.g. `r-xp`.
    pub perms: [u8; 4],
    /// File offset of `start`.
    pub offset: u64,
    pub dev: String,
    pub inode: u64,
    /// The name as the process sees it, without " (deleted)"; None for
    /// anonymous memory.
    pub name: Option<String>,
    /// The kernel appended " (deleted)": the file was unlinked or replaced.
    pub deleted: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read /proc/{pid}/maps")]
pub struct MapsError {
    pub pid: u32,
    #[source]
    pub source: std::io::Error,
}

impl MapsError {
    /// The process is gone (or was never there).
    pub fn is_gone(&self) -> bool {
        matches!(
            self.source.raw_os_error(),
            Some(libc::ENOENT) | Some(libc::ESRCH)
        )
    }
}

impl Mapping {
    pub fn readable(&self) -> bool {
        self.perms[0] == b'r'
    }

    pub fn executable(&self) -> bool {
        self.perms[2] == b'x'
    }

    /// No access at all: a reservation of address space (V8's cages, glibc
    /// thread stacks and arenas before mprotect), never resident.
    pub fn is_reservation(&self) -> bool {
        &self.perms[..3] == b"---"
    }

    /// Backed by a regular file that can be opened and parsed as ELF.
    pub fn is_file(&self) -> bool {
        self.inode != 0
            && self
                .name
                .as_deref()
                .is_some_and(|p| p.starts_with('/') && !p.starts_with("/memfd:"))
    }

    /// Anonymous memory: no name, an `[anon:NAME]`, or memfd-backed (where
    /// V8 may put JIT code).
    pub fn is_anon(&self) -> bool {
        match self.name.as_deref() {
            None => true,
            Some(p) => {
                p.starts_with("[anon:")
                    || p.starts_with("/memfd:")
                    || self.inode == 0 && !p.starts_with('[')
            }
        }
    }

    /// The file's path as the process sees it, for file mappings.
    pub fn path(&self) -> Option<&str> {
        self.is_file().then_some(self.name.as_deref()).flatten()
    }

    /// node itself (`node`, Debian's `nodejs`) or an embedder's `libnode.so.N`:
    /// a process that runs V8 and can write a perf map.
    pub fn is_node(&self) -> bool {
        let name = self
            .path()
            .map_or("", |p| p.rsplit('/').next().unwrap_or(p));
        matches!(name, "node" | "nodejs") || name.starts_with("libnode.so")
    }

    /// The `/proc/PID/map_files/` entry name: lowercase hex, no `0x`
    /// (proc(5), "map_files"; readable by CAP_SYS_ADMIN, works for deleted
    /// files).
    pub fn map_files_name(&self) -> String {
        format!("{:x}-{:x}", self.start, self.end)
    }

    /// The kind a resident page of this mapping is reported under when it
    /// was resident before tracing: "heap", "stack", "anon", a pseudo name
    /// without brackets (`vdso`), or "data:PATH" for the private
    /// (copy-on-write) pages of a file mapping (its .data, .bss and relro).
    pub fn kind(&self) -> String {
        match self.name.as_deref() {
            None => "anon".to_string(),
            Some("[heap]") => "heap".to_string(),
            Some("[stack]") => "stack".to_string(),
            Some(p) if p.starts_with("[anon:") => "anon".to_string(),
            Some(p) if p.starts_with('[') => p.trim_matches(|c| c == '[' || c == ']').to_string(),
            Some(p) if self.is_anon() => format!("anon:{p}"),
            Some(p) => format!("data:{p}"),
        }
    }
}

/// Parses one line; None for a line that is not a maps line.
pub fn parse_line(line: &str) -> Option<Mapping> {
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let t = rest.trim_start_matches(' ');
        let end = t.find(' ').unwrap_or(t.len());
        let (f, tail) = t.split_at(end);
        rest = tail;
        (!f.is_empty()).then_some(f)
    };
    let (start, end) = field()?.split_once('-')?;
    let perms: [u8; 4] = field()?.as_bytes().try_into().ok()?;
    let offset = u64::from_str_radix(field()?, 16).ok()?;
    let dev = field()?.to_string();
    let inode = field()?.parse().ok()?;
    let raw = rest.trim_start_matches(' ');
    let (name, deleted) = match raw {
        "" => (None, false),
        r => match r.strip_suffix(" (deleted)") {
            Some(p) => (Some(p.to_string()), true),
            None => (Some(r.to_string()), false),
        },
    };
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        dev,
        inode,
        name,
        deleted,
    })
}

/// Every parsable line of a maps text, in the kernel's (address) order.
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

/// The mappings of a live process.
pub fn read(pid: u32) -> Result<Vec<Mapping>, MapsError> {
    let path = PathBuf::from(format!("/proc/{pid}/maps"));
    std::fs::read_to_string(path)
        .map(|t| parse(&t))
        .map_err(|source| MapsError { pid, source })
}

/// File-backed modules (paths as the process sees them), in maps order,
/// each once.
pub fn modules(maps: &[Mapping]) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    maps.iter()
        .filter_map(Mapping::path)
        .filter(|p| seen.insert(p.to_string()))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_anon_deleted_and_pseudo_lines() {
        let m = parse_line(
            "5644b8fd1000-5644b8fd6000 r-xp 00002000 fe:00 247030                     /usr/bin/cat",
        )
        .unwrap();
        assert_eq!(&m.perms, b"r-xp");
        assert_eq!(
            (m.start, m.end, m.offset, m.inode),
            (0x5644b8fd1000, 0x5644b8fd6000, 0x2000, 247030)
        );
        assert_eq!(m.path(), Some("/usr/bin/cat"));
        assert!(m.is_file() && !m.is_anon() && m.executable());
        assert_eq!(m.map_files_name(), "5644b8fd1000-5644b8fd6000");
        assert_eq!(m.kind(), "data:/usr/bin/cat");

        let m = parse_line("3e605040000-3e605080000 rwxp 00000000 00:00 0 ").unwrap();
        assert_eq!(m.name, None);
        assert!(m.is_anon() && !m.is_file());
        assert_eq!(m.kind(), "anon");

        let m = parse_line("7f00-8f00 r-xp 00001000 fe:00 99 /tmp/a dir/prog (deleted)").unwrap();
        assert_eq!(m.path(), Some("/tmp/a dir/prog"));
        assert!(m.deleted && m.is_file());

        let m = parse_line(
            "7f7a4c000000-7f7a4c021000 rw-p 00000000 00:00 0                          [anon:v8 heap]",
        )
        .unwrap();
        assert_eq!(m.name.as_deref(), Some("[anon:v8 heap]"));
        assert!(m.is_anon() && m.path().is_none());
        assert_eq!(m.kind(), "anon");

        let m = parse_line("55d4c3a5e000-55d4c3a7f000 rw-p 00000000 00:00 0      [heap]").unwrap();
        assert_eq!(m.kind(), "heap");
        let m = parse_line("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]")
            .unwrap();
        assert!(!m.is_file() && !m.is_anon() && m.executable() && !m.is_reservation());
        assert_eq!(m.kind(), "vsyscall");

        let m = parse_line("7f00-8f00 r-xs 00000000 00:01 7 /memfd:jit (deleted)").unwrap();
        assert!(m.is_anon() && !m.is_file() && m.deleted);
        assert!(parse_line("garbage").is_none());
        assert!(parse_line("").is_none());
    }

    #[test]
    fn modules_are_deduplicated_in_order() {
        let maps = parse(
            "55-56 r--p 0 08:01 1 /usr/bin/node\n56-57 r-xp 0 08:01 1 /usr/bin/node\n\
             57-58 rw-p 0 00:00 0 [heap]\n58-59 r-xp 0 08:01 2 /lib/libc.so.6\n\
             59-5a r-xp 0 08:01 3 /opt/my app/addon.node (deleted)\n",
        );
        assert_eq!(
            modules(&maps),
            vec!["/usr/bin/node", "/lib/libc.so.6", "/opt/my app/addon.node"]
        );
    }

    #[test]
    fn node_modules() {
        let is_node = |p: &str| {
            parse_line(&format!("1-2 r-xp 0 fe:00 1 {p}"))
                .unwrap()
                .is_node()
        };
        assert!(is_node("/usr/bin/node"));
        assert!(is_node("/usr/bin/nodejs"));
        assert!(is_node("/usr/lib/libnode.so.109"));
        assert!(!is_node("/usr/bin/nodemon"));
        assert!(!is_node("/usr/lib/x86_64-linux-gnu/libc.so.6"));
    }

    #[test]
    fn own_maps_are_read() {
        let maps = read(std::process::id()).unwrap();
        assert!(maps.iter().any(|m| m.name.as_deref() == Some("[stack]")));
        let gone = read(u32::MAX - 1).unwrap_err();
        assert!(gone.is_gone(), "{gone}");
    }
}
