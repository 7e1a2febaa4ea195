//! The live view: a compact top-like screen redrawn every interval while
//! `record`/`run` trace. It reads a fresh `Report` (and the previous one, for
//! growth); the caller decides when to draw and where.
//!
//! On a terminal the screen starts with "cursor home + clear screen" (ECMA-48
//! CUP `ESC [ H` and ED `ESC [ 2 J`). Off a terminal the same content is
//! written as plain lines with no escape code at all, one block per interval,
//! so logs and pipes stay readable. Names from the target (JS function names,
//! paths) are untrusted: control characters in them are replaced with `?` in
//! both modes, so a crafted name cannot move the cursor either.
use std::{
    collections::HashMap,
    fmt::Write,
    io::{self, IsTerminal},
};

use super::{
    diff::frame_key,
    fmt::{clean, human_bytes, signed_bytes, sparkline},
    Bucket, ProcessReport, Report, SeriesPoint, StackReport,
};

/// Cursor home, then clear the whole screen.
pub const CLEAR: &str = "\x1b[H\x1b[2J";

const TOP_STACKS: usize = 5;
const FRAMES_SHOWN: usize = 3;
const NAME_WIDTH: usize = 100;

fn rate(d: i64) -> String {
    format!("{}/s", signed_bytes(d))
}

/// Per-second growth of `now` over `then` across `secs` seconds.
fn per_sec(then: u64, now: u64, secs: f64) -> Option<i64> {
    (secs > 0.0).then(|| ((now as f64 - then as f64) / secs) as i64)
}

/// Growth per bucket and of RSS: against the previous report of the same
/// pid, else across the last two points of the process's own series.
struct Growth {
    rss: Option<i64>,
    buckets: HashMap<Bucket, i64>,
}

fn growth(report: &Report, p: &ProcessReport, prev: Option<&Report>) -> Growth {
    let before = prev.and_then(|r| {
        let q = r.processes.iter().find(|q| q.pid == p.pid)?;
        let point = SeriesPoint {
            t_secs: r.duration_secs,
            rss_bytes: q.rss_bytes,
            buckets: q.buckets,
            ..SeriesPoint::default()
        };
        Some((point, report.duration_secs))
    });
    let before = before.or_else(|| match p.series.as_slice() {
        [.., a, b] => Some((a.clone(), b.t_secs)),
        _ => None,
    });
    let mut g = Growth {
        rss: None,
        buckets: HashMap::new(),
    };
    if let Some((then, now_t)) = before {
        let secs = now_t - then.t_secs;
        g.rss = per_sec(then.rss_bytes, p.rss_bytes, secs);
        for b in Bucket::ALL {
            if let Some(r) = per_sec(then.buckets.get(b), p.buckets.get(b), secs) {
                g.buckets.insert(b, r);
            }
        }
    }
    g
}

/// Growth of each stack: its own `growth_bytes_per_sec` when accounting gave
/// it, else against the same frames in the previous report.
fn stack_growth<'a>(
    report: &Report,
    p: &'a ProcessReport,
    prev: Option<&Report>,
) -> Vec<(i64, &'a StackReport)> {
    let mut before: HashMap<Vec<String>, u64> = HashMap::new();
    let mut secs = 0.0;
    if let Some(r) = prev {
        secs = report.duration_secs - r.duration_secs;
        for q in r.processes.iter().filter(|q| q.pid == p.pid) {
            for s in &q.stacks {
                let k = s.frames.iter().map(frame_key).collect();
                *before.entry(k).or_default() += s.live_bytes;
            }
        }
    }
    let mut out: Vec<(i64, &StackReport)> = p
        .stacks
        .iter()
        .filter_map(|s| {
            let g = match s.growth_bytes_per_sec {
                Some(g) => g as i64,
                None => {
                    let k: Vec<String> = s.frames.iter().map(frame_key).collect();
                    per_sec(before.get(&k).copied().unwrap_or(0), s.live_bytes, secs)?
                }
            };
            Some((g, s))
        })
        .collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.live_bytes.cmp(&a.1.live_bytes)));
    out
}

fn stack_name(s: &StackReport) -> String {
    let frames = super::telling_frames(&s.frames);
    let mut names: Vec<String> = frames
        .iter()
        .take(FRAMES_SHOWN)
        .map(|f| clean(&f.display_name()))
        .collect();
    if frames.len() > FRAMES_SHOWN {
        names.push("…".into());
    }
    // Threadpool work: who queued it (the worker's frames never say).
    if let Some(q) = super::queued_by(frames) {
        names.push(super::ASYNC_FRAME.into());
        names.push(clean(&q.display_name()));
    }
    let line = names.join(" < ");
    if line.chars().count() > NAME_WIDTH {
        line.chars().take(NAME_WIDTH - 1).chain(['…']).collect()
    } else {
        line
    }
}

fn process_block(out: &mut String, report: &Report, p: &ProcessReport, prev: Option<&Report>) {
    let g = growth(report, p, prev);
    let _ = writeln!(
        out,
        "PID {} ({}){} · RSS {}{}",
        p.pid,
        clean(&p.comm),
        if p.exited { " [exited]" } else { "" },
        human_bytes(p.rss_bytes),
        g.rss.map(|r| format!(" ({})", rate(r))).unwrap_or_default()
    );
    let fastest = Bucket::ALL
        .iter()
        .filter_map(|b| g.buckets.get(b).map(|r| (*r, *b)))
        .filter(|(r, _)| *r > 0)
        .max();
    if let Some((r, b)) = fastest {
        let _ = writeln!(out, "  growing fastest: {} {}", b.as_str(), rate(r));
    }
    for b in Bucket::ALL {
        let series: Vec<u64> = p.series.iter().map(|s| s.buckets.get(b)).collect();
        let _ = writeln!(
            out,
            "  {:<14} {:>10} {:>14}  {}",
            b.as_str(),
            human_bytes(p.buckets.get(b)),
            g.buckets.get(&b).map(|r| rate(*r)).unwrap_or_default(),
            sparkline(&series)
        );
    }
    let top = stack_growth(report, p, prev);
    if !top.is_empty() {
        let _ = writeln!(out, "  top stacks by growth:");
    }
    for (g, s) in top.into_iter().take(TOP_STACKS) {
        let _ = writeln!(
            out,
            "  {:>14} {:>10}  {:<13}  {}",
            rate(g),
            human_bytes(s.live_bytes),
            s.bucket.map(Bucket::as_str).unwrap_or("-"),
            stack_name(s)
        );
    }
}

/// One screen of the live view. `prev` is the report drawn last time.
pub fn render_live(report: &Report, prev: Option<&Report>, tty: bool) -> String {
    let mut out = String::new();
    if tty {
        out.push_str(CLEAR);
    }
    let _ = writeln!(
        out,
        "offheap · {} mode · {:.1}s · dropped events {}{}",
        report.mode.as_str(),
        report.duration_secs,
        report.dropped_events,
        if report.dropped_events > 0 {
            " (figures are low)"
        } else {
            ""
        }
    );
    if report.processes.is_empty() {
        let _ = writeln!(out, "no traced process yet");
    }
    for p in &report.processes {
        process_block(&mut out, report, p, prev);
    }
    for w in &report.warnings {
        let _ = writeln!(out, "warning: {}", clean(w));
    }
    out
}

/// Whether `record`/`run` should draw the live view: asked for with `--live`,
/// refused with `--no-live`, else only when stdout is a terminal.
pub fn wanted(live: bool, no_live: bool) -> bool {
    live || (!no_live && io::stdout().is_terminal())
}

/// Draws successive reports to one output, remembering the last one for
/// growth. Terminal or not is decided by the output itself (isatty(3)).
pub struct LiveView<W: io::Write + IsTerminal> {
    out: W,
    tty: bool,
    prev: Option<Report>,
}

impl LiveView<io::Stdout> {
    pub fn stdout() -> Self {
        LiveView::new(io::stdout())
    }
}

impl<W: io::Write + IsTerminal> LiveView<W> {
    pub fn new(out: W) -> Self {
        let tty = out.is_terminal();
        LiveView {
            out,
            tty,
            prev: None,
        }
    }

    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// Draws one screen (terminal) or one block of lines followed by a blank
    /// line (anything else).
    pub fn draw(&mut self, report: Report) -> io::Result<()> {
        let mut screen = render_live(&report, self.prev.as_ref(), self.tty);
        if !self.tty {
            screen.push('\n');
        }
        self.out.write_all(screen.as_bytes())?;
        self.out.flush()?;
        self.prev = Some(report);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Frame, FrameKind, Mode};

    fn report(t: f64, ab: u64, name: &str) -> Report {
        let mut r = Report::new(Mode::Resident);
        r.duration_secs = t;
        let mut p = ProcessReport {
            pid: 5,
            comm: "node".into(),
            rss_bytes: 100 << 20,
            ..ProcessReport::default()
        };
        p.buckets.array_buffers = ab;
        p.stacks.push(StackReport {
            bucket: Some(Bucket::ArrayBuffers),
            live_bytes: ab,
            frames: vec![Frame {
                addr: "0x1".into(),
                symbol: Some(name.into()),
                ..Frame::default()
            }],
            ..StackReport::default()
        });
        r.processes.push(p);
        r
    }

    /// A stack of threadpool work shows the code that queued it.
    #[test]
    fn a_threadpool_stack_shows_who_queued_it() {
        let named = |s: &str, kind| Frame {
            symbol: Some(s.into()),
            kind,
            ..Frame::default()
        };
        let s = StackReport {
            frames: vec![
                named("AllocForZlib", FrameKind::Native),
                named("deflateInit2_", FrameKind::Native),
                named("InitZlib", FrameKind::Native),
                named("worker", FrameKind::Native),
                Frame::async_marker(),
                named("node::ThreadPoolWork::ScheduleWork()", FrameKind::Native),
                named("JS:~openStreams app.js:5:28", FrameKind::Js),
            ],
            ..StackReport::default()
        };
        assert_eq!(
            stack_name(&s),
            "AllocForZlib < deflateInit2_ < InitZlib < … < [libuv threadpool] < \
             JS:~openStreams app.js:5:28"
        );
    }

    #[test]
    fn non_tty_has_no_escape_even_from_hostile_names() {
        let prev = report(1.0, 1 << 20, "grow\x1b[2Jme");
        let now = report(3.0, 5 << 20, "grow\x1b[2Jme");
        let s = render_live(&now, Some(&prev), false);
        assert!(!s.contains('\x1b'), "{s:?}");
        assert!(
            s.contains("growing fastest: array_buffers +2.0 MiB/s"),
            "{s}"
        );
        assert!(s.contains("grow\\x1b[2Jme"), "{s}");
    }

    #[test]
    fn tty_starts_with_clear() {
        let s = render_live(&report(1.0, 1, "f"), None, true);
        assert!(s.starts_with(CLEAR));
        assert_eq!(s.matches('\x1b').count(), 2);
    }

    #[test]
    fn sparkline_scales() {
        assert_eq!(sparkline(&[0, 7, 14]), "▁▄█");
        assert_eq!(sparkline(&[3, 3]), "▁▁");
        assert_eq!(sparkline(&[]), "");
    }
}
