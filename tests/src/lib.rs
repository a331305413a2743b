//! Test harness for the gateway: network namespaces and a client → gateway →
//! backends topology, conformance-style echo backends (HTTP, TCP, TLS, UDP), a
//! throw-away PKI, blocking protocol clients, a runner for the `gateway` binary,
//! and socket inspection.
//!
//! Everything a test creates (namespaces, veths, processes, bpffs directories)
//! is removed on drop, also when the test panics; leftovers of killed test
//! processes are removed at the next first use ([`netns::cleanup_stale`]).
//! Tests need root.

pub mod attachments;
pub mod clients;
pub mod conformance;
pub mod echo;
pub mod gateway;
pub mod http_checks;
pub mod manifests;
pub mod netns;
pub mod netstat;
pub mod pki;
pub mod server;
pub mod sockets;
pub mod stream;
pub mod topology;

pub use echo::{spawn_echo, EchoConfig, EchoServer};
pub use gateway::GatewayProcess;
pub use netns::{Netns, Process};
pub use pki::Pki;
pub use topology::Topology;
