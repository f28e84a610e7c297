//! NAT type detection from the addresses other peers observe for us.
//!
//! Identify tells us, on every connection, the address the remote side
//! sees us coming from. A QUIC connection always leaves from our listening
//! UDP socket, and a TCP dial from a listening node reuses its listening
//! port, so all connections of one transport leave from one local port.
//! What several peers at different addresses saw of that port tells us
//! what the NAT in front of us does:
//!
//! - every observer sees one of our own addresses: no NAT ([`NatType::None`]);
//! - every observer sees the same public address and port: the NAT maps
//!   our port once for all destinations (endpoint-independent mapping,
//!   "cone"; [`NatType::EndpointIndependent`]); hole punching can work;
//! - every observer sees a different port (or address): the NAT maps per
//!   destination (endpoint-dependent mapping, "symmetric";
//!   [`NatType::EndpointDependent`]); the port a peer learns is useless to
//!   another, so hole punching cannot work and relays are the way in.
//!
//! Two observers agreeing on one mapping settle it as endpoint-independent
//! even if others saw other ports: a connection that left from another
//! local port (dialed without port reuse) looks like that too, and a
//! symmetric NAT never gives two destinations the same mapping.
//!
//! At least two observers at different socket addresses are needed; until
//! then the type is [`NatType::Unknown`]. QUIC observations decide when
//! there are enough of them, because QUIC's source port is certain; TCP
//! ones otherwise (a TCP dial made without port reuse leaves from a random
//! port and would look symmetric, so TCP is the second choice).
//! Observations through relays tell nothing and are ignored. Only the most
//! recent `capacity` observers are kept, one observation each.
//!
//! Plain data: no sockets, no clock.

use std::{
    collections::{HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
};

use libp2p_core::{Multiaddr, multiaddr::Protocol};
use serde::{Deserialize, Serialize};

/// What the NAT in front of this node does, as far as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatType {
    /// Not enough observations yet.
    Unknown,
    /// Peers see our own address: no NAT.
    None,
    /// One mapping for all destinations ("full cone", "restricted cone",
    /// "port-restricted cone"): hole punching can work.
    EndpointIndependent,
    /// A mapping per destination ("symmetric"): hole punching cannot work.
    EndpointDependent,
}

impl NatType {
    /// The name used in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            NatType::Unknown => "unknown",
            NatType::None => "none",
            NatType::EndpointIndependent => "endpoint_independent",
            NatType::EndpointDependent => "endpoint_dependent",
        }
    }
}

impl std::fmt::Display for NatType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Transport {
    Tcp,
    Quic,
}

#[derive(Debug, Clone, Copy)]
struct Observation {
    transport: Transport,
    observer: SocketAddr,
    observed: SocketAddr,
}

/// Collects observations and classifies the NAT.
#[derive(Debug, Clone)]
pub struct Detector {
    capacity: usize,
    observations: VecDeque<Observation>,
    local: HashSet<IpAddr>,
}

/// The IP, transport and port of a direct TCP or QUIC address.
fn parse(addr: &Multiaddr) -> Option<(Transport, SocketAddr)> {
    let mut it = addr.iter();
    let ip: IpAddr = match it.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    let (transport, port) = match (it.next()?, it.next()) {
        (Protocol::Tcp(port), None | Some(Protocol::P2p(_))) => (Transport::Tcp, port),
        (Protocol::Udp(port), Some(Protocol::QuicV1)) => (Transport::Quic, port),
        _ => return None,
    };
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        return None;
    }
    Some((transport, SocketAddr::new(ip, port)))
}

impl Detector {
    /// A detector keeping the latest `capacity` observers.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(2),
            observations: VecDeque::new(),
            local: HashSet::new(),
        }
    }

    /// Records one of our own addresses (a listen address or an interface
    /// address): a peer that observes it sees us without NAT.
    pub fn add_local(&mut self, addr: &Multiaddr) {
        if let Some((_, sa)) = parse(addr) {
            self.local.insert(sa.ip());
        }
    }

    /// Records that the peer at `observer` (the remote address of our
    /// connection to it) sees us as `observed`. Anything other than direct
    /// TCP or QUIC on both sides is ignored. Returns whether it was used.
    pub fn observe(&mut self, observer: &Multiaddr, observed: &Multiaddr) -> bool {
        let (Some((t1, observer)), Some((t2, observed))) = (parse(observer), parse(observed))
        else {
            return false;
        };
        if t1 != t2 {
            return false;
        }
        self.observations
            .retain(|o| !(o.observer == observer && o.transport == t1));
        self.observations.push_back(Observation {
            transport: t1,
            observer,
            observed,
        });
        while self.observations.len() > self.capacity {
            self.observations.pop_front();
        }
        true
    }

    /// The verdict: from QUIC observations when they are enough, else TCP.
    pub fn nat_type(&self) -> NatType {
        match self.classify(Transport::Quic) {
            NatType::Unknown => self.classify(Transport::Tcp),
            known => known,
        }
    }

    /// How many observations are held.
    pub fn len(&self) -> usize {
        self.observations.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.observations.is_empty()
    }

    fn classify(&self, transport: Transport) -> NatType {
        let obs: Vec<&Observation> = self
            .observations
            .iter()
            .filter(|o| o.transport == transport)
            .collect();
        let observers: HashSet<SocketAddr> = obs.iter().map(|o| o.observer).collect();
        if observers.len() < 2 {
            return NatType::Unknown;
        }
        // Observers on our side of a NAT see a local address; only the
        // others tell what the NAT does.
        let outside: Vec<&&Observation> = obs
            .iter()
            .filter(|o| !self.local.contains(&o.observed.ip()))
            .collect();
        if outside.is_empty() {
            return NatType::None;
        }
        let outside_observers: HashSet<SocketAddr> = outside.iter().map(|o| o.observer).collect();
        if outside_observers.len() < 2 {
            return NatType::Unknown;
        }
        // Two observers at different addresses seeing the same mapping
        // prove it is shared. A connection that left from another local
        // port (a dial made before the listener existed, or without port
        // reuse) adds an odd one out, which must not turn the verdict.
        let mut per_mapping: std::collections::HashMap<SocketAddr, HashSet<SocketAddr>> =
            Default::default();
        for o in &outside {
            per_mapping
                .entry(o.observed)
                .or_default()
                .insert(o.observer);
        }
        if per_mapping.values().any(|observers| observers.len() >= 2) {
            NatType::EndpointIndependent
        } else {
            NatType::EndpointDependent
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_mapping_for_all_is_endpoint_independent() {
        let mut d = Detector::new(8);
        d.add_local(&a("/ip4/10.1.0.2/udp/4001/quic-v1"));
        assert!(d.observe(
            &a("/ip4/7.7.0.10/udp/4001/quic-v1"),
            &a("/ip4/7.7.0.1/udp/4001/quic-v1")
        ));
        assert_eq!(d.nat_type(), NatType::Unknown, "one observer is not enough");
        d.observe(
            &a("/ip4/7.7.0.11/udp/4001/quic-v1"),
            &a("/ip4/7.7.0.1/udp/4001/quic-v1"),
        );
        assert_eq!(d.nat_type(), NatType::EndpointIndependent);
    }

    #[test]
    fn a_mapping_per_destination_is_endpoint_dependent() {
        let mut d = Detector::new(8);
        d.observe(
            &a("/ip4/7.7.0.10/udp/4001/quic-v1"),
            &a("/ip4/7.7.0.3/udp/40211/quic-v1"),
        );
        d.observe(
            &a("/ip4/7.7.0.11/udp/4001/quic-v1"),
            &a("/ip4/7.7.0.3/udp/51877/quic-v1"),
        );
        assert_eq!(d.nat_type(), NatType::EndpointDependent);
    }

    #[test]
    fn own_address_seen_is_no_nat_and_local_observers_do_not_count() {
        let mut d = Detector::new(8);
        d.add_local(&a("/ip4/7.7.0.10/tcp/4001"));
        d.observe(&a("/ip4/7.7.0.11/tcp/4001"), &a("/ip4/7.7.0.10/tcp/4001"));
        d.observe(
            &a("/ip4/7.7.0.12/tcp/4001/p2p/12D3KooWGQmdpzHXCqLno4mMxWXKNFQHASBeF99gTm2JR8Vu5Bdc"),
            &a("/ip4/7.7.0.10/tcp/4001"),
        );
        assert_eq!(d.nat_type(), NatType::None);

        // Behind a NAT, a neighbour on the LAN sees our private address;
        // the verdict comes from the two outside observers.
        let mut d = Detector::new(8);
        d.add_local(&a("/ip4/10.1.0.2/tcp/4001"));
        d.observe(&a("/ip4/10.1.0.3/tcp/4001"), &a("/ip4/10.1.0.2/tcp/4001"));
        d.observe(&a("/ip4/7.7.0.10/tcp/4001"), &a("/ip4/7.7.0.1/tcp/4001"));
        assert_eq!(d.nat_type(), NatType::Unknown);
        d.observe(&a("/ip4/7.7.0.11/tcp/4001"), &a("/ip4/7.7.0.1/tcp/4001"));
        assert_eq!(d.nat_type(), NatType::EndpointIndependent);
    }

    #[test]
    fn quic_decides_over_tcp_and_relayed_or_mixed_addresses_are_ignored() {
        let mut d = Detector::new(8);
        // TCP dials without port reuse look symmetric ...
        d.observe(&a("/ip4/7.7.0.10/tcp/4001"), &a("/ip4/7.7.0.1/tcp/33001"));
        d.observe(&a("/ip4/7.7.0.11/tcp/4001"), &a("/ip4/7.7.0.1/tcp/33002"));
        assert_eq!(d.nat_type(), NatType::EndpointDependent);
        // ... QUIC, whose source port is certain, decides.
        d.observe(
            &a("/ip4/7.7.0.10/udp/4001/quic-v1"),
            &a("/ip4/7.7.0.1/udp/4001/quic-v1"),
        );
        d.observe(
            &a("/ip4/7.7.0.11/udp/4001/quic-v1"),
            &a("/ip4/7.7.0.1/udp/4001/quic-v1"),
        );
        assert_eq!(d.nat_type(), NatType::EndpointIndependent);

        let relayed = a(
            "/ip4/7.7.0.10/tcp/4001/p2p/12D3KooWGQmdpzHXCqLno4mMxWXKNFQHASBeF99gTm2JR8Vu5Bdc/p2p-circuit",
        );
        assert!(!d.observe(&relayed, &a("/ip4/7.7.0.1/tcp/4001")));
        assert!(!d.observe(
            &a("/ip4/7.7.0.10/tcp/4001"),
            &a("/ip4/7.7.0.1/udp/1/quic-v1")
        ));
        assert!(!d.observe(&a("/memory/5"), &a("/memory/6")));
    }

    #[test]
    fn a_stray_ephemeral_port_does_not_make_it_symmetric() {
        let mut d = Detector::new(8);
        d.observe(&a("/ip4/7.7.0.10/tcp/4001"), &a("/ip4/7.7.0.1/tcp/4001"));
        d.observe(&a("/ip4/7.7.0.12/tcp/4001"), &a("/ip4/7.7.0.1/tcp/38211"));
        assert_eq!(d.nat_type(), NatType::EndpointDependent, "no two agree yet");
        d.observe(&a("/ip4/7.7.0.11/tcp/4001"), &a("/ip4/7.7.0.1/tcp/4001"));
        assert_eq!(d.nat_type(), NatType::EndpointIndependent);
    }

    #[test]
    fn only_the_latest_observers_are_kept() {
        let mut d = Detector::new(3);
        for i in 0..10u16 {
            d.observe(
                &a(&format!("/ip4/7.7.0.{}/udp/4001/quic-v1", 10 + i)),
                &a(&format!("/ip4/7.7.0.1/udp/{}/quic-v1", 5000 + i)),
            );
        }
        assert_eq!(d.len(), 3);
        // The same observer again replaces its old observation.
        for _ in 0..5 {
            d.observe(
                &a("/ip4/7.7.0.19/udp/4001/quic-v1"),
                &a("/ip4/7.7.0.1/udp/5009/quic-v1"),
            );
        }
        assert_eq!(d.len(), 3);
    }
}
