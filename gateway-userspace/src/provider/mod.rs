//! Providers turn a source of objects into [`Snapshot`](crate::snapshot::Snapshot)s. Standalone mode reads YAML
//! files ([`file`]).
pub mod file;
