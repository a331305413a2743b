//! Internet checksums of frames the program builds from scratch (RST, ICMP errors). Rewrites of existing packets
//! use the kernel's incremental `bpf_l3_csum_replace`/`bpf_l4_csum_replace` instead.

/// One's-complement sum of `len` bytes of `frame` from `off`, as big-endian 16-bit words, plus `init`.
#[inline(always)]
pub fn sum_words<const N: usize>(frame: &[u8; N], off: usize, len: usize, init: u32) -> u32 {
    let mut sum = init;
    let mut i = 0;
    while i + 1 < len && off + i + 1 < N {
        sum += ((frame[off + i] as u32) << 8) | frame[off + i + 1] as u32;
        i += 2;
    }
    sum
}

/// Folds a sum into the 16-bit one's-complement checksum.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
