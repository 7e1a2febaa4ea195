//! Fills `unwind_mappings` and `unwind_tables` (the owner of both maps, and
//! of `unwind_epoch`, which tells the walkers to forget what they cached):
//! one table per module, shared by build-id, within a memory cap; per
//! process, the prefixes of its executable mappings.
use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd, RawFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::maps::{lpm_trie::Key, Array, ArrayOfMaps, IterableMap, LpmTrie, MapData, MapError};
use tracer_common::{unwind_map_kind, UnwindEntry, UnwindMapping};

use super::{
    cfi,
    elf::{ElfFile, ModuleId},
    mappings::{self, KeyData},
    table::{NoTable, Table},
    UnwindError,
};
use crate::{proc::root::Root, symbols::MapEntry};

/// Flags of every table array: sized per module under one outer map, and
/// written through mmap in one copy (a syscall per row would cost ~0.2 s
/// for node's 200k rows). Must equal `unwind_table_inner` in unwind.bpf.h.
// BPF_F_INNER_MAP | BPF_F_MMAPABLE (include/uapi/linux/bpf.h).
const TABLE_FLAGS: u32 = (1 << 12) | (1 << 10);

/// Default cap on the tables' memory: node, glibc, libstdc++ and an addon
/// take ~2.1 MiB here (`cargo xtask bench --only tables`).
pub const DEFAULT_CAP_BYTES: u64 = 16 << 20;

/// What the tables did, for the report and metrics. Names are the report's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindCounters {
    /// Modules with a table in `unwind_tables`.
    pub modules_loaded: u64,
    /// Modules that need none: every pc is the frame-pointer step.
    pub modules_frame_pointer: u64,
    /// Modules not loaded because the cap was reached (frame pointers there).
    pub modules_over_cap: u64,
    /// Modules that could not be read or parsed (frame pointers there).
    pub modules_failed: u64,
    /// FDEs that failed to parse, and CFI rows the tables cannot express
    /// (STOP rows: the walker ends the stack there).
    pub bad_fdes: u64,
    pub unsupported_rows: u64,
    /// Rows and bytes of the loaded tables (the BPF arrays' memlock).
    pub rows: u64,
    pub table_bytes: u64,
    /// Prefixes inserted in, and refused by, `unwind_mappings`.
    pub mapping_entries: u64,
    pub mappings_full: u64,
}

impl UnwindCounters {
    pub fn named(&self) -> [(&'static str, u64); 10] {
        [
            ("unwind_modules_loaded", self.modules_loaded),
            ("unwind_modules_frame_pointer", self.modules_frame_pointer),
            ("unwind_modules_over_cap", self.modules_over_cap),
            ("unwind_modules_failed", self.modules_failed),
            ("unwind_bad_fdes", self.bad_fdes),
            ("unwind_unsupported_rows", self.unsupported_rows),
            ("unwind_rows", self.rows),
            ("unwind_table_bytes", self.table_bytes),
            ("unwind_mapping_entries", self.mapping_entries),
            ("unwind_mappings_full", self.mappings_full),
        ]
    }
}

/// One module as known to the loader.
struct Module {
    /// Slot in unwind_tables, when it has a table.
    slot: Option<u32>,
    base: u64,
    npages: u32,
    bytes: u64,
    /// Processes mapping it now; at 0 the table stays loaded (another process
    /// may map it soon) but may be evicted to make room.
    users: u32,
    /// Keeps the table's fd for as long as the slot holds it.
    _table: Option<Array<MapData, UnwindEntry>>,
}

/// A loaded module's figures (for the bench and tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleFigures {
    pub id: ModuleId,
    pub rows: u64,
    pub npages: u32,
    pub bytes: u64,
}

struct Process {
    keys: Vec<Key<KeyData>>,
    modules: Vec<Arc<ModuleId>>,
}

pub struct UnwindTables {
    mappings: LpmTrie<MapData, KeyData, UnwindMapping>,
    tables: ArrayOfMaps<MapData, Array<MapData, UnwindEntry>>,
    /// `tables`' fd, owned by it.
    tables_fd: RawFd,
    slots: u32,
    /// `unwind_epoch`: bumped after each change, as the walkers cache what
    /// they found per address for the current epoch (none in an object
    /// whose walker caches nothing, as the tests' walker).
    epoch: Option<Array<MapData, u32>>,
    modules: HashMap<Arc<ModuleId>, Module>,
    procs: HashMap<u32, Process>,
    cap_bytes: u64,
    pub counters: UnwindCounters,
}

fn map_err(what: &'static str) -> impl FnOnce(MapError) -> UnwindError {
    move |source| UnwindError::Map { what, source }
}

/// Bytes the kernel charges for a map (`memlock` in its fdinfo).
fn memlock(fd: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

impl UnwindTables {
    /// Takes the tables' maps out of a loaded object (and `unwind_epoch`,
    /// when it has one).
    pub fn new(ebpf: &mut aya::Ebpf, cap_bytes: u64) -> Result<UnwindTables, UnwindError> {
        use tracer_common::maps::{UNWIND_EPOCH, UNWIND_MAPPINGS, UNWIND_TABLES};
        let missing = |name| UnwindError::MissingMap(name);
        let m = ebpf
            .take_map(UNWIND_MAPPINGS)
            .ok_or(missing(UNWIND_MAPPINGS))?;
        let t = ebpf.take_map(UNWIND_TABLES).ok_or(missing(UNWIND_TABLES))?;
        let epoch = match ebpf.take_map(UNWIND_EPOCH) {
            Some(e) => Some(Array::try_from(e).map_err(map_err(UNWIND_EPOCH))?),
            None => None,
        };
        // Kept for `publish` (aya's ArrayOfMaps does not give its fd).
        let tables_fd = match &t {
            aya::maps::Map::ArrayOfMaps(d) => d.fd().as_fd().as_raw_fd(),
            _ => return Err(missing(UNWIND_TABLES)),
        };
        let tables: ArrayOfMaps<MapData, Array<MapData, UnwindEntry>> =
            ArrayOfMaps::try_from(t).map_err(map_err(UNWIND_TABLES))?;
        Ok(UnwindTables {
            mappings: LpmTrie::try_from(m).map_err(map_err(UNWIND_MAPPINGS))?,
            slots: tables.len(),
            tables,
            tables_fd,
            epoch,
            modules: HashMap::new(),
            procs: HashMap::new(),
            cap_bytes,
            counters: UnwindCounters::default(),
        })
    }

    /// The loaded modules' figures.
    pub fn figures(&self) -> Vec<ModuleFigures> {
        let mut v: Vec<ModuleFigures> = self
            .modules
            .iter()
            .filter(|(_, m)| m.slot.is_some())
            .map(|(id, m)| ModuleFigures {
                id: (**id).clone(),
                rows: (m.bytes / 8).saturating_sub(u64::from(m.npages)),
                npages: m.npages,
                bytes: m.bytes,
            })
            .collect();
        v.sort_by_key(|f| std::cmp::Reverse(f.bytes));
        v
    }

    /// Loads (or reuses) the tables of every executable module of `pid` and
    /// sets its mappings; again on a process already added, it brings the
    /// entries up to date (a module dlopen'ed since). Then every walker
    /// forgets what it cached (`forget_cached`). Returns the number of
    /// prefixes the process has.
    pub fn add_process(&mut self, pid: u32) -> Result<usize, UnwindError> {
        let maps = crate::proc::maps::read(pid).map_err(|e| UnwindError::Maps {
            pid,
            source: Box::new(crate::symbols::SymbolError::NoProcess {
                pid,
                source: e.source,
            }),
        })?;
        let mut entries: Vec<(Key<KeyData>, UnwindMapping)> =
            vec![(mappings::key(pid, 0, 0), mappings::catch_all())];
        let mut modules = Vec::new();
        let push = |entries: &mut Vec<_>, start: u64, end: u64, value: UnwindMapping| {
            for (addr, bits) in mappings::blocks(start, end) {
                entries.push((mappings::key(pid, addr, bits), value));
            }
        };
        // New tables go into `unwind_tables` together, before any mapping
        // entry names their slots (see `publish`).
        let mut pending = Vec::new();
        for m in maps.iter().filter(|m| m.executable() && !m.is_anon()) {
            let value = match m.path().and_then(|_| self.module_for(pid, m, &mut pending)) {
                Some((id, value)) => {
                    modules.push(id);
                    value
                }
                // [vdso], [vsyscall], a file with no table: frame pointers
                // (the kernel's vdso keeps them, or is a leaf).
                None => file_without_table(m),
            };
            push(&mut entries, m.start, m.end, value);
        }
        // Anonymous memory, whatever its protection now, is V8's (JIT code
        // lives in reservations V8 makes executable page by page with
        // mprotect, after this was read): frame pointers, decoded as JS.
        // Adjacent mappings are one range, so that V8's cage (thousands of
        // mappings of one reservation) costs a few prefixes.
        for (start, end) in anon_runs(&maps) {
            let value = UnwindMapping {
                start,
                end,
                kind: unwind_map_kind::JIT,
                ..UnwindMapping::default()
            };
            push(&mut entries, start, end, value);
        }
        self.publish(&pending)?;
        // Users first, so that replacing a process's entries never lets a
        // module it keeps reach zero users.
        for id in &modules {
            if let Some(m) = self.modules.get_mut(id) {
                m.users += 1;
            }
        }
        let old = self.procs.remove(&pid);
        let new_keys: Vec<Key<KeyData>> = entries.iter().map(|(k, _)| *k).collect();
        for (k, v) in &entries {
            match self.mappings.insert(k, v, 0) {
                Ok(()) => self.counters.mapping_entries += 1,
                Err(_) => self.counters.mappings_full += 1,
            }
        }
        if let Some(old) = old {
            self.release(old, &new_keys);
        }
        let n = new_keys.len();
        self.procs.insert(
            pid,
            Process {
                keys: new_keys,
                modules,
            },
        );
        self.forget_cached()?;
        Ok(n)
    }

    /// `add_process` again for a process added before (it mapped code since:
    /// a dlopen); false for one never added (or removed since), left alone.
    pub fn refresh_process(&mut self, pid: u32) -> Result<bool, UnwindError> {
        if !self.procs.contains_key(&pid) {
            return Ok(false);
        }
        self.add_process(pid)?;
        Ok(true)
    }

    /// Makes every walker forget what it cached about addresses: after a
    /// change of the entries (done by `add_process` and `remove_process`),
    /// or of a process's V8 layout.
    pub fn forget_cached(&mut self) -> Result<(), UnwindError> {
        let Some(epoch) = &mut self.epoch else {
            return Ok(());
        };
        let cur = epoch.get(&0, 0).unwrap_or(0);
        epoch
            .set(0, cur.wrapping_add(1), 0)
            .map_err(map_err(tracer_common::maps::UNWIND_EPOCH))
    }

    /// Forgets a process: its entries go, its modules lose a user, and every
    /// walker forgets what it cached.
    pub fn remove_process(&mut self, pid: u32) {
        if let Some(p) = self.procs.remove(&pid) {
            self.release(p, &[]);
        }
        let _ = self.forget_cached();
    }

    fn release(&mut self, p: Process, keep: &[Key<KeyData>]) {
        for k in &p.keys {
            let kept = keep.iter().any(|n| key_bytes(n) == key_bytes(k));
            if !kept && self.mappings.remove(k).is_ok() {
                self.counters.mapping_entries = self.counters.mapping_entries.saturating_sub(1);
            }
        }
        for id in &p.modules {
            if let Some(m) = self.modules.get_mut(id) {
                m.users = m.users.saturating_sub(1);
            }
        }
    }

    /// The module of a file mapping: its table loaded if needed, and the
    /// mapping's value. None: no table (frame pointers), counted.
    fn module_for(
        &mut self,
        pid: u32,
        m: &MapEntry,
        pending: &mut Vec<u32>,
    ) -> Option<(Arc<ModuleId>, UnwindMapping)> {
        // The process's own view of the file: map_files works for deleted
        // files and inside containers; else its path opened inside the
        // process's root (proc::root: a symlink the process planted cannot
        // lead onto the host, as a walk through /proc/PID/root would).
        let by_map = PathBuf::from(format!("/proc/{pid}/map_files/{}", m.map_files_name()));
        let elf = ElfFile::open(&by_map)
            .ok()
            .or_else(|| {
                let path = Path::new(m.path().filter(|_| !m.deleted)?);
                let file = Root::of_process(pid).ok()?.open(path).ok()?;
                ElfFile::of_file(&file, path).ok()
            })
            .or_else(|| {
                self.counters.modules_failed += 1;
                None
            })?;
        let svma = elf.vaddr_of_offset(m.offset)?;
        let id = Arc::new(elf.id.clone());
        if !self.modules.contains_key(&id) {
            let module = self.load_module(&elf);
            pending.extend(module.slot);
            self.modules.insert(id.clone(), module);
        }
        let module = &self.modules[&id];
        let slot = module.slot?;
        Some((
            id,
            UnwindMapping {
                start: m.start,
                end: m.end,
                // pc - bias = svma - base, with svma = pc - start + svma(offset).
                bias: m.start.wrapping_sub(svma).wrapping_add(module.base),
                module: slot,
                npages: module.npages,
                kind: unwind_map_kind::TABLE,
                _pad: 0,
            },
        ))
    }

    /// Builds a module's table and puts it in a free slot, within the cap.
    fn load_module(&mut self, elf: &ElfFile) -> Module {
        let none = Module {
            slot: None,
            base: 0,
            npages: 0,
            bytes: 0,
            users: 0,
            _table: None,
        };
        let (rows, stats) = cfi::module_rows(elf);
        self.counters.bad_fdes += stats.bad_fdes;
        self.counters.unsupported_rows += stats.unsupported_rows;
        let table = match Table::build(&rows) {
            Ok(t) => t,
            Err(NoTable::AllFramePointer) => {
                self.counters.modules_frame_pointer += 1;
                return none;
            }
            Err(NoTable::TooLarge) => {
                self.counters.modules_failed += 1;
                return none;
            }
        };
        let Some(slot) = self.make_room(table.bytes()) else {
            self.counters.modules_over_cap += 1;
            return none;
        };
        match self.install(&table) {
            Ok((array, bytes)) => {
                self.counters.modules_loaded += 1;
                self.counters.rows += table.rows() as u64;
                self.counters.table_bytes += bytes;
                Module {
                    slot: Some(slot),
                    base: table.base,
                    npages: table.npages,
                    bytes,
                    users: 0,
                    _table: Some(array),
                }
            }
            Err(_) => {
                self.counters.modules_failed += 1;
                none
            }
        }
    }

    /// A free slot with `bytes` more under the cap, evicting tables no
    /// process maps any more (largest first) if needed.
    fn make_room(&mut self, bytes: u64) -> Option<u32> {
        loop {
            let used: std::collections::HashSet<u32> =
                self.modules.values().filter_map(|m| m.slot).collect();
            let free = (0..self.slots).find(|s| !used.contains(s));
            if free.is_some() && self.counters.table_bytes + bytes <= self.cap_bytes {
                return free;
            }
            let victim = self
                .modules
                .iter()
                .filter(|(_, m)| m.slot.is_some() && m.users == 0)
                .max_by_key(|(_, m)| m.bytes)
                .map(|(id, _)| id.clone())?;
            // Its slot is reused by the next table, which replaces it in the
            // outer map; the old array is freed with its last fd.
            let m = self.modules.remove(&victim)?;
            self.counters.modules_loaded -= 1;
            self.counters.table_bytes -= m.bytes;
            self.counters.rows -= (m.bytes / 8).saturating_sub(u64::from(m.npages));
        }
    }

    /// Puts the new tables in their slots of `unwind_tables`, in one
    /// BPF_MAP_UPDATE_BATCH. Every update of a map-in-map waits out an RCU
    /// grace period before returning (kernel/bpf/syscall.c,
    /// maybe_wait_bpf_programs), ~14 ms each here: eight modules of a node
    /// process cost 0.11 s one by one. A batch waits once (Linux 6.8,
    /// bpf_map_do_batch); a kernel that cannot batch this map gets the
    /// updates one by one.
    fn publish(&mut self, slots: &[u32]) -> Result<(), UnwindError> {
        if slots.is_empty() {
            return Ok(());
        }
        let tables: Vec<(u32, &Array<MapData, UnwindEntry>)> = slots
            .iter()
            .filter_map(|slot| {
                let m = self.modules.values().find(|m| m.slot == Some(*slot))?;
                Some((*slot, m._table.as_ref()?))
            })
            .collect();
        let keys: Vec<u32> = tables.iter().map(|(slot, _)| *slot).collect();
        let fds: Vec<u32> = tables
            .iter()
            .map(|(_, t)| t.map().fd().as_fd().as_raw_fd() as u32)
            .collect();
        if crate::probes::sys::update_batch(self.tables_fd, &keys, &fds).is_ok() {
            return Ok(());
        }
        for (slot, table) in tables {
            self.tables
                .set(slot, table, 0)
                .map_err(map_err("unwind_tables"))?;
        }
        Ok(())
    }

    /// Creates the table's array and writes it through mmap; `publish`
    /// puts it in its slot. Returns the array and its memlock bytes.
    fn install(
        &mut self,
        table: &Table,
    ) -> Result<(Array<MapData, UnwindEntry>, u64), UnwindError> {
        let n = u32::try_from(table.entries.len()).map_err(|_| UnwindError::TableTooLarge)?;
        let array = Array::<MapData, UnwindEntry>::create(n, TABLE_FLAGS)
            .map_err(map_err("an unwind table"))?;
        let fd = array.map().fd().as_fd();
        let len = table.entries.len() * std::mem::size_of::<UnwindEntry>();
        // SAFETY: a shared mapping of a BPF_F_MMAPABLE array of exactly `len`
        // bytes (the kernel rounds it to pages), written then unmapped.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            );
            if p == libc::MAP_FAILED {
                return Err(UnwindError::Mmap(std::io::Error::last_os_error()));
            }
            std::ptr::copy_nonoverlapping(table.entries.as_ptr().cast::<u8>(), p.cast::<u8>(), len);
            libc::munmap(p, len);
        }
        let bytes = memlock(fd.as_raw_fd()).unwrap_or(len as u64);
        Ok((array, bytes))
    }
}

fn key_bytes(k: &Key<KeyData>) -> [u8; 16] {
    // SAFETY: Key<[u8; 12]> is repr(C, packed), 16 bytes of plain integers.
    unsafe { std::mem::transmute(*k) }
}

/// The anonymous mappings of a process as runs of adjacent ones.
fn anon_runs(maps: &[crate::proc::Mapping]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for m in maps.iter().filter(|m| m.is_anon()) {
        match runs.last_mut() {
            Some(last) if last.1 == m.start => last.1 = m.end,
            _ => runs.push((m.start, m.end)),
        }
    }
    runs
}

fn file_without_table(m: &MapEntry) -> UnwindMapping {
    UnwindMapping {
        start: m.start,
        end: m.end,
        kind: unwind_map_kind::FP,
        ..UnwindMapping::default()
    }
}
