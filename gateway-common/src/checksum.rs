//! Internet checksum arithmetic (RFC 1071, incremental updates after RFC 1624) for the XDP path, which rewrites
//! packets by direct access and has no `bpf_l3_csum_replace`/`bpf_l4_csum_replace`. Pure functions, tested
//! here against checksums computed from scratch.
//!
//! Values are *raw*: 16-bit words and 32-bit addresses as a little-endian load from packet memory gives them,
//! the form the kernel program and the map keys hold them in. One's-complement sums do not depend on byte order
//! as long as every word is read the same way, so no byte is swapped on the hot path.

/// Folds a 32-bit one's-complement accumulator into 16 bits (not complemented).
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds a raw 32-bit value (e.g. an IPv4 address) to an accumulator as its two 16-bit words.
#[inline(always)]
pub fn add32(sum: u32, value: u32) -> u32 {
    sum + (value & 0xffff) + (value >> 16)
}

/// The checksum `check` (as stored in the packet) after a 16-bit word it covers changed from `old` to `new`
/// (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`).
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(!check as u32 + !old as u32 + new as u32)
}

/// [`replace16`] for a 32-bit field (an address), word by word.
#[inline(always)]
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let sum = !check as u32 + (!old & 0xffff) + (!old >> 16);
    !fold(add32(sum, new))
}

/// The sum of an IPv4 TCP/UDP pseudo-header (addresses, protocol, L4 length), not folded. `l4_len` is in host
/// order; `src`/`dst` are raw.
#[inline(always)]
pub fn pseudo_header_sum(src: u32, dst: u32, proto: u8, l4_len: u16) -> u32 {
    let sum = add32(add32(0, src), dst);
    sum + (proto as u16).to_be() as u32 + l4_len.to_be() as u32
}

/// Whether `check` is what a sender that leaves the checksum to the device (`CHECKSUM_PARTIAL`) puts in the
/// L4 checksum field: the folded pseudo-header sum, not complemented, for the device to finish over the
/// segment. A complete checksum equals it by chance once in 65,535 packets; completing such a packet's checksum
/// gives the same checksum back (the segment's sum with a valid checksum in it is the pseudo-header's negation).
#[inline(always)]
pub fn is_partial_seed(check: u16, pseudo_sum: u32) -> bool {
    let seed = fold(pseudo_sum);
    check == seed || (check == 0 && seed == 0xffff) || (check == 0xffff && seed == 0)
}

/// A UDP checksum after an update: 0 means "no checksum" in IPv4, so a computed 0 is sent as 0xffff (its
/// one's-complement equal), as the kernel does (`CSUM_MANGLED_0`).
#[inline(always)]
pub fn udp_nonzero(check: u16) -> u16 {
    if check == 0 {
        0xffff
    } else {
        check
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// Raw words of `bytes` (little-endian loads, odd tail zero-padded), as the kernel reads them.
    fn raw_sum(bytes: &[u8]) -> u32 {
        bytes
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
            .sum()
    }

    fn raw_u32(b: [u8; 4]) -> u32 {
        u32::from_le_bytes(b)
    }

    /// A TCP-like segment's checksum from scratch: pseudo-header plus the segment with the field zeroed.
    fn full_l4(src: [u8; 4], dst: [u8; 4], segment: &[u8], check_at: usize) -> u16 {
        let mut seg = segment.to_vec();
        seg[check_at] = 0;
        seg[check_at + 1] = 0;
        let pseudo = pseudo_header_sum(raw_u32(src), raw_u32(dst), 6, seg.len() as u16);
        !fold(pseudo + raw_sum(&seg))
    }

    fn segment(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(&sport.to_be_bytes());
        s.extend_from_slice(&dport.to_be_bytes());
        s.extend_from_slice(&[
            0, 0, 3, 232, 0, 0, 19, 136, 0x50, 0x10, 0xfa, 0xf0, 0, 0, 0, 0,
        ]);
        s.extend_from_slice(payload);
        s
    }

    fn load16(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    #[test]
    fn nat_of_addresses_and_ports_matches_a_checksum_from_scratch() {
        for payload in [&b""[..], b"x", b"hello through the kernel", &[0xff; 1461]] {
            let (src, dst) = ([198, 18, 0, 2], [198, 18, 100, 1]);
            let mut seg = segment(40000, 9000, payload);
            let check = full_l4(src, dst, &seg, 16);
            seg[16..18].copy_from_slice(&check.to_le_bytes());

            let (new_src, new_dst) = ([198, 18, 11, 1], [198, 18, 11, 2]);
            let (new_sport, new_dport) = (12345u16, 3000u16);
            let mut c = load16(&seg, 16);
            c = replace32(c, raw_u32(src), raw_u32(new_src));
            c = replace32(c, raw_u32(dst), raw_u32(new_dst));
            c = replace16(c, load16(&seg, 0), new_sport.to_be());
            c = replace16(c, load16(&seg, 2), new_dport.to_be());

            let mut rewritten = segment(new_sport, new_dport, payload);
            rewritten[16..18].copy_from_slice(&c.to_le_bytes());
            assert_eq!(
                c,
                full_l4(new_src, new_dst, &rewritten, 16),
                "payload of {} bytes",
                payload.len()
            );
        }
    }

    #[test]
    fn ip_header_checksum_update_matches_a_recomputation() {
        let mut h = [
            0x45u8, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 2, 198, 18, 100, 1,
        ];
        let fresh = |h: &[u8; 20]| {
            let mut z = *h;
            z[10] = 0;
            z[11] = 0;
            !fold(raw_sum(&z))
        };
        let c = fresh(&h);
        h[10..12].copy_from_slice(&c.to_le_bytes());
        let old = raw_u32([198, 18, 100, 1]);
        let new = raw_u32([198, 18, 11, 2]);
        let updated = replace32(load16(&h, 10), old, new);
        h[16..20].copy_from_slice(&[198, 18, 11, 2]);
        assert_eq!(updated, fresh(&h));
    }

    #[test]
    fn a_partial_seed_is_recognised_and_completing_it_gives_the_full_checksum() {
        let (src, dst) = ([198, 18, 0, 2], [198, 18, 100, 1]);
        let mut seg = segment(40000, 9000, b"left for the device to finish");
        let pseudo = pseudo_header_sum(raw_u32(src), raw_u32(dst), 6, seg.len() as u16);
        // What Linux writes for CHECKSUM_PARTIAL: ~csum_tcpudp_magic(..) = the folded pseudo-header sum.
        let seed = fold(pseudo);
        seg[16..18].copy_from_slice(&seed.to_le_bytes());
        assert!(is_partial_seed(load16(&seg, 16), pseudo));
        // The device's job: sum the segment as it is (the seed stands in for the pseudo-header).
        let completed = !fold(raw_sum(&seg));
        assert_eq!(completed, full_l4(src, dst, &seg, 16));
        // A complete checksum is not taken for a seed.
        assert!(!is_partial_seed(completed, pseudo));
    }

    #[test]
    fn udp_zero_is_never_produced() {
        assert_eq!(udp_nonzero(0), 0xffff);
        assert_eq!(udp_nonzero(0x1234), 0x1234);
    }
}
