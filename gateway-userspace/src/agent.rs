//! The agent loop: provider snapshots in, translation, data plane sync and status out.
