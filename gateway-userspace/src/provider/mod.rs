//! Providers turn a source of objects into [`Snapshot`](crate::snapshot::Snapshot)s. Standalone mode reads YAML
//! files ([`file`]); in a cluster, the `kubernetes` feature adds kube-rs watches (`kubernetes`).
pub mod file;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
