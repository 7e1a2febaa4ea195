//! From a module's CFI (`.eh_frame` through `.eh_frame_hdr`, or
//! `.debug_frame`) to compact rules: for each address range, how to find the
//! CFA, the return address and the caller's %rbp (x86-64), in the few forms
//! the BPF step implements (offheap.h, `enum unwind_row_kind`).
//!
//! The rule that keeps tables small ("rows only where a frame-pointer step
//! would be wrong"), applied per function (FDE):
//! - A function whose CFI reaches the frame-pointer state (CFA = %rbp + 16,
//!   caller's %rbp at CFA - 16) keeps its rows up to that point (the
//!   prologue: at entry CFA = %rsp + 8, after `push %rbp` %rsp + 16) and is
//!   the frame-pointer step from there to its end. Every call such a
//!   function makes comes after its frame is set up (gcc and clang set the
//!   frame up on every path that calls), so every return address in it,
//!   which is where all frames but the first are, gets its exact rule. What
//!   is dropped is the epilogue: after `pop %rbp`/`leave` only `ret` (or a
//!   tail-call `jmp`) remains. A first frame stopped exactly there (a page
//!   fault or uprobe on that `ret`) is unwound as if the frame were still
//!   set up, which skips its direct caller.
//! - Other functions keep every row: their CFA moves with every push and pop.
//! - Code outside every FDE (asm without CFI) is the frame-pointer step, as
//!   the userspace unwinder (accounting/unwind.rs) does.
//!
//! Consecutive equal rules are merged into one row.
use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, EhFrameHdr, EndianSlice, Expression,
    FrameDescriptionEntry, LittleEndian, Operation, RegisterRule, UnwindContext, UnwindSection,
    X86_64,
};
use tracer_common::{unwind_row_kind as kind, UNWIND_UC_RBP, UNWIND_UC_RIP, UNWIND_UC_RSP};

use super::elf::ElfFile;

type R<'a> = EndianSlice<'a, LittleEndian>;

/// How one address range unwinds (the fields of `struct unwind_row` but pc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub kind: u8,
    pub rbp: u8,
    pub cfa: i16,
}

impl Rule {
    pub const FP: Rule = Rule {
        kind: kind::FP,
        rbp: 0,
        cfa: 0,
    };
    /// Code no FDE covers: frame pointers are assumed, and the walker
    /// knows it is a guess (`cfa` 1 marks it; the frame-pointer step has no
    /// offset), so it does not trust a frame record there when it scans.
    pub const GAP: Rule = Rule {
        kind: kind::FP,
        rbp: 0,
        cfa: 1,
    };
    const STOP: Rule = Rule {
        kind: kind::STOP,
        rbp: 0,
        cfa: 0,
    };
}

/// A rule from `pc` (link-time address) up to the next row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub pc: u64,
    pub rule: Rule,
}

/// What building found, for the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CfiStats {
    pub fdes: u64,
    /// FDEs that set up a frame pointer (their epilogue rows are dropped,
    /// unread).
    pub fp_fdes: u64,
    /// CFI rows read (gimli's rows, before merging).
    pub cfi_rows: u64,
    /// Rows the tables cannot express, turned into STOP rows.
    pub unsupported_rows: u64,
    /// FDEs (or hdr entries) that failed to parse: their range is the
    /// frame-pointer step.
    pub bad_fdes: u64,
}

/// Translates one CFI row. `None`: not expressible (a STOP row).
fn rule_of<'a, S: UnwindSection<R<'a>>>(
    section: &S,
    cfa: &CfaRule<usize>,
    ra: &RegisterRule<usize>,
    bp: &RegisterRule<usize>,
) -> Option<Rule> {
    let rbp_at = |r: &RegisterRule<usize>| -> Option<u8> {
        match *r {
            RegisterRule::Undefined | RegisterRule::SameValue => Some(0),
            RegisterRule::Offset(o) if o < 0 && o % 8 == 0 => u8::try_from(-o / 8).ok(),
            _ => None,
        }
    };
    let expr = |e: &gimli::UnwindExpression<usize>| -> Option<Vec<Operation<R<'a>>>> {
        ops(e.get(section).ok()?)
    };
    if let CfaRule::Expression(e) = cfa {
        let ops = expr(e)?;
        // glibc's __restore_rt (sysdeps/unix/sysv/linux/x86_64/libc_sigaction.c):
        // CFA = [rsp + 160], rip at rsp + 168, rbp at rsp + 120: the ucontext.
        if let [Operation::RegisterOffset {
            register: X86_64::RSP,
            offset,
            ..
        }, Operation::Deref { .. }] = ops[..]
        {
            if offset == i64::from(UNWIND_UC_RSP)
                && at_rsp(section, ra) == Some(UNWIND_UC_RIP)
                && at_rsp(section, bp) == Some(UNWIND_UC_RBP)
            {
                return Some(Rule {
                    kind: kind::SIGNAL,
                    rbp: 0,
                    cfa: 0,
                });
            }
        }
        if *ra != RegisterRule::Offset(-8) {
            return None;
        }
        return match ops[..] {
            // PLT entries (binutils' elf_x86_64 eh_frame_plt): CFA = rsp + 8,
            // + 8 more once the entry's `push` (at byte `k` of its 16) ran.
            [Operation::RegisterOffset {
                register: X86_64::RSP,
                offset,
                ..
            }, Operation::RegisterOffset {
                register: X86_64::RA,
                offset: 0,
                ..
            }, Operation::UnsignedConstant { value: 15 }, Operation::And, Operation::UnsignedConstant { value: k }, Operation::Ge, Operation::UnsignedConstant { value: 3 }, Operation::Shl, Operation::Plus] => {
                Some(Rule {
                    kind: kind::PLT,
                    rbp: u8::try_from(k).ok().filter(|k| *k < 16)?,
                    cfa: i16::try_from(offset).ok()?,
                })
            }
            // OpenSSL's perlasm keeps the caller's rsp in memory:
            // CFA = [rsp + n] + 8.
            [Operation::RegisterOffset {
                register: X86_64::RSP,
                offset,
                ..
            }, Operation::Deref { .. }, Operation::PlusConstant { value: 8 }] => Some(Rule {
                kind: kind::DEREF_RSP,
                rbp: rbp_at(bp)?,
                cfa: i16::try_from(offset).ok()?,
            }),
            // gcc's dynamic realignment (DRAP): CFA = [rbp + n], rbp at [rbp].
            [Operation::RegisterOffset {
                register: X86_64::RBP,
                offset,
                ..
            }, Operation::Deref { .. }]
                if at_reg(section, bp, X86_64::RBP) == Some(0) =>
            {
                Some(Rule {
                    kind: kind::DRAP,
                    rbp: 0,
                    cfa: i16::try_from(offset).ok()?,
                })
            }
            _ => None,
        };
    }
    let CfaRule::RegisterAndOffset { register, offset } = *cfa else {
        return None;
    };
    match ra {
        // No return address: the outermost frame (glibc's _start, clone3's
        // child, which say DW_CFA_undefined rip).
        RegisterRule::Undefined => {
            return Some(Rule {
                kind: kind::END,
                rbp: 0,
                cfa: 0,
            })
        }
        RegisterRule::Offset(-8) => {}
        _ => return None,
    }
    let rbp = rbp_at(bp)?;
    let cfa = i16::try_from(offset).ok()?;
    match register {
        X86_64::RBP if cfa == 16 && rbp == 2 => Some(Rule::FP),
        X86_64::RBP => Some(Rule {
            kind: kind::RBP,
            rbp,
            cfa,
        }),
        X86_64::RSP => Some(Rule {
            kind: kind::RSP,
            rbp,
            cfa,
        }),
        _ => None,
    }
}

fn ops(e: Expression<R<'_>>) -> Option<Vec<Operation<R<'_>>>> {
    let enc = gimli::Encoding {
        address_size: 8,
        format: gimli::Format::Dwarf32,
        version: 4,
    };
    let mut it = e.operations(enc);
    let mut v = Vec::new();
    while let Some(op) = it.next().ok()? {
        v.push(op);
        if v.len() > 16 {
            return None;
        }
    }
    Some(v)
}

/// `Expression(breg(reg) + n)`: the register is saved at reg + n.
fn at_reg<'a, S: UnwindSection<R<'a>>>(
    section: &S,
    r: &RegisterRule<usize>,
    reg: gimli::Register,
) -> Option<i64> {
    let RegisterRule::Expression(e) = r else {
        return None;
    };
    match ops(e.get(section).ok()?)?[..] {
        [Operation::RegisterOffset {
            register, offset, ..
        }] if register == reg => Some(offset),
        _ => None,
    }
}

fn at_rsp<'a, S: UnwindSection<R<'a>>>(section: &S, r: &RegisterRule<usize>) -> Option<i16> {
    at_reg(section, r, X86_64::RSP).and_then(|o| i16::try_from(o).ok())
}

/// The rows of one FDE, the frame-pointer rule applied (see the top).
fn fde_rows<'a, S: UnwindSection<R<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    ctx: &mut UnwindContext<usize>,
    fde: &FrameDescriptionEntry<R<'a>>,
    stats: &mut CfiStats,
    out: &mut Vec<Row>,
) -> Result<(), gimli::Error> {
    let mut table = fde.rows(section, bases, ctx)?;
    while let Some(row) = table.next_row()? {
        stats.cfi_rows += 1;
        let rule = rule_of(
            section,
            row.cfa(),
            &row.register(X86_64::RA),
            &row.register(X86_64::RBP),
        )
        .unwrap_or_else(|| {
            stats.unsupported_rows += 1;
            Rule::STOP
        });
        out.push(Row {
            pc: row.start_address(),
            rule,
        });
        if rule == Rule::FP {
            // The frame is set up: the frame-pointer step to the end. The
            // epilogue's rows are not even evaluated (node: two thirds of
            // its FDEs, most of their rows).
            stats.fp_fdes += 1;
            break;
        }
    }
    Ok(())
}

/// One FDE's range, and where its rows are in the module's row list.
type FdeRows = (u64, u64, std::ops::Range<usize>);

/// The module's FDEs parsed so far, their rows in one list (one vector per
/// FDE cost an allocation each: node has 76k FDEs), and the CIEs they share,
/// parsed once each (gimli parses an FDE's CIE again for every FDE; node's
/// 76k FDEs have a few CIEs).
struct Fdes<'a, O> {
    fdes: Vec<FdeRows>,
    rows: Vec<Row>,
    cies: std::collections::HashMap<O, gimli::CommonInformationEntry<R<'a>>>,
}

impl<'a, O: Eq + std::hash::Hash + Copy> Fdes<'a, O> {
    fn new() -> Self {
        Fdes {
            fdes: Vec::new(),
            rows: Vec::new(),
            cies: std::collections::HashMap::new(),
        }
    }

    /// The CIE at `offset`, parsed the first time only.
    fn cie<S: UnwindSection<R<'a>, Offset = O>>(
        &mut self,
        section: &S,
        bases: &BaseAddresses,
        offset: O,
    ) -> gimli::Result<gimli::CommonInformationEntry<R<'a>>> {
        if let Some(cie) = self.cies.get(&offset) {
            return Ok(cie.clone());
        }
        let cie = section.cie_from_offset(bases, offset)?;
        self.cies.insert(offset, cie.clone());
        Ok(cie)
    }

    fn add<S: UnwindSection<R<'a>>>(
        &mut self,
        section: &S,
        bases: &BaseAddresses,
        ctx: &mut UnwindContext<usize>,
        fde: Result<FrameDescriptionEntry<R<'a>>, gimli::Error>,
        stats: &mut CfiStats,
    ) {
        stats.fdes += 1;
        let first = self.rows.len();
        match fde.and_then(|fde| {
            fde_rows(section, bases, ctx, &fde, stats, &mut self.rows).map(|()| fde)
        }) {
            Ok(fde) => self.fdes.push((
                fde.initial_address(),
                fde.end_address(),
                first..self.rows.len(),
            )),
            Err(_) => {
                self.rows.truncate(first);
                stats.bad_fdes += 1;
            }
        }
    }
}

/// Every FDE of an `.eh_frame` or `.debug_frame`, in section order.
fn all_fdes<'a, S: UnwindSection<R<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    ctx: &mut UnwindContext<usize>,
    stats: &mut CfiStats,
    out: &mut Fdes<'a, S::Offset>,
) where
    S::Offset: Eq + std::hash::Hash + Copy,
{
    let mut entries = section.entries(bases);
    loop {
        match entries.next() {
            Ok(Some(gimli::CieOrFde::Fde(partial))) => {
                let fde = partial.parse(|s, b, o| out.cie(s, b, o));
                out.add(section, bases, ctx, fde, stats);
            }
            Ok(Some(gimli::CieOrFde::Cie(_))) => {}
            Ok(None) => break,
            Err(_) => {
                stats.bad_fdes += 1;
                break;
            }
        }
    }
}

/// The rows of a module, sorted by pc, merged, with the frame-pointer step
/// wherever no FDE covers the code. Addresses are link-time (svma).
pub fn module_rows(elf: &ElfFile) -> (Vec<Row>, CfiStats) {
    let mut stats = CfiStats::default();
    let mut ctx = UnwindContext::new();
    if let Some((eh, bytes)) = elf.eh_frame.and_then(|s| Some((s, elf.bytes(s)?))) {
        let section = EhFrame::new(bytes, LittleEndian);
        let mut bases = BaseAddresses::default()
            .set_eh_frame(eh.addr)
            .set_text(elf.text);
        if let Some(h) = elf.eh_frame_hdr {
            bases = bases.set_eh_frame_hdr(h.addr);
        }
        let mut fdes = Fdes::new();
        let hdr = elf
            .eh_frame_hdr
            .and_then(|h| elf.bytes(h))
            .and_then(|b| EhFrameHdr::new(b, LittleEndian).parse(&bases, 8).ok());
        match hdr.as_ref().and_then(|h| h.table()) {
            // The hdr's table lists the FDEs the runtime unwinder uses.
            Some(table) => {
                let mut it = table.iter(&bases);
                loop {
                    match it.next() {
                        Ok(Some((_, ptr))) => {
                            let fde = table.pointer_to_offset(ptr).and_then(|off| {
                                section.fde_from_offset(&bases, off, |s, b, o| fdes.cie(s, b, o))
                            });
                            fdes.add(&section, &bases, &mut ctx, fde, &mut stats);
                        }
                        Ok(None) => break,
                        Err(_) => {
                            stats.bad_fdes += 1;
                            break;
                        }
                    }
                }
            }
            None => all_fdes(&section, &bases, &mut ctx, &mut stats, &mut fdes),
        }
        return (flatten(fdes.fdes, &fdes.rows), stats);
    }
    if let Some(bytes) = elf.debug_frame.and_then(|s| elf.bytes(s)) {
        let mut section = DebugFrame::new(bytes, LittleEndian);
        section.set_address_size(8);
        let mut fdes = Fdes::new();
        all_fdes(
            &section,
            &BaseAddresses::default(),
            &mut ctx,
            &mut stats,
            &mut fdes,
        );
        return (flatten(fdes.fdes, &fdes.rows), stats);
    }
    (Vec::new(), stats)
}

/// Lays the FDEs' rows end to end: the frame-pointer step in the gaps, a
/// later FDE overriding an overlapping one, equal neighbours merged.
fn flatten(mut fdes: Vec<FdeRows>, all: &[Row]) -> Vec<Row> {
    fdes.retain(|(start, end, rows)| end > start && !rows.is_empty());
    fdes.sort_by_key(|(start, _, _)| *start);
    let mut out: Vec<Row> = Vec::new();
    let mut covered_to = 0u64;
    for (start, end, rows) in fdes {
        if start < covered_to {
            // Overlap (should not happen in a linked module): the later FDE wins.
            while out.last().is_some_and(|r| r.pc >= start) {
                out.pop();
            }
        } else if start > covered_to && !out.is_empty() {
            out.push(Row {
                pc: covered_to,
                rule: Rule::GAP,
            });
        }
        out.extend(all[rows].iter().filter(|r| r.pc >= start && r.pc < end));
        covered_to = end;
    }
    if !out.is_empty() {
        out.push(Row {
            pc: covered_to,
            rule: Rule::GAP,
        });
    }
    merge(out)
}

/// Drops rows whose rule equals the previous row's, and all but the last of
/// rows at one pc.
fn merge(rows: Vec<Row>) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::with_capacity(rows.len());
    for r in rows {
        if let Some(last) = out.last_mut() {
            if last.pc == r.pc {
                *last = r;
                let n = out.len();
                if n >= 2 && out[n - 2].rule == out[n - 1].rule {
                    out.pop();
                }
                continue;
            }
            if last.rule == r.rule {
                continue;
            }
        } else if r.rule == Rule::FP || r.rule == Rule::GAP {
            // Before the first row is the frame-pointer step anyway.
            continue;
        }
        out.push(r);
    }
    out
}
