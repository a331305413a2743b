//! End to end through the userspace TLS passthrough path (the proxy): the cases in `tls_cases/`.
const MODE: &str = "userspace";

#[path = "tls_cases/mod.rs"]
mod cases;
