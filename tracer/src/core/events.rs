//! The ring buffers, drained on a thread of their own, so that a slow step
//! of the tracing loop (the symbolizer's first capture of a node binary, a
//! resident sample) never lets the kernel side fill a ring and drop records.
//!
//! - `events` (every mode): exec/exit/fork/OOM records and, in malloc mode,
//!   the mapping records of vm.bpf.c. Decoded here and sent to the loop over
//!   an unbounded channel.
//! - `fault_events` (resident mode): applied on this thread to the shared
//!   resident models, which hold their own locks for the loop's samples.
use std::{
    os::fd::{AsRawFd, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracer_common::{event_kind, OomEvent, ProcEvent, VmEvent};

use crate::{accounting::resident::ResidentSet, probes::unwind::UnwindTables, sync::lock};

/// How long one poll(2) waits before checking the stop flag.
const POLL_MS: i32 = 20;

/// The oom/mark_victim record, sizes converted to bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomVictim {
    pub tgid: u32,
    pub comm: String,
    pub total_vm_bytes: u64,
    pub anon_rss_bytes: u64,
    pub file_rss_bytes: u64,
    pub shmem_rss_bytes: u64,
    pub pgtables_bytes: u64,
    pub uid: u32,
    pub oom_score_adj: i16,
    pub ts_ns: u64,
}

/// A decoded lifecycle record. Times are `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// `tgid` exec'd a new program, now called `comm`.
    Exec { tgid: u32, comm: String, ts_ns: u64 },
    /// The whole process `tgid` exited. `wait_status` is as waitpid(2)
    /// reports it: `code << 8` after exit(code), the signal number if killed.
    Exit {
        tgid: u32,
        comm: String,
        wait_status: i32,
        ts_ns: u64,
    },
    /// Target `tgid` created the new process `child`.
    Fork {
        tgid: u32,
        child: u32,
        comm: String,
        ts_ns: u64,
    },
    /// The OOM killer chose `tgid` as its victim.
    Oom(OomVictim),
}

/// One decoded record of the `events` ring.
#[derive(Clone, Debug)]
pub enum RingEvent {
    Life(LifecycleEvent),
    Vm(VmEvent),
    /// A target mapped a file executable (an addon's dlopen): its unwind
    /// tables and modules are to be brought up to date.
    ExecMap {
        tgid: u32,
    },
}

fn comm_str(c: &[u8]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// A plain #[repr(C)] ABI struct from a record, None when it is truncated.
pub(crate) fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= std::mem::size_of::<T>())
        // SAFETY: length checked; T is a plain #[repr(C)] integer struct (any
        // bit pattern valid; the ABI test pins its layout), and
        // read_unaligned copes with any alignment.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one `events` record; None for an unknown kind or a truncated one.
pub fn decode(bytes: &[u8]) -> Option<RingEvent> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    Some(match kind {
        event_kind::MMAP
        | event_kind::MUNMAP
        | event_kind::MREMAP
        | event_kind::BRK
        | event_kind::MADVISE => RingEvent::Vm(read(bytes)?),
        event_kind::EXEC_MAP => RingEvent::ExecMap {
            tgid: read::<VmEvent>(bytes)?.hdr.tgid,
        },
        event_kind::EXEC | event_kind::EXIT | event_kind::FORK => {
            let e: ProcEvent = read(bytes)?;
            let (tgid, comm, ts_ns) = (e.hdr.tgid, comm_str(&e.comm), e.hdr.ts_ns);
            RingEvent::Life(match kind {
                event_kind::EXEC => LifecycleEvent::Exec { tgid, comm, ts_ns },
                event_kind::EXIT => LifecycleEvent::Exit {
                    tgid,
                    comm,
                    wait_status: e.exit_code,
                    ts_ns,
                },
                _ => LifecycleEvent::Fork {
                    tgid,
                    child: e.child_tgid,
                    comm,
                    ts_ns,
                },
            })
        }
        event_kind::OOM_VICTIM => {
            let e: OomEvent = read(bytes)?;
            RingEvent::Life(LifecycleEvent::Oom(OomVictim {
                tgid: e.hdr.tgid,
                comm: comm_str(&e.comm),
                total_vm_bytes: e.total_vm_kb * 1024,
                anon_rss_bytes: e.anon_rss_kb * 1024,
                file_rss_bytes: e.file_rss_kb * 1024,
                shmem_rss_bytes: e.shmem_rss_kb * 1024,
                pgtables_bytes: e.pgtables_kb * 1024,
                uid: e.uid,
                oom_score_adj: e.oom_score_adj,
                ts_ns: e.hdr.ts_ns,
            }))
        }
        _ => return None,
    })
}

/// The drain thread; it stops (and is joined) when this is dropped.
pub struct Drainer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drainer {
    /// Starts draining `events` into the returned channel, and the resident
    /// models' ring into the models when there are any. A process's code
    /// mapping (a dlopen) brings its unwind `tables` up to date here, before
    /// the record goes on: the front end's loop may be in a tick for a while
    /// (a report of a million frames in a debug build takes seconds), and
    /// until the tables hold a new addon, its stacks end at its first frame.
    pub fn start(
        events: RingBuf<MapData>,
        resident: Option<Arc<Mutex<ResidentSet>>>,
        tables: Option<Arc<Mutex<UnwindTables>>>,
    ) -> std::io::Result<(Drainer, UnboundedReceiver<RingEvent>)> {
        let (tx, rx) = unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("offheap-drain".into())
            .spawn(move || pump(events, resident, tables.as_deref(), &tx, &flag))?;
        Ok((
            Drainer {
                stop,
                thread: Some(thread),
            },
            rx,
        ))
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pump(
    mut events: RingBuf<MapData>,
    resident: Option<Arc<Mutex<ResidentSet>>>,
    tables: Option<&Mutex<UnwindTables>>,
    tx: &UnboundedSender<RingEvent>,
    stop: &AtomicBool,
) {
    let mut fds: Vec<RawFd> = vec![events.as_raw_fd()];
    if let Some(set) = &resident {
        fds.push(lock(set).ring_fd());
    }
    while !stop.load(Ordering::SeqCst) {
        while let Some(item) = events.next() {
            if let Some(ev) = decode(&item) {
                if let (&RingEvent::ExecMap { tgid }, Some(tables)) = (&ev, tables) {
                    // Only a process added (a target): the tables know it.
                    if let Err(e) = lock(tables).refresh_process(tgid) {
                        log::debug!(
                            "unwind tables of PID {tgid}: {}",
                            crate::error::one_line(&e)
                        );
                    }
                }
                if tx.send(ev).is_err() {
                    return;
                }
            }
        }
        if let Some(set) = &resident {
            lock(set).drain();
        }
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: valid pollfds; the fds stay open while `events` and the
        // resident set (both owned by this thread) live. A BPF ring buffer's
        // fd polls readable once a record is submitted with the default
        // wakeup.
        unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, POLL_MS) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::EventHeader;

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: viewing a plain repr(C) value as bytes.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_each_kind_and_refuses_truncated_records() {
        let mut e = ProcEvent {
            hdr: EventHeader {
                kind: event_kind::EXIT,
                tgid: 42,
                ts_ns: 7,
            },
            child_tgid: 0,
            exit_code: 3 << 8,
            comm: [0; 16],
        };
        e.comm[..4].copy_from_slice(b"node");
        match decode(&bytes(&e)) {
            Some(RingEvent::Life(LifecycleEvent::Exit {
                tgid: 42,
                wait_status,
                comm,
                ts_ns: 7,
            })) => assert_eq!((wait_status, comm.as_str()), (3 << 8, "node")),
            other => panic!("{other:?}"),
        }
        e.hdr.kind = event_kind::FORK;
        e.child_tgid = 43;
        assert!(matches!(
            decode(&bytes(&e)),
            Some(RingEvent::Life(LifecycleEvent::Fork {
                tgid: 42,
                child: 43,
                ..
            }))
        ));
        let b = bytes(&e);
        assert!(decode(&b[..b.len() - 1]).is_none());
        let v = VmEvent {
            hdr: EventHeader {
                kind: event_kind::MMAP,
                tgid: 9,
                ts_ns: 0,
            },
            ..VmEvent::default()
        };
        assert!(matches!(decode(&bytes(&v)), Some(RingEvent::Vm(ev)) if ev.hdr.tgid == 9));
        assert!(decode(&[99, 0, 0, 0]).is_none());
    }
}
