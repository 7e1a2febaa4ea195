//! JS frames from V8's perf map, in the host pid namespace and in a new one.
mod symbols_support;

use offheap::{
    report::{build::Symbolize, FrameKind},
    symbols::{Symbolizer, JIT_SYMBOL},
};
use std::{path::Path, process::Command};
use symbols_support::*;

/// `offheapProbeTarget` is on line 2, column 28 (V8 names the position of
/// the function's opening parenthesis), and is optimized before "ready".
const SCRIPT: &str = r#"'use strict';
function offheapProbeTarget(n) { let s = 0; for (let i = 0; i < n; i++) s += i * 2; return s; }
%PrepareFunctionForOptimization(offheapProbeTarget);
offheapProbeTarget(10);
offheapProbeTarget(10);
%OptimizeFunctionOnNextCall(offheapProbeTarget);
offheapProbeTarget(10);
console.log('ready ' + process.pid);
setInterval(() => {}, 1000);
"#;

/// The start address and full V8 name of the optimized code of
/// offheapProbeTarget, read from the perf map as the process wrote it.
fn optimized_entry(host_pid: u32, ns_pid: u32) -> (u64, String) {
    let path = format!("/proc/{host_pid}/root/tmp/perf-{ns_pid}.map");
    // V8 writes the map line-buffered; the entry exists once the script ran.
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let line = text
        .lines()
        .find(|l| l.contains(" JS:*offheapProbeTarget "))
        .unwrap_or_else(|| panic!("no optimized offheapProbeTarget in {path}"));
    let mut it = line.splitn(3, ' ');
    let start = hex(it.next().unwrap());
    it.next();
    (start, it.next().unwrap().to_string())
}

fn check_js_frame(host_pid: u32, ns_pid: u32, script: &Path) {
    let (start, name) = optimized_entry(host_pid, ns_pid);
    assert_eq!(
        name,
        format!("JS:*offheapProbeTarget {}:2:28", script.display())
    );
    let mut sym = Symbolizer::new();
    sym.capture(host_pid).unwrap();
    let frames = sym.symbolize(host_pid, start + 0x10);
    assert_eq!(frames.len(), 1, "{frames:?}");
    let f = &frames[0];
    assert_eq!(f.kind, FrameKind::Js);
    assert_eq!(f.symbol.as_deref(), Some(name.as_str()));
    assert_eq!(f.file.as_deref(), Some(script.to_str().unwrap()));
    assert_eq!(f.line, Some(2));
    assert_eq!(f.module, Some(format!("/tmp/perf-{ns_pid}.map")));
    assert!(sym.take_warnings().is_empty());
}

/// node with a perf map on SCRIPT written in `dir`, its JS frame checked.
fn js_frame_of_script_in(dir: &Path) {
    let script = dir.join("app.js");
    std::fs::write(&script, SCRIPT).unwrap();
    let mut p = Proc::spawn(
        Command::new("node")
            .args(["--perf-basic-prof", "--allow-natives-syntax"])
            .arg(&script)
            // --perf-basic-prof also writes isolate-*-v8.log into the cwd.
            .current_dir(dir),
    );
    let pid: u32 = field(&p.line(), "ready").parse().unwrap();
    assert_eq!(pid, p.pid());
    check_js_frame(pid, pid, &script);
    p.kill();
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
}

#[test]
fn js_function_name_from_perf_map() {
    js_frame_of_script_in(&workdir("perfmap"));
}

#[test]
fn js_function_name_from_perf_map_in_a_pid_and_mount_namespace() {
    // Not under /tmp (where a checkout may live): the namespace mounts its
    // own /tmp over it, which would hide the script.
    let dir = tempfile_dir_outside_tmp("perfmap-ns");
    let script = dir.join("app.js");
    std::fs::write(&script, SCRIPT).unwrap();
    // A private /tmp: the perf map exists only inside the namespace, so it can
    // only be found through NSpid and /proc/PID/root.
    let inner = format!(
        "mount -t tmpfs tmpfs /tmp && exec node --perf-basic-prof --allow-natives-syntax {}",
        script.display()
    );
    let mut p = Proc::spawn(
        Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "sh",
                "-c",
            ])
            .arg(inner)
            .current_dir(&dir),
    );
    let ns_pid: u32 = field(&p.line(), "ready").parse().unwrap();
    assert_eq!(ns_pid, 1, "node is pid 1 of its namespace");
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", p.pid())).unwrap();
    let host_pid: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    assert_ne!(host_pid, ns_pid);
    check_js_frame(host_pid, ns_pid, &script);
    // SAFETY: plain kill(2) of the node process this test started.
    unsafe { libc::kill(host_pid as i32, libc::SIGKILL) };
    p.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_perf_map_jit_code_is_jit_never_a_native_symbol() {
    let mut p = Proc::spawn(Command::new("node").args(["-e", SCRIPT, "--allow-natives-syntax"]));
    let pid: u32 = field(&p.line(), "ready").parse().unwrap();
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map")); // stale, from a reused pid
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    // V8's code space: anonymous and executable.
    let anon_exec = maps
        .lines()
        .find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 5 && f[1].contains('x')
        })
        .expect("node has anonymous executable memory (V8 code space)");
    let start = hex(anon_exec.split('-').next().unwrap());
    let mut sym = Symbolizer::new();
    sym.capture(pid).unwrap();
    let f = &sym.symbolize(pid, start + 0x40)[0];
    assert_eq!(f.kind, FrameKind::Jit);
    assert_eq!(f.symbol.as_deref(), Some(JIT_SYMBOL));
    assert_eq!((f.module.as_ref(), f.file.as_ref()), (None, None));
    assert_eq!(
        sym.take_warnings(),
        vec![format!(
            "pid {pid}: no perf map /tmp/perf-{pid}.map found, JS frames show as [JIT]; run node with --perf-basic-prof"
        )]
    );
    p.kill();
}

/// A process with anonymous executable memory and a hand-written perf map.
const JIT_PROG: &str = r#"#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
int main(void) {
    void *code = mmap(NULL, 1 << 16, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("code %p\n", code);
    fflush(stdout);
    pause();
    return 0;
}
"#;

#[test]
fn malformed_and_truncated_perf_map_warns_and_keeps_good_lines() {
    let dir = workdir("perfmap-bad");
    let exe = dir.join("jit");
    cc(&dir, "jit", JIT_PROG, &exe, &["-O0"]);
    let mut p = Proc::spawn(&mut Command::new(&exe));
    let code = hex(&field(&p.line(), "code"));
    let pid = p.pid();
    let map = format!("/tmp/perf-{pid}.map");
    let mut text = Vec::new();
    text.extend_from_slice(b"this is not a perf map line\n");
    text.extend_from_slice(b"\xff\xfe\xfd binary junk\n");
    text.extend_from_slice(format!("{:x} 100 JS:~fakeHandler /app/x.js:7:3\n", code).as_bytes());
    text.extend_from_slice(b"12345\n");
    let cut = format!("{:x} 100 JS:~cutShort /app/x.", code + 0x1000);
    text.extend_from_slice(cut.as_bytes());
    std::fs::write(&map, &text).unwrap();

    let mut sym = Symbolizer::new();
    sym.capture(pid).unwrap();
    let f = &sym.symbolize(pid, code + 0x10)[0];
    assert_eq!(f.symbol.as_deref(), Some("JS:~fakeHandler /app/x.js:7:3"));
    assert_eq!(
        (f.file.as_deref(), f.line, f.kind),
        (Some("/app/x.js"), Some(7), FrameKind::Js)
    );
    // In the truncated line's range: unnamed JIT, not a guess.
    let g = &sym.symbolize(pid, code + 0x1010)[0];
    assert_eq!(
        (g.kind, g.symbol.as_deref()),
        (FrameKind::Jit, Some(JIT_SYMBOL))
    );
    let w = sym.take_warnings();
    assert_eq!(
        w,
        vec![
            format!(
                "perf map {map} truncated: last line incomplete ({} bytes ignored)",
                cut.len()
            ),
            format!("perf map {map} malformed: 3 lines skipped"),
        ]
    );
    p.kill();
    std::fs::remove_file(&map).unwrap();
}

/// A fresh directory under /var/tmp, which a tmpfs mounted on /tmp does not hide.
fn tempfile_dir_outside_tmp(name: &str) -> std::path::PathBuf {
    let dir = Path::new("/var/tmp").join(format!("offheap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The JIT-like C program, built in a directory uid 65534 can read.
fn jit_prog(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile_dir_outside_tmp(name);
    let exe = dir.join("jit");
    cc(&dir, "jit", JIT_PROG, &exe, &["-O0"]);
    (dir, exe)
}

#[test]
fn a_program_that_is_not_node_gets_no_perf_map_warning() {
    let (dir, exe) = jit_prog("perfmap-notnode");
    let mut p = Proc::spawn(&mut Command::new(&exe));
    let code = hex(&field(&p.line(), "code"));
    let pid = p.pid();
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map")); // stale, from a reused pid
    let mut sym = Symbolizer::new();
    sym.capture(pid).unwrap();
    let f = &sym.symbolize(pid, code + 0x10)[0];
    assert_eq!(
        (f.kind, f.symbol.as_deref()),
        (FrameKind::Jit, Some(JIT_SYMBOL))
    );
    assert_eq!(sym.take_warnings(), Vec::<String>::new());
    p.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A root-only file (mode 0600) written as a perf map that names every
/// address `secret`: if offheap read it, every JIT frame would carry it.
fn root_only_secret(dir: &Path, secret: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let sdir = dir.join("root-only");
    std::fs::create_dir(&sdir).unwrap();
    std::fs::set_permissions(&sdir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let f = sdir.join("secret");
    std::fs::write(&f, format!("0 ffffffffffff {secret}\n")).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    f
}

/// Runs the JIT program (through `wrap`, e.g. setpriv), lets `plant` make
/// its perf map at the given path, and returns the one warning symbolizing
/// a JIT address gives: the address must stay unnamed.
fn refused_perf_map(name: &str, wrap: &[&str], plant: impl FnOnce(&str)) -> (u32, String, String) {
    let (dir, exe) = jit_prog(name);
    let mut cmd = Command::new(wrap.first().copied().unwrap_or(exe.to_str().unwrap()));
    if !wrap.is_empty() {
        cmd.args(&wrap[1..]).arg(&exe);
    }
    let mut p = Proc::spawn(&mut cmd);
    let code = hex(&field(&p.line(), "code"));
    let pid = p.pid();
    let map = format!("/tmp/perf-{pid}.map");
    let _ = std::fs::remove_file(&map);
    plant(&map);
    let mut sym = Symbolizer::new();
    sym.capture(pid).unwrap();
    let f = &sym.symbolize(pid, code + 0x10)[0];
    assert_eq!(
        (f.kind, f.symbol.as_deref()),
        (FrameKind::Jit, Some(JIT_SYMBOL))
    );
    let w = sym.take_warnings();
    p.kill();
    std::fs::remove_file(&map).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(w.len(), 1, "{w:?}");
    (pid, map, w[0].clone())
}

#[test]
fn a_perf_map_symlinked_to_a_root_only_file_is_refused() {
    let secret_dir = tempfile_dir_outside_tmp("perfmap-secret");
    let secret = format!("HOST-SECRET-{}", std::process::id());
    let target = root_only_secret(&secret_dir, &secret);
    // The traced process runs as nobody, as a container's would.
    let setpriv = [
        "setpriv",
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
    ];
    let (pid, map, w) = refused_perf_map("perfmap-symlink", &setpriv, |map| {
        std::os::unix::fs::symlink(&target, map).unwrap()
    });
    assert_eq!(
        w,
        format!(
            "perf map {map} of pid {pid} refused: owned by uid 0, not by the process (uid 65534)"
        )
    );
    let _ = std::fs::remove_dir_all(&secret_dir);
}

#[test]
fn a_perf_map_that_is_a_fifo_is_refused_without_blocking() {
    let (pid, map, w) = refused_perf_map("perfmap-fifo", &[], |map| {
        let c = std::ffi::CString::new(map).unwrap();
        // SAFETY: mkfifo(3) with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    });
    assert_eq!(
        w,
        format!("perf map {map} of pid {pid} refused: {map} inside /proc/{pid}/root is not a regular file")
    );
}

/// V8 names a JS function `JS:*f <script>:<line>:<column>`, and the script's
/// path may contain spaces: the frame's file is the whole path.
#[test]
fn a_script_in_a_directory_with_spaces_keeps_its_whole_path() {
    let dir = tempfile_dir_outside_tmp("perfmap dir with space");
    js_frame_of_script_in(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}
