//! What `record` and `run` share once their target is attached: the loop
//! that waits for the end (--duration, a signal, every target's exit) with
//! the live view, then the report, written, and the probes detached.
use anyhow::Result;

use super::{
    live::Screen,
    report::{check_output, emit, render},
};
use crate::{
    cli::TraceOpts,
    core::{Happening, StopReason, Tracer},
    error::WriteFailure,
    report::write::check_writable,
};

/// Checks made before anything is loaded: an output that cannot be written
/// is refused before tracing (exit 2), a binary format to a terminal too.
pub fn preflight(o: &TraceOpts) -> Result<()> {
    check_output(&o.output)?;
    if let Some(out) = &o.output.output {
        check_writable(out).map_err(crate::error::StartError::new)?;
    }
    Ok(())
}

/// Traces until the end, writes the report, detaches. Returns how the
/// command of `run` ended, when it did.
pub async fn trace(mut tracer: Tracer, first: u32, o: &TraceOpts) -> Result<Option<String>> {
    eprintln!(
        "offheap: attached to PID {first} ({}), mode {}",
        tracer.comm_of(first).unwrap_or(""),
        tracer.mode().as_str()
    );
    tracer.begin();
    let mut screen = Screen::new(crate::report::live::wanted(o.live, o.no_live));
    let stop = loop {
        // A command that ran to its end while being attached has exited
        // already: there is nothing to wait for.
        if tracer.all_exited() {
            break StopReason::TargetExited;
        }
        match tracer.next().await {
            Happening::Tick => {
                if let Some(s) = screen.as_mut() {
                    s.draw(tracer.report());
                }
            }
            Happening::Exec {
                pid, target: true, ..
            } => {
                if let Err(e) = tracer.restart(pid) {
                    eprintln!("offheap: warning: PID {pid} exec'd a new program that cannot be traced: {}", crate::error::one_line(&e));
                }
            }
            Happening::Stop(r) => break r,
            Happening::Exited { .. }
            | Happening::Exec { .. }
            | Happening::Forked { .. }
            | Happening::Oom(_) => {}
        }
    };
    log::info!("tracing stopped: {stop:?}");
    let finished = tracer.finish().map_err(WriteFailure::new)?;
    let bytes = render(&finished.report, &o.output)?;
    emit(&bytes, o.output.output.as_deref())?;
    // The report is out: wait for the last probes to go.
    drop(finished.detaching);
    Ok(finished.child_status)
}
