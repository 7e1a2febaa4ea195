//! What the tracing loop waits on besides the ring buffers: SIGINT and
//! SIGTERM, the --duration deadline, and the per-interval ticker.
use std::{
    pin::Pin,
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    time::{Instant, Interval, Sleep},
};

/// SIGINT and SIGTERM: they end the trace (and the report is still written).
pub struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    /// Installs the handlers. A signal the shell made ignored (a background
    /// job of a script without job control starts with SIGINT ignored, and
    /// an ignored signal stays ignored across exec, signal(7)) gets its
    /// default disposition first, so that Ctrl-C or `kill -INT` still ends
    /// tracing with a report.
    pub fn install() -> std::io::Result<Signals> {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: setting a standard disposition; tokio's handler is
            // installed right after and replaces it.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Completes at the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }

    /// Whether a signal came since the last call, without waiting: for the
    /// attach steps, which run outside the loop.
    pub fn pending(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let int = matches!(self.int.poll_recv(&mut cx), Poll::Ready(Some(())));
        let term = matches!(self.term.poll_recv(&mut cx), Poll::Ready(Some(())));
        int || term
    }
}

/// The --duration deadline, or none.
pub struct Deadline(Option<Pin<Box<Sleep>>>);

impl Deadline {
    pub fn after(d: Option<Duration>) -> Deadline {
        Deadline(d.map(|d| Box::pin(tokio::time::sleep_until(Instant::now() + d))))
    }

    /// Completes at the deadline; never without one.
    pub async fn reached(&mut self) {
        match self.0.as_mut() {
            Some(s) => s.as_mut().await,
            None => std::future::pending().await,
        }
    }
}

/// The per-interval ticker of the tracing loop.
pub fn ticker(interval: Duration) -> Interval {
    let mut t = tokio::time::interval_at(
        Instant::now() + interval,
        interval.max(Duration::from_millis(10)),
    );
    // A slow step (the first symbol capture) must not be followed by a burst
    // of back-to-back ticks: growth rates would spike.
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}
