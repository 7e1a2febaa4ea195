//! What a V8 code name in a perf map says: JS function or V8's own code, and
//! the script file and line of a JS function.
//!
//! V8 (`CodeEventLogger::CodeCreateEvent`, src/logging/log.cc) names JS code
//! `<tag>:<tier><function> <script>:<line>:<column>`, e.g.
//! `JS:*handleRequest /app/app.js:42:20` (node 20), older V8
//! `LazyCompile:~f /a.js:42`. Both the function and the script may contain
//! spaces: `JS:~get foo /srv/dir with space/app.js:1:18` is the getter `get
//! foo` of `/srv/dir with space/app.js`. So the script is found by its start
//! (a path, a `node:`/`file:` URL, or nothing before `:line`), not by the
//! last space.
use crate::report::FrameKind;

/// Tags of JS code (current and older V8), as opposed to builtins, bytecode
/// handlers and stubs, which the perf map lists too.
const JS_TAGS: &[&str] = &[
    "JS:",
    "LazyCompile:",
    "Function:",
    "Script:",
    "Eval:",
    "InterpretedFunction:",
];

/// How a script name starts: absolute paths, the URLs node and V8 use
/// (ESM `file://`, `node:` built-ins, `data:`, `http(s):` loaders, `wasm:`),
/// vm's default `evalmachine.<anonymous>`, and `<anonymous>`-style names. An
/// empty script name (eval) leaves `:line:col` right after the space.
const SCRIPT_STARTS: &[&str] = &[
    "/",
    "node:",
    "file:",
    "data:",
    "http:",
    "https:",
    "wasm:",
    "evalmachine.",
    "<",
    ":",
];

pub fn kind_of(name: &str) -> FrameKind {
    if JS_TAGS.iter().any(|p| name.starts_with(p)) {
        FrameKind::Js
    } else {
        FrameKind::Native
    }
}

/// The script file and line of a JS code name; None for V8's own code and
/// for names without a `:line`.
pub fn location(name: &str) -> (Option<String>, Option<u32>) {
    let Some(body) = JS_TAGS.iter().find_map(|t| name.strip_prefix(t)) else {
        return (None, None);
    };
    let Some(loc) = script_part(body) else {
        return (None, None);
    };
    parse_script_position(loc)
}

/// The `<script>:<line>[:<column>]` part after `<tier><function> `.
fn script_part(body: &str) -> Option<&str> {
    let spaces = body.match_indices(' ').map(|(i, _)| i);
    let mut first = None;
    for i in spaces {
        let rest = &body[i + 1..];
        if SCRIPT_STARTS.iter().any(|s| rest.starts_with(s)) {
            return Some(rest);
        }
        // Getters and setters are named `get foo` / `set foo` (V8's
        // SetFunctionName adds the prefix and a space).
        let function = body[..i].trim_start_matches(['~', '*', '^', '+']);
        if first.is_none() && !matches!(function, "get" | "set") {
            first = Some(rest);
        }
    }
    // A relative script name (a vm.Script filename, say): after the function.
    first
}

fn parse_script_position(loc: &str) -> (Option<String>, Option<u32>) {
    let num = |s: &str| s.parse::<u32>().ok();
    let mut parts = loc.rsplitn(3, ':');
    let last = parts.next().and_then(num);
    let mid = parts.next();
    let head = parts.next();
    match (last, mid.and_then(num), head) {
        // file:line:column
        (Some(_), Some(line), Some(file)) => (nonempty(file), Some(line)),
        // file:line
        (Some(line), _, _) if mid.is_some() => {
            let file = match head {
                Some(h) => format!("{h}:{}", mid.unwrap_or_default()),
                None => mid.unwrap_or_default().to_string(),
            };
            (nonempty(&file), Some(line))
        }
        _ => (None, None),
    }
}

fn nonempty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(name: &str) -> (Option<String>, Option<u32>) {
        location(name)
    }

    fn at(file: &str, line: u32) -> (Option<String>, Option<u32>) {
        (Some(file.to_string()), Some(line))
    }

    /// Names copied from the perf map node v20.20.2 wrote for a script in
    /// `/var/tmp/oh dir with space/app.js` (--perf-basic-prof).
    #[test]
    fn node20_names_in_a_directory_with_spaces() {
        let dir = "/var/tmp/oh dir with space/app.js";
        assert_eq!(loc(&format!("JS:*hot {dir}:3:13")), at(dir, 3));
        assert_eq!(loc(&format!("JS:^hot {dir}:3:13")), at(dir, 3));
        assert_eq!(loc(&format!("JS:~get foo {dir}:1:18")), at(dir, 1));
        assert_eq!(loc(&format!("JS:*get foo {dir}:1:18")), at(dir, 1));
        // The top-level script and arrow functions have no name.
        assert_eq!(loc(&format!("JS:~ {dir}:6:2")), at(dir, 6));
        assert_eq!(loc(&format!("Eval:~ {dir}:1:1")), at(dir, 1));
        assert_eq!(
            loc("JS:~A /var/tmp/oh dir with space/app.js:1:1"),
            at(dir, 1)
        );
        // eval'd code has an empty script name.
        assert_eq!(loc("JS:~evaled :1:16"), (None, Some(1)));
        assert_eq!(
            loc("JS:~prepareMainThreadExecution node:internal/process/pre_execution:52:36"),
            at("node:internal/process/pre_execution", 52)
        );
        assert_eq!(kind_of(&format!("JS:~get foo {dir}:1:18")), FrameKind::Js);
    }

    #[test]
    fn older_v8_tags_and_urls() {
        assert_eq!(
            loc("LazyCompile:~handleRequest /app/app.js:42"),
            at("/app/app.js", 42)
        );
        assert_eq!(loc("LazyCompile:*a.b /x y.js:7:1"), at("/x y.js", 7));
        assert_eq!(
            loc("Function:~ file:///srv/my app/index.mjs:10:3"),
            at("file:///srv/my app/index.mjs", 10)
        );
        assert_eq!(
            loc("JS:~run evalmachine.<anonymous>:1:1"),
            at("evalmachine.<anonymous>", 1)
        );
        // A relative name: the script starts after the function.
        assert_eq!(loc("JS:~f rel.js:5:2"), at("rel.js", 5));
        assert_eq!(loc("JS:~get x rel.js:5:2"), at("rel.js", 5));
    }

    #[test]
    fn v8_own_code_has_no_location() {
        for n in [
            "Builtin:DeoptimizationEntry_Eager",
            "BytecodeHandler:CreateEvalContext.Wide",
            "RegExp:a b:1",
            "Stub:CEntry x:2:3",
        ] {
            assert_eq!(loc(n), (None, None), "{n}");
            assert_eq!(kind_of(n), FrameKind::Native, "{n}");
        }
        assert_eq!(loc("JS:~f"), (None, None));
        assert_eq!(loc("JS:~f /a.js"), (None, None));
        assert_eq!(loc("JS:~f /a.js:x:y"), (None, None));
    }
}
