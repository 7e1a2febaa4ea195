//! Keys of `unwind_mappings`: a process's executable mappings as prefixes of
//! (tgid, address), the way an LPM trie matches them.
use aya::maps::lpm_trie::Key;
use tracer_common::{unwind_map_kind, UnwindMapping};

/// The 12 data bytes of a key: tgid then address, big-endian (an LPM trie
/// matches bytes in order, most significant bit first).
pub type KeyData = [u8; 12];

/// Bits of the tgid, matched before the address bits.
const TGID_BITS: u32 = 32;

pub fn key(tgid: u32, addr: u64, addr_bits: u32) -> Key<KeyData> {
    let mut d = [0u8; 12];
    d[..4].copy_from_slice(&tgid.to_be_bytes());
    d[4..].copy_from_slice(&addr.to_be_bytes());
    Key::new(TGID_BITS + addr_bits, d)
}

/// [start, end) as aligned power-of-two blocks, each `(address, bits)`:
/// `bits` leading address bits fixed. At most ~2 * 64 blocks, ~2 * log2 of
/// the pages in practice.
pub fn blocks(start: u64, end: u64) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    let mut a = start;
    while a < end {
        let mut size_log = if a == 0 {
            63
        } else {
            a.trailing_zeros().min(63)
        };
        while size_log > 0 && (end - a) < (1u64 << size_log) {
            size_log -= 1;
        }
        out.push((a, 64 - size_log));
        match a.checked_add(1u64 << size_log) {
            Some(n) => a = n,
            None => break,
        }
    }
    out
}

/// The value of the per-process catch-all entry (the tgid alone): an
/// address under no longer prefix is in no executable mapping. start ==
/// end, so a walker never caches it.
pub fn catch_all() -> UnwindMapping {
    UnwindMapping {
        kind: unwind_map_kind::NONE,
        ..UnwindMapping::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_range_exactly_with_aligned_powers_of_two() {
        for (start, end) in [
            (0x7f00_0000_1000u64, 0x7f00_0000_2000u64),
            (0x5555_5555_4000, 0x5555_5559_b000),
            (0x400000, 0x25fe000),
            (0x7fff_f7fc_3000, 0x7fff_f7fe_9000),
        ] {
            let b = blocks(start, end);
            let mut at = start;
            for &(a, bits) in &b {
                let size = 1u64 << (64 - bits);
                assert_eq!(a, at);
                assert_eq!(a % size, 0, "{a:#x} not aligned to {size:#x}");
                at = a + size;
            }
            assert_eq!(at, end);
            assert!(b.len() <= 2 * 52, "{}", b.len());
        }
        assert_eq!(blocks(0x1000, 0x3000), vec![(0x1000, 52), (0x2000, 52)]);
        assert_eq!(blocks(0x2000, 0x4000), vec![(0x2000, 51)]);
    }

    #[test]
    fn keys_are_big_endian_tgid_then_address() {
        let k = key(0x01020304, 0x1122_3344_5566_7788, 52);
        // SAFETY: Key<[u8; 12]> is repr(C, packed): u32 prefix_len, then data.
        let raw: [u8; 16] = unsafe { std::mem::transmute(k) };
        assert_eq!(u32::from_ne_bytes(raw[..4].try_into().unwrap()), 84);
        assert_eq!(
            &raw[4..],
            &[1, 2, 3, 4, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
        );
    }
}
