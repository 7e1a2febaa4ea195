//! Every error type with a cause, walked as main prints it (`{:#}`) and as
//! `one_line` does: a message must not carry a text that a later cause
//! prints again. thiserror makes a field named `source`, or marked
//! `#[source]`/`#[from]`, the `source()`; a `{source}` (or `{0}`) in the
//! same message printed it twice ('reading /x: No such file or directory
//! (os error 2): No such file or directory (os error 2)').
use std::{io, path::PathBuf};

use super::one_line;
use crate::{
    accounting::{arenas::ArenaError, malloc::ReadError, resident, traffic::TrafficError},
    core::CoreError,
    daemon::{metrics::MetricsError, oom::OomDirError, targets::SelectorError},
    probes::{allocator::AllocatorError, multi::MultiError, preflight, unwind::UnwindError},
    proc::{cgroup::CgroupError, root::InRootError, MapsError},
    report::{chart::ChartError, write::WriteError, RenderError},
    symbols::{v8, SymbolError},
};

fn io(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

fn syscall(call: &'static str) -> aya::sys::SyscallError {
    aya::sys::SyscallError {
        call,
        io_error: io(libc::EPERM),
    }
}

fn program() -> aya::programs::ProgramError {
    aya::programs::ProgramError::SyscallError(syscall("bpf_prog_load"))
}

fn map() -> aya::maps::MapError {
    aya::maps::MapError::SyscallError(syscall("bpf_map_lookup_elem"))
}

fn heap() -> v8::HeapError {
    v8::HeapError::Read {
        addr: 0x1000,
        len: 8,
        source: io(libc::EFAULT),
    }
}

fn symbol_io() -> SymbolError {
    SymbolError::Io {
        path: p("/usr/lib/libc.so.6"),
        source: io(libc::ENOENT),
    }
}

fn not_elf() -> object::Error {
    object::File::parse(&b"#!/bin/sh\n"[..]).unwrap_err()
}

/// One sample of each variant that has a cause, wrapped as callers wrap it.
fn samples() -> Vec<Box<dyn std::error::Error + Send + Sync>> {
    vec![
        Box::new(MapsError {
            pid: 7,
            source: io(libc::ESRCH),
        }),
        Box::new(InRootError::Root {
            root: p("/proc/7/root"),
            source: io(libc::ENOENT),
        }),
        Box::new(InRootError::Open {
            root: p("/proc/7/root"),
            path: p("/tmp/perf-7.map"),
            source: io(libc::ELOOP),
        }),
        Box::new(CgroupError::Read {
            path: p("/proc/7/cgroup"),
            source: io(libc::ENOENT),
        }),
        Box::new(CgroupError::Setns(io(libc::EPERM))),
        Box::new(SymbolError::NoProcess {
            pid: 7,
            source: io(libc::ESRCH),
        }),
        Box::new(symbol_io()),
        Box::new(heap()),
        Box::new(v8::ResolveError::Heap {
            sfi: 0x2000,
            source: heap(),
        }),
        Box::new(v8::MetadataError::Elf(not_elf())),
        Box::new(AllocatorError::Io {
            path: p("/proc/7/map_files/7f0000-7f1000"),
            source: io(libc::ENOENT),
        }),
        Box::new(AllocatorError::Maps(MapsError {
            pid: 7,
            source: io(libc::ESRCH),
        })),
        Box::new(preflight::PreflightError::Tracefs(io(libc::EPERM))),
        Box::new(UnwindError::Io {
            path: p("/usr/bin/node"),
            source: io(libc::ENOENT),
        }),
        Box::new(UnwindError::Elf {
            path: p("/usr/bin/node"),
            source: not_elf(),
        }),
        Box::new(UnwindError::Maps {
            pid: 7,
            source: Box::new(symbol_io()),
        }),
        Box::new(UnwindError::Map {
            what: "unwind_rows",
            source: map(),
        }),
        Box::new(UnwindError::Mmap(io(libc::ENOMEM))),
        Box::new(crate::probes::ProbeError::Program {
            name: "malloc_enter",
            source: program(),
        }),
        Box::new(crate::probes::ProbeError::Attach {
            what: "uprobe malloc".into(),
            source: program(),
        }),
        Box::new(crate::probes::ProbeError::Map {
            name: "targets",
            source: map(),
        }),
        Box::new(crate::probes::ProbeError::Load(aya::EbpfError::FileError {
            path: p("/x.o"),
            error: io(libc::ENOENT),
        })),
        Box::new(crate::probes::ProbeError::Btf(aya::BtfError::FileError {
            path: p("/sys/kernel/btf/vmlinux"),
            error: io(libc::ENOENT),
        })),
        Box::new(crate::probes::ProbeError::Unwind(UnwindError::Mmap(io(
            libc::ENOMEM,
        )))),
        Box::new(MultiError::Syscall {
            what: "loading BPF program malloc_enter".into(),
            source: io(libc::EACCES),
            log: " (verifier: R1 invalid mem access)".into(),
        }),
        Box::new(ReadError::Map("stacks", map())),
        Box::new(TrafficError::Map(map())),
        Box::new(ArenaError::Batch(io(libc::EINVAL))),
        Box::new(resident::ResidentError::Map {
            name: "fault_pages",
            source: map(),
        }),
        Box::new(resident::ProcError::Read {
            path: "/proc/7/pagemap".into(),
            source: io(libc::EPERM),
        }),
        Box::new(resident::ResidentError::Maps(MapsError {
            pid: 7,
            source: io(libc::ESRCH),
        })),
        Box::new(CoreError::Signals(io(libc::EINVAL))),
        Box::new(CoreError::Drainer(io(libc::EAGAIN))),
        Box::new(CoreError::Probe(crate::probes::ProbeError::Program {
            name: "malloc_enter",
            source: program(),
        })),
        Box::new(MetricsError::Prometheus(prometheus::Error::Msg(
            "duplicate metrics collector registration attempted".into(),
        ))),
        Box::new(OomDirError::Create {
            path: p("/var/lib/offheap"),
            source: io(libc::EROFS),
        }),
        Box::new(OomDirError::NotWritable {
            path: p("/var/lib/offheap"),
            source: io(libc::EROFS),
        }),
        Box::new(SelectorError::Cgroup {
            path: p("/sys/fs/cgroup/x"),
            source: io(libc::ENOENT),
        }),
        Box::new(WriteError::Io {
            path: p("/out/r.json"),
            source: io(libc::ENOSPC),
        }),
        Box::new(ChartError::Draw(
            plotters::drawing::DrawingAreaErrorKind::LayoutError,
        )),
        Box::new(RenderError::Chart(ChartError::Draw(
            plotters::drawing::DrawingAreaErrorKind::LayoutError,
        ))),
        Box::new(RenderError::Json(
            serde_json::from_str::<u8>("x").unwrap_err(),
        )),
        Box::new(RenderError::Io {
            format: "pprof",
            source: io(libc::ENOMEM),
        }),
        Box::new(MetricsError::Listen {
            addr: "0.0.0.0:9464".into(),
            source: Box::new(io(libc::EADDRINUSE)),
        }),
        Box::new(MetricsError::Thread(io(libc::EAGAIN))),
        Box::new(crate::core::spawn::SpawnError::Os {
            call: "fork",
            source: io(libc::EAGAIN),
        }),
        Box::new(crate::core::spawn::SpawnError::Exec {
            cmd: "/tmp/x".into(),
            source: io(libc::ENOEXEC),
        }),
        Box::new(crate::commands::report::ReportFileError::Open {
            path: p("/r.json"),
            source: io(libc::ENOENT),
        }),
    ]
}

/// The messages of `e` and of each cause, outermost first.
fn chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push(c.to_string());
        cause = c.source();
    }
    out
}

#[test]
fn no_message_repeats_a_cause() {
    for e in samples() {
        let msgs = chain(e.as_ref());
        assert!(msgs.len() >= 2, "{e:?} has no source: {msgs:?}");
        for (i, outer) in msgs.iter().enumerate() {
            assert!(!outer.is_empty(), "{e:?}: empty message in {msgs:?}");
            for inner in &msgs[i + 1..] {
                assert!(
                    !outer.contains(inner.as_str()),
                    "{e:?}: {outer:?} repeats its cause {inner:?} (one line: {})",
                    one_line(e.as_ref())
                );
            }
        }
    }
}

#[test]
fn one_line_joins_each_cause_once() {
    let e = AllocatorError::Io {
        path: p("/proc/7/map_files/7f0000-7f1000"),
        source: io(libc::ENOENT),
    };
    assert_eq!(
        one_line(&e),
        "reading /proc/7/map_files/7f0000-7f1000: No such file or directory (os error 2)"
    );
    let e = CoreError::Probe(crate::probes::ProbeError::Program {
        name: "malloc_enter",
        source: program(),
    });
    assert_eq!(
        one_line(&e),
        "loading BPF program malloc_enter: `bpf_prog_load` failed: \
         Operation not permitted (os error 1)"
    );
}
