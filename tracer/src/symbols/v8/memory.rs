//! Reading a live process's memory, and V8's tagged values in it.
use std::io;

/// Bytes of another process (or of a test's fake heap).
pub trait Memory {
    /// Fills `buf` from `addr`, or fails (unmapped, process gone) as a whole.
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()>;

    fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_u32(&self, addr: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn read_u16(&self, addr: u64) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.read(addr, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
}

/// A process's memory through process_vm_readv(2): no file descriptor to
/// keep, and the same ptrace access check as /proc/PID/mem (root, or
/// CAP_SYS_PTRACE, passes it).
#[derive(Clone, Copy, Debug)]
pub struct ProcessMemory {
    pub pid: u32,
}

impl Memory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` points to `buf`, valid for writes of its length;
        // the remote address is only read by the kernel, checked there.
        let n =
            unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // A read that crosses into an unmapped page stops short.
        if n as usize != buf.len() {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        Ok(())
    }
}

/// V8's x64 tagging without pointer compression (include/v8-internal.h):
/// a heap object pointer ends in 0b01, a Smi has a clear low bit and its
/// value in the upper 32 bits. `V8Metadata::from_elf` refuses other builds.
pub const HEAP_OBJECT_TAG: u64 = 1;
pub const HEAP_OBJECT_TAG_MASK: u64 = 3;

pub fn is_heap_object(v: u64) -> bool {
    v & HEAP_OBJECT_TAG_MASK == HEAP_OBJECT_TAG
}

pub fn is_smi(v: u64) -> bool {
    v & 1 == 0
}

/// The Smi's value, None when `v` is not a Smi.
pub fn smi_value(v: u64) -> Option<i32> {
    is_smi(v).then_some((v >> 32) as i32)
}

/// The object's untagged address, None when `v` is not a heap object pointer.
pub fn untag(v: u64) -> Option<u64> {
    is_heap_object(v).then_some(v & !HEAP_OBJECT_TAG_MASK)
}
