//! End to end through the in-kernel TLS passthrough path (handshake, ClientHello capture, SNI routing and splice
//! in the eBPF program): the same cases as the userspace path (`tls_cases/`), plus what only the kernel path
//! promises (no socket per connection).
const MODE: &str = "kernel";

#[path = "tls_cases/mod.rs"]
mod cases;
