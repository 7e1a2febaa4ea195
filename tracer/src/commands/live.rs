//! The live view while `record`/`run` trace: every interval the session
//! builds the report as it stands (resident mode: from the latest sample;
//! malloc mode: from the kernel's maps) and draws it with `report::LiveView`.
//! The final report is written afterwards as usual.
use std::io::Stdout;

use crate::report::{live::LiveView, Report};

/// The screen, or nothing when the live view is off.
pub struct Screen {
    view: LiveView<Stdout>,
    /// A failed draw (stdout closed) stops the live view, not the trace: the
    /// report still goes to --output, and a write error to stdout surfaces there.
    broken: bool,
}

impl Screen {
    /// A screen on stdout when `wanted` (see `report::live::wanted`).
    pub fn new(wanted: bool) -> Option<Screen> {
        wanted.then(|| Screen {
            view: LiveView::stdout(),
            broken: false,
        })
    }

    pub fn draw(&mut self, report: Report) {
        if self.broken {
            return;
        }
        if let Err(e) = self.view.draw(report) {
            log::warn!("live view stopped: {}", crate::error::one_line(&e));
            self.broken = true;
        }
    }

    /// Whether the screen is a terminal (escape codes allowed).
    pub fn is_tty(&self) -> bool {
        self.view.is_tty()
    }
}
