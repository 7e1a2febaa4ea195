//! The real symbolizer in a tracing session: capture the target's modules
//! once attached (while it is alive, so that names survive its exit), pick up
//! modules it maps later (an addon loaded by `require` -> dlopen(3)) every
//! interval. The first capture of node parses a ~100 MB binary: it is shown
//! as a step on stderr (report::progress) so the pause never looks like a hang.
use crate::{report::progress::Progress, symbols::Symbolizer};

use super::SessionSymbolizer;

/// Size of the target's executable, for the progress line.
fn exe_label(pid: u32) -> String {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| format!("PID {pid}"));
    match std::fs::metadata(format!("/proc/{pid}/exe")) {
        Ok(m) => format!("{exe} ({} MB)", m.len() / 1_000_000),
        Err(_) => exe,
    }
}

impl SessionSymbolizer for Symbolizer {
    fn on_attached(&mut self, pid: u32) {
        let step = Progress::new(format!("reading the symbols of {}", exe_label(pid)));
        match self.capture(pid) {
            Ok(()) => step.done(),
            Err(e) => {
                step.failed();
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
