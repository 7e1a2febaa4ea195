//! Drains the shared `events` ring buffer on a thread of its own, so that a
//! slow step of the agent loop (the symbolizer's first capture of a node
//! binary takes seconds) never lets the kernel side fill the ring and drop
//! EXIT or OOM records. Records go to the loop over an unbounded channel.
use std::{
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use aya::maps::{Map, RingBuf};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracer_common::{event_kind, VmEvent};

use crate::daemon::lifecycle::{self, LifecycleEvent};

/// One decoded record.
#[derive(Clone, Debug)]
pub enum RingEvent {
    Life(LifecycleEvent),
    Vm(VmEvent),
}

/// How long one poll(2) waits before checking the stop flag.
const POLL_MS: i32 = 100;

pub struct RingReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RingReader {
    /// Starts the thread on the `events` map taken out of the object.
    pub fn start(map: Map) -> Result<(RingReader, UnboundedReceiver<RingEvent>), String> {
        let ring = RingBuf::try_from(map).map_err(|e| format!("BPF map events: {e}"))?;
        let (tx, rx) = unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("offheap-ring".into())
            .spawn(move || pump(ring, &tx, &flag))
            .map_err(|e| format!("starting the ring buffer thread: {e}"))?;
        Ok((
            RingReader {
                stop,
                thread: Some(thread),
            },
            rx,
        ))
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pump(mut ring: RingBuf<aya::maps::MapData>, tx: &UnboundedSender<RingEvent>, stop: &AtomicBool) {
    let fd = ring.as_raw_fd();
    while !stop.load(Ordering::SeqCst) {
        while let Some(item) = ring.next() {
            if let Some(ev) = decode(&item) {
                if tx.send(ev).is_err() {
                    return;
                }
            }
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own; a BPF ring buffer's fd polls readable
        // once a record is submitted with the default wakeup.
        unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
    }
}

fn decode(bytes: &[u8]) -> Option<RingEvent> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    match kind {
        event_kind::MMAP
        | event_kind::MUNMAP
        | event_kind::MREMAP
        | event_kind::BRK
        | event_kind::MADVISE => {
            if bytes.len() < std::mem::size_of::<VmEvent>() {
                return None;
            }
            // SAFETY: size checked; VmEvent is a plain #[repr(C)] ABI struct
            // (the ABI test pins its layout), read_unaligned copes with alignment.
            Some(RingEvent::Vm(unsafe {
                std::ptr::read_unaligned(bytes.as_ptr().cast())
            }))
        }
        _ => lifecycle::decode(bytes).map(RingEvent::Life),
    }
}
