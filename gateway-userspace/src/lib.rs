//! The `gateway` agent as a library: Gateway API model and translation (pure), providers, the eBPF data plane,
//! the admin endpoint, and the agent loop that ties them together.
//!
//! An object travels: `provider` (YAML files or Kubernetes) -> `snapshot::Snapshot` -> `translate::translate`
//! -> (`ir::Ir`, status) -> `dataplane` (kernel maps) and `admin` (`GET /status`).
pub mod admin;
pub mod agent;
pub mod dataplane;
pub mod http;
pub mod ir;
pub mod loadtest;
pub mod local_address;
pub mod model;
pub mod passthrough;
pub mod provider;
pub mod snapshot;
pub mod status;
pub mod translate;
pub mod validate;
