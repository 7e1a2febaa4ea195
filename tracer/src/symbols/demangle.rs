//! Turning linker names back into source names (C++ Itanium ABI and Rust).

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
    fn plain_c_and_garbage_stay() {
        assert_eq!(demangle("deflateInit2_"), "deflateInit2_");
        assert_eq!(demangle("_Z"), "_Z");
        assert_eq!(demangle("Builtins_InterpreterEntryTrampoline"), "Builtins_InterpreterEntryTrampoline");
    }
}
