//! Reading a process's executable mappings and its namespaced pid from /proc.
use std::path::PathBuf;

use super::SymbolError;

/// One executable mapping of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    /// File offset of `start` (the `offset` column).
    pub offset: u64,
    pub dev: String,
    pub inode: u64,
    /// What the process sees: a path (without the " (deleted)" suffix),
    /// a pseudo name like `[vdso]`, or None for anonymous memory.
    pub path: Option<String>,
    /// The kernel appended " (deleted)": the file was unlinked or replaced.
    pub deleted: bool,
}

impl MapEntry {
    /// Backed by a regular file we can open and parse as ELF.
    pub fn is_file(&self) -> bool {
        self.inode != 0
            && self
                .path
                .as_deref()
                .is_some_and(|p| p.starts_with('/') && !p.starts_with("/memfd:"))
    }

    /// Anonymous executable memory: where V8 puts JIT code.
    /// memfd-backed code (`/memfd:...`) and `[anon:...]` names count as anonymous too.
    pub fn is_anon(&self) -> bool {
        match self.path.as_deref() {
            None => true,
            Some(p) => {
                p.starts_with("[anon")
                    || p.starts_with("/memfd:")
                    || self.inode == 0 && !p.starts_with('[')
            }
        }
    }

    /// The `/proc/PID/map_files/` entry name: lowercase hex, no `0x`
    /// (proc(5), "map_files"; readable by CAP_SYS_ADMIN, works for deleted files).
    pub fn map_files_name(&self) -> String {
        format!("{:x}-{:x}", self.start, self.end)
    }
}

/// Parses one line of /proc/PID/maps:
/// `start-end perms offset dev inode   path` (path may contain spaces).
pub fn parse_line(line: &str) -> Option<(MapEntry, String)> {
    let mut rest = line;
    let mut next = || -> Option<&str> {
        let t = rest.trim_start();
        let end = t.find(' ').unwrap_or(t.len());
        let (field, tail) = t.split_at(end);
        rest = tail;
        (!field.is_empty()).then_some(field)
    };
    let range = next()?;
    let perms = next()?.to_string();
    let offset = u64::from_str_radix(next()?, 16).ok()?;
    let dev = next()?.to_string();
    let inode = next()?.parse().ok()?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let raw = rest.trim_start();
    let (path, deleted) = if raw.is_empty() {
        (None, false)
    } else if let Some(p) = raw.strip_suffix(" (deleted)") {
        (Some(p.to_string()), true)
    } else {
        (Some(raw.to_string()), false)
    };
    Some((
        MapEntry {
            start,
            end,
            offset,
            dev,
            inode,
            path,
            deleted,
        },
        perms,
    ))
}

/// The executable mappings of a live process, in address order.
pub fn read_exec_maps(pid: u32) -> Result<Vec<MapEntry>, SymbolError> {
    let path = PathBuf::from(format!("/proc/{pid}/maps"));
    let text =
        std::fs::read_to_string(&path).map_err(|e| SymbolError::NoProcess { pid, source: e })?;
    let mut out: Vec<MapEntry> = text
        .lines()
        .filter_map(parse_line)
        .filter(|(_, perms)| perms.as_bytes().get(2) == Some(&b'x'))
        .map(|(m, _)| m)
        .collect();
    out.sort_by_key(|m| m.start);
    Ok(out)
}

/// The pid as the process's innermost pid namespace sees it: the last field of
/// `NSpid:` in /proc/PID/status (Linux >= 4.1). V8 names its perf map after
/// getpid(), which returns this value inside a container.
pub fn innermost_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_nspid(&status)
}

pub fn parse_nspid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_anon_and_deleted_lines() {
        let (m, perms) = parse_line(
            "5644b8fd1000-5644b8fd6000 r-xp 00002000 fe:00 247030                     /usr/bin/cat",
        )
        .unwrap();
        assert_eq!(perms, "r-xp");
        assert_eq!(
            (m.start, m.end, m.offset, m.inode),
            (0x5644b8fd1000, 0x5644b8fd6000, 0x2000, 247030)
        );
        assert_eq!(m.path.as_deref(), Some("/usr/bin/cat"));
        assert!(m.is_file() && !m.is_anon());
        assert_eq!(m.map_files_name(), "5644b8fd1000-5644b8fd6000");

        let (m, _) = parse_line("3e605040000-3e605080000 rwxp 00000000 00:00 0 ").unwrap();
        assert_eq!(m.path, None);
        assert!(m.is_anon() && !m.is_file());

        let (m, _) =
            parse_line("7f00-8f00 r-xp 00001000 fe:00 99 /tmp/a dir/prog (deleted)").unwrap();
        assert_eq!(m.path.as_deref(), Some("/tmp/a dir/prog"));
        assert!(m.deleted && m.is_file());

        let (m, _) =
            parse_line("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]")
                .unwrap();
        assert!(!m.is_file() && !m.is_anon());
        assert!(parse_line("garbage").is_none());
    }

    #[test]
    fn nspid_takes_the_innermost_namespace() {
        assert_eq!(parse_nspid("Name:\tnode\nNSpid:\t4242\t7\t1\n"), Some(1));
        assert_eq!(parse_nspid("Name:\tnode\nNSpid:\t4242\n"), Some(4242));
        assert_eq!(parse_nspid("Name:\tnode\n"), None);
    }
}
