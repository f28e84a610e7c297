//! The routing table's IP diversity rule, as a plain struct (no I/O).
//!
//! An eclipse attacker needs many routing-table slots; addresses are cheap
//! within one network but not across many. Like go-libp2p-kad-dht, we admit
//! at most a few peers per IPv4 /16 (IPv6 /32) per bucket and per table.
//! Loopback, private, link-local and unique-local addresses are exempt, as
//! are non-IP addresses (memory, DNS names), so local networks still work.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use libp2p_core::{Multiaddr, multiaddr::Protocol};
use libp2p_identity::PeerId;

use crate::config::DiversityConfig;

/// The network group of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// An IPv4 /16.
    V4([u8; 2]),
    /// An IPv6 /32.
    V6([u8; 4]),
}

fn exempt_v4(ip: &Ipv4Addr) -> bool {
    ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
        // 100.64.0.0/10, carrier-grade NAT.
        || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64)
}

fn exempt_v6(ip: &Ipv6Addr) -> bool {
    let seg = ip.segments()[0];
    ip.is_loopback() || ip.is_unspecified() || (seg & 0xfe00) == 0xfc00 || (seg & 0xffc0) == 0xfe80
}

/// The group of the first IP in `addr`, or `None` if it is exempt.
pub fn group(addr: &Multiaddr) -> Option<Group> {
    let ip = addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })?;
    match ip {
        IpAddr::V4(ip) if !exempt_v4(&ip) => Some(Group::V4([ip.octets()[0], ip.octets()[1]])),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) if !exempt_v4(&v4) => Some(Group::V4([v4.octets()[0], v4.octets()[1]])),
            Some(_) => None,
            None if !exempt_v6(&ip) => {
                let o = ip.octets();
                Some(Group::V6([o[0], o[1], o[2], o[3]]))
            }
            None => None,
        },
        IpAddr::V4(_) => None,
    }
}

/// Counts of admitted peers per group, per bucket and per table.
#[derive(Debug, Default)]
pub struct Filter {
    config: DiversityConfig,
    per_bucket: HashMap<(u32, Group), usize>,
    per_table: HashMap<Group, usize>,
    peers: HashMap<PeerId, (u32, Group)>,
}

impl Filter {
    /// A filter with `config`.
    pub fn new(config: DiversityConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Whether `peer`, whose address is `addr` and which falls in bucket
    /// `bucket`, may enter the routing table; admitted peers are counted
    /// until [`Filter::remove`].
    pub fn admit(&mut self, peer: PeerId, bucket: u32, addr: &Multiaddr) -> bool {
        if !self.config.enabled || self.peers.contains_key(&peer) {
            return true;
        }
        let Some(g) = group(addr) else { return true };
        let in_bucket = self.per_bucket.get(&(bucket, g)).copied().unwrap_or(0);
        let in_table = self.per_table.get(&g).copied().unwrap_or(0);
        if in_bucket >= self.config.max_per_group_per_bucket
            || in_table >= self.config.max_per_group_per_table
        {
            return false;
        }
        *self.per_bucket.entry((bucket, g)).or_default() += 1;
        *self.per_table.entry(g).or_default() += 1;
        self.peers.insert(peer, (bucket, g));
        true
    }

    /// Forgets `peer` (it left the routing table).
    pub fn remove(&mut self, peer: &PeerId) {
        let Some((bucket, g)) = self.peers.remove(peer) else {
            return;
        };
        for count in [
            self.per_bucket.get_mut(&(bucket, g)),
            self.per_table.get_mut(&g),
        ]
        .into_iter()
        .flatten()
        {
            *count = count.saturating_sub(1);
        }
        self.per_bucket.retain(|_, c| *c > 0);
        self.per_table.retain(|_, c| *c > 0);
    }

    /// Peers currently counted.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is counted.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn groups_and_exemptions() {
        assert_eq!(group(&a("/ip4/8.8.4.4/tcp/1")), Some(Group::V4([8, 8])));
        assert_eq!(group(&a("/ip4/127.0.0.1/tcp/1")), None);
        assert_eq!(group(&a("/ip4/10.1.2.3/tcp/1")), None);
        assert_eq!(group(&a("/ip4/192.168.1.1/udp/1/quic-v1")), None);
        assert_eq!(group(&a("/ip4/100.64.1.1/tcp/1")), None);
        assert_eq!(
            group(&a("/ip6/2001:db8:1:2::1/tcp/1")),
            Some(Group::V6([0x20, 0x01, 0x0d, 0xb8]))
        );
        assert_eq!(group(&a("/ip6/::1/tcp/1")), None);
        assert_eq!(group(&a("/ip6/fd00::1/tcp/1")), None);
        assert_eq!(
            group(&a("/ip6/::ffff:8.8.8.8/tcp/1")),
            Some(Group::V4([8, 8]))
        );
        assert_eq!(group(&a("/memory/4")), None);
        assert_eq!(group(&a("/dns4/example.com/tcp/1")), None);
    }

    #[test]
    fn limits_per_bucket_and_table_then_release() {
        let mut f = Filter::new(DiversityConfig::default());
        let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        let same16 = |i: u8| a(&format!("/ip4/44.3.{i}.1/tcp/1"));
        assert!(f.admit(peers[0], 200, &same16(1)));
        assert!(f.admit(peers[1], 200, &same16(2)));
        assert!(!f.admit(peers[2], 200, &same16(3)), "third in one bucket");
        assert!(f.admit(peers[3], 201, &same16(4)));
        assert!(!f.admit(peers[4], 202, &same16(5)), "fourth in the table");
        // Another /16 is fine; local addresses are always fine.
        assert!(f.admit(peers[4], 200, &a("/ip4/44.4.0.1/tcp/1")));
        assert!(f.admit(peers[5], 200, &a("/ip4/127.0.0.1/tcp/1")));
        // An admitted peer is admitted again.
        assert!(f.admit(peers[0], 200, &same16(1)));
        f.remove(&peers[0]);
        assert!(f.admit(peers[2], 200, &same16(3)));
        // Counted: peers 1, 2, 3 and 4; exempt addresses are not counted.
        assert_eq!(f.len(), 4);
    }

    #[test]
    fn disabled_admits_everything() {
        let mut f = Filter::new(DiversityConfig {
            enabled: false,
            ..DiversityConfig::default()
        });
        for _ in 0..10 {
            assert!(f.admit(PeerId::random(), 1, &a("/ip4/44.3.0.1/tcp/1")));
        }
    }
}
