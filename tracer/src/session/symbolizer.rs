//! The real symbolizer in a tracing session: capture the target's modules
//! once attached (while it is alive, so that names survive its exit), pick up
//! modules it maps later (an addon loaded by `require` -> dlopen(3)) every
//! interval. The first capture of node parses a ~100 MB binary: it is shown
//! as a step on stderr (report::progress) so the pause never looks like a hang.
use crate::{report::progress::Progress, symbols::Symbolizer};

use super::SessionSymbolizer;

/// Executables from this size on take a noticeable time to parse (node:
/// ~100 MB, ~1.5 s); smaller ones are read silently.
const SLOW_EXE_BYTES: u64 = 16_000_000;

/// The progress label for capturing a big executable, None for a small one.
fn slow_exe_label(pid: u32) -> Option<String> {
    let size = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?.len();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    (size >= SLOW_EXE_BYTES).then(|| {
        format!(
            "reading the symbols of {} ({} MB)",
            exe.display(),
            size / 1_000_000
        )
    })
}

impl SessionSymbolizer for Symbolizer {
    fn on_attached(&mut self, pid: u32) {
        let step = slow_exe_label(pid).map(Progress::new);
        match self.capture(pid) {
            Ok(()) => {
                if let Some(s) = step {
                    s.done();
                }
            }
            Err(e) => {
                if let Some(s) = step {
                    s.failed();
                }
                // Frames keep their addresses: the report is still right.
                eprintln!("offheap: warning: {e}");
            }
        }
    }

    fn on_tick(&mut self, pid: u32) {
        // A process that exited between two ticks keeps its captured modules.
        let _ = self.refresh(pid);
    }
}
