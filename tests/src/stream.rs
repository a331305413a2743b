//! Bulk streams with checkable content: word `i` of a stream seeded `seed` is a deterministic function of
//! `seed + i`, so a receiver verifies every byte without a copy of what was sent.
use std::{
    io::{Read, Write},
    net::TcpStream,
};

use anyhow::{ensure, Context, Result};

/// Bytes written or checked per call.
pub const CHUNK: usize = 64 * 1024;

/// Deterministic content: 8-byte word `i` of a stream (splitmix64).
pub fn word(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes `total` bytes (a multiple of [`CHUNK`]) of the stream seeded `seed`.
pub fn send_stream(s: &mut TcpStream, total: usize, seed: u64) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0usize;
    while sent < total {
        for (j, w) in buf.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&word(seed + ((sent / 8) + j) as u64).to_le_bytes());
        }
        s.write_all(&buf)?;
        sent += CHUNK;
    }
    Ok(())
}

/// Reads `total` bytes and checks each against the stream seeded `seed`; returns the bytes read.
pub fn check_stream(s: &mut TcpStream, total: usize, seed: u64) -> Result<usize> {
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0usize;
    while got < total {
        s.read_exact(&mut buf)
            .with_context(|| format!("after {got} bytes"))?;
        for (j, w) in buf.chunks_exact(8).enumerate() {
            let i = (got / 8) + j;
            ensure!(
                u64::from_le_bytes(w.try_into().expect("8 bytes")) == word(seed + i as u64),
                "byte {} differs",
                i * 8
            );
        }
        got += CHUNK;
    }
    Ok(got)
}
