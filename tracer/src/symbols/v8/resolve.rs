//! JS frame tags -> names, files and lines, read from a live process's V8
//! heap, cached by SharedFunctionInfo address.
//!
//! The GC moves objects: an address that held one function's SFI can hold
//! another's after a compaction. A cache hit is trusted only after re-reading
//! the object there: it must still be a SharedFunctionInfo with the same
//! name_or_scope_info and script pointers as when it was resolved (a moved
//! SFI's fields are copied verbatim, so a different SFI at the same address
//! differs in its ScopeInfo, which belongs to one function). A mismatch
//! resolves again. This is why stacks must be resolved when first seen
//! (`mod.rs`): a tag taken before a compaction can only be resolved right.
use std::{collections::HashMap, sync::Arc};

use super::{
    frame::{JsFrameTag, Tier},
    function::SfiFields,
    heap::{Heap, HeapError},
    memory::Memory,
    metadata::V8Metadata,
    positions,
    script::{LineEnds, ScriptInfo},
};
use crate::report::{Frame, FrameKind};

/// A JS function, as V8's perf map would name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsFunction {
    /// `SharedFunctionInfo::DebugName` ("" for an anonymous function).
    pub name: String,
    /// The script's name: a path, a `file://` URL, or `node:fs`.
    pub script: Option<String>,
    /// 1-based line and column of the function's start (the perf map's).
    pub line: Option<u32>,
    pub column: Option<u32>,
    /// Where the line ends came from, when there is a line.
    pub line_ends_from: Option<LineEnds>,
}

/// One resolved frame: the function, and where in it the frame was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsFrame {
    pub function: Arc<JsFunction>,
    pub tier: Tier,
    /// Interpreted frames: the line and column of the bytecode being run
    /// (the call out of the function), from the BytecodeArray's source
    /// position table. None for other tiers: their frames hold no bytecode
    /// offset (optimized frames would need their Code's position table).
    pub call_line: Option<u32>,
    pub call_column: Option<u32>,
}

impl JsFrame {
    /// The report's frame: named as V8's perf map names the same code
    /// (`JS:<tier marker><name> <script>:<line>:<column>`), with the
    /// function's start line, so that a stack reads (and `diff` matches)
    /// the same whichever source named it.
    pub fn to_report_frame(&self, word: u64) -> Frame {
        let f = &self.function;
        let symbol = match (&f.script, f.line, f.column) {
            (Some(s), Some(l), Some(c)) => {
                format!("JS:{}{} {s}:{l}:{c}", self.tier.marker(), f.name)
            }
            (Some(s), _, _) => format!("JS:{}{} {s}", self.tier.marker(), f.name),
            (None, _, _) => format!("JS:{}{}", self.tier.marker(), f.name),
        };
        Frame {
            addr: format!("{word:#x}"),
            symbol: Some(symbol),
            module: None,
            file: f.script.clone(),
            line: f.line,
            kind: FrameKind::Js,
            addon: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("JS frame {sfi:#x}")]
    Heap {
        sfi: u64,
        #[source]
        source: HeapError,
    },
}

struct CachedSfi {
    fields: SfiFields,
    function: Arc<JsFunction>,
    /// Source position table of its bytecode, once a frame needed it.
    positions: Option<Arc<Vec<u8>>>,
    line_ends: Option<Arc<Vec<u32>>>,
}

/// Cache hits and misses, for tests and the bench.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolveStats {
    pub hits: u64,
    pub misses: u64,
    /// Hits whose SFI had changed (moved or replaced): resolved again.
    pub stale: u64,
}

/// Resolves the JS frames of one process.
pub struct V8Resolver {
    meta: Arc<V8Metadata>,
    mem: Box<dyn Memory + Send>,
    sfis: HashMap<u64, CachedSfi>,
    scripts: HashMap<u64, (u64, ScriptInfo)>,
    pub stats: ResolveStats,
}

/// Bounds the cache of one process (a function is ~200 bytes here).
const MAX_CACHED_SFIS: usize = 1 << 16;

impl V8Resolver {
    pub fn new(meta: Arc<V8Metadata>, mem: Box<dyn Memory + Send>) -> V8Resolver {
        V8Resolver {
            meta,
            mem,
            sfis: HashMap::new(),
            scripts: HashMap::new(),
            stats: ResolveStats::default(),
        }
    }

    pub fn metadata(&self) -> &V8Metadata {
        &self.meta
    }

    /// Resolves one JS frame tag (`JsFrameTag::decode` of an `ips[]` word).
    pub fn resolve(&mut self, tag: &JsFrameTag) -> Result<JsFrame, ResolveError> {
        let heap = Heap {
            meta: &self.meta,
            mem: self.mem.as_ref(),
        };
        let err = |source| ResolveError::Heap {
            sfi: tag.sfi,
            source,
        };
        let fields = heap.sfi_fields(tag.sfi).map_err(err)?;
        let cached = match self.sfis.get(&tag.sfi) {
            Some(c)
                if c.fields.name_or_scope_info == fields.name_or_scope_info
                    && c.fields.script == fields.script =>
            {
                self.stats.hits += 1;
                true
            }
            Some(_) => {
                self.stats.stale += 1;
                false
            }
            None => false,
        };
        if !cached {
            self.stats.misses += 1;
            let entry = Self::load(&heap, &mut self.scripts, &fields).map_err(err)?;
            if self.sfis.len() >= MAX_CACHED_SFIS {
                self.sfis.clear();
            }
            self.sfis.insert(tag.sfi, entry);
        }
        let Some(entry) = self.sfis.get_mut(&tag.sfi) else {
            unreachable!("inserted above")
        };
        entry.fields.function_data = fields.function_data;
        let (call_line, call_column) = match (tag.tier, tag.bytecode_offset) {
            (Tier::Interpreted, Some(off)) => {
                if entry.positions.is_none() {
                    entry.positions = heap
                        .bytecode_array(fields.function_data)
                        .filter(|&b| heap.bytecode_length(b).is_some_and(|n| off < n))
                        .and_then(|b| heap.source_position_table(b))
                        .map(Arc::new);
                }
                entry
                    .positions
                    .as_ref()
                    .and_then(|t| positions::bytecode_script_offset(t, off))
                    .zip(entry.line_ends.as_ref())
                    .and_then(|(pos, ends)| positions::line_column(ends, pos))
                    .unzip()
            }
            _ => (None, None),
        };
        Ok(JsFrame {
            function: entry.function.clone(),
            tier: tag.tier,
            call_line,
            call_column,
        })
    }

    fn load(
        heap: &Heap<'_>,
        scripts: &mut HashMap<u64, (u64, ScriptInfo)>,
        fields: &SfiFields,
    ) -> Result<CachedSfi, HeapError> {
        let info = heap.function_info(fields)?;
        let script = match info.script {
            Some(s) => Some(Self::script(heap, scripts, s)?),
            None => None,
        };
        let line_ends = script.as_ref().and_then(|s| s.line_ends.clone());
        let (line, column) = info
            .start
            .zip(line_ends.as_ref())
            .and_then(|(pos, ends)| positions::line_column(ends, pos))
            .unzip();
        Ok(CachedSfi {
            fields: *fields,
            function: Arc::new(JsFunction {
                name: info.name,
                script: script.as_ref().and_then(|s| s.name.clone()),
                line,
                column,
                line_ends_from: line.and(script.as_ref().and_then(|s| s.line_ends_from)),
            }),
            positions: None,
            line_ends,
        })
    }

    /// A Script, cached by address and validated by its name pointer.
    fn script(
        heap: &Heap<'_>,
        scripts: &mut HashMap<u64, (u64, ScriptInfo)>,
        tagged: u64,
    ) -> Result<ScriptInfo, HeapError> {
        let obj = heap.object("script", tagged)?;
        let name_ptr = heap.word(obj, heap.meta.off_script_name)?;
        if let Some((ptr, info)) = scripts.get(&tagged) {
            if *ptr == name_ptr && heap.type_of(obj)? == heap.meta.type_script {
                return Ok(info.clone());
            }
        }
        let info = heap.script_info(tagged)?;
        scripts.insert(tagged, (name_ptr, info.clone()));
        Ok(info)
    }
}
