//! Native symbolization of real processes: a C program compiled here with -g.
mod symbols_support;

use offheap::{
    report::{build::Symbolize, FrameKind},
    symbols::Symbolizer,
};
use std::process::Command;
use symbols_support::*;

/// `leak_fn` is defined on line 5 and `other_fn` on line 8 (asserted below).
const PROG: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

__attribute__((noinline)) void *leak_fn(size_t n) {
    return malloc(n);
}
__attribute__((noinline)) int other_fn(int x) {
    return x * 3 + 1;
}
int main(void) {
    printf("leak_fn %p\nother_fn %p\nmalloc %p\n", (void *)&leak_fn, (void *)&other_fn,
           (void *)&malloc);
    fflush(stdout);
    leak_fn(100);
    pause();
    return other_fn(1);
}
"#;

/// Same shape, other names: what the file is replaced with.
const REPLACEMENT: &str = r#"#include <unistd.h>
__attribute__((noinline)) int replaced_fn(int x) { return x + 1; }
int main(void) { pause(); return replaced_fn(0); }
"#;

fn start(dir: &std::path::Path, exe: &std::path::Path) -> (Proc, u64, u64) {
    let _ = dir;
    let mut p = Proc::spawn(&mut Command::new(exe));
    let leak = hex(&field(&p.line(), "leak_fn"));
    let other = hex(&field(&p.line(), "other_fn"));
    let _malloc = p.line();
    (p, leak, other)
}

fn check_native(pie: bool) {
    let dir = workdir(if pie { "native-pie" } else { "native-nopie" });
    let exe = dir.join("prog");
    let pie_flag = if pie { "-pie" } else { "-no-pie" };
    let src = cc(
        &dir,
        "prog",
        PROG,
        &exe,
        &["-g", "-O0", "-fno-omit-frame-pointer", pie_flag],
    );
    let (p, leak, other) = start(&dir, &exe);

    let mut sym = Symbolizer::new();
    sym.capture(p.pid()).unwrap();
    // Symbolize an address inside the function, as a return address would be.
    let frames = sym.symbolize(p.pid(), leak);
    assert_eq!(frames.len(), 1, "{frames:?}");
    let f = &frames[0];
    assert_eq!(f.symbol.as_deref(), Some("leak_fn"));
    assert_eq!(f.module.as_deref(), Some(exe.to_str().unwrap()));
    assert_eq!(f.file.as_deref(), Some(src.to_str().unwrap()));
    assert_eq!(f.line, Some(5));
    assert_eq!(f.kind, FrameKind::Native);
    assert_eq!(f.addr, format!("{leak:#x}"));

    let f = &sym.symbolize(p.pid(), other)[0];
    assert_eq!((f.symbol.as_deref(), f.line), (Some("other_fn"), Some(8)));
    assert!(sym.take_warnings().is_empty());
}

#[test]
fn pie_program_function_name_file_and_line() {
    check_native(true);
}

#[test]
fn non_pie_program_function_name_file_and_line() {
    check_native(false);
}

#[test]
fn libc_malloc_from_dynsym() {
    let dir = workdir("libc");
    let exe = dir.join("prog");
    cc(&dir, "prog", PROG, &exe, &["-g", "-O0"]);
    let mut p = Proc::spawn(&mut Command::new(&exe));
    p.line();
    p.line();
    let malloc = hex(&field(&p.line(), "malloc"));
    let mut sym = Symbolizer::new();
    sym.capture(p.pid()).unwrap();
    let f = &sym.symbolize(p.pid(), malloc + 1)[0];
    assert_eq!(f.symbol.as_deref(), Some("malloc"), "{f:?}");
    let module = f.module.as_deref().unwrap();
    assert!(
        module.starts_with("/") && module.contains("/libc.so.6"),
        "{module}"
    );
}

#[test]
fn deleted_then_replaced_binary_and_dead_process_still_symbolize() {
    let dir = workdir("replaced");
    let exe = dir.join("prog");
    cc(&dir, "prog", PROG, &exe, &["-g", "-O0"]);
    let (mut p, leak, other) = start(&dir, &exe);
    let mut sym = Symbolizer::new();
    sym.capture(p.pid()).unwrap();

    // Replace the binary on disk with a different program at the same path.
    std::fs::remove_file(&exe).unwrap();
    cc(&dir, "replacement", REPLACEMENT, &exe, &["-g", "-O0"]);
    let f = &sym.symbolize(p.pid(), leak)[0];
    assert_eq!((f.symbol.as_deref(), f.line), (Some("leak_fn"), Some(5)));
    assert_eq!(f.module.as_deref(), Some(exe.to_str().unwrap()));

    // A capture made after the replacement must read the mapped (deleted)
    // inode through /proc/PID/map_files, not the new file at the same path.
    let mut late = Symbolizer::new();
    late.capture(p.pid()).unwrap();
    let f = &late.symbolize(p.pid(), leak)[0];
    assert_eq!((f.symbol.as_deref(), f.line), (Some("leak_fn"), Some(5)));
    assert!(late.take_warnings().is_empty());

    // And after the process is gone, from what the capture kept open.
    p.kill();
    assert!(!std::path::Path::new(&format!("/proc/{}", p.pid())).exists());
    let f = &sym.symbolize(p.pid(), other)[0];
    assert_eq!((f.symbol.as_deref(), f.line), (Some("other_fn"), Some(8)));
}

#[test]
fn dead_process_without_capture_gives_addresses_and_a_warning() {
    let dir = workdir("dead");
    let exe = dir.join("prog");
    cc(&dir, "prog", PROG, &exe, &["-g", "-O0"]);
    let (mut p, leak, _) = start(&dir, &exe);
    let pid = p.pid();
    p.kill();
    let mut sym = Symbolizer::new();
    let frames = sym.symbolize(pid, leak);
    assert_eq!(frames.len(), 1);
    assert_eq!(
        (frames[0].symbol.as_ref(), frames[0].module.as_ref()),
        (None, None)
    );
    let w = sym.take_warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with(&format!("pid {pid}: no memory map captured")),
        "{w:?}"
    );
}

#[test]
fn modules_are_shared_between_processes() {
    let dir = workdir("shared");
    let exe = dir.join("prog");
    cc(&dir, "prog", PROG, &exe, &["-g", "-O0"]);
    let (a, leak_a, _) = start(&dir, &exe);
    let (b, leak_b, _) = start(&dir, &exe);
    let mut sym = Symbolizer::new();
    sym.capture(a.pid()).unwrap();
    let n = sym.cached_modules();
    sym.capture(b.pid()).unwrap();
    assert_eq!(sym.cached_modules(), n, "second process parsed nothing new");
    assert_eq!(
        sym.symbolize(a.pid(), leak_a)[0].symbol.as_deref(),
        Some("leak_fn")
    );
    assert_eq!(
        sym.symbolize(b.pid(), leak_b)[0].symbol.as_deref(),
        Some("leak_fn")
    );
    sym.forget(a.pid());
    assert!(!sym.is_captured(a.pid()));
    sym.prune();
    assert_eq!(sym.cached_modules(), n, "b still maps every module");
    sym.forget(b.pid());
    sym.prune();
    assert_eq!(sym.cached_modules(), 0);
}

/// `inner_helper` (always inlined) calls `report` on line 9; `outer_fn`
/// calls `inner_helper` on line 13.
const INLINED: &str = r#"#include <stdio.h>
#include <unistd.h>

__attribute__((noinline)) void report(void) {
    printf("ret %p\n", __builtin_return_address(0));
    fflush(stdout);
}
static inline __attribute__((always_inline)) void inner_helper(void) {
    report();
    __asm__ volatile("" ::: "memory");
}
__attribute__((noinline)) void outer_fn(void) {
    inner_helper();
    __asm__ volatile("" ::: "memory");
}
int main(void) {
    outer_fn();
    pause();
    return 0;
}
"#;

#[test]
fn inlined_frames_innermost_first() {
    let dir = workdir("inlined");
    let exe = dir.join("inl");
    let src = cc(&dir, "inl", INLINED, &exe, &["-g", "-O2"]);
    let mut p = Proc::spawn(&mut Command::new(&exe));
    let ret = hex(&field(&p.line(), "ret"));
    let mut sym = Symbolizer::new();
    sym.capture(p.pid()).unwrap();
    // A return address points after the call: ret-1 is inside the call instruction.
    let frames = sym.symbolize(p.pid(), ret - 1);
    let got: Vec<(Option<&str>, Option<u32>)> = frames
        .iter()
        .map(|f| (f.symbol.as_deref(), f.line))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("inner_helper"), Some(9)),
            (Some("outer_fn"), Some(13))
        ]
    );
    assert!(frames
        .iter()
        .all(|f| f.file.as_deref() == Some(src.to_str().unwrap())));
    assert!(frames.iter().all(|f| f.addr == format!("{:#x}", ret - 1)));
}

fn build_id_of(exe: &std::path::Path) -> String {
    let out = Command::new("readelf").arg("-n").arg(exe).output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("cc emits a GNU build-id")
        .to_string()
}

#[test]
fn stripped_binary_uses_debug_file_found_by_build_id_in_the_process_root() {
    let dir = workdir("debuglink");
    let exe = dir.join("prog");
    let src = cc(&dir, "prog", PROG, &exe, &["-g", "-O0", "-Wl,--build-id"]);
    let debug = dir.join("prog.debug");
    for args in [
        vec![
            "--only-keep-debug",
            exe.to_str().unwrap(),
            debug.to_str().unwrap(),
        ],
        vec!["--strip-all", exe.to_str().unwrap()],
    ] {
        assert!(Command::new("objcopy")
            .args(&args)
            .status()
            .unwrap()
            .success());
    }
    let id = build_id_of(&exe);
    let (first, rest) = id.split_at(2);
    let host_copy = format!("/usr/lib/debug/.build-id/{first}/{rest}.debug");
    assert!(!std::path::Path::new(&host_copy).exists());

    // Without the debug file: no .symtab, leak_fn is not in .dynsym.
    let (p, leak, _) = start(&dir, &exe);
    let mut sym = Symbolizer::new();
    sym.capture(p.pid()).unwrap();
    assert_eq!(sym.symbolize(p.pid(), leak)[0].symbol, None);
    drop(p);

    // The debug file exists only in the process's private mount namespace,
    // as in a container: found through /proc/PID/root.
    let script = format!(
        "mount -t tmpfs tmpfs /usr/lib/debug && mkdir -p /usr/lib/debug/.build-id/{first} && \
         cp {} {host_copy} && exec {}",
        debug.display(),
        exe.display()
    );
    let mut p = Proc::spawn(Command::new("unshare").args(["--mount", "sh", "-c", &script]));
    let leak = hex(&field(&p.line(), "leak_fn"));
    let mut sym = Symbolizer::new();
    sym.capture(p.pid()).unwrap();
    let f = &sym.symbolize(p.pid(), leak)[0];
    assert_eq!(f.symbol.as_deref(), Some("leak_fn"));
    assert_eq!(
        (f.file.as_deref(), f.line),
        (Some(src.to_str().unwrap()), Some(5))
    );
    assert_eq!(f.module.as_deref(), Some(exe.to_str().unwrap()));
}

const RUST_PROBE_LINE: u32 = line!() + 2;
#[inline(never)]
fn rust_probe_target(x: u64) -> u64 {
    std::hint::black_box(x) * 3
}

#[test]
fn rust_function_of_this_test_process_is_demangled() {
    let addr = rust_probe_target as *const () as usize as u64;
    assert_eq!(rust_probe_target(1), 3);
    let pid = std::process::id();
    let mut sym = Symbolizer::new();
    sym.capture(pid).unwrap();
    let frames = sym.symbolize(pid, addr);
    assert_eq!(frames.len(), 1, "{frames:?}");
    let f = &frames[0];
    assert_eq!(
        f.symbol.as_deref(),
        Some("symbols_native::rust_probe_target")
    );
    assert_eq!(f.line, Some(RUST_PROBE_LINE));
    assert!(
        f.file
            .as_deref()
            .unwrap()
            .ends_with("tests/symbols_native.rs"),
        "{f:?}"
    );
    let exe = std::env::current_exe().unwrap();
    assert_eq!(f.module.as_deref(), Some(exe.to_str().unwrap()));
}
