//! Raw bpf(2) calls for what aya 0.14 has no API for: uprobe_multi links
//! (multi.rs) and batched map operations.
use std::os::fd::RawFd;

use aya_obj::generated::{bpf_attr, bpf_cmd};

/// bpf(2) with `attr`; returns what the command returns (a new fd, or 0).
pub(crate) fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<libc::c_long> {
    // SAFETY: bpf(2) with an attr union of the right size; the callers
    // zero it (`zeroed_attr`) and every pointer they put in it points to
    // memory that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

pub(crate) fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a plain C union for which all-zero is valid (and
    // what the kernel requires of unused fields).
    unsafe { std::mem::zeroed() }
}

/// BPF_MAP_UPDATE_BATCH of a map with u32 keys and u32 values (an array of
/// maps: each value is an inner map's fd). All or an error.
pub(crate) fn update_batch(map: RawFd, keys: &[u32], values: &[u32]) -> std::io::Result<()> {
    assert_eq!(keys.len(), values.len());
    let mut attr = zeroed_attr();
    // Keys and values hold `count` elements and outlive the call.
    attr.batch.map_fd = map as u32;
    attr.batch.keys = keys.as_ptr() as u64;
    attr.batch.values = values.as_ptr() as u64;
    attr.batch.count = keys.len() as u32;
    bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr)?;
    // SAFETY: the kernel wrote back how many elements it updated.
    let done = unsafe { attr.batch.count } as usize;
    if done == keys.len() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "batch update stopped after {done} of {} elements",
            keys.len()
        )))
    }
}
