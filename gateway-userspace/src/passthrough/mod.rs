//! TLS passthrough in userspace: connections to a TLS listener in Passthrough mode are routed by the SNI of their
//! ClientHello and then forwarded byte for byte (splice(2)) to a backend, which completes the handshake itself.
//!
//! This is the portable path and the reference the in-kernel path is checked against. Pieces:
//! - [`clienthello`]: reassembles the ClientHello across segments and records, extracts the SNI (tls-parser); the
//!   crate `gateway-clienthello`, kept apart so it can be fuzzed on its own;
//! - [`router`]: a listener's SNI table (exact, then wildcards by specificity) and weighted backend picks;
//! - [`proxy`]: listeners, the per-connection state machine, limits, splicing, metrics;
//! - [`proxy_protocol`]: optional PROXY v2 headers towards backends;
//! - [`local_route`]: makes Gateway addresses local so the kernel delivers their packets to our listeners.
//!
//! The agent owns one [`Proxy`] and calls [`Proxy::update`] with every new IR. Design and rules:
//! `docs/tls-passthrough.md`.
pub use gateway_clienthello as clienthello;
pub mod local_route;
pub mod proxy;
pub mod proxy_protocol;
pub mod router;

pub use clienthello::{ClientHello, ClientHelloError};
pub use proxy::{ConnectionError, Proxy, Settings};
pub use router::{RouteError, SniTable};
