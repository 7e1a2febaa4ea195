//! Bucket rules: which part of a Node process a stack's memory belongs to.
//!
//! A stack is the symbolized allocation stack, innermost (the allocation
//! call) first. Every frame in it is a caller of the allocation, so "the
//! stack contains X" means "the memory was allocated on behalf of X". The
//! rules are applied in this order and the first one that matches wins:
//!
//! 1. `array_buffers`: a frame is an ArrayBuffer backing-store allocator:
//!    node's `node::NodeArrayBufferAllocator::*` / `node::DebuggingArrayBufferAllocator::*`
//!    (what Buffer, TypedArray and ArrayBuffer use under node), V8's
//!    `v8::internal::BackingStore::*` (including resizable and wasm memories,
//!    which V8 reserves through its page allocator: hence before rule 2) and
//!    `v8::ArrayBuffer::Allocator` / `v8::ArrayBuffer::NewBackingStore`
//!    (embedders and addons creating backing stores).
//! 2. `v8_heap`: a frame is V8's page allocator path, which maps the pages of
//!    the V8-managed heap (what `heapTotal` counts) and of cppgc (Oilpan):
//!    `v8::internal::MemoryAllocator::*` (AllocatePage, AllocateLargePage,
//!    AllocateAlignedMemory...), `v8::internal::VirtualMemory::VirtualMemory`,
//!    `v8::internal::VirtualMemoryCage::*`, `v8::internal::CodeRange::*`,
//!    `v8::internal::AllocatePages`, `v8::base::PageAllocator::*`,
//!    `v8::base::BoundedPageAllocator::*`, `v8::base::VirtualAddressSpace::*`,
//!    `v8::base::VirtualAddressSubspace::*`, `v8::base::OS::Allocate*`,
//!    `cppgc::internal::PageBackend::*`, `cppgc::internal::PageMemoryRegion*`,
//!    `cppgc::internal::VirtualMemory::*`. It checks before rule 3 because an
//!    addon calling napi_create_object can make V8 map a new heap page: those
//!    pages are heap, not addon memory. `v8::internal::Heap::*` alone does NOT
//!    count: the GC mallocs its own bookkeeping (worklists, slot sets) which
//!    `heapTotal` never shows; that is `node_native`.
//! 3. `native_addon`: a frame's module belongs to a loaded addon: a `.node`
//!    file, a library it brought in (its DT_NEEDED closure, minus what the
//!    executable needs), or a module under `node_modules` (`addon.rs` has
//!    the module rules and how the package is named). So does a stack
//!    through an addon's frame whose inner frames are in a shared library it
//!    calls (libz, libssl...), and a stack of which only the library's frames
//!    survived (no frame pointers). The stack's `addon` names the package of
//!    its innermost such frame, whatever its bucket.
//! 4. `node_native`: a frame's module is the node executable (node, V8, libuv,
//!    openssl, zlib, brotli, c-ares, nghttp2, ICU are linked into it) or one
//!    of the shared libraries distributions build node against.
//! 5. `other`: everything else (a plain C program, JIT code only, libc only).
//!
//! Names are matched as prefixes of the demangled symbol, so both symbol-table
//! names (with parameters) and DWARF inline names (without) match. Only
//! native frames are matched (a JS function may be called anything). No rule
//! needs the immediate caller of malloc/mmap: a uprobe at function entry
//! unwound by frame pointers loses it (rbp still points to the caller's frame).
use crate::{
    proc::limits::is_node_name,
    report::{build::Symbolize, Bucket, Frame, FrameKind},
};

pub mod addon;

const ARRAY_BUFFER_SYMBOLS: &[&str] = &[
    "node::NodeArrayBufferAllocator::",
    "node::DebuggingArrayBufferAllocator::",
    "v8::internal::BackingStore::",
    "v8::ArrayBuffer::Allocator::",
    "v8::ArrayBuffer::NewBackingStore",
    "v8::ArrayBuffer::NewResizableBackingStore",
    "v8::SharedArrayBuffer::NewBackingStore",
];

const V8_HEAP_SYMBOLS: &[&str] = &[
    "v8::internal::MemoryAllocator::",
    "v8::internal::VirtualMemory::VirtualMemory",
    "v8::internal::VirtualMemoryCage::",
    "v8::internal::CodeRange::",
    "v8::internal::AllocatePages",
    "v8::base::PageAllocator::",
    "v8::base::BoundedPageAllocator::",
    "v8::base::VirtualAddressSpace::",
    "v8::base::VirtualAddressSubspace::",
    "v8::base::OS::Allocate",
    "cppgc::internal::PageBackend::",
    "cppgc::internal::PageMemoryRegion",
    "cppgc::internal::VirtualMemory::",
];

/// Shared libraries that distributions link node against (`ldd $(which node)`
/// on Debian/Fedora/Alpine builds with --shared-*), by file-name prefix.
const NODE_LIBS: &[&str] = &[
    "libnode.so",
    "libuv.so",
    "libz.so",
    "libssl.so",
    "libcrypto.so",
    "libbrotlienc.so",
    "libbrotlidec.so",
    "libbrotlicommon.so",
    "libcares.so",
    "libnghttp2.so",
    "libnghttp3.so",
    "libngtcp2",
    "libicuuc.so",
    "libicui18n.so",
    "libicudata.so",
    "libllhttp.so",
];

fn has_symbol(frames: &[Frame], prefixes: &[&str]) -> bool {
    frames
        .iter()
        .filter(|f| f.kind == FrameKind::Native)
        .filter_map(|f| f.symbol.as_deref())
        .any(|s| prefixes.iter().any(|p| s.starts_with(p)))
}

fn module_name(f: &Frame) -> &str {
    f.module
        .as_deref()
        .map(|m| m.rsplit('/').next().unwrap_or(m))
        .unwrap_or("")
}

/// A frame of an addon's module: marked by the symbolizer (`addon.rs`), or
/// a `.node` file by its name alone (frames symbolized without process
/// facts).
fn is_addon(f: &Frame) -> bool {
    f.kind == FrameKind::Native && (f.addon.is_some() || module_name(f).ends_with(".node"))
}

/// The package of the innermost frame that belongs to an addon (rule 3).
pub fn addon_of(frames: &[Frame]) -> Option<&str> {
    frames
        .iter()
        .filter(|f| f.kind == FrameKind::Native)
        .find_map(|f| f.addon.as_deref())
}

/// `node`, `nodejs`, `node20`... (the executable), or a library node links.
fn is_node_module(f: &Frame) -> bool {
    if f.kind != FrameKind::Native {
        return false;
    }
    let name = module_name(f);
    is_node_name(name) || NODE_LIBS.iter().any(|l| name.starts_with(l))
}

pub fn classify(frames: &[Frame]) -> Bucket {
    if has_symbol(frames, ARRAY_BUFFER_SYMBOLS) {
        return Bucket::ArrayBuffers;
    }
    if has_symbol(frames, V8_HEAP_SYMBOLS) {
        return Bucket::V8Heap;
    }
    if frames.iter().any(is_addon) {
        return Bucket::NativeAddon;
    }
    if frames.iter().any(is_node_module) {
        return Bucket::NodeNative;
    }
    Bucket::Other
}

/// A classifier of raw stacks (return addresses of a process) from a
/// symbolizer and these rules, for the accounting models, which classify
/// each stack once and keep the bucket.
pub fn stack_classifier(sym: &mut dyn Symbolize) -> impl FnMut(u32, &[u64]) -> Bucket + '_ {
    move |pid, ips| {
        let frames: Vec<Frame> = ips.iter().flat_map(|ip| sym.symbolize(pid, *ip)).collect();
        classify(&frames)
    }
}

#[cfg(test)]
mod tests {
    //! Stacks built from real node v20 symbol names (`nm -C /usr/bin/node`).
    use super::*;

    const NODE: &str = "/usr/bin/node";
    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    const LIBSTDCXX: &str = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.32";
    const ADDON: &str = "/srv/app/node_modules/leaky/build/Release/leaky.node";

    fn f(sym: &str, module: &str) -> Frame {
        Frame {
            addr: "0x1".into(),
            symbol: Some(sym.into()),
            module: Some(module.into()),
            ..Frame::default()
        }
    }

    fn js(name: &str) -> Frame {
        Frame {
            addr: "0x2".into(),
            symbol: Some(name.into()),
            module: Some("/tmp/perf-1.map".into()),
            kind: FrameKind::Js,
            ..Frame::default()
        }
    }

    fn jit() -> Frame {
        Frame {
            addr: "0x3".into(),
            symbol: Some("[JIT]".into()),
            kind: FrameKind::Jit,
            ..Frame::default()
        }
    }

    #[test]
    fn buffer_alloc_is_array_buffers() {
        let frames = [
            f("calloc", LIBC),
            f("node::NodeArrayBufferAllocator::Allocate(unsigned long)", NODE),
            f("v8::internal::Heap::AllocateExternalBackingStore(std::function<void* (unsigned long)> const&, unsigned long)", NODE),
            f("v8::internal::BackingStore::Allocate(v8::internal::Isolate*, unsigned long, v8::internal::SharedFlag, v8::internal::InitializedFlag)", NODE),
            js("JS:*retainBuffers /app/leak.js:3:24"),
        ];
        assert_eq!(classify(&frames), Bucket::ArrayBuffers);
    }

    #[test]
    fn buffer_alloc_unsafe_uninitialized_is_array_buffers() {
        let frames = [
            f("malloc", LIBC),
            f(
                "node::NodeArrayBufferAllocator::AllocateUninitialized(unsigned long)",
                NODE,
            ),
            jit(),
        ];
        assert_eq!(classify(&frames), Bucket::ArrayBuffers);
    }

    #[test]
    fn addon_created_backing_store_is_array_buffers() {
        let frames = [
            f("malloc", LIBC),
            f(
                "v8::ArrayBuffer::NewBackingStore(v8::Isolate*, unsigned long)",
                NODE,
            ),
            f("napi_create_buffer", NODE),
            f("make_buffer", ADDON),
        ];
        assert_eq!(classify(&frames), Bucket::ArrayBuffers);
    }

    #[test]
    fn resizable_array_buffer_reserved_by_page_allocator_is_array_buffers() {
        let frames = [
            f("mmap64", LIBC),
            f("v8::base::OS::Allocate(void*, unsigned long, unsigned long, v8::base::OS::MemoryPermission)", NODE),
            f("v8::base::PageAllocator::AllocatePages(void*, unsigned long, unsigned long, v8::PageAllocator::Permission)", NODE),
            f("v8::internal::AllocatePages(v8::PageAllocator*, void*, unsigned long, unsigned long, v8::PageAllocator::Permission)", NODE),
            f("v8::internal::BackingStore::TryAllocateAndPartiallyCommitMemory(v8::internal::Isolate*, unsigned long, unsigned long, unsigned long, unsigned long, unsigned long, v8::internal::WasmMemoryFlag, v8::internal::SharedFlag)", NODE),
        ];
        assert_eq!(classify(&frames), Bucket::ArrayBuffers);
    }

    #[test]
    fn v8_page_allocation_is_v8_heap() {
        let frames = [
            f("mmap64", LIBC),
            f("v8::base::OS::Allocate(void*, unsigned long, unsigned long, v8::base::OS::MemoryPermission)", NODE),
            f("v8::base::PageAllocator::AllocatePages(void*, unsigned long, unsigned long, v8::PageAllocator::Permission)", NODE),
            f("v8::internal::AllocatePages(v8::PageAllocator*, void*, unsigned long, unsigned long, v8::PageAllocator::Permission)", NODE),
            f("v8::internal::VirtualMemory::VirtualMemory(v8::PageAllocator*, unsigned long, void*, unsigned long, v8::internal::JitPermission)", NODE),
            f("v8::internal::MemoryAllocator::AllocateAlignedMemory(unsigned long, unsigned long, unsigned long, v8::internal::AllocationSpace, v8::internal::Executability, void*, v8::internal::VirtualMemory*)", NODE),
            f("v8::internal::MemoryAllocator::AllocatePage(v8::internal::MemoryAllocator::AllocationMode, v8::internal::Space*, v8::internal::Executability)", NODE),
            js("JS:*retainObjects /app/leak.js:9:1"),
        ];
        assert_eq!(classify(&frames), Bucket::V8Heap);
    }

    #[test]
    fn large_object_page_and_bounded_allocator_are_v8_heap() {
        assert_eq!(
            classify(&[
                f("mmap64", LIBC),
                f("v8::base::BoundedPageAllocator::AllocatePages(void*, unsigned long, unsigned long, v8::PageAllocator::Permission)", NODE),
            ]),
            Bucket::V8Heap
        );
        assert_eq!(
            classify(&[
                f("v8::internal::MemoryAllocator::AllocateLargePage(v8::internal::LargeObjectSpace*, unsigned long, v8::internal::Executability)", NODE),
                f("v8::internal::LargeObjectSpace::AllocateLargePage(int, v8::internal::Executability)", NODE),
            ]),
            Bucket::V8Heap
        );
    }

    #[test]
    fn cppgc_pages_are_v8_heap() {
        let frames = [
            f("mmap64", LIBC),
            f(
                "cppgc::internal::PageBackend::TryAllocateNormalPageMemory()",
                NODE,
            ),
        ];
        assert_eq!(classify(&frames), Bucket::V8Heap);
    }

    #[test]
    fn heap_page_mapped_during_an_addon_call_is_v8_heap() {
        let frames = [
            f("mmap64", LIBC),
            f("v8::internal::MemoryAllocator::AllocatePage(v8::internal::MemoryAllocator::AllocationMode, v8::internal::Space*, v8::internal::Executability)", NODE),
            f("napi_create_object", NODE),
            f("make_objects", ADDON),
        ];
        assert_eq!(classify(&frames), Bucket::V8Heap);
    }

    #[test]
    fn gc_bookkeeping_malloc_is_node_native_not_v8_heap() {
        let frames = [
            f("malloc", LIBC),
            f("operator new(unsigned long)", LIBSTDCXX),
            f("v8::internal::MarkCompactCollector::CollectGarbage()", NODE),
            f("v8::internal::Heap::CollectGarbage(v8::internal::AllocationSpace, v8::internal::GarbageCollectionReason, v8::GCCallbackFlags)", NODE),
        ];
        assert_eq!(classify(&frames), Bucket::NodeNative);
    }

    #[test]
    fn addon_malloc_is_native_addon() {
        let frames = [
            f("malloc", LIBC),
            f("addon_leak", ADDON),
            f("v8impl::(anonymous namespace)::FunctionCallbackWrapper::Invoke(v8::FunctionCallbackInfo<v8::Value> const&)", NODE),
            js("JS:~leakSome /app/index.js:4:10"),
        ];
        assert_eq!(classify(&frames), Bucket::NativeAddon);
    }

    /// A frame of a module the symbolizer found to be an addon's.
    fn of(pkg: &str, sym: &str, module: &str) -> Frame {
        Frame {
            addon: Some(pkg.into()),
            ..f(sym, module)
        }
    }

    const SHARP: &str = "@img/sharp-linux-x64";
    const LIBVIPS: &str =
        "/srv/app/node_modules/@img/sharp-libvips-linux-x64/lib/libvips-cpp.so.8.17.3";
    const SHARP_NODE: &str = "/srv/app/node_modules/@img/sharp-linux-x64/lib/sharp-linux-x64.node";

    #[test]
    fn a_stack_left_with_only_the_addons_library_is_native_addon() {
        // libvips has no frame pointers: past g_try_malloc the walk read
        // garbage (the issue's `library_function <- 0x200000001`).
        let frames = [
            of(SHARP, "g_try_malloc", LIBVIPS),
            Frame::unknown(0x2_0000_0001),
        ];
        assert_eq!(classify(&frames), Bucket::NativeAddon);
        assert_eq!(addon_of(&frames), Some(SHARP));
    }

    #[test]
    fn a_full_stack_through_the_addon_names_its_innermost_addon() {
        let frames = [
            f("malloc", LIBC),
            of(SHARP, "vips_image_write_to_memory", LIBVIPS),
            of(SHARP, "PipelineWorker::Execute()", SHARP_NODE),
            f(
                "node::ThreadPoolWork::ScheduleWork()::{lambda(uv_work_s*)#1}::_FUN(uv_work_s*)",
                NODE,
            ),
            f("uv__threadpool_work", NODE),
        ];
        assert_eq!(classify(&frames), Bucket::NativeAddon);
        assert_eq!(addon_of(&frames), Some(SHARP));
        // Node's own memory names no addon.
        assert_eq!(addon_of(&[f("malloc", LIBC), f("uv__malloc", NODE)]), None);
    }

    #[test]
    fn an_addons_buffer_is_array_buffers_and_still_names_the_addon() {
        let frames = [
            f("calloc", LIBC),
            f(
                "node::NodeArrayBufferAllocator::Allocate(unsigned long)",
                NODE,
            ),
            f("napi_create_buffer", NODE),
            of("leaky", "make_buffer", ADDON),
        ];
        assert_eq!(classify(&frames), Bucket::ArrayBuffers);
        assert_eq!(addon_of(&frames), Some("leaky"));
    }

    #[test]
    fn addon_through_system_zlib_is_native_addon() {
        let frames = [
            f("malloc", LIBC),
            f("deflateInit2_", "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13"),
            f("compress_stream", ADDON),
        ];
        assert_eq!(classify(&frames), Bucket::NativeAddon);
    }

    #[test]
    fn zlib_stream_state_is_node_native() {
        let frames = [
            f("calloc", LIBC),
            f("node::(anonymous namespace)::CompressionStream<node::(anonymous namespace)::ZlibContext>::AllocForZlib(void*, unsigned int, unsigned int)", NODE),
            f("deflateInit2_", NODE),
            f("node::(anonymous namespace)::ZlibContext::InitZlib()", NODE),
            js("JS:~Zlib /usr/lib/node/zlib.js:1:1"),
        ];
        assert_eq!(classify(&frames), Bucket::NodeNative);
        // Distribution builds link a shared zlib.
        assert_eq!(
            classify(&[f("deflateInit2_", "/usr/lib/x86_64-linux-gnu/libz.so.1")]),
            Bucket::NodeNative
        );
    }

    #[test]
    fn node_executable_names() {
        for m in [
            "/usr/bin/node",
            "/usr/bin/nodejs",
            "/opt/node20",
            "/opt/node-18.19.0",
        ] {
            assert_eq!(classify(&[f("uv__malloc", m)]), Bucket::NodeNative, "{m}");
        }
        assert_eq!(classify(&[f("x", "/srv/node.js.bin")]), Bucket::Other);
        assert_eq!(classify(&[f("x", "/srv/nodes.node")]), Bucket::NativeAddon);
    }

    // The next stacks were recorded with bpftrace uprobes on libc in node
    // v20 running Buffer.allocUnsafe(5 MiB) and filling a Map: frame-pointer
    // unwinding at function entry loses the immediate caller of malloc/mmap,
    // so the rules must hold without it.
    #[test]
    fn observed_buffer_alloc_unsafe_stack_without_immediate_caller() {
        let frames = [
            f("malloc", LIBC),
            f("v8::internal::Heap::AllocateExternalBackingStore(std::function<void* (unsigned long)> const&, unsigned long)", NODE),
            f("v8::internal::BackingStore::Allocate(v8::internal::Isolate*, unsigned long, v8::internal::SharedFlag, v8::internal::InitializedFlag)", NODE),
            f("v8::ArrayBuffer::NewBackingStoreForNodeLTS(v8::Isolate*, unsigned long)", NODE),
            f("node::Buffer::(anonymous namespace)::CreateUnsafeArrayBuffer(v8::FunctionCallbackInfo<v8::Value> const&)", NODE),
        ];
        assert_eq!(classify(&frames), Bucket::ArrayBuffers);
    }

    #[test]
    fn observed_new_space_page_stack_without_immediate_caller() {
        let frames = [
            f("mmap64", LIBC),
            f("v8::internal::VirtualMemory::VirtualMemory(v8::PageAllocator*, unsigned long, void*, unsigned long, v8::internal::JitPermission)", NODE),
            f("v8::internal::MemoryAllocator::AllocateAlignedMemory(unsigned long, unsigned long, unsigned long, v8::internal::AllocationSpace, v8::internal::Executability, void*, v8::internal::VirtualMemory*)", NODE),
            f("v8::internal::MemoryAllocator::AllocateUninitializedChunkAt(v8::internal::BaseSpace*, unsigned long, v8::internal::Executability, unsigned long, v8::internal::PageSize)", NODE),
            f("v8::internal::MemoryAllocator::AllocatePage(v8::internal::MemoryAllocator::AllocationMode, v8::internal::Space*, v8::internal::Executability)", NODE),
            f("v8::internal::SemiSpace::EnsureCurrentCapacity()", NODE),
            f("v8::internal::MarkCompactCollector::Finish()", NODE),
        ];
        assert_eq!(classify(&frames), Bucket::V8Heap);
    }

    #[test]
    fn observed_cppgc_gc_info_table_is_node_native_metadata() {
        let frames = [
            f("mmap64", LIBC),
            f("cppgc::internal::GCInfoTable::GCInfoTable(v8::PageAllocator&, cppgc::internal::FatalOutOfMemoryHandler&)", NODE),
            f("cppgc::internal::GlobalGCInfoTable::Initialize(v8::PageAllocator&)", NODE),
            f("cppgc::InitializeProcess(v8::PageAllocator*)", NODE),
        ];
        assert_eq!(classify(&frames), Bucket::NodeNative);
    }

    #[test]
    fn plain_c_program_and_jit_only_are_other() {
        assert_eq!(
            classify(&[f("malloc", LIBC), f("main", "/tmp/fixture")]),
            Bucket::Other
        );
        assert_eq!(
            classify(&[f("malloc", LIBC), jit(), js("JS:~f /a.js:1:1")]),
            Bucket::Other
        );
        assert_eq!(classify(&[]), Bucket::Other);
    }

    #[test]
    fn js_names_never_match_native_rules() {
        // A JS function that happens to be named like a C++ allocator.
        let frames = [
            f("malloc", LIBC),
            js("v8::internal::BackingStore::Allocate /a.js:1:1"),
        ];
        assert_eq!(classify(&frames), Bucket::Other);
    }
}
