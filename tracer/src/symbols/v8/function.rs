//! What a SharedFunctionInfo says about its function: the name V8 prints
//! (`SharedFunctionInfo::DebugName`), its script and its start position
//! (`SharedFunctionInfo::StartPosition`), which is where the perf map's
//! `file:line:column` points.
use super::{
    heap::{Heap, HeapError},
    memory::{is_heap_object, smi_value, untag},
};

/// Names longer than this are cut (V8 has no limit; a report line has).
pub const MAX_NAME_UNITS: usize = 4096;

/// The slots of a SharedFunctionInfo that identify it and lead to its name,
/// script and bytecode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SfiFields {
    pub function_data: u64,
    pub name_or_scope_info: u64,
    pub script: u64,
}

/// The function as named and placed by V8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionInfo {
    /// DebugName: the function's own name, else the name V8 inferred from
    /// the assignment (`obj.handler = function () {}`), else "".
    pub name: String,
    /// Tagged pointer to the Script, when the SFI has one.
    pub script: Option<u64>,
    /// StartPosition: the script offset the perf map's line:column names
    /// (the opening parenthesis of a function declaration).
    pub start: Option<u32>,
}

impl Heap<'_> {
    /// Reads an SFI's fields, checking it still is one.
    pub fn sfi_fields(&self, sfi: u64) -> Result<SfiFields, HeapError> {
        let m = self.meta;
        let ty = self.type_of(sfi)?;
        if ty != m.type_shared_function_info {
            return Err(HeapError::WrongType {
                what: "SharedFunctionInfo",
                addr: sfi,
                got: ty,
                expected: "SHARED_FUNCTION_INFO_TYPE",
            });
        }
        // One read for the three fields (a cache hit re-reads them).
        let offs = [
            m.off_sfi_function_data,
            m.off_sfi_name_or_scope_info,
            m.off_sfi_script,
        ];
        let end = offs.iter().map(|&o| usize::from(o) + 8).max().unwrap_or(8);
        let mut buf = vec![0u8; end];
        self.read(sfi, &mut buf)?;
        let word = |o: u16| {
            let o = usize::from(o);
            u64::from_le_bytes(buf[o..o + 8].try_into().unwrap_or_default())
        };
        Ok(SfiFields {
            function_data: word(offs[0]),
            name_or_scope_info: word(offs[1]),
            script: word(offs[2]),
        })
    }

    pub fn function_info(&self, f: &SfiFields) -> Result<FunctionInfo, HeapError> {
        let script = untag(f.script)
            .filter(|&s| self.type_of(s).ok() == Some(self.meta.type_script))
            .map(|_| f.script);
        let nosi = f.name_or_scope_info;
        // kNoSharedNameSentinel is Smi 0: no name and no ScopeInfo.
        if !is_heap_object(nosi) {
            return Ok(FunctionInfo {
                name: self
                    .uncompiled_inferred_name(f.function_data)
                    .unwrap_or_default(),
                script,
                start: self.uncompiled_start(f.function_data),
            });
        }
        let obj = self.object("name_or_scope_info", nosi)?;
        if self.type_of(obj)? == self.meta.type_scope_info {
            let si = self.scope_info(obj)?;
            let name = match si.name.filter(|n| !n.is_empty()) {
                Some(n) => n,
                None => si.inferred_name.unwrap_or_default(),
            };
            return Ok(FunctionInfo {
                name,
                script,
                start: si.start.or_else(|| self.uncompiled_start(f.function_data)),
            });
        }
        // Not compiled yet (or compiled without a ScopeInfo): the name itself.
        let mut name = self.string(nosi, MAX_NAME_UNITS)?;
        if name.is_empty() {
            name = self
                .uncompiled_inferred_name(f.function_data)
                .unwrap_or_default();
        }
        Ok(FunctionInfo {
            name,
            script,
            start: self.uncompiled_start(f.function_data),
        })
    }

    /// UncompiledData::start_position, when function_data is one (a lazy
    /// function not compiled yet, or whose bytecode was flushed).
    fn uncompiled_start(&self, function_data: u64) -> Option<u32> {
        let off = self.meta.off_uncompiled_start_position?;
        let obj = untag(function_data)?;
        if !self.is_uncompiled_data(obj) {
            return None;
        }
        self.u32_at(obj + u64::from(off)).ok()
    }

    fn uncompiled_inferred_name(&self, function_data: u64) -> Option<String> {
        let obj = untag(function_data)?;
        if !self.is_uncompiled_data(obj) {
            return None;
        }
        // UncompiledData::inferred_name, right after the map.
        let name = self.word(obj, 8).ok()?;
        self.string(name, MAX_NAME_UNITS).ok()
    }

    fn is_uncompiled_data(&self, obj: u64) -> bool {
        self.type_of(obj)
            .is_ok_and(|t| self.meta.types_uncompiled_data.contains(&t))
    }
}

/// What offheap needs from a ScopeInfo.
struct ScopeInfoParts {
    name: Option<String>,
    inferred_name: Option<String>,
    start: Option<u32>,
}

/// Slots read from a ScopeInfo: its fixed header, the context locals
/// (names inlined below 75 of them, V8 kScopeInfoMaxInlinedLocalNamesSize;
/// a hash table slot above) and what follows them.
const SCOPE_INFO_MAX_SLOTS: usize = 3 + 2 * 75 + 12;
const MAX_INLINED_LOCAL_NAMES: usize = 75;

impl Heap<'_> {
    /// Reads a ScopeInfo of V8 10-12 (src/objects/scope-info.tq). After
    /// the header (flags, parameter count, context local count) and the
    /// context locals come, for a function scope: the function variable
    /// (name: String or Smi 0, slot: Smi; V8 always reserves it since 9.x
    /// "for the debug name"), the inferred name (String or undefined), then
    /// the position info (start, end: Smis). Script and eval scopes have no
    /// inferred name. Optional slots before them (a class variable, an
    /// older receiver slot) are skipped by matching those types, since the
    /// flag bits that announce them moved between versions. From V8 12.8
    /// the position info sits right after the header instead.
    fn scope_info(&self, obj: u64) -> Result<ScopeInfoParts, HeapError> {
        let m = self.meta;
        let mut buf = vec![0u8; 8 * SCOPE_INFO_MAX_SLOTS];
        // Slots start after the map; read what fits before an unmapped page.
        let base = obj + 8;
        let readable = self.readable_prefix(base, &mut buf);
        let slots: Vec<u64> = buf[..readable]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let slot = |i: usize| slots.get(i).copied();
        let smi = |i: usize| slot(i).and_then(smi_value);
        let locals = smi(usize::from(m.scope_info_ncontextlocals))
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
        let names = if locals < MAX_INLINED_LOCAL_NAMES {
            locals
        } else {
            1
        };
        let after_locals = usize::from(m.scope_info_first_vars) + names + locals;
        let fixed_positions = m.version.at_least(12, 8, 44);
        let positions = |i: usize| match (smi(i), smi(i + 1)) {
            (Some(s), Some(e)) if 0 <= s && s <= e => Some(s as u32),
            _ => None,
        };
        let string = |i: usize| {
            slot(i)
                .filter(|&v| self.is_string(v))
                .and_then(|v| self.string(v, MAX_NAME_UNITS).ok())
        };
        let is_name =
            |i: usize| slot(i).is_some_and(|v| smi_value(v) == Some(0) || self.is_string(v));
        let is_object = |i: usize| slot(i).is_some_and(is_heap_object);
        for k in after_locals..after_locals + 3 {
            if !is_name(k) || smi(k + 1).is_none() {
                continue;
            }
            // Function scope: name, slot, inferred name, positions.
            if is_object(k + 2) {
                let start = if fixed_positions {
                    positions(3)
                } else {
                    positions(k + 3)
                };
                if start.is_some() || fixed_positions {
                    return Ok(ScopeInfoParts {
                        name: string(k),
                        inferred_name: string(k + 2),
                        start,
                    });
                }
            }
            // Script or eval scope: name, slot, positions.
            let start = if fixed_positions {
                positions(3)
            } else {
                positions(k + 2)
            };
            if start.is_some() {
                return Ok(ScopeInfoParts {
                    name: string(k),
                    inferred_name: None,
                    start,
                });
            }
        }
        Ok(ScopeInfoParts {
            name: None,
            inferred_name: None,
            start: fixed_positions.then(|| positions(3)).flatten(),
        })
    }

    /// Reads as much of `buf` as is mapped from `addr`, in 4 KiB steps.
    fn readable_prefix(&self, addr: u64, buf: &mut [u8]) -> usize {
        if self.read(addr, buf).is_ok() {
            return buf.len();
        }
        let mut done = 0;
        while done < buf.len() {
            let page_end = ((addr + done as u64) | 4095) + 1;
            let n = ((page_end - (addr + done as u64)) as usize).min(buf.len() - done);
            if self
                .read(addr + done as u64, &mut buf[done..done + n])
                .is_err()
            {
                break;
            }
            done += n;
        }
        done - done % 8
    }
}
