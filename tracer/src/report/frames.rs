//! What a frame is to a person reading a stack: a user frame that names a
//! culprit (the application's JS, or an addon's function), or the runtime's
//! own machinery (V8 builtins and trampolines, V8 internals, libuv's loop,
//! node's and libc's start-up), which every node stack repeats and which the
//! text output folds into one line.
use super::{telling_frames, Frame, FrameKind};

/// Why a frame names the code that asked for memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserKind {
    Js,
    Addon,
    Native,
}

/// The runtime part a frame belongs to, for folded runs
/// (`… 14 V8/libuv frames …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Runtime {
    V8,
    Libuv,
    NodeStartup,
    LibcStartup,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::V8 => "V8",
            Runtime::Libuv => "libuv",
            Runtime::NodeStartup => "node start-up",
            Runtime::LibcStartup => "libc start-up",
        }
    }
}

fn module_file(f: &Frame) -> &str {
    let m = f.module.as_deref().unwrap_or("");
    m.rsplit('/').next().unwrap_or(m)
}

/// A JS function of node's own library (`node:buffer`, `node:internal/…`,
/// older nodes' `internal/…` and bare `events.js`-style names have a path
/// without a slash).
fn is_node_library_js(f: &Frame) -> bool {
    let file = f.file.as_deref().unwrap_or("");
    file.starts_with("node:") || file.starts_with("internal/")
}

/// The runtime part of a native frame, None when it is not runtime
/// machinery. Names are those of node's symbol table (V8's builtins are
/// `Builtins_*`; its C++ is in `v8::`; libuv's functions start with `uv_`).
pub fn runtime_of(f: &Frame) -> Option<Runtime> {
    if f.kind != FrameKind::Native {
        return None;
    }
    let s = f.symbol.as_deref()?;
    let file = module_file(f);
    if s.starts_with("Builtins_")
        || s.starts_with("v8::")
        || s.starts_with("non-virtual thunk to v8::")
    {
        return Some(Runtime::V8);
    }
    if s.starts_with("uv_") || s.starts_with("uv__") {
        return Some(Runtime::Libuv);
    }
    const NODE_STARTUP: &[&str] = &[
        "node::Start",
        "node::NodeMainInstance::",
        "node::SpinEventLoop",
        "node::LoadEnvironment",
        "node::StartExecution",
        "node::InternalCallbackScope::",
        "node::InternalMakeCallback",
        "node::MakeCallback",
        "node::AsyncWrap::MakeCallback",
        "node::Environment::RunTimers",
        "node::PerIsolatePlatformData::",
        "node::worker::",
        "main",
    ];
    if NODE_STARTUP.iter().any(|p| {
        if *p == "main" {
            s == "main"
        } else {
            s.starts_with(p)
        }
    }) {
        return Some(Runtime::NodeStartup);
    }
    const LIBC_STARTUP: &[&str] = &[
        "__libc_start_call_main",
        "__libc_start_main",
        "_start",
        "start_thread",
        "clone3",
        "__clone3",
        "__clone",
    ];
    let libc = file.starts_with("libc.so") || file.starts_with("ld-linux");
    if (libc || s == "_start") && LIBC_STARTUP.iter().any(|p| s.starts_with(p)) {
        return Some(Runtime::LibcStartup);
    }
    None
}

/// The first frame, innermost first, that names the code that asked for
/// the memory: a JS function of the application (not of node's library),
/// or a function of a native addon (`.node`); failing both, the first frame
/// past the allocator that is not runtime machinery.
pub fn first_user_frame(frames: &[Frame]) -> Option<(&Frame, UserKind)> {
    for f in frames {
        if f.kind == FrameKind::Js && !is_node_library_js(f) {
            return Some((f, UserKind::Js));
        }
        if f.kind == FrameKind::Native && module_file(f).ends_with(".node") {
            return Some((f, UserKind::Addon));
        }
    }
    telling_frames(frames)
        .iter()
        .find(|f| f.kind == FrameKind::Native && f.symbol.is_some() && runtime_of(f).is_none())
        .map(|f| (f, UserKind::Native))
}

/// A JS symbol without its kind prefix and V8's tier marker: `JS:*handler`
/// and `LazyCompile:~handler` both become `handler` (with what follows).
pub fn js_name(sym: &str) -> &str {
    let rest = match sym.split_once(':') {
        Some((prefix, rest)) if prefix.chars().all(|c| c.is_ascii_alphabetic()) => rest,
        _ => sym,
    };
    rest.trim_start_matches(['~', '*', '^', '+'])
}

/// A short name for a frame: a JS frame's function (without `JS:` and V8's
/// tier marker) with its script and line; a native frame's symbol.
pub fn short_name(f: &Frame) -> String {
    let name = f.display_name();
    if f.kind != FrameKind::Js {
        return name;
    }
    let body = js_name(&name);
    let (function, place) = match body.split_once(' ') {
        Some((n, p)) => (n, Some(p)),
        None => (body, None),
    };
    let function = if function.is_empty() {
        "(anonymous)"
    } else {
        function
    };
    match place {
        Some(p) => format!("{function} ({p})"),
        None => function.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(symbol: &str, module: &str) -> Frame {
        Frame {
            addr: "0x1".into(),
            symbol: Some(symbol.into()),
            module: Some(module.into()),
            ..Frame::default()
        }
    }

    fn js(symbol: &str, file: &str) -> Frame {
        Frame {
            addr: "0x2".into(),
            symbol: Some(symbol.into()),
            file: Some(file.into()),
            kind: FrameKind::Js,
            ..Frame::default()
        }
    }

    #[test]
    fn the_application_frame_names_the_culprit() {
        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let frames = vec![
            native("calloc", libc),
            native(
                "node::NodeArrayBufferAllocator::Allocate(unsigned long)",
                "/usr/bin/node",
            ),
            native("Builtins_JSBuiltinsConstructStub", "/usr/bin/node"),
            js("JS:^alloc node:buffer:391:30", "node:buffer"),
            js("JS:^cacheResponse /app/cache.js:3:23", "/app/cache.js"),
            native("uv__io_poll", "/usr/bin/node"),
            native("__libc_start_call_main", libc),
        ];
        let (f, kind) = first_user_frame(&frames).unwrap();
        assert_eq!(kind, UserKind::Js);
        assert_eq!(short_name(f), "cacheResponse (/app/cache.js:3:23)");
        assert_eq!(runtime_of(&frames[2]), Some(Runtime::V8));
        assert_eq!(runtime_of(&frames[5]), Some(Runtime::Libuv));
        assert_eq!(runtime_of(&frames[6]), Some(Runtime::LibcStartup));
        assert_eq!(runtime_of(&frames[1]), None);
        assert_eq!(runtime_of(&frames[0]), None, "the allocator is shown");

        let addon = vec![
            native("malloc", libc),
            native("grow_cache", "/app/build/Release/cache.node"),
            js("JS:*handler /app/a.js:1:1", "/app/a.js"),
        ];
        assert_eq!(first_user_frame(&addon).unwrap().1, UserKind::Addon);

        let c = vec![native("malloc", libc), native("site_a", "/tmp/basic")];
        let (f, kind) = first_user_frame(&c).unwrap();
        assert_eq!(
            (f.display_name().as_str(), kind),
            ("site_a", UserKind::Native)
        );
        assert_eq!(
            short_name(&js("JS:~ /a.js:9:29", "/a.js")),
            "(anonymous) (/a.js:9:29)"
        );
    }
}
