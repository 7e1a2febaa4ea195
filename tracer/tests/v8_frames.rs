//! JS frames from V8's own heap, with no node flags, on node 18, 20 and 22:
//! a node process stopped with ptrace, walked in userspace the way the BPF
//! walker walks it (`v8::reference_walk`), its JS frames resolved
//! (`V8Resolver`) and compared with the fixture's source and with V8's
//! perf map.
mod symbols_support;
mod v8_support;

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use offheap::symbols::v8::{JsFrame, JsFrameTag, LineEnds, Tier};
use symbols_support::{field, workdir, Proc};
use v8_support::*;

/// The fixture's JS frames, innermost first, below `fs.readSync`: (name,
/// line, column of the function's start, line, column of the call it makes)
/// in tracer/tests/fixtures/v8/stack.js. V8 places a function at its
/// parameters' opening parenthesis and a call at the callee's name (at
/// `new` for a construction).
const STACK: &[(&str, u32, u32, u32, u32)] = &[
    ("leaf", 14, 14, 17, 6),
    ("cb", 26, 29, 26, 42),
    ("manyLocals", 23, 20, 26, 14),
    ("namedExpr", 29, 33, 29, 46),
    ("run", 32, 6, 32, 19),
    ("Holder", 36, 14, 36, 42),
    ("obj.method", 40, 23, 40, 36),
    ("viaArrow", 42, 18, 42, 29),
    ("top", 44, 13, 44, 26),
    ("", 1, 1, 49, 1),
];

/// Where each node's fs.readSync starts (its lib/fs.js differs).
fn read_sync_line(major: u32) -> (u32, u32) {
    match major {
        18 => (701, 18),
        20 => (708, 18),
        _ => (695, 18),
    }
}

/// Runs stack.js under `node` with `flags` (and stack.js's `args`), stops
/// it in leaf's readSync and returns its resolved JS frames, and what it
/// printed before; the process then finishes normally.
fn stack_frames(
    node: &Node,
    flags: &[&str],
    script: &Path,
    args: &[&str],
) -> (u32, Vec<JsFrame>, Vec<String>) {
    let meta = metadata(&node.bin);
    let mut p = Proc::spawn(
        Command::new(&node.bin)
            .args(flags)
            .arg(script)
            .arg("16")
            .args(args)
            .current_dir(script.parent().unwrap()),
    );
    let pid: u32 = field(&p.line(), "ready").parse().unwrap();
    p.send_bytes(b"x");
    assert_eq!(p.line(), "started");
    // What leaf prints (its stack trace) comes before it blocks.
    let mut printed = Vec::new();
    if !args.is_empty() {
        loop {
            match p.line() {
                l if l == "." => break,
                l => printed.push(l),
            }
        }
    }
    wait_in_syscall(pid, libc::SYS_read as u64);
    let cfg = config_for(&meta, pid, &node.bin);
    let walk = walk_stopped(&cfg, pid);
    let words: Vec<u64> = walk.iter().map(|f| f.word).collect();
    let mut resolver = resolver_for(&meta, pid);
    let frames = resolve_all(&mut resolver, &words);
    // Every SFI was read once; the second pass is all validated cache hits.
    let again = resolve_all(&mut resolver, &words);
    assert_eq!(again, frames);
    assert_eq!(resolver.stats.misses as usize, frames.len());
    assert_eq!(resolver.stats.hits as usize, frames.len());
    assert_eq!(resolver.stats.stale, 0);
    p.send_bytes(b"x");
    assert_eq!(p.line(), "done");
    (pid, frames, printed)
}

#[test]
fn js_names_and_lines_without_node_flags() {
    let dir = workdir("stack");
    let script = fixture(&dir, "stack.js");
    let path = script.to_str().unwrap();
    for node in node_versions() {
        let (_, frames, _) = stack_frames(&node, &[], &script, &[]);
        let v = node.major;
        // Innermost: node's own fs.readSync (JS in node:fs), then ours.
        let rs = &frames[0];
        assert_eq!(rs.function.name, "readSync", "node {v}: {frames:#?}");
        assert_eq!(rs.function.script.as_deref(), Some("node:fs"));
        let (l, c) = read_sync_line(v);
        assert_eq!(
            (rs.function.line, rs.function.column),
            (Some(l), Some(c)),
            "node {v}"
        );
        let ours = &frames[1..=STACK.len()];
        for (f, &(name, line, col, call_line, call_col)) in ours.iter().zip(STACK) {
            let what = format!("node {v}, {name:?}: {f:?}");
            assert_eq!(f.function.name, name, "{what}");
            assert_eq!(f.function.script.as_deref(), Some(path), "{what}");
            assert_eq!(
                (f.function.line, f.function.column),
                (Some(line), Some(col)),
                "{what}"
            );
            // Called once, these run in Ignition; leaf's loop can send it to
            // Sparkplug (node 18 does), whose frame holds no bytecode offset.
            match f.tier {
                Tier::Interpreted => {
                    assert_eq!(
                        (f.call_line, f.call_column),
                        (Some(call_line), Some(call_col)),
                        "{what}"
                    )
                }
                Tier::Baseline if name == "leaf" => assert_eq!(f.call_line, None, "{what}"),
                t => panic!("{what}: tier {t:?}"),
            }
            // V8 has not computed this script's line ends (no stack trace was
            // formatted): they came from its source.
            assert_eq!(
                f.function.line_ends_from,
                Some(LineEnds::FromSource),
                "{what}"
            );
        }
        // Then node's module loader (Module._compile ...).
        assert!(frames[STACK.len() + 1..].iter().all(|f| f
            .function
            .script
            .as_deref()
            .is_some_and(|s| s.starts_with("node:"))));
        let report = ours[0].to_report_frame(0);
        assert_eq!(
            report.symbol,
            Some(format!("JS:{}leaf {path}:14:14", ours[0].tier.marker()))
        );
        assert_eq!(
            (report.file.as_deref(), report.line),
            (Some(path), Some(14))
        );
    }
}

/// The call sites the walk found are V8's own: in a run where leaf first
/// prints `new Error().stack`, every frame outside leaf has the line:column
/// that V8's stack trace gives it (leaf's own is the `new Error` there).
#[test]
fn call_lines_equal_v8s_own_stack_trace() {
    let dir = workdir("trace");
    let script = fixture(&dir, "stack.js");
    let path = script.to_str().unwrap();
    for node in node_versions() {
        let (_, frames, printed) = stack_frames(&node, &[], &script, &["trace"]);
        // `    at top (/x/stack.js:44:26)` or `    at /x/stack.js:49:1`.
        let v8: Vec<(u32, u32)> = printed
            .iter()
            .filter_map(|l| l.trim().strip_prefix("at "))
            .filter_map(|l| l.trim_end_matches(')').rsplit_once(&format!("{path}:")))
            .map(|(_, lc)| {
                let (l, c) = lc.split_once(':').unwrap();
                (l.parse().unwrap(), c.parse().unwrap())
            })
            .collect();
        let ours: Vec<(u32, u32)> = frames
            .iter()
            .filter(|f| f.function.script.as_deref() == Some(path))
            .skip(1)
            .map(|f| (f.call_line.unwrap(), f.call_column.unwrap()))
            .collect();
        assert_eq!(v8.len(), STACK.len(), "node {}: {printed:#?}", node.major);
        assert_eq!(ours, v8[1..], "node {}", node.major);
        // V8 formatted a stack trace: it computed the script's line ends.
        assert!(frames
            .iter()
            .filter(|f| f.function.script.as_deref() == Some(path))
            .all(|f| f.function.line_ends_from == Some(LineEnds::FromScript)));
    }
}

/// `<kind>:<marker><name> <script>:<line>[:<column>]` of a perf map line
/// (node 18 writes no column).
fn perf_entry(line: &str) -> Option<(String, String, u32, Option<u32>)> {
    let name = line.splitn(3, ' ').nth(2)?;
    let (kind, rest) = name.split_once(':')?;
    if !matches!(kind, "JS" | "LazyCompile" | "Function" | "Script") {
        return None;
    }
    let rest = rest.trim_start_matches(['~', '*', '^', '+']);
    let (func, loc) = rest.rsplit_once(' ')?;
    let mut parts = loc.rsplitn(3, ':');
    let (a, b, c) = (parts.next()?, parts.next()?, parts.next());
    match c {
        Some(file) if b.parse::<u32>().is_ok() => {
            Some((func.into(), file.into(), b.parse().ok()?, a.parse().ok()))
        }
        _ => Some((func.into(), b.into(), a.parse().ok()?, None)),
    }
}

#[test]
fn js_names_and_lines_equal_the_perf_map() {
    let dir = workdir("perfmap");
    let script = fixture(&dir, "stack.js");
    let path = script.to_str().unwrap();
    for node in node_versions() {
        let (pid, frames, _) =
            stack_frames(&node, &["--perf-basic-prof-only-functions"], &script, &[]);
        let map_path = format!("/tmp/perf-{pid}.map");
        let map = std::fs::read_to_string(&map_path).unwrap();
        std::fs::remove_file(&map_path).unwrap();
        let entries: Vec<_> = map.lines().filter_map(perf_entry).collect();
        // The report's frame is named as V8 names the same code: for an
        // interpreted function, node 20 and 22 write `JS:~<name>
        // <script>:<line>:<column>` (node 18 writes LazyCompile:~ and no
        // column).
        let names: Vec<&str> = map
            .lines()
            .filter_map(|l| l.splitn(3, ' ').nth(2))
            .collect();
        let mut same_symbol = 0;
        for f in frames
            .iter()
            .filter(|f| f.function.script.as_deref() == Some(path))
        {
            if node.major >= 20 && f.tier == Tier::Interpreted {
                let symbol = f.to_report_frame(0).symbol.unwrap();
                assert!(
                    names.contains(&symbol.as_str()),
                    "node {}: {symbol}",
                    node.major
                );
                same_symbol += 1;
            }
        }
        let mut compared = 0;
        for f in &frames {
            let j = &f.function;
            let ours = j.script.as_deref() == Some(path);
            // Anonymous functions cannot be told apart by name: only the
            // fixture's (its module function, at 1:1) is compared.
            if j.name.is_empty() && !ours {
                continue;
            }
            let same: Vec<_> = entries
                .iter()
                .filter(|(n, s, _, _)| *n == j.name && Some(s.as_str()) == j.script.as_deref())
                .collect();
            // node 22 does not log the functions its code cache compiled
            // (node's loader); every function of the fixture is logged.
            if ours {
                assert!(
                    !same.is_empty(),
                    "node {}: {j:?} not in {map_path}",
                    node.major
                );
            }
            for (_, _, line, col) in same {
                assert_eq!(j.line, Some(*line), "node {}: {j:?}", node.major);
                if col.is_some() {
                    assert_eq!(j.column, *col, "node {}: {j:?}", node.major);
                }
                compared += 1;
            }
        }
        assert!(
            compared >= STACK.len(),
            "node {}: {compared} compared",
            node.major
        );
        eprintln!(
            "node {}: {compared} perf map entries agree; {same_symbol} report symbols are perf map names",
            node.major
        );
        if node.major >= 20 {
            assert!(same_symbol >= STACK.len() - 1, "node {}", node.major);
        }
    }
}

/// Runs hot.js with `flags`, feeds it `CALLS` bytes and stops it in the
/// last call's readSync. Returns the frames and the process's stdout lines.
const CALLS: usize = 100_000;

fn hot_frames(node: &Node, flags: &[&str], script: &Path) -> (Vec<(u64, JsFrame)>, Vec<String>) {
    let meta = metadata(&node.bin);
    let mut p = Proc::spawn(
        Command::new(&node.bin)
            .args(flags)
            .arg(script)
            .arg(CALLS.to_string()),
    );
    let mut stdin = p.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&vec![b'x'; CALLS]).unwrap();
        stdin
    });
    let mut lines = Vec::new();
    let pid = loop {
        let l = p.line();
        if let Some(pid) = l.strip_prefix("ready ") {
            break pid.parse::<u32>().unwrap();
        }
        lines.push(l);
    };
    let _stdin = writer.join().unwrap();
    // The pipe is drained once the last call blocks in read(0).
    wait_in_syscall(pid, libc::SYS_read as u64);
    while fionread(&_stdin) > 0 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    wait_in_syscall(pid, libc::SYS_read as u64);
    let cfg = config_for(&meta, pid, &node.bin);
    let words: Vec<u64> = walk_stopped(&cfg, pid).iter().map(|f| f.word).collect();
    let mut resolver = resolver_for(&meta, pid);
    let frames = words
        .iter()
        .filter_map(|&w| JsFrameTag::decode(w))
        .map(|t| (t.sfi, resolver.resolve(&t).unwrap()))
        .collect();
    p.kill();
    lines.extend(p.stdout_lines());
    (frames, lines)
}

/// Bytes waiting in the pipe behind `fd` (FIONREAD works on either end).
fn fionread(fd: &impl std::os::fd::AsRawFd) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    n
}

#[test]
fn turbofan_function_keeps_its_name() {
    let dir = workdir("hot");
    let script = fixture(&dir, "hot.js");
    let path = script.to_str().unwrap();
    for node in node_versions() {
        let (frames, _) = hot_frames(&node, &[], &script);
        let (_, hot) = frames
            .iter()
            .find(|(_, f)| f.function.name == "hot")
            .unwrap_or_else(|| panic!("node {}: no hot() in {frames:#?}", node.major));
        assert_eq!(hot.tier, Tier::Optimized, "node {}", node.major);
        assert_eq!(hot.function.script.as_deref(), Some(path));
        assert_eq!(
            (hot.function.line, hot.function.column),
            (Some(9), Some(13))
        );
        // Optimized frames hold no bytecode offset.
        assert_eq!(hot.call_line, None);
    }
}

/// The side run the issue asks for: with --trace-opt, V8 says which SFI it
/// optimized with TurboFan; it is the one the walk found in hot's frame.
#[test]
fn turbofan_side_run_with_trace_opt() {
    let dir = workdir("hot-trace");
    let script = fixture(&dir, "hot.js");
    for node in node_versions() {
        let (frames, lines) = hot_frames(&node, &["--trace-opt"], &script);
        let (sfi, hot) = frames
            .iter()
            .find(|(_, f)| f.function.name == "hot")
            .unwrap();
        assert_eq!(hot.tier, Tier::Optimized);
        // `[completed optimizing 0x… <JSFunction hot (sfi = 0x…)> (target TURBOFAN)]`
        let tagged = format!("(sfi = {:#x})", sfi + 1);
        assert!(
            lines.iter().any(|l| l.contains("<JSFunction hot ")
                && l.contains(&tagged)
                && l.contains("TURBOFAN")),
            "node {}: no TurboFan line for {tagged} in {lines:#?}",
            node.major
        );
    }
}

#[test]
fn no_js_frames_in_a_process_without_v8() {
    // `sleep` (no V8): the decoder's config from node 20's metadata, with no
    // builtins and no JIT there, turns no frame into a JS frame.
    let node = node_versions().remove(1);
    let meta = metadata(&node.bin);
    let mut child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_in_syscall(pid, libc::SYS_clock_nanosleep as u64);
    let cfg = offheap::symbols::v8::proc_config(&meta, &[]);
    let walk = walk_stopped(&cfg, pid);
    assert!(walk.iter().all(|f| JsFrameTag::decode(f.word).is_none()));
    child.kill().unwrap();
    child.wait().unwrap();
}
