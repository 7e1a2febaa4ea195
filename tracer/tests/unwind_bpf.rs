//! The unwind tables in the real kernel, without the product's walker: a test
//! BPF object (tests/bpf/unwind_walk.bpf.c, compiled here) walks the stack at
//! a uprobe on malloc of one process with include/unwind.bpf.h alone, over
//! tables that `probes::unwind::UnwindTables` built and loaded; the fixture
//! is issue 12's chain of five functions built without frame pointers.
//!
//! Needs root, BTF, clang-19 and libc6-dbg (for glibc's local symbol names),
//! which `cargo xtask setup` installs; fails (never skips) without them.
use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aya::{
    maps::RingBuf,
    programs::{uprobe::UProbeScope, UProbe},
    EbpfLoader,
};
use offheap::probes::unwind::{UnwindTables, DEFAULT_CAP_BYTES};
use offheap::symbols::Symbolizer;

const WALK_MAX: usize = 32;
const WALK_COMPLETE: i32 = 1;

/// `struct walk_event` of unwind_walk.bpf.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct WalkEvent {
    tgid: u32,
    nr: u32,
    end: i32,
    _pad: u32,
    pcs: [u64; WALK_MAX],
    classes: [u8; WALK_MAX],
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The lock every BPF test of the workspace holds (tests/e2e/common).
fn bpf_lock() -> File {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "BPF tests need root");
    assert!(
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "no kernel BTF: BPF tests cannot run here"
    );
    let f = File::create(std::env::temp_dir().join("offheap-e2e.lock")).unwrap();
    // SAFETY: flock on an fd we own.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    f
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the fixture: libnofp.so at -O2 -fomit-frame-pointer, and a main
/// with frame pointers that links it.
fn build_fixture(dir: &Path) -> PathBuf {
    let fx = workspace().join("tests/fixtures");
    let lib = dir.join("libnofp.so");
    run(Command::new("cc")
        .args(["-O2", "-g", "-fomit-frame-pointer", "-fPIC", "-shared"])
        .arg(fx.join("nofp_lib.c"))
        .arg("-o")
        .arg(&lib));
    let main = dir.join("nofp_main");
    run(Command::new("cc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-Wall", "-Werror"])
        .arg(fx.join("nofp_main.c"))
        .arg(format!("-L{}", dir.display()))
        .arg("-lnofp")
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .arg("-o")
        .arg(&main));
    main
}

pub fn build_walker(dir: &Path) -> PathBuf {
    let obj = dir.join("unwind_walk.bpf.o");
    run(Command::new("clang-19")
        .args(["-target", "bpf", "-g", "-O2", "-Wall", "-Werror"])
        .args(["-D__TARGET_ARCH_x86"])
        .arg(format!(
            "-I{}",
            workspace().join("tracer-ebpf/include").display()
        ))
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg("-c")
        .arg(workspace().join("tracer/tests/bpf/unwind_walk.bpf.c"))
        .arg("-o")
        .arg(&obj));
    obj
}

fn libc_of(pid: u32) -> PathBuf {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so"))
        .map(PathBuf::from)
        .expect("libc mapped")
}

/// Every frame of the chain in order, from malloc (in glibc, a table) through
/// the five functions without frame pointers (tables), main (frame
/// pointers) and glibc's start code, to _start, whose CFI says the stack
/// ends there.
#[test]
fn bpf_unwinds_a_chain_without_frame_pointers_to_the_end_of_the_stack() {
    let _lock = bpf_lock();
    let dir = tempfile::tempdir().unwrap();
    let main = build_fixture(dir.path());
    let obj = build_walker(dir.path());

    let mut child = Command::new(&main)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    let mut ebpf = EbpfLoader::new().load_file(&obj).unwrap();
    let mut tables = UnwindTables::new(&mut ebpf, DEFAULT_CAP_BYTES).unwrap();
    let prefixes = tables.add_process(pid).unwrap();
    // main, libnofp, libc, ld.so: each module with a table.
    assert_eq!(tables.counters.modules_loaded, 4, "{:?}", tables.counters);
    assert_eq!(tables.counters.mappings_full, 0);
    assert_eq!(tables.counters.mapping_entries, prefixes as u64);
    let prog: &mut UProbe = ebpf.program_mut("unwind_walk").unwrap().try_into().unwrap();
    prog.load().unwrap();
    let scope = UProbeScope::OneProcess(std::num::NonZeroU32::new(pid).unwrap());
    prog.attach("malloc", libc_of(pid), scope).unwrap();
    let mut events = RingBuf::try_from(ebpf.take_map("walk_events").unwrap()).unwrap();

    let mut symbols = Symbolizer::new();
    symbols.capture(pid).unwrap();
    let stdin = child.stdin.as_mut().unwrap();
    writeln!(stdin, "go").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("done"), "{line}");

    // The fixture's malloc from nofp_chain5: the event whose frame 1 is there.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut walks: Vec<(Vec<String>, WalkEvent)> = Vec::new();
    let found = loop {
        while let Some(item) = events.next() {
            assert_eq!(item.len(), std::mem::size_of::<WalkEvent>());
            // SAFETY: the ring buffer item is one struct walk_event.
            let ev: WalkEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let names: Vec<String> = ev.pcs[..ev.nr as usize]
                .iter()
                .enumerate()
                .map(|(i, &pc)| {
                    // A return address points after its call: name the call.
                    let at = if i == 0 { pc } else { pc - 1 };
                    symbols
                        .frames(pid, at)
                        .last()
                        .and_then(|f| f.symbol.clone())
                        .unwrap_or_else(|| format!("{pc:#x}"))
                })
                .collect();
            walks.push((names, ev));
        }
        if let Some(w) = walks
            .iter()
            .find(|(n, _)| n.get(1).map(String::as_str) == Some("nofp_chain5"))
        {
            break w.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no walk from nofp_chain5: {:?}",
            walks.iter().map(|w| &w.0).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(child.stdin.take());
    let _ = child.wait();

    let (names, ev) = found;
    assert!(names[0].contains("malloc"), "{names:?}");
    assert_eq!(
        names[1..],
        [
            "nofp_chain5",
            "nofp_chain4",
            "nofp_chain3",
            "nofp_chain2",
            "nofp_chain1",
            "main",
            "__libc_start_call_main",
            "__libc_start_main",
            "_start",
        ],
        "{names:?}"
    );
    assert_eq!(ev.end, WALK_COMPLETE, "{names:?}");
    // Every frame came from a table (class 1) but main's, which is the
    // frame-pointer step (class 0): main was built with frame pointers.
    let classes: Vec<u8> = ev.classes[..ev.nr as usize].to_vec();
    assert_eq!(classes, [1, 1, 1, 1, 1, 1, 0, 1, 1, 1], "{names:?}");
    tables.remove_process(pid);
    assert_eq!(tables.counters.mapping_entries, 0);
}
