//! Progress of long steps (symbolizing a big binary, writing a large report)
//! on stderr, so a silent pause never looks like a hang:
//! `offheap: symbolizing node (98 MB)… done in 0.8s`.
//! On a terminal the outcome ends the same line; otherwise each step writes
//! two whole lines, which keeps logs line-oriented.
use std::{
    io::{self, IsTerminal, Write},
    time::Instant,
};

pub struct Progress {
    label: String,
    start: Instant,
    out: Box<dyn Write + Send>,
    tty: bool,
    finished: bool,
}

impl Progress {
    /// Announces `label` on stderr.
    pub fn new(label: impl Into<String>) -> Progress {
        let tty = io::stderr().is_terminal();
        Progress::with_writer(label, Box::new(io::stderr()), tty)
    }

    pub fn with_writer(
        label: impl Into<String>,
        mut out: Box<dyn Write + Send>,
        tty: bool,
    ) -> Progress {
        let label = label.into();
        // Progress is best effort: a closed stderr must not fail the step.
        let _ = if tty {
            write!(out, "offheap: {label}… ").and_then(|_| out.flush())
        } else {
            writeln!(out, "offheap: {label}…")
        };
        Progress {
            label,
            start: Instant::now(),
            out,
            tty,
            finished: false,
        }
    }

    fn finish(&mut self, outcome: &str) {
        self.finished = true;
        let secs = self.start.elapsed().as_secs_f64();
        let _ = if self.tty {
            writeln!(self.out, "{outcome} in {secs:.1}s")
        } else {
            writeln!(self.out, "offheap: {} {outcome} in {secs:.1}s", self.label)
        };
    }

    pub fn done(mut self) {
        self.finish("done");
    }

    pub fn failed(mut self) {
        self.finish("failed");
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.finished {
            self.finish("stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn text(s: &Sink) -> String {
        String::from_utf8(s.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn tty_one_line_plain_two_lines() {
        let s = Sink::default();
        Progress::with_writer("symbolizing node", Box::new(s.clone()), true).done();
        let t = text(&s);
        assert!(t.starts_with("offheap: symbolizing node… done in "), "{t}");
        assert_eq!(t.matches('\n').count(), 1);

        let s = Sink::default();
        drop(Progress::with_writer("writing", Box::new(s.clone()), false));
        let t = text(&s);
        assert!(
            t.starts_with("offheap: writing…\noffheap: writing stopped in "),
            "{t}"
        );
        assert!(!t.contains('\x1b'));
    }
}
