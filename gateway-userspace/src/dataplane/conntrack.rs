//! Conntrack expiry: the kernel only creates and touches flow entries; the agent removes those whose timeout
//! has passed, both directions together. Timeouts follow the TCP state bits the kernel recorded.
use std::time::Duration;

use aya::maps::{HashMap, MapData};
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
    /// UDP since the last datagram in either direction.
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(3600),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(60),
        }
    }
}

/// Result of one sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Entries present after the sweep (two per flow).
    pub entries: u64,
    /// Flows removed by this sweep.
    pub expired_flows: u64,
}

/// The timeout that applies to a flow given both directions' entries.
pub fn timeout_for(original: &Flow, reply: Option<&Flow>, proto: u8, t: &Timeouts) -> Duration {
    if proto != PROTO_TCP {
        return t.udp;
    }
    let reply_bits = reply.map(|r| r.tcp_flags).unwrap_or(0);
    let bits = original.tcp_flags | reply_bits;
    if bits & tcp_seen::RST != 0 || (original.tcp_flags & tcp_seen::FIN != 0 && reply_bits & tcp_seen::FIN != 0) {
        t.tcp_closing
    } else if reply_bits & tcp_seen::SYN_ACK == 0 {
        t.tcp_syn
    } else {
        t.tcp_established
    }
}

fn now_ns() -> u64 {
    // bpf_ktime_get_ns() is CLOCK_MONOTONIC.
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Removes expired flows from `flows`.
pub fn sweep(flows: &mut HashMap<MapData, FlowKey, Flow>, t: &Timeouts) -> Result<Sweep, DataplaneError> {
    let now = now_ns();
    let entries: Vec<(FlowKey, Flow)> = flows.iter().filter_map(Result::ok).collect();
    let by_key: std::collections::HashMap<FlowKey, Flow> = entries.iter().copied().collect();
    let mut doomed = Vec::new();
    for (key, flow) in &entries {
        if flow.direction != direction::ORIGINAL {
            continue;
        }
        let peer = FlowKey { src: flow.new_dst, dst: flow.new_src, sport: flow.new_dport, dport: flow.new_sport, proto: key.proto, _pad: [0; 3] };
        let reply = by_key.get(&peer);
        let last = flow.last_seen_ns.max(reply.map(|r| r.last_seen_ns).unwrap_or(0));
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
        .map(|(k, f)| FlowKey { src: f.new_dst, dst: f.new_src, sport: f.new_dport, dport: f.new_sport, proto: k.proto, _pad: [0; 3] })
        .collect();
    for (key, flow) in &entries {
        if flow.direction == direction::REPLY && !originals.contains(key) && now.saturating_sub(flow.last_seen_ns) > t.tcp_syn.as_nanos() as u64 {
            doomed.push(*key);
        }
    }
    let mut expired_flows = 0;
    for key in &doomed {
        match flows.remove(key) {
            Ok(()) => {
                if by_key.get(key).map(|f| f.direction) == Some(direction::ORIGINAL) {
                    expired_flows += 1;
                }
            }
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err("FLOWS")(e)),
        }
    }
    Ok(Sweep { entries: (entries.len() - doomed.len()) as u64, expired_flows })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(dir: u8, bits: u8) -> Flow {
        Flow { direction: dir, tcp_flags: bits, ..Default::default() }
    }

    #[test]
    fn tcp_timeouts_follow_state() {
        let t = Timeouts::default();
        let syn = flow(direction::ORIGINAL, tcp_seen::SYN);
        assert_eq!(timeout_for(&syn, None, PROTO_TCP, &t), t.tcp_syn);
        let est_reply = flow(direction::REPLY, tcp_seen::SYN_ACK | tcp_seen::ESTABLISHED);
        let est = flow(direction::ORIGINAL, tcp_seen::SYN | tcp_seen::ESTABLISHED);
        assert_eq!(timeout_for(&est, Some(&est_reply), PROTO_TCP, &t), t.tcp_established);
        let half_closed = flow(direction::ORIGINAL, tcp_seen::SYN | tcp_seen::ESTABLISHED | tcp_seen::FIN);
        assert_eq!(timeout_for(&half_closed, Some(&est_reply), PROTO_TCP, &t), t.tcp_established);
        let fin_reply = flow(direction::REPLY, tcp_seen::SYN_ACK | tcp_seen::FIN);
        assert_eq!(timeout_for(&half_closed, Some(&fin_reply), PROTO_TCP, &t), t.tcp_closing);
        let rst = flow(direction::ORIGINAL, tcp_seen::SYN | tcp_seen::RST);
        assert_eq!(timeout_for(&rst, Some(&est_reply), PROTO_TCP, &t), t.tcp_closing);
    }

    #[test]
    fn udp_uses_udp_timeout() {
        let t = Timeouts::default();
        assert_eq!(timeout_for(&flow(direction::ORIGINAL, 0), None, 17, &t), t.udp);
    }
}
