//! Typed reads of V8 heap objects in a target process: fields, instance
//! types and strings (sequential, cons, sliced, thin, external; one- and
//! two-byte), checked at every step since the process keeps running and its
//! GC moves objects.
use super::{
    memory::{smi_value, untag, Memory},
    metadata::V8Metadata,
};

#[derive(Debug, thiserror::Error)]
pub enum HeapError {
    #[error("cannot read {len} bytes at {addr:#x}")]
    Read {
        addr: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is {value:#x}, not a heap object")]
    NotObject { what: &'static str, value: u64 },
    #[error("{what} at {addr:#x} has instance type {got}, expected {expected}")]
    WrongType {
        what: &'static str,
        addr: u64,
        got: u16,
        expected: &'static str,
    },
    #[error("{what} is {value:#x}, not a Smi")]
    NotSmi { what: &'static str, value: u64 },
    #[error("string at {addr:#x}: {reason}")]
    BadString { addr: u64, reason: String },
}

/// Strings longer than this are not read (a Script's source can be large;
/// V8 limits strings to 2^29 - 24 characters).
pub const MAX_STRING_UNITS: usize = 32 << 20;
/// Cons strings nest; a deeper chain is refused rather than recursed.
const MAX_STRING_DEPTH: u32 = 64;

/// A target's V8 heap, read through `mem` with the layouts of `meta`.
pub struct Heap<'a> {
    pub meta: &'a V8Metadata,
    pub mem: &'a dyn Memory,
}

impl Heap<'_> {
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), HeapError> {
        self.mem.read(addr, buf).map_err(|source| HeapError::Read {
            addr,
            len: buf.len(),
            source,
        })
    }

    /// The word at `obj + off` (`obj` untagged).
    pub fn word(&self, obj: u64, off: u16) -> Result<u64, HeapError> {
        let mut b = [0u8; 8];
        self.read(obj + u64::from(off), &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn u32_at(&self, addr: u64) -> Result<u32, HeapError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// The untagged object `tagged` points to.
    pub fn object(&self, what: &'static str, tagged: u64) -> Result<u64, HeapError> {
        untag(tagged).ok_or(HeapError::NotObject {
            what,
            value: tagged,
        })
    }

    /// The instance type of an object (untagged address), from its map.
    pub fn type_of(&self, obj: u64) -> Result<u16, HeapError> {
        let map = self.object("map", self.word(obj, self.meta.off_map)?)?;
        let mut b = [0u8; 2];
        self.read(map + u64::from(self.meta.off_map_instance_type), &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// The object `tagged` points to, when its instance type is `ty`.
    pub fn typed(
        &self,
        what: &'static str,
        tagged: u64,
        ty: u16,
        expected: &'static str,
    ) -> Result<u64, HeapError> {
        let obj = self.object(what, tagged)?;
        let got = self.type_of(obj)?;
        if got != ty {
            return Err(HeapError::WrongType {
                what,
                addr: obj,
                got,
                expected,
            });
        }
        Ok(obj)
    }

    pub fn smi(&self, what: &'static str, value: u64) -> Result<i32, HeapError> {
        smi_value(value).ok_or(HeapError::NotSmi { what, value })
    }

    /// Whether `tagged` points to a string (of any representation).
    pub fn is_string(&self, tagged: u64) -> bool {
        untag(tagged)
            .and_then(|o| self.type_of(o).ok())
            .is_some_and(|t| t < self.meta.strings.first_nonstring_type)
    }

    /// The string `tagged` points to, as UTF-16 code units (V8's source
    /// positions count those), at most `limit` of them.
    pub fn string_units(&self, tagged: u64, limit: usize) -> Result<Vec<u16>, HeapError> {
        let mut out = Vec::new();
        self.append_units(tagged, 0, None, limit, &mut out, MAX_STRING_DEPTH)?;
        Ok(out)
    }

    /// A string as Rust text (names, paths); unpaired surrogates become U+FFFD.
    pub fn string(&self, tagged: u64, limit: usize) -> Result<String, HeapError> {
        Ok(String::from_utf16_lossy(&self.string_units(tagged, limit)?))
    }

    /// Appends units [from, from + len) of the string (all of it when `len`
    /// is None) to `out`.
    fn append_units(
        &self,
        tagged: u64,
        from: usize,
        len: Option<usize>,
        limit: usize,
        out: &mut Vec<u16>,
        depth: u32,
    ) -> Result<(), HeapError> {
        let t = &self.meta.strings;
        let obj = self.object("string", tagged)?;
        let bad = |reason: String| HeapError::BadString { addr: obj, reason };
        if depth == 0 {
            return Err(bad("nested too deep".into()));
        }
        let ty = self.type_of(obj)?;
        if ty >= t.first_nonstring_type {
            return Err(HeapError::WrongType {
                what: "string",
                addr: obj,
                got: ty,
                expected: "a string",
            });
        }
        let full = self.u32_at(obj + u64::from(self.meta.off_string_length))? as usize;
        let len = len.unwrap_or(full.saturating_sub(from));
        if from + len > full {
            return Err(bad(format!("range {from}+{len} past length {full}")));
        }
        if out.len() + len > limit {
            return Err(bad(format!("longer than {limit} units")));
        }
        let one_byte = ty & t.encoding_mask == t.one_byte;
        let repr = ty & t.representation_mask;
        if repr == t.seq {
            let chars = if one_byte {
                self.meta.off_seq_one_byte_chars
            } else {
                self.meta.off_seq_two_byte_chars
            };
            return self.append_chars(obj + u64::from(chars), from, len, one_byte, out);
        }
        if repr == t.external {
            // ExternalString: `resource` then the resource's cached data
            // pointer (ExternalString::kResourceDataOffset); "uncached"
            // external strings (instance-type bit 0x10) have no cache.
            const UNCACHED: u16 = 0x10;
            if ty & UNCACHED != 0 {
                return Err(bad("uncached external string".into()));
            }
            let data = self.word(obj, self.meta.off_external_resource + 8)?;
            return self.append_chars(data, from, len, one_byte, out);
        }
        if repr == t.thin {
            let actual = self.word(obj, self.meta.off_thin_actual)?;
            return self.append_units(actual, from, Some(len), limit, out, depth - 1);
        }
        if repr == t.sliced {
            let parent = self.word(obj, self.meta.off_sliced_parent)?;
            let offset = self.smi(
                "sliced offset",
                self.word(obj, self.meta.off_sliced_offset)?,
            )?;
            let offset = usize::try_from(offset).map_err(|_| bad("negative slice".into()))?;
            return self.append_units(parent, offset + from, Some(len), limit, out, depth - 1);
        }
        if repr == t.cons {
            let first = self.word(obj, self.meta.off_cons_first)?;
            let second = self.word(obj, self.meta.off_cons_second)?;
            let first_len = self.u32_at(
                self.object("cons first", first)? + u64::from(self.meta.off_string_length),
            )? as usize;
            let end = from + len;
            if from < first_len {
                let n = end.min(first_len) - from;
                self.append_units(first, from, Some(n), limit, out, depth - 1)?;
            }
            if end > first_len {
                let start = from.max(first_len) - first_len;
                self.append_units(
                    second,
                    start,
                    Some(end - first_len - start),
                    limit,
                    out,
                    depth - 1,
                )?;
            }
            return Ok(());
        }
        Err(bad(format!("unknown representation {repr}")))
    }

    fn append_chars(
        &self,
        base: u64,
        from: usize,
        len: usize,
        one_byte: bool,
        out: &mut Vec<u16>,
    ) -> Result<(), HeapError> {
        if one_byte {
            let mut b = vec![0u8; len];
            self.read(base + from as u64, &mut b)?;
            out.extend(b.iter().map(|&c| u16::from(c)));
        } else {
            let mut b = vec![0u8; len * 2];
            self.read(base + 2 * from as u64, &mut b)?;
            out.extend(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])));
        }
        Ok(())
    }
}
