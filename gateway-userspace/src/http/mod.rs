//! HTTPRoute and GRPCRoute in userspace: the kernel passes packets for HTTP and HTTPS listeners to the local
//! stack, where this proxy serves them.
//!
//! - [`route_table`]: pure matching — listener by Host, best rule by Gateway API precedence, weighted picks;
//! - [`filters`]: pure filter logic (header modifiers, redirect locations, path rewrites);
//! - [`proxy`]: listeners, TLS termination with SNI, the pooled backend client, filters, mirrors, timeouts,
//!   metrics and access logs.
//!
//! The agent owns one [`Proxy`] and calls [`Proxy::update`] with every new IR and [`Proxy::drain`] on shutdown.
pub mod filters;
pub mod proxy;
pub mod route_table;

pub use proxy::{HttpProxyError, Proxy, Settings};
pub use route_table::{RouteTable, RouteTableError};
