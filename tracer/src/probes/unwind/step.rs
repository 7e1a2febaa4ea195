//! The step of include/unwind.bpf.h (`unwind_step`) written again for
//! userspace: from a frame's registers and its row's rule to the caller's.
//! The tests compare it with full CFI evaluation (accounting/unwind.rs).
use tracer_common::{unwind_row_kind as kind, UNWIND_UC_RBP, UNWIND_UC_RIP, UNWIND_UC_RSP};

use super::cfi::Rule;

/// User registers of one frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
}

/// What a step gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The caller; its pc is a return address.
    Caller(Frame),
    /// The context a signal interrupted; its pc is where it stopped.
    Interrupted(Frame),
    /// The outermost frame: the stack is complete.
    End,
    /// A STOP row, or a word that could not be read.
    Cannot,
}

/// Applies `rule` (found for `f.pc`) reading user words with `read`.
pub fn apply(rule: Rule, f: Frame, read: impl Fn(u64) -> Option<u64>) -> Step {
    let off = i64::from(rule.cfa);
    let at = |base: u64, o: i64| base.wrapping_add_signed(o);
    let cfa_then = |cfa: u64, rbp: u8, bp: Option<u64>| -> Step {
        let Some(ra) = read(cfa.wrapping_sub(8)) else {
            return Step::Cannot;
        };
        let bp = match (bp, rbp) {
            (Some(bp), _) => bp,
            (None, 0) => f.bp,
            (None, n) => match read(cfa.wrapping_sub(8 * u64::from(n))) {
                Some(v) => v,
                None => return Step::Cannot,
            },
        };
        Step::Caller(Frame {
            pc: ra,
            sp: cfa,
            bp,
        })
    };
    match rule.kind {
        kind::FP => cfa_then(f.bp.wrapping_add(16), 2, None),
        kind::RSP => cfa_then(at(f.sp, off), rule.rbp, None),
        kind::RBP => cfa_then(at(f.bp, off), rule.rbp, None),
        kind::PLT => {
            let pushed = if f.pc & 15 >= u64::from(rule.rbp) {
                8
            } else {
                0
            };
            cfa_then(at(f.sp, off + pushed), 0, None)
        }
        kind::DEREF_RSP => match read(at(f.sp, off)) {
            Some(v) => cfa_then(v.wrapping_add(8), rule.rbp, None),
            None => Step::Cannot,
        },
        kind::DRAP => match (read(at(f.bp, off)), read(f.bp)) {
            (Some(cfa), Some(bp)) => cfa_then(cfa, 0, Some(bp)),
            _ => Step::Cannot,
        },
        kind::SIGNAL => {
            let word = |o: i16| read(at(f.sp, i64::from(o)));
            match (
                word(UNWIND_UC_RIP),
                word(UNWIND_UC_RSP),
                word(UNWIND_UC_RBP),
            ) {
                (Some(pc), Some(sp), Some(bp)) => Step::Interrupted(Frame { pc, sp, bp }),
                _ => Step::Cannot,
            }
        }
        kind::END => Step::End,
        _ => Step::Cannot,
    }
}
