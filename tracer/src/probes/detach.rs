//! Detaching off the report's path: the links a trace ends with go to a
//! thread of their own (`Detacher`).
use aya::programs::{
    raw_trace_point::RawTracePointLink, tp_btf::BtfTracePointLink, trace_point::TracePointLink,
};

use super::multi::MultiLink;

/// Links on their way out (dropped, never read).
#[allow(dead_code)]
pub(super) enum Links {
    Uprobes(Vec<MultiLink>),
    TracePoints(Vec<TracePointLink>),
    Btf(Vec<BtfTracePointLink>),
    Raw(Vec<RawTracePointLink>),
}

/// A thread that drops links. Detaching a uprobe or a perf tracepoint
/// waits out RCU grace periods under the kernel-wide event_mutex
/// (perf_trace_destroy, uprobe_unregister_sync): ~80 ms each here, one after
/// the other whatever the thread. Done here, that time overlaps with the
/// report being built and written instead of adding to it. Dropping the
/// handle waits until every link sent is gone.
#[derive(Default)]
pub struct Detacher {
    tx: Option<std::sync::mpsc::Sender<Links>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Detacher {
    pub(super) fn send(&mut self, links: Links) {
        if self.tx.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<Links>();
            let spawned = std::thread::Builder::new()
                .name("offheap-detach".into())
                .spawn(move || rx.into_iter().for_each(drop));
            match spawned {
                Ok(t) => {
                    self.tx = Some(tx);
                    self.thread = Some(t);
                }
                // No thread: detach here and now.
                Err(_) => return drop(links),
            }
        }
        if let Some(Err(e)) = self.tx.as_ref().map(|tx| tx.send(links)) {
            drop(e.0);
        }
    }
}

impl Drop for Detacher {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
