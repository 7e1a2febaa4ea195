//! The BPF object compiled by build.rs, embedded in the binary.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/offheap.bpf.o"));
