//! HTTPRoute and GRPCRoute in userspace: the kernel passes packets for HTTP and HTTPS listeners to the local
//! stack, where this proxy serves them, one worker thread per core.
//!
//! - [`route_table`]: pure matching — listener by Host, best rule by Gateway API precedence, weighted picks;
//! - [`filters`]: pure filter logic (header modifiers, redirect locations, path rewrites);
//! - [`proxy`]: the agent's handle — listeners opened and closed on every worker, tables and certificates
//!   swapped, drain;
//! - [`worker`]: the worker threads — a current-thread runtime each, `SO_REUSEPORT` listeners, accept loops
//!   and connections;
//! - [`first_read`]: a plaintext connection's first bytes read in one system call;
//! - [`pool`]: a worker's connections to backends (HTTP/1.1 kept alive, h2c multiplexed);
//! - [`series`]: each route table's metric series, resolved when it is built;
//! - [`forward`]: one request's life — routing, filters, mirrors, timeouts, the backend call, metrics and the
//!   access log;
//! - [`tls`]: HTTPS termination, certificates chosen by SNI.
//!
//! The agent owns one [`Proxy`] and calls [`Proxy::update`] with every new IR and [`Proxy::drain`] on shutdown.
pub mod filters;
pub mod first_read;
pub mod forward;
pub mod pool;
pub mod proxy;
pub mod route_table;
pub mod series;
pub mod tls;
pub mod worker;

pub use proxy::{HttpProxyError, Proxy, Settings};
pub use route_table::{RouteTable, RouteTableError};
