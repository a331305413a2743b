//! Conntrack expiry: the kernel only creates and touches flow entries; the agent removes those whose timeout
//! has passed, both directions together. Timeouts follow the TCP state bits the kernel recorded.
use std::time::Duration;

use std::collections::{BTreeSet, HashMap};

use aya::maps::{HashMap as BpfHashMap, MapData};
use gateway_common::{direction, tcp_seen, Flow, FlowKey, PROTO_TCP};

use super::{map_err, DataplaneError};

/// How long an idle flow is kept, by state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP before the backend answered the SYN (half-open).
    pub tcp_syn: Duration,
    /// TCP established in both directions.
    pub tcp_established: Duration,
    /// TCP after a RST, or after FIN in both directions.
    pub tcp_closing: Duration,
    /// TCP closed by FINs when the backend closed first, while the table is at most half full: the backend holds
    /// the 4-tuple in TIME_WAIT (60 s on Linux) that long, and the entries are what lets the kernel give the
    /// SNAT port only to a SYN that TIME_WAIT accepts (see the eBPF `flow` module). Under pressure,
    /// `tcp_closing` applies.
    pub tcp_time_wait: Duration,
    /// UDP since the last datagram in either direction.
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(3600),
            tcp_closing: Duration::from_secs(10),
            tcp_time_wait: Duration::from_secs(65),
            udp: Duration::from_secs(60),
        }
    }
}

/// Traffic of the flows of one listener, route or backend. Index 0 is the original direction (client to
/// backend), 1 the reply direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// Flows present now (not expired).
    pub active_flows: u64,
    /// Flows ever admitted that the agent has seen (active + expired).
    pub flows: u64,
}

impl Traffic {
    fn add_entry(&mut self, flow: &Flow) {
        let d = (flow.direction == direction::REPLY) as usize;
        self.packets[d] += flow.packets;
        self.bytes[d] += flow.bytes;
        if flow.direction == direction::ORIGINAL {
            self.flows += 1;
        }
    }

    fn add(&mut self, other: &Traffic) {
        for d in 0..2 {
            self.packets[d] += other.packets[d];
            self.bytes[d] += other.bytes[d];
        }
        self.flows += other.flows;
        self.active_flows += other.active_flows;
    }
}

/// Traffic by listener, route and backend id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowTotals {
    pub listeners: HashMap<u32, Traffic>,
    pub routes: HashMap<u32, Traffic>,
    pub backends: HashMap<u32, Traffic>,
}

impl FlowTotals {
    fn add_entry(&mut self, flow: &Flow, active: bool) {
        for (map, id) in [
            (&mut self.listeners, flow.listener_id),
            (&mut self.routes, flow.route_id),
            (&mut self.backends, flow.backend_id),
        ] {
            let t = map.entry(id).or_default();
            t.add_entry(flow);
            if active && flow.direction == direction::ORIGINAL {
                t.active_flows += 1;
            }
        }
    }

    fn merged(&self, other: &FlowTotals) -> FlowTotals {
        let mut out = self.clone();
        for (mine, theirs) in [
            (&mut out.listeners, &other.listeners),
            (&mut out.routes, &other.routes),
            (&mut out.backends, &other.backends),
        ] {
            for (id, t) in theirs {
                mine.entry(*id).or_default().add(t);
            }
        }
        out
    }
}

/// Result of one sweep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Entries present after the sweep (two per flow).
    pub entries: u64,
    /// Flows removed by this sweep.
    pub expired_flows: u64,
    /// Traffic of every flow seen so far: the expired ones' final counts plus the active ones' current counts.
    pub totals: FlowTotals,
    /// (protocol, destination port in host order) of every flow left, as its client addressed it: the ports the
    /// kernel path must keep serving even when their listener is gone.
    pub flow_ports: BTreeSet<(u8, u16)>,
}

/// The timeout that applies to a flow given both directions' entries.
pub fn timeout_for(original: &Flow, reply: Option<&Flow>, proto: u8, t: &Timeouts) -> Duration {
    if proto != PROTO_TCP {
        return t.udp;
    }
    let reply_bits = reply.map(|r| r.tcp_flags).unwrap_or(0);
    let bits = original.tcp_flags | reply_bits;
    if bits & tcp_seen::RST != 0 {
        t.tcp_closing
    } else if original.tcp_flags & tcp_seen::FIN != 0 && reply_bits & tcp_seen::FIN != 0 {
        if reply_bits & tcp_seen::FIN_FIRST != 0 {
            t.tcp_time_wait
        } else {
            t.tcp_closing
        }
    } else if reply_bits & tcp_seen::SYN_ACK == 0 {
        t.tcp_syn
    } else {
        t.tcp_established
    }
}

pub(crate) fn now_ns() -> u64 {
    // bpf_ktime_get_ns() is CLOCK_MONOTONIC.
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Removes expired flows from `flows`, moving their final counts into `closed`.
pub fn sweep(
    flows: &mut BpfHashMap<MapData, FlowKey, Flow>,
    capacity: u32,
    t: &Timeouts,
    closed: &mut FlowTotals,
) -> Result<Sweep, DataplaneError> {
    let now = now_ns();
    let entries: Vec<(FlowKey, Flow)> = flows.iter().filter_map(Result::ok).collect();
    let pressure = Timeouts {
        tcp_time_wait: t.tcp_closing,
        ..t.clone()
    };
    let t = if entries.len() > capacity as usize / 2 {
        &pressure
    } else {
        t
    };
    let by_key: HashMap<FlowKey, Flow> = entries.iter().copied().collect();
    let mut doomed = Vec::new();
    for (key, flow) in &entries {
        if flow.direction != direction::ORIGINAL {
            continue;
        }
        let peer = flow.peer_key(key.proto);
        let reply = by_key.get(&peer);
        let last = flow
            .last_seen_ns
            .max(reply.map(|r| r.last_seen_ns).unwrap_or(0));
        let timeout = timeout_for(flow, reply, key.proto, t);
        if now.saturating_sub(last) > timeout.as_nanos() as u64 {
            doomed.push(*key);
            if reply.is_some() {
                doomed.push(peer);
            }
        }
    }
    // Reply entries whose original is gone (e.g. a lost admission race) expire on their own timestamp.
    let originals: std::collections::HashSet<FlowKey> = entries
        .iter()
        .filter(|(_, f)| f.direction == direction::ORIGINAL)
        .map(|(k, f)| f.peer_key(k.proto))
        .collect();
    for (key, flow) in &entries {
        // An orphan left by a client that reopened its 4-tuple keeps the record of a backend TIME_WAIT.
        let timeout = if flow.tcp_flags & tcp_seen::FIN_FIRST != 0 {
            t.tcp_time_wait
        } else {
            t.tcp_syn
        };
        if flow.direction == direction::REPLY
            && !originals.contains(key)
            && now.saturating_sub(flow.last_seen_ns) > timeout.as_nanos() as u64
        {
            doomed.push(*key);
        }
    }
    let mut expired_flows = 0;
    for key in &doomed {
        match flows.remove(key) {
            Ok(()) => {
                if let Some(flow) = by_key.get(key) {
                    closed.add_entry(flow, false);
                    if flow.direction == direction::ORIGINAL {
                        expired_flows += 1;
                    }
                }
            }
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err("FLOWS")(e)),
        }
    }
    let doomed: std::collections::HashSet<FlowKey> = doomed.into_iter().collect();
    let mut active = FlowTotals::default();
    let mut flow_ports = BTreeSet::new();
    for (key, flow) in &entries {
        if !doomed.contains(key) {
            active.add_entry(flow, true);
            if flow.direction == direction::ORIGINAL {
                flow_ports.insert((key.proto, u16::from_be(key.dport)));
            }
        }
    }
    Ok(Sweep {
        entries: (entries.len() - doomed.len()) as u64,
        expired_flows,
        totals: closed.merged(&active),
        flow_ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(dir: u8, bits: u8) -> Flow {
        Flow {
            direction: dir,
            tcp_flags: bits,
            ..Default::default()
        }
    }

    #[test]
    fn tcp_timeouts_follow_state() {
        let t = Timeouts::default();
        let syn = flow(direction::ORIGINAL, tcp_seen::SYN);
        assert_eq!(timeout_for(&syn, None, PROTO_TCP, &t), t.tcp_syn);
        let est_reply = flow(direction::REPLY, tcp_seen::SYN_ACK | tcp_seen::ESTABLISHED);
        let est = flow(direction::ORIGINAL, tcp_seen::SYN | tcp_seen::ESTABLISHED);
        assert_eq!(
            timeout_for(&est, Some(&est_reply), PROTO_TCP, &t),
            t.tcp_established
        );
        let half_closed = flow(
            direction::ORIGINAL,
            tcp_seen::SYN | tcp_seen::ESTABLISHED | tcp_seen::FIN,
        );
        assert_eq!(
            timeout_for(&half_closed, Some(&est_reply), PROTO_TCP, &t),
            t.tcp_established
        );
        let fin_reply = flow(direction::REPLY, tcp_seen::SYN_ACK | tcp_seen::FIN);
        assert_eq!(
            timeout_for(&half_closed, Some(&fin_reply), PROTO_TCP, &t),
            t.tcp_closing
        );
        // The backend closed first: its TIME_WAIT lasts a minute, and so does the record of the port.
        let first_fin_reply = flow(
            direction::REPLY,
            tcp_seen::SYN_ACK | tcp_seen::FIN | tcp_seen::FIN_FIRST,
        );
        assert_eq!(
            timeout_for(&half_closed, Some(&first_fin_reply), PROTO_TCP, &t),
            t.tcp_time_wait
        );
        let rst = flow(direction::ORIGINAL, tcp_seen::SYN | tcp_seen::RST);
        assert_eq!(
            timeout_for(&rst, Some(&est_reply), PROTO_TCP, &t),
            t.tcp_closing
        );
    }

    #[test]
    fn udp_uses_udp_timeout() {
        let t = Timeouts::default();
        assert_eq!(
            timeout_for(&flow(direction::ORIGINAL, 0), None, 17, &t),
            t.udp
        );
    }
}

#[cfg(test)]
mod totals_tests {
    use super::*;

    #[test]
    fn totals_add_both_directions_and_count_flows_once() {
        let mut totals = FlowTotals::default();
        let original = Flow {
            direction: direction::ORIGINAL,
            listener_id: 1,
            route_id: 2,
            backend_id: 3,
            packets: 10,
            bytes: 1000,
            ..Default::default()
        };
        let reply = Flow {
            direction: direction::REPLY,
            packets: 8,
            bytes: 9000,
            ..original
        };
        totals.add_entry(&original, true);
        totals.add_entry(&reply, true);
        let l = totals.listeners[&1];
        assert_eq!(
            (l.packets, l.bytes, l.flows, l.active_flows),
            ([10, 8], [1000, 9000], 1, 1)
        );
        assert_eq!(totals.routes[&2], l);
        assert_eq!(totals.backends[&3], l);
        let closed = FlowTotals::default().merged(&totals);
        assert_eq!(closed.merged(&totals).listeners[&1].flows, 2);
    }
}
