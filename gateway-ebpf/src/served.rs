//! The first decision on a parsed packet: could the kernel path have work for it? Only packets to a served port
//! (an L4 or kernel TLS listener's, or an open flow's) or to an SNAT port (a flow's reply direction) go on to
//! conntrack and the listener table; everything else (the HTTP proxy's and the userspace TLS proxy's traffic, the
//! node's own) goes to the local stack with no map lookup but two array reads.
use gateway_common::{served_ports, Config, FlowKey};

use crate::maps::SERVED_PORTS;

#[inline(always)]
pub fn is_served(key: &FlowKey, config: &Config) -> bool {
    let port = u16::from_be(key.dport);
    if port >= config.snat_port_min && port <= config.snat_port_max {
        return true;
    }
    let Some((word, bit)) = served_ports::slot(key.proto, port) else {
        return false;
    };
    SERVED_PORTS.get(word).is_some_and(|w| *w & bit != 0)
}
