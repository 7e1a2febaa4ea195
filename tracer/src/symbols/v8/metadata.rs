//! V8's postmortem metadata: the `v8dbg_*` symbols that node keeps in
//! `.symtab` (V8 `tools/gen-postmortem-metadata.py`, built into every node
//! release since 0.x for llnode and mdb_v8). Each symbol is a data object
//! whose *value* (an `int`) is the constant: read it from the file at the
//! symbol's address. Constants that are zero live in `.bss` and have no file
//! bytes: their value is 0.
//!
//! The generator drops symbols as V8 renames its classes (the OpenTelemetry
//! eBPF profiler's `interpreter/nodev8` documents the losses), so each field
//! here lists the names it is known under, and the few constants that no
//! node 18-22 build exports are derived from the V8 version (see
//! `fallbacks`), as that profiler does.
use std::{collections::HashMap, fmt, ops::Range};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SectionKind};

use crate::symbols::MapEntry;

/// `major.minor.build.patch`, from `v8::internal::Version::{major_,minor_,build_,patch_}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct V8Version {
    pub major: u32,
    pub minor: u32,
    pub build: u32,
    pub patch: u32,
}

impl V8Version {
    /// True when this version is at least `major.minor.build`.
    pub fn at_least(&self, major: u32, minor: u32, build: u32) -> bool {
        (self.major, self.minor, self.build) >= (major, minor, build)
    }
}

impl fmt::Display for V8Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            self.major, self.minor, self.build, self.patch
        )
    }
}

/// Why a module's V8 cannot be walked; the caller names the module.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("not a usable ELF file")]
    Elf(#[source] object::Error),
    #[error("no V8 postmortem metadata (no v8dbg_* symbols in .symtab: a stripped node)")]
    NoMetadata,
    #[error(
        "V8 {version} lacks metadata {}",
        missing.join(", ")
    )]
    Missing {
        version: V8Version,
        missing: Vec<&'static str>,
    },
    #[error("V8 {version} uses a layout offheap cannot walk ({what})")]
    Unsupported { version: V8Version, what: String },
}

/// V8's string instance-type bits (`src/objects/instance-type.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringTags {
    /// Instance types below this are strings.
    pub first_nonstring_type: u16,
    pub representation_mask: u16,
    pub encoding_mask: u16,
    pub seq: u16,
    pub cons: u16,
    pub external: u16,
    pub sliced: u16,
    pub thin: u16,
    pub one_byte: u16,
}

/// Everything the BPF frame decoder and the userspace resolver read from V8
/// objects, for one node build. Offsets are bytes from an object's untagged
/// address; frame offsets are bytes from a JS frame's frame pointer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V8Metadata {
    pub version: V8Version,

    // JS frame slots (src/execution/frame-constants.h).
    /// Context, or a frame-type marker (a Smi) for typed frames.
    pub fp_context: i32,
    pub fp_function: i32,
    pub fp_bytecode_array: i32,
    pub fp_bytecode_offset: i32,

    // Instance types.
    pub type_js_function_first: u16,
    pub type_js_function_last: u16,
    pub type_shared_function_info: u16,
    pub type_script: u16,
    pub type_scope_info: u16,
    pub type_bytecode_array: u16,
    pub type_byte_array: u16,
    /// V8 >= 12.4 keeps source position tables in the trusted space.
    pub type_trusted_byte_array: Option<u16>,
    pub type_interpreter_data: Option<u16>,
    pub type_fixed_array: u16,
    pub strings: StringTags,

    // Object layouts.
    pub off_map: u16,
    pub off_map_instance_type: u16,
    pub off_js_function_shared: u16,
    pub off_sfi_function_data: u16,
    pub off_sfi_name_or_scope_info: u16,
    pub off_sfi_script: u16,
    pub off_script_source: u16,
    pub off_script_name: u16,
    pub off_script_line_ends: u16,
    pub off_fixed_array_length: u16,
    pub off_fixed_array_data: u16,
    /// BytecodeArray::kHeaderSize: an interpreted frame's offset slot holds
    /// `offset + kHeaderSize - kHeapObjectTag` (InterpretedFrame::GetBytecodeOffset).
    pub off_bytecode_array_data: u16,
    pub off_string_length: u16,
    pub off_seq_one_byte_chars: u16,
    pub off_seq_two_byte_chars: u16,
    pub off_cons_first: u16,
    pub off_cons_second: u16,
    pub off_sliced_parent: u16,
    pub off_sliced_offset: u16,
    pub off_thin_actual: u16,
    pub off_external_resource: u16,
    pub off_uncompiled_start_position: Option<u16>,
    /// BytecodeArray::source_position_table (no metadata since V8 9.4).
    pub off_bytecode_source_positions: u16,
    /// The UncompiledData* instance types (lazy functions).
    pub types_uncompiled_data: Vec<u16>,
    pub scope_info_first_vars: u16,
    pub scope_info_ncontextlocals: u16,

    /// V8's embedded builtins (the interpreter's trampoline and bytecode
    /// handlers run there, inside the node binary): link-time addresses.
    pub builtins: Option<Range<u64>>,
    /// File offset of `builtins.start`, to place it in a process.
    pub builtins_file_offset: Option<u64>,
    /// Offsets in the builtins of the interpreter's entry trampolines
    /// [lo, hi), and of the first bytecode handler (handlers run to the end).
    pub interpreter: Option<(Range<u32>, u32)>,
    /// Constants no symbol gave, derived from the version (one line each).
    pub fallbacks: Vec<String>,
}

/// The v8dbg_* (and Version) symbols of one file: name -> value.
struct Symbols {
    values: HashMap<String, i64>,
    /// name -> (link-time address, in a text section), for the few
    /// non-constant symbols.
    addrs: HashMap<String, (u64, bool)>,
    /// name -> (address, size) of the interpreter's builtins.
    code: HashMap<String, (u64, u64)>,
}

impl Symbols {
    fn read(data: &[u8]) -> Result<Symbols, MetadataError> {
        let obj = object::File::parse(data).map_err(MetadataError::Elf)?;
        let mut values = HashMap::new();
        let mut addrs = HashMap::new();
        let mut code = HashMap::new();
        for sym in obj.symbols() {
            let Ok(name) = sym.name() else { continue };
            let constant =
                name.starts_with("v8dbg_") || name.starts_with("_ZN2v88internal7Version6");
            let blob = name.starts_with("v8_Default_embedded_blob_code_");
            if INTERPRETER_SYMBOLS.contains(&name) {
                code.insert(name.to_string(), (sym.address(), sym.size()));
                continue;
            }
            if !constant && !blob {
                continue;
            }
            let Some(section) = sym
                .section_index()
                .and_then(|i| obj.section_by_index(i).ok())
            else {
                continue;
            };
            if blob {
                let text = section.kind() == SectionKind::Text;
                addrs.insert(name.to_string(), (sym.address(), text));
                if name != "v8_Default_embedded_blob_code_size_" {
                    continue;
                }
            }
            // Symbols defined in assembly (the blob's size) have no size: an int.
            let size = match sym.size() {
                0 => 4,
                n => n.min(8) as usize,
            };
            let value = if section.kind() == SectionKind::UninitializedData {
                0
            } else {
                let Ok(Some(bytes)) = section.data_range(sym.address(), size as u64) else {
                    continue;
                };
                let mut buf = [0u8; 8];
                buf[..size].copy_from_slice(bytes);
                // Sign-extend: offsets from the frame pointer are negative ints.
                let shift = 64 - 8 * size as u32;
                (i64::from_le_bytes(buf) << shift) >> shift
            };
            values.insert(name.to_string(), value);
        }
        Ok(Symbols {
            values,
            addrs,
            code,
        })
    }

    fn get(&self, names: &[&str]) -> Option<i64> {
        names.iter().find_map(|n| self.values.get(*n).copied())
    }
}

/// The builtins an interpreted frame's pc can be in: the entry trampolines
/// (the frame's calls return there: handlers dispatch by jumps), and the
/// first bytecode handler (Wide, bytecode 0): handlers are the last builtins
/// of the blob (Builtins::kFirstBytecodeHandler), up to its end.
const INTERPRETER_SYMBOLS: [&str; 3] = [
    "Builtins_InterpreterEntryTrampoline",
    "Builtins_InterpreterEntryTrampolineForProfiling",
    "Builtins_WideHandler",
];

/// Collects values and the names of those missing, so that one error lists them all.
struct Reader<'a> {
    syms: &'a Symbols,
    missing: Vec<&'static str>,
}

impl Reader<'_> {
    /// The first of `names` (without the `v8dbg_` prefix) that exists.
    fn int(&mut self, names: &[&'static str]) -> i64 {
        let full: Vec<String> = names.iter().map(|n| format!("v8dbg_{n}")).collect();
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        match self.syms.get(&refs) {
            Some(v) => v,
            None => {
                self.missing.push(names[0]);
                0
            }
        }
    }

    fn opt(&self, name: &str) -> Option<i64> {
        self.syms.get(&[&format!("v8dbg_{name}")])
    }

    fn u16(&mut self, names: &[&'static str]) -> u16 {
        let v = self.int(names);
        u16::try_from(v).unwrap_or_else(|_| {
            self.missing.push(names[0]);
            0
        })
    }
}

/// BytecodeArray::source_position_table by version: after length,
/// constant_pool and handler_table in V8 10-11 (bytecode-array.tq).
fn bytecode_source_positions_fallback(v: V8Version) -> u16 {
    if v.at_least(12, 0, 0) {
        24
    } else {
        32
    }
}

/// `INTERPRETER_SYMBOLS` as offsets in the blob at `blob`.
fn interpreter_offsets(
    code: &HashMap<String, (u64, u64)>,
    blob: Range<u64>,
) -> Option<(Range<u32>, u32)> {
    let (tramp, tramp_size) = *code.get(INTERPRETER_SYMBOLS[0])?;
    // The profiling variant (V8 >= 11) follows the trampoline.
    let end = match code.get(INTERPRETER_SYMBOLS[1]) {
        Some(&(a, s)) if a >= tramp + tramp_size => a + s,
        _ => tramp + tramp_size,
    };
    let (handlers, _) = *code.get(INTERPRETER_SYMBOLS[2])?;
    let inside = |a: u64| a >= blob.start && a <= blob.end;
    if !inside(tramp) || !inside(end) || !inside(handlers) || tramp_size == 0 {
        return None;
    }
    let off = |a: u64| (a - blob.start) as u32;
    Some((off(tramp)..off(end), off(handlers)))
}

impl V8Metadata {
    /// Reads the metadata of the ELF file `data` (the node executable, or a
    /// libnode.so).
    pub fn from_elf(data: &[u8]) -> Result<V8Metadata, MetadataError> {
        let syms = Symbols::read(data)?;
        if !syms.values.keys().any(|k| k.starts_with("v8dbg_")) {
            return Err(MetadataError::NoMetadata);
        }
        let ver = |n: &str| {
            syms.get(&[&format!("_ZN2v88internal7Version6{n}")])
                .unwrap_or(0) as u32
        };
        let version = V8Version {
            major: ver("major_E"),
            minor: ver("minor_E"),
            build: ver("build_E"),
            patch: ver("patch_E"),
        };
        let mut r = Reader {
            syms: &syms,
            missing: Vec::new(),
        };
        let mut fallbacks = Vec::new();

        // The BPF decoder hardcodes V8's x64 tagging without pointer
        // compression (node never enables it): heap objects end in 01, Smis
        // are the upper 32 bits of a word ending in 0 (include/v8-internal.h).
        let tags = [
            ("HeapObjectTag", r.int(&["HeapObjectTag"]), 1),
            ("HeapObjectTagMask", r.int(&["HeapObjectTagMask"]), 3),
            ("SmiTagMask", r.int(&["SmiTagMask"]), 1),
            ("SmiShiftSize", r.int(&["SmiShiftSize"]), 31),
            ("SystemPointerSize", r.int(&["SystemPointerSize"]), 8),
        ];
        let smi_tag = r.opt("SmiTag").unwrap_or(0);

        let type_js_function = r.u16(&["type_JSFunction__JS_FUNCTION_TYPE"]);
        let (first, last) = match (r.opt("FirstJSFunctionType"), r.opt("LastJSFunctionType")) {
            (Some(f), Some(l)) => (f as u16, l as u16),
            _ => {
                // JSFunction has subclasses, whose instance types follow
                // JS_FUNCTION_TYPE (src/objects/instance-type.h, FIRST/
                // LAST_JS_FUNCTION_TYPE): class constructors, and the
                // constructors of Promise, RegExp, Array and the 11 typed
                // arrays: 16 types. V8 12.4 (node 22) exports the range,
                // 2066..2082: 17, Float16Array's constructor being the 17th.
                // Of these only JS_FUNCTION_TYPE and JS_CLASS_CONSTRUCTOR_TYPE
                // (right after it) run as JS frames the decoder takes (the
                // builtin constructors run in the builtins, where only
                // interpreter frames are taken), so a count one too high
                // would only widen a check that the SFI type check follows;
                // tests/v8_frames.rs walks a class constructor on 18 and 20.
                let count = if version.at_least(12, 0, 0) { 17 } else { 16 };
                fallbacks.push(format!(
                    "JSFunction instance types {type_js_function}..{} (v8dbg_FirstJSFunctionType/LastJSFunctionType absent)",
                    type_js_function + count - 1
                ));
                (type_js_function, type_js_function + count - 1)
            }
        };

        let off_sfi_function_data = match r.opt("class_SharedFunctionInfo__function_data__Object") {
            Some(v) => v as u16,
            None => {
                // Dropped from the metadata in V8 12 when the field became
                // trusted/untrusted function data; still right after the map
                // in builds without the sandbox (node never enables it).
                fallbacks.push("SharedFunctionInfo::function_data at 8".into());
                8
            }
        };

        let strings = StringTags {
            first_nonstring_type: r.u16(&["FirstNonstringType"]),
            representation_mask: r.u16(&["StringRepresentationMask"]),
            encoding_mask: r.u16(&["StringEncodingMask"]),
            seq: r.opt("SeqStringTag").unwrap_or(0) as u16,
            cons: r.u16(&["ConsStringTag"]),
            external: r.u16(&["ExternalStringTag"]),
            sliced: r.u16(&["SlicedStringTag"]),
            thin: r.u16(&["ThinStringTag"]),
            one_byte: r.u16(&["OneByteStringTag"]),
        };

        let off_bytecode_array_data = r.u16(&["class_BytecodeArray__data__uintptr_t"]);
        let off_bytecode_source_positions =
            match r.opt("class_BytecodeArray__source_position_table__Object") {
                Some(v) => v as u16,
                None => {
                    let off = bytecode_source_positions_fallback(version);
                    fallbacks.push(format!("BytecodeArray::source_position_table at {off}"));
                    off
                }
            };
        let types_uncompiled_data = [
            "type_UncompiledDataWithoutPreparseData__UNCOMPILED_DATA_WITHOUT_PREPARSE_DATA_TYPE",
            "type_UncompiledDataWithPreparseData__UNCOMPILED_DATA_WITH_PREPARSE_DATA_TYPE",
            "type_UncompiledDataWithoutPreparseDataWithJob__UNCOMPILED_DATA_WITHOUT_PREPARSE_DATA_WITH_JOB_TYPE",
            "type_UncompiledDataWithPreparseDataAndJob__UNCOMPILED_DATA_WITH_PREPARSE_DATA_AND_JOB_TYPE",
        ]
        .iter()
        .filter_map(|n| r.opt(n).map(|v| v as u16))
        .collect();
        let meta = V8Metadata {
            version,
            fp_context: r.int(&["off_fp_context_or_frame_type", "off_fp_context"]) as i32,
            fp_function: r.int(&["off_fp_function"]) as i32,
            fp_bytecode_array: r.int(&["off_fp_bytecode_array"]) as i32,
            fp_bytecode_offset: r.int(&["off_fp_bytecode_offset"]) as i32,
            type_js_function_first: first,
            type_js_function_last: last,
            type_shared_function_info: r
                .u16(&["type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE"]),
            type_script: r.u16(&["type_Script__SCRIPT_TYPE"]),
            type_scope_info: r.u16(&["type_ScopeInfo__SCOPE_INFO_TYPE"]),
            type_bytecode_array: r.u16(&["type_BytecodeArray__BYTECODE_ARRAY_TYPE"]),
            type_byte_array: r.u16(&["type_ByteArray__BYTE_ARRAY_TYPE"]),
            type_trusted_byte_array: r
                .opt("type_TrustedByteArray__TRUSTED_BYTE_ARRAY_TYPE")
                .map(|v| v as u16),
            type_interpreter_data: r
                .opt("type_InterpreterData__INTERPRETER_DATA_TYPE")
                .map(|v| v as u16),
            type_fixed_array: r.u16(&["type_FixedArray__FIXED_ARRAY_TYPE"]),
            strings,
            off_map: r.opt("class_HeapObject__map__Map").unwrap_or(0) as u16,
            off_map_instance_type: r.u16(&["class_Map__instance_type__uint16_t"]),
            off_js_function_shared: r.u16(&["class_JSFunction__shared__SharedFunctionInfo"]),
            off_sfi_function_data,
            off_sfi_name_or_scope_info: r.u16(&[
                "class_SharedFunctionInfo__name_or_scope_info__Object",
                "class_SharedFunctionInfo__name_or_scope_info__Tagged_Object_",
            ]),
            off_sfi_script: r.u16(&[
                "class_SharedFunctionInfo__script_or_debug_info__HeapObject",
                "class_SharedFunctionInfo__script_or_debug_info__Object",
                "class_SharedFunctionInfo__script__Tagged_HeapObject_",
                "class_SharedFunctionInfo__raw_script__Tagged_Object_",
            ]),
            off_script_source: r.u16(&["class_Script__source__Object"]),
            off_script_name: r.u16(&["class_Script__name__Object"]),
            off_script_line_ends: r.u16(&["class_Script__line_ends__Object"]),
            off_fixed_array_length: r.u16(&["class_FixedArrayBase__length__SMI"]),
            off_fixed_array_data: r.u16(&["class_FixedArray__data__uintptr_t"]),
            off_bytecode_array_data,
            off_string_length: r.u16(&["class_String__length__int32_t"]),
            off_seq_one_byte_chars: r.u16(&["class_SeqOneByteString__chars__char"]),
            off_seq_two_byte_chars: r.u16(&["class_SeqTwoByteString__chars__char"]),
            off_cons_first: r.u16(&["class_ConsString__first__String"]),
            off_cons_second: r.u16(&["class_ConsString__second__String"]),
            off_sliced_parent: r.u16(&["class_SlicedString__parent__String"]),
            off_sliced_offset: r.u16(&["class_SlicedString__offset__SMI"]),
            off_thin_actual: r.u16(&["class_ThinString__actual__String"]),
            off_external_resource: r.u16(&["class_ExternalString__resource__Object"]),
            off_uncompiled_start_position: r
                .opt("class_UncompiledData__start_position__int32_t")
                .map(|v| v as u16),
            off_bytecode_source_positions,
            types_uncompiled_data,
            scope_info_first_vars: r.u16(&["scopeinfo_idx_first_vars"]),
            scope_info_ncontextlocals: r.u16(&["scopeinfo_idx_ncontextlocals"]),
            builtins: None,
            builtins_file_offset: None,
            interpreter: None,
            fallbacks,
        };
        let missing = r.missing;
        if !missing.is_empty() {
            return Err(MetadataError::Missing { version, missing });
        }
        let unsupported = |what: String| MetadataError::Unsupported { version, what };
        for (name, got, want) in tags {
            if got != want {
                return Err(unsupported(format!("{name} is {got}, expected {want}")));
            }
        }
        if smi_tag != 0 {
            return Err(unsupported(format!("SmiTag is {smi_tag}, expected 0")));
        }
        // The BPF decoder reads the frame slots it needs in one copy of the
        // OFFHEAP_V8_FRAME_BYTES below the frame pointer.
        for (name, off) in [
            ("off_fp_context", meta.fp_context),
            ("off_fp_function", meta.fp_function),
            ("off_fp_bytecode_array", meta.fp_bytecode_array),
            ("off_fp_bytecode_offset", meta.fp_bytecode_offset),
        ] {
            let frame = tracer_common::V8_FRAME_BYTES as i32;
            if !(-frame..0).contains(&off) || off % 8 != 0 {
                return Err(unsupported(format!("{name} is {off}")));
            }
        }
        // The decoder reads the JSFunction's map and `shared` as words of
        // one OFFHEAP_V8_JS_FUNCTION_BYTES copy.
        for (name, off) in [
            ("HeapObject::map", meta.off_map),
            ("JSFunction::shared", meta.off_js_function_shared),
        ] {
            if u32::from(off) + 8 > tracer_common::V8_JS_FUNCTION_BYTES || off % 8 != 0 {
                return Err(unsupported(format!("{name} at {off}")));
            }
        }
        Ok(meta.with_builtins(&syms, data))
    }

    /// Where the embedded builtins are: `v8_Default_embedded_blob_code_` is
    /// the blob itself (V8 >= 10.7, in .text) or a pointer to
    /// `v8_Default_embedded_blob_code_data_` (older); its size is the u32
    /// `v8_Default_embedded_blob_code_size_` (V8 `embedded-file-writer`).
    fn with_builtins(mut self, syms: &Symbols, data: &[u8]) -> V8Metadata {
        let start = match (
            syms.addrs.get("v8_Default_embedded_blob_code_data_"),
            syms.addrs.get("v8_Default_embedded_blob_code_"),
        ) {
            (Some(&(a, true)), _) | (None, Some(&(a, true))) => Some(a),
            _ => None,
        };
        let size = syms
            .values
            .get("v8_Default_embedded_blob_code_size_")
            .map(|&s| s as u32 as u64);
        if let (Some(start), Some(size)) = (start, size.filter(|&s| s > 0)) {
            let offset = object::File::parse(data).ok().and_then(|obj| {
                obj.segments().find_map(|s| {
                    let (off, len) = s.file_range();
                    (start >= s.address() && start < s.address() + len)
                        .then(|| off + (start - s.address()))
                })
            });
            if offset.is_some() {
                self.builtins = Some(start..start + size);
                self.builtins_file_offset = offset;
                self.interpreter = interpreter_offsets(&syms.code, start..start + size);
            }
        }
        self
    }

    /// The builtins' addresses in a process whose executable mappings are
    /// `maps` and that maps this file as `path`: every mapping of the file
    /// that holds the blob's file offset, address order. V8 >= 12 maps the
    /// blob's pages a second time, into its code range, and runs that copy.
    pub fn builtins_in(&self, maps: &[MapEntry], path: &str) -> Vec<Range<u64>> {
        let (Some(range), Some(off)) = (self.builtins.as_ref(), self.builtins_file_offset) else {
            return Vec::new();
        };
        maps.iter()
            .filter(|m| m.path() == Some(path))
            .filter(|m| off >= m.offset && off < m.offset + (m.end - m.start))
            .map(|m| {
                let start = m.start + (off - m.offset);
                start..start + (range.end - range.start)
            })
            .collect()
    }
}
