//! Locking shared state across the tracer's threads.
use std::sync::{Mutex, MutexGuard};

/// Locks `m`, going on past a poisoned lock: the state each of offheap's
/// mutexes guards (the resident models, the unwind tables, a V8 resolution
/// cache) is left by a panic as consistent as by an update that stopped
/// between two records, and losing the trace to it would lose more.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
