//! Scripts (file names, line ends) and bytecode (source position tables).
use std::sync::Arc;

use super::{
    heap::{Heap, HeapError, MAX_STRING_UNITS},
    memory::untag,
    positions,
};

/// Paths longer than this are cut.
const MAX_PATH_UNITS: usize = 4096;
/// Source position tables above this size are not read.
const MAX_POSITION_TABLE: usize = 4 << 20;

/// Where a script's line ends came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineEnds {
    /// Script::line_ends, which V8 computes on first need (a stack trace,
    /// the perf map): until then it is undefined.
    FromScript,
    /// Computed here from Script::source, as V8 would.
    FromSource,
}

#[derive(Clone, Debug)]
pub struct ScriptInfo {
    /// Script::name: the path (CommonJS), URL (ESM) or `node:fs` (builtins).
    pub name: Option<String>,
    pub line_ends: Option<Arc<Vec<u32>>>,
    pub line_ends_from: Option<LineEnds>,
}

impl Heap<'_> {
    pub fn script_info(&self, script_tagged: u64) -> Result<ScriptInfo, HeapError> {
        let m = self.meta;
        let script = self.typed("Script", script_tagged, m.type_script, "SCRIPT_TYPE")?;
        let name_v = self.word(script, m.off_script_name)?;
        let name = if self.is_string(name_v) {
            Some(self.string(name_v, MAX_PATH_UNITS)?)
        } else {
            None
        };
        let (line_ends, from) = match self.script_line_ends(script) {
            Some(ends) => (Some(Arc::new(ends)), Some(LineEnds::FromScript)),
            None => {
                let src = self.word(script, m.off_script_source)?;
                if self.is_string(src) {
                    let units = self.string_units(src, MAX_STRING_UNITS)?;
                    (
                        Some(Arc::new(positions::line_ends(&units))),
                        Some(LineEnds::FromSource),
                    )
                } else {
                    (None, None)
                }
            }
        };
        Ok(ScriptInfo {
            name,
            line_ends,
            line_ends_from: from,
        })
    }

    /// Script::line_ends when V8 has computed them: a FixedArray of Smis.
    fn script_line_ends(&self, script: u64) -> Option<Vec<u32>> {
        let m = self.meta;
        let arr = untag(self.word(script, m.off_script_line_ends).ok()?)?;
        if self.type_of(arr).ok()? != m.type_fixed_array {
            return None;
        }
        let data = self.fixed_array_bytes(arr, 8)?;
        data.chunks_exact(8)
            .map(|c| {
                let v = u64::from_le_bytes(c.try_into().ok()?);
                super::memory::smi_value(v).and_then(|x| u32::try_from(x).ok())
            })
            .collect()
    }

    /// The element bytes of a FixedArray-like object (FixedArrayBase::length
    /// as a Smi, then the elements of `elem` bytes).
    fn fixed_array_bytes(&self, obj: u64, elem: usize) -> Option<Vec<u8>> {
        let m = self.meta;
        let len = super::memory::smi_value(self.word(obj, m.off_fixed_array_length).ok()?)?;
        let bytes = usize::try_from(len).ok()?.checked_mul(elem)?;
        if bytes > MAX_POSITION_TABLE {
            return None;
        }
        let mut buf = vec![0u8; bytes];
        self.read(obj + u64::from(m.off_fixed_array_data), &mut buf)
            .ok()?;
        Some(buf)
    }

    /// The BytecodeArray of a function: SFI::function_data holds it, or
    /// holds an object that points to it (InterpreterData with
    /// --interpreted-frames-native-stack, Sparkplug's Code, V8 12's
    /// BytecodeWrapper). Those objects' field layouts have no metadata; the
    /// BytecodeArray is found among their first tagged fields by its type.
    pub fn bytecode_array(&self, function_data: u64) -> Option<u64> {
        let m = self.meta;
        let mut obj = untag(function_data)?;
        for _ in 0..3 {
            if self.type_of(obj).ok()? == m.type_bytecode_array {
                return Some(obj);
            }
            obj = (1..6u16)
                .filter_map(|i| untag(self.word(obj, i * 8).ok()?))
                .find(|&o| {
                    self.type_of(o).is_ok_and(|t| {
                        t == m.type_bytecode_array || Some(t) == m.type_interpreter_data
                    })
                })?;
        }
        None
    }

    /// The source position table of a BytecodeArray: the ByteArray (V8 12:
    /// TrustedByteArray) at BytecodeArray::source_position_table (no
    /// metadata since V8 9.4; `V8Metadata::off_bytecode_source_positions`).
    pub fn source_position_table(&self, bytecode: u64) -> Option<Vec<u8>> {
        let m = self.meta;
        let table = untag(self.word(bytecode, m.off_bytecode_source_positions).ok()?)?;
        let ty = self.type_of(table).ok()?;
        if ty != m.type_byte_array && Some(ty) != m.type_trusted_byte_array {
            return None;
        }
        self.fixed_array_bytes(table, 1)
    }

    /// The bytecode length (BytecodeArray::length, a Smi).
    pub fn bytecode_length(&self, bytecode: u64) -> Option<u32> {
        let v = self.word(bytecode, self.meta.off_fixed_array_length).ok()?;
        super::memory::smi_value(v).and_then(|x| u32::try_from(x).ok())
    }
}
