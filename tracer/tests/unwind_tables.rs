//! The compact tables against full CFI evaluation (accounting/unwind.rs, the
//! userspace gimli unwinder) on node, glibc and libstdc++ as a running node
//! maps them: from the same registers and the same stack, the table's rule
//! must give the same caller pc, sp (the CFA) and rbp.
//!
//! - At every return address (the instruction after each `call`, found by
//!   objdump), where every frame but the first is: exactly the same.
//! - At every instruction of glibc and libstdc++, as a first frame: the same,
//!   except in the epilogue of a function that sets up a frame pointer,
//!   where the table says "frame pointer" (probes/unwind/cfi.rs, the rule).
//!
//! Rows whose CFA is a DWARF expression (PLT, signal frame, DRAP, OpenSSL's
//! saved rsp) are not compared: the userspace unwinder does not evaluate
//! expressions (it takes frame pointers there).
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use offheap::accounting::unwind::{Regs, StackWindow, Unwinder};
use offheap::probes::unwind::{apply, cfi, ElfFile, Frame, Rule, Step, Table};
use tracer_common::unwind_row_kind as kind;

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A module as mapped: its executable mapping and its table.
struct Mapped {
    path: String,
    start: u64,
    end: u64,
    /// svma of `start`.
    svma: u64,
    table: Table,
}

fn mapped(pid: u32, name: &str) -> Mapped {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    // The largest executable mapping of the file (node maps a few small
    // ones beside its text).
    let line = maps
        .lines()
        .filter(|l| l.contains(" r-xp ") && l.contains(name))
        .max_by_key(|l| {
            let (s, e) = l
                .split_whitespace()
                .next()
                .unwrap()
                .split_once('-')
                .unwrap();
            u64::from_str_radix(e, 16).unwrap() - u64::from_str_radix(s, 16).unwrap()
        })
        .unwrap_or_else(|| panic!("{name} not mapped r-x by node"));
    let f: Vec<&str> = line.split_whitespace().collect();
    let (s, e) = f[0].split_once('-').unwrap();
    let start = u64::from_str_radix(s, 16).unwrap();
    let end = u64::from_str_radix(e, 16).unwrap();
    let offset = u64::from_str_radix(f[2], 16).unwrap();
    let path = f[5].to_string();
    // map_files names are unpadded lowercase hex.
    let elf = ElfFile::open(&PathBuf::from(format!(
        "/proc/{pid}/map_files/{start:x}-{end:x}"
    )))
    .unwrap();
    let (rows, _) = cfi::module_rows(&elf);
    Mapped {
        svma: elf.vaddr_of_offset(offset).unwrap(),
        table: Table::build(&rows).unwrap(),
        path,
        start,
        end,
    }
}

impl Mapped {
    fn rule(&self, pc: u64) -> Rule {
        let svma = pc - self.start + self.svma;
        self.table.lookup(svma.wrapping_sub(self.table.base))
    }
    fn runtime(&self, svma: u64) -> u64 {
        svma - self.svma + self.start
    }
}

/// (address, is a call) of every instruction objdump decodes in
/// [from, to) (link-time addresses).
fn instructions(path: &str, range: Option<(u64, u64)>) -> Vec<(u64, bool)> {
    let mut cmd = Command::new("objdump");
    cmd.args(["-d", "--no-show-raw-insn", "-M", "att"]);
    if let Some((a, b)) = range {
        cmd.arg(format!("--start-address={a:#x}"))
            .arg(format!("--stop-address={b:#x}"));
    }
    let out = cmd.arg(path).output().expect("objdump (binutils)");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (addr, rest) = l.trim_start().split_once(":\t")?;
            let addr = u64::from_str_radix(addr, 16).ok()?;
            Some((addr, rest.trim_start().starts_with("call")))
        })
        .collect()
}

const BASE: u64 = 0x7ffd_0000_0000;

/// A synthetic stack: every word says where it is, so a wrong CFA or slot
/// gives a wrong value.
fn stack() -> Vec<u8> {
    (0..8192u64)
        .flat_map(|i| ((BASE + i * 8) ^ 0x5a5a_0000_1234_5678).to_le_bytes())
        .collect()
}

fn expression(r: Rule) -> bool {
    matches!(
        r.kind,
        kind::PLT | kind::DEREF_RSP | kind::DRAP | kind::SIGNAL | kind::STOP
    )
}

/// Compares one pc; None when equal, else a description.
fn compare(
    u: &mut Unwinder,
    m: &Mapped,
    pc: u64,
    first: bool,
    window: StackWindow<'_>,
) -> Option<(Rule, String)> {
    let regs = Regs {
        ip: pc,
        sp: BASE + 0x4000,
        bp: BASE + 0x8000,
    };
    let rule = m.rule(if first { pc } else { pc - 1 });
    let full = u.step(regs, window, first);
    let compact = apply(
        rule,
        Frame {
            pc,
            sp: regs.sp,
            bp: regs.bp,
        },
        |a| window.read_u64(a),
    );
    let same = match (compact, full) {
        (Step::Caller(f), Some(r)) => f.pc == r.ip && f.sp == r.sp && f.bp == r.bp,
        // The outermost frame: no return address in the CFI either (the
        // userspace unwinder ends the stack there with a pc of 0).
        (Step::End, None) => true,
        (Step::End, Some(r)) => r.ip == 0,
        _ => false,
    };
    (!same).then(|| {
        (
            rule,
            format!("{pc:#x}: table {rule:?} {compact:?}, CFI {full:?}"),
        )
    })
}

fn spawn_node() -> (Node, u32) {
    let child = Command::new("node")
        .args(["-e", "setTimeout(() => {}, 120000)"])
        .stdin(Stdio::null())
        .spawn()
        .expect("node");
    let pid = child.id();
    let node = Node(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .contains("libstdc++")
    {
        assert!(Instant::now() < deadline, "node did not map libstdc++");
        std::thread::sleep(Duration::from_millis(20));
    }
    (node, pid)
}

#[test]
fn every_return_address_gets_the_full_cfi_rule() {
    let (_node, pid) = spawn_node();
    let bytes = stack();
    let window = StackWindow {
        base: BASE,
        bytes: &bytes,
    };
    let mut u = Unwinder::new(pid).unwrap();
    for name in ["/usr/bin/node", "/libc.so.6", "/libstdc++.so.6"] {
        let m = mapped(pid, name);
        // node's 27 MiB of code: three 1 MiB slices (V8, its builtins and
        // the bundled C libraries sit at different places).
        let text = m.end - m.start;
        let ranges: Vec<Option<(u64, u64)>> = if name == "/usr/bin/node" {
            [0.1, 0.5, 0.9]
                .iter()
                .map(|f| {
                    let a = m.svma + (text as f64 * f) as u64;
                    Some((a, a + (1 << 20)))
                })
                .collect()
        } else {
            vec![None]
        };
        let (mut checked, mut skipped, mut wrong) = (0u64, 0u64, Vec::new());
        for range in ranges {
            let insns = instructions(&m.path, range);
            for w in insns.windows(2) {
                let ((_, is_call), (ra, _)) = (w[0], w[1]);
                if !is_call {
                    continue;
                }
                let pc = m.runtime(ra);
                if pc >= m.end || expression(m.rule(pc - 1)) {
                    skipped += 1;
                    continue;
                }
                checked += 1;
                if let Some((_, d)) = compare(&mut u, &m, pc, false, window) {
                    wrong.push(d);
                }
            }
        }
        eprintln!("{name}: {checked} return addresses compared, {skipped} skipped");
        assert!(
            wrong.is_empty(),
            "{name}: {} differ: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        );
        // Expression rows are rare at call sites (a call from a DRAP frame).
        assert!(
            skipped * 100 <= checked,
            "{name}: {skipped} of {checked} skipped"
        );
    }
}

#[test]
fn every_instruction_as_a_first_frame_gets_the_full_cfi_rule_but_frame_pointer_epilogues() {
    let (_node, pid) = spawn_node();
    let bytes = stack();
    let window = StackWindow {
        base: BASE,
        bytes: &bytes,
    };
    let mut u = Unwinder::new(pid).unwrap();
    for name in ["/libc.so.6", "/libstdc++.so.6"] {
        let m = mapped(pid, name);
        let (mut checked, mut epilogue, mut wrong) = (0u64, 0u64, Vec::new());
        for (svma, _) in instructions(&m.path, None) {
            let pc = m.runtime(svma);
            if pc >= m.end || expression(m.rule(pc)) {
                continue;
            }
            checked += 1;
            match compare(&mut u, &m, pc, true, window) {
                None => {}
                // After `pop %rbp`/`leave` in a function with a frame
                // pointer: the table keeps the frame-pointer step.
                Some((rule, _)) if rule == Rule::FP => epilogue += 1,
                Some((_, d)) => wrong.push(d),
            }
        }
        eprintln!("{name}: {checked} instructions compared, {epilogue} in frame-pointer epilogues");
        assert!(
            wrong.is_empty(),
            "{name}: {} differ: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        );
        // Epilogues are the `ret` after `leave`/`pop %rbp`: a few per
        // function, in the few functions with a frame pointer.
        assert!(epilogue * 100 <= checked, "{name}: {epilogue} of {checked}");
    }
}
