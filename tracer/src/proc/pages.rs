//! What the kernel says is resident, read from /proc/PID: page presence from
//! `pagemap`, RSS from `smaps_rollup`, per-file residency from `smaps` (the
//! mapping list comes from `crate::proc::maps`).
//!
//! pagemap (Documentation/admin-guide/mm/pagemap.rst): one u64 per virtual
//! page; bit 63 present, bit 61 file page or shared anonymous, bits 0-54 the
//! PFN (visible with CAP_SYS_ADMIN). An unmapped page reads as 0, so ranges
//! that were unmapped since simply count nothing.
use std::{fs::File, os::unix::fs::FileExt, sync::OnceLock};

pub const PAGE: u64 = 4096;
const PRESENT: u64 = 1 << 63;
const FILE_OR_SHARED: u64 = 1 << 61;
const PFN_MASK: u64 = (1 << 55) - 1;
/// Entries read per pread (512 KiB of pagemap, 256 MiB of address space).
const CHUNK: u64 = 65536;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn read(path: String) -> Result<String, ProcError> {
    std::fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
}

/// The PFN of the kernel's shared zero page, which a read fault on untouched
/// anonymous memory maps: pagemap shows it present but it is not in RSS.
fn zero_pfn() -> u64 {
    static ZERO: OnceLock<u64> = OnceLock::new();
    *ZERO.get_or_init(|| {
        // SAFETY: an anonymous private read-only mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE as usize,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return u64::MAX;
        }
        // SAFETY: p is a readable page.
        unsafe { std::ptr::read_volatile(p as *const u8) };
        let pfn = File::open("/proc/self/pagemap")
            .ok()
            .and_then(|f| {
                let mut b = [0u8; 8];
                f.read_exact_at(&mut b, (p as u64 / PAGE) * 8).ok()?;
                Some(u64::from_le_bytes(b))
            })
            .filter(|e| e & PRESENT != 0)
            .map_or(u64::MAX, |e| e & PFN_MASK);
        // SAFETY: unmapping what was mapped above.
        unsafe { libc::munmap(p, PAGE as usize) };
        pfn
    })
}

/// Reader of one process's page table through /proc/PID/pagemap.
pub struct Pagemap {
    file: File,
    buf: Vec<u8>,
}

impl Pagemap {
    pub fn open(pid: u32) -> Result<Pagemap, ProcError> {
        let path = format!("/proc/{pid}/pagemap");
        let file = File::open(&path).map_err(|source| ProcError::Read { path, source })?;
        Ok(Pagemap {
            file,
            buf: Vec::new(),
        })
    }

    /// Calls `f(page_address)` for every page of [start, end) that holds
    /// private anonymous memory counted in RSS. A process that is gone reads
    /// as nothing resident.
    pub fn for_each_resident(&mut self, start: u64, end: u64, mut f: impl FnMut(u64)) {
        let zero = zero_pfn();
        let mut page = start / PAGE;
        let last = end.div_ceil(PAGE);
        while page < last {
            let n = (last - page).min(CHUNK);
            self.buf.resize((n * 8) as usize, 0);
            let got = match self.file.read_at(&mut self.buf, page * 8) {
                Ok(g) => g / 8,
                Err(_) => return,
            };
            if got == 0 {
                return;
            }
            for (i, e) in self.buf[..got * 8].chunks_exact(8).enumerate() {
                let e = u64::from_le_bytes(e.try_into().expect("8 bytes"));
                if e & PRESENT != 0 && e & FILE_OR_SHARED == 0 && e & PFN_MASK != zero {
                    f((page + i as u64) * PAGE);
                }
            }
            page += got as u64;
        }
    }

    pub fn count_resident(&mut self, start: u64, end: u64) -> u64 {
        let mut n = 0;
        self.for_each_resident(start, end, |_| n += 1);
        n
    }
}

/// RSS of the process and its file-backed part (page cache and shared
/// memory: Rss minus Anonymous), in bytes, from smaps_rollup.
pub fn rss_bytes(pid: u32) -> Result<(u64, u64), ProcError> {
    let text = read(format!("/proc/{pid}/smaps_rollup"))?;
    let rss = kib_field(&text, "Rss:").unwrap_or(0) * 1024;
    let anon = kib_field(&text, "Anonymous:").unwrap_or(0) * 1024;
    Ok((rss, rss.saturating_sub(anon)))
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_ascii_whitespace().next()?.parse().ok())
}

/// Resident bytes of file pages (page cache and shared memory) per mapped
/// file, from /proc/PID/smaps: Rss minus the private anonymous part.
pub fn file_rss_by_path(pid: u32) -> Result<Vec<(String, u64)>, ProcError> {
    let text = read(format!("/proc/{pid}/smaps"))?;
    let mut out: std::collections::BTreeMap<String, u64> = Default::default();
    let mut path = String::new();
    let mut rss = 0u64;
    let mut flush = |path: &str, rss: u64, anon: u64| {
        let file = rss.saturating_sub(anon);
        if file > 0 {
            let key = if path.is_empty() || path.starts_with('[') {
                format!("shared:{}", if path.is_empty() { "anon" } else { path })
            } else {
                format!("file:{path}")
            };
            *out.entry(key).or_default() += file * 1024;
        }
    };
    for line in text.lines() {
        // smaps repeats each maps line as the header of its fields.
        if let Some(m) = crate::proc::maps::parse_line(line) {
            path = m.name.unwrap_or_default();
        } else if let Some(v) = line.strip_prefix("Rss:") {
            rss = v
                .split_ascii_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Anonymous:") {
            let anon = v
                .split_ascii_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            flush(&path, rss, anon);
        }
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Touches 5 pages of a fresh 8-page mapping, reads 1 more (zero page),
    /// then gives 2 back: pagemap must say exactly 3.
    #[test]
    fn counts_written_pages_not_zero_page() {
        let len = 8 * PAGE as usize;
        // SAFETY: a private anonymous mapping used only here.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as *mut u8;
        assert_ne!(p as *mut libc::c_void, libc::MAP_FAILED);
        // SAFETY: within the mapping.
        unsafe {
            for i in 0..5 {
                p.add(i * PAGE as usize).write_volatile(1);
            }
            std::ptr::read_volatile(p.add(6 * PAGE as usize));
            libc::madvise(p as *mut _, 2 * PAGE as usize, libc::MADV_DONTNEED);
        }
        let mut pm = Pagemap::open(std::process::id()).unwrap();
        let start = p as u64;
        assert_eq!(pm.count_resident(start, start + len as u64), 3);
        // SAFETY: unmapping the mapping above.
        unsafe { libc::munmap(p as *mut _, len) };
        assert_eq!(pm.count_resident(start, start + len as u64), 0);
    }
}
