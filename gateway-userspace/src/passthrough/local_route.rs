//! Local routes for TLS passthrough addresses: a [`Claim`] named `tls-passthrough` on the agent's shared
//! [`crate::local_address::LocalAddresses`] (see there for how Gateway addresses are made local).
use crate::local_address::{Claim, LocalAddresses};
pub use crate::local_address::{LocalRouteError, ROUTE_PROTOCOL};
use std::{collections::BTreeSet, net::IpAddr};

/// The owner name of the passthrough proxy's claim.
pub const OWNER: &str = "tls-passthrough";

/// The passthrough proxy's local routes.
#[derive(Debug)]
pub struct LocalRoutes {
    claim: Claim,
}

impl Default for LocalRoutes {
    /// An empty, private set (tests).
    fn default() -> Self {
        LocalAddresses::default().into()
    }
}

impl From<LocalAddresses> for LocalRoutes {
    /// The passthrough claim on a shared set (the agent shares one with the HTTP proxy).
    fn from(shared: LocalAddresses) -> Self {
        Self {
            claim: shared.claim(OWNER),
        }
    }
}

impl LocalRoutes {
    /// A private set starting from the routes a previous agent left (see [`LocalAddresses::adopt`]).
    pub fn adopt() -> Self {
        LocalAddresses::adopt().into()
    }

    /// Adds routes for addresses in `wanted` and removes the ones no owner wants any more.
    pub fn sync(&mut self, wanted: &BTreeSet<IpAddr>) -> Result<(), LocalRouteError> {
        self.claim.sync(wanted)
    }

    /// Addresses with a route now.
    pub fn installed(&self) -> BTreeSet<IpAddr> {
        self.claim.installed()
    }
}
