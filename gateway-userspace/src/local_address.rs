//! Local routes that make Gateway addresses deliverable to the agent's userspace listeners (TLS passthrough,
//! HTTP proxy).
//!
//! Gateway addresses are not assigned to any interface (the kernel path answers for them without one). Packets
//! the TC program does not forward go to the local stack, which drops them unless the address is local. A
//! `local` route in the `local` table — what `ip route add local 198.18.100.1/32 dev lo table local` does — makes
//! it local without an interface address (so it is not announced by ARP on every interface, and no interface
//! configuration is touched).
//!
//! Several proxies need addresses: each holds a [`Claim`] on one shared [`LocalAddresses`] and syncs its own
//! wanted set; the kernel gets the union, so one proxy dropping an address never removes it from under another.
//!
//! This module shells out to `ip` (iproute2) instead of speaking rtnetlink: two commands per address change, a
//! few lines of code, and no netlink dependency tree on a 2-core build machine. Our routes are tagged with the
//! route protocol [`ROUTE_PROTOCOL`], so an agent that restarts (even after `kill -9`) finds and removes the ones
//! it no longer needs ([`LocalAddresses::adopt`]) and never touches routes someone else made.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    process::Command,
    sync::{Arc, Mutex},
};

/// The `proto` number our local routes carry (free in `/etc/iproute2/rt_protos`; 250 is below the 252+ reserved
/// range used by common daemons).
pub const ROUTE_PROTOCOL: &str = "250";

/// Errors of this area.
#[derive(Debug, thiserror::Error)]
pub enum LocalRouteError {
    #[error("running `ip {args}`: {source}")]
    Spawn {
        args: String,
        source: std::io::Error,
    },
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
}

#[derive(Debug, Default)]
struct Inner {
    /// Addresses with a route now.
    installed: BTreeSet<IpAddr>,
    /// What each owner wants.
    wanted: BTreeMap<String, BTreeSet<IpAddr>>,
}

/// The local routes of this agent, shared by every owner (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct LocalAddresses {
    inner: Arc<Mutex<Inner>>,
}

/// One owner's share of [`LocalAddresses`].
#[derive(Debug)]
pub struct Claim {
    shared: LocalAddresses,
    owner: String,
}

impl LocalAddresses {
    /// Starts from the routes a previous agent left (tagged with our protocol), so the first sync removes stale
    /// ones. [`Default`] starts empty (tests).
    pub fn adopt() -> Self {
        let mut installed = BTreeSet::new();
        for family in ["-4", "-6"] {
            match ip(&[
                family,
                "route",
                "show",
                "table",
                "local",
                "proto",
                ROUTE_PROTOCOL,
            ]) {
                Ok(out) => installed.extend(out.lines().filter_map(parse_route_line)),
                Err(e) => tracing::debug!(error = %e, "listing local routes"),
            }
        }
        let inner = Inner {
            installed,
            wanted: BTreeMap::new(),
        };
        Self {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    /// A claim for `owner` (e.g. `"tls-passthrough"`, `"http"`).
    pub fn claim(&self, owner: &str) -> Claim {
        Claim {
            shared: self.clone(),
            owner: owner.to_string(),
        }
    }

    /// Addresses with a route now.
    pub fn installed(&self) -> BTreeSet<IpAddr> {
        self.inner
            .lock()
            .expect("local addresses lock")
            .installed
            .clone()
    }

    fn sync(&self, owner: &str, wanted: &BTreeSet<IpAddr>) -> Result<(), LocalRouteError> {
        let mut inner = self.inner.lock().expect("local addresses lock");
        inner.wanted.insert(owner.to_string(), wanted.clone());
        let union: BTreeSet<IpAddr> = inner.wanted.values().flatten().copied().collect();
        let mut first_error = None;
        for addr in union.difference(&inner.installed.clone()) {
            match route_cmd("replace", *addr) {
                Ok(()) => {
                    tracing::info!(address = %addr, %owner, "local route added");
                    inner.installed.insert(*addr);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        for addr in inner.installed.clone().difference(&union) {
            match route_cmd("del", *addr) {
                Ok(()) => {
                    tracing::info!(address = %addr, "local route removed");
                    inner.installed.remove(addr);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Claim {
    /// Sets this owner's wanted addresses: routes are added for new ones and removed for ones no owner wants.
    /// Failures are returned after every address was attempted; successful changes stay.
    pub fn sync(&mut self, wanted: &BTreeSet<IpAddr>) -> Result<(), LocalRouteError> {
        self.shared.sync(&self.owner, wanted)
    }

    /// Addresses with a route now (for any owner).
    pub fn installed(&self) -> BTreeSet<IpAddr> {
        self.shared.installed()
    }
}

fn parse_route_line(line: &str) -> Option<IpAddr> {
    // "local 198.18.100.1 dev lo proto 250 scope host"
    let mut words = line.split_whitespace();
    (words.next()? == "local").then_some(())?;
    words.next()?.split('/').next()?.parse().ok()
}

fn route_cmd(verb: &str, addr: IpAddr) -> Result<(), LocalRouteError> {
    let prefix = if addr.is_ipv4() {
        format!("{addr}/32")
    } else {
        format!("{addr}/128")
    };
    ip(&[
        "route",
        verb,
        "local",
        &prefix,
        "dev",
        "lo",
        "table",
        "local",
        "proto",
        ROUTE_PROTOCOL,
    ])
    .map(|_| ())
}

fn ip(args: &[&str]) -> Result<String, LocalRouteError> {
    let joined = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| LocalRouteError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(LocalRouteError::Failed {
            args: joined,
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_route_output() {
        assert_eq!(
            parse_route_line("local 198.18.100.1 dev lo proto 250 scope host"),
            "198.18.100.1".parse().ok()
        );
        assert_eq!(
            parse_route_line("local 2001:db8::1 dev lo proto 250 metric 1024 pref medium"),
            "2001:db8::1".parse().ok()
        );
        assert_eq!(parse_route_line("broadcast 127.255.255.255 dev lo"), None);
    }
}
