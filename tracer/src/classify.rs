//! Bucket rules: which part of a Node process a stack's memory belongs to.
//!
//! Rules are applied to the symbolized stack, innermost frame first, and the
//! first rule that matches wins:
//! 1. `array_buffers`: a frame is node's ArrayBuffer allocator
//!    (`node::NodeArrayBufferAllocator`, `node::DebuggingArrayBufferAllocator`)
//!    or V8's backing store (`v8::internal::BackingStore`, `v8::ArrayBuffer::Allocator`).
//! 2. `native_addon`: a frame's module is a `.node` file (a loaded addon).
//! 3. `v8_heap`: a frame is V8's page allocator or heap growth
//!    (`v8::internal::MemoryAllocator`, `v8::base::PageAllocator`, `v8::internal::Heap::`),
//!    or its garbage collector's own bookkeeping, which V8 mallocs in proportion
//!    to the heap (`heap::base::Worklist` marking worklists, `v8::internal::Scavenger`,
//!    `v8::internal::ConcurrentMarking`, `v8::internal::SlotSet` remembered sets...).
//! 4. `node_native`: a frame's module is the node executable (node, V8, libuv,
//!    openssl and zlib are linked into it), or a shared libuv/libz/libssl/libcrypto.
//! 5. `other`: everything else.
use crate::report::{Bucket, Frame};

const ARRAY_BUFFER_SYMBOLS: &[&str] = &[
    "node::NodeArrayBufferAllocator",
    "node::DebuggingArrayBufferAllocator",
    "v8::internal::BackingStore",
    "v8::ArrayBuffer::Allocator",
];

const V8_HEAP_SYMBOLS: &[&str] = &[
    "v8::internal::MemoryAllocator",
    "v8::base::PageAllocator",
    "v8::internal::Heap::",
    "v8::internal::PagedSpace",
    "v8::internal::NewSpace",
    "v8::internal::LargeObjectSpace",
    "heap::base::Worklist",
    "v8::internal::Scavenger",
    "v8::internal::ConcurrentMarking",
    "v8::internal::MarkCompactCollector",
    "v8::internal::MinorMarkCompactCollector",
    "v8::internal::Sweeper",
    "v8::internal::SlotSet",
    "v8::internal::TypedSlotSet",
];

const NODE_LIBS: &[&str] = &[
    "libuv.so",
    "libz.so",
    "libssl.so",
    "libcrypto.so",
    "libnode.so",
];

fn has_symbol(frames: &[Frame], needles: &[&str]) -> bool {
    frames
        .iter()
        .filter_map(|f| f.symbol.as_deref())
        .any(|s| needles.iter().any(|n| s.contains(n)))
}

fn module_name(f: &Frame) -> &str {
    f.module
        .as_deref()
        .map(|m| m.rsplit('/').next().unwrap_or(m))
        .unwrap_or("")
}

fn is_node_module(f: &Frame) -> bool {
    let name = module_name(f);
    name == "node"
        || name.starts_with("node") && !name.ends_with(".node")
        || NODE_LIBS.iter().any(|l| name.starts_with(l))
}

pub fn classify(frames: &[Frame]) -> Bucket {
    if has_symbol(frames, ARRAY_BUFFER_SYMBOLS) {
        return Bucket::ArrayBuffers;
    }
    if frames.iter().any(|f| module_name(f).ends_with(".node")) {
        return Bucket::NativeAddon;
    }
    if has_symbol(frames, V8_HEAP_SYMBOLS) {
        return Bucket::V8Heap;
    }
    if frames.iter().any(is_node_module) {
        return Bucket::NodeNative;
    }
    Bucket::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(sym: &str, module: &str) -> Frame {
        Frame {
            addr: "0x1".into(),
            symbol: Some(sym.into()),
            module: Some(module.into()),
            ..Frame::default()
        }
    }

    #[test]
    fn array_buffer_allocator_wins_over_node_module() {
        let frames = [
            f(
                "node::NodeArrayBufferAllocator::Allocate(unsigned long)",
                "/usr/bin/node",
            ),
            f(
                "v8::internal::Heap::AllocateExternalBackingStore",
                "/usr/bin/node",
            ),
        ];
        assert_eq!(classify(&frames), Bucket::ArrayBuffers);
    }

    #[test]
    fn addon_module() {
        let frames = [
            f("leak_fn", "/tmp/x/leaky.node"),
            f("napi_call", "/usr/bin/node"),
        ];
        assert_eq!(classify(&frames), Bucket::NativeAddon);
    }

    #[test]
    fn zlib_in_node_is_node_native() {
        assert_eq!(
            classify(&[f("deflateInit2_", "/usr/bin/node")]),
            Bucket::NodeNative
        );
    }

    #[test]
    fn gc_worklists_are_v8_heap() {
        let frames = [
            f("malloc", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            f(
                "heap::base::Worklist<v8::internal::HeapObject, (unsigned short)64>::Local::Publish()",
                "/usr/bin/node",
            ),
            f("v8::internal::ConcurrentMarking::RunMajor(v8::JobDelegate*)", "/usr/bin/node"),
        ];
        assert_eq!(classify(&frames), Bucket::V8Heap);
    }

    #[test]
    fn plain_c_program_is_other() {
        assert_eq!(classify(&[f("main", "/tmp/fixture")]), Bucket::Other);
    }
}
