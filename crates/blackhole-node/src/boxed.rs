//! The node's behaviour with its connection handler on the heap.
//!
//! The swarm runs each connection as a task whose future stores the
//! connection handler inline, and rustc's layout of that async state keeps
//! more than one handler-sized slot. Our composed handler (identify, DHT,
//! two gossipsub lanes, NAT, ...) is about 9 KiB, which made each idle
//! connection's task about 29 KiB (measured with valgrind massif on
//! `blackhole-bench serve` holding 200 connections). Boxed, the handler is
//! allocated once per connection and the task holds a pointer.
//!
//! It is also where the addresses our behaviours offer for a dial are made
//! unique. libp2p-swarm removes duplicates before it appends `/p2p/<peer>`
//! to each address, so the same address offered once with the suffix (the
//! DHT's, the dial options') and once without (the peer store's,
//! identify's) was dialed twice: every dial in a 200-node network opened two
//! QUIC connections and two TCP handshakes to the same peer, and the losers
//! were handshaken in full on the other side and then dropped.

use std::{
    ops::{Deref, DerefMut},
    task::{Context, Poll},
};

use libp2p_core::{Endpoint, Multiaddr, multiaddr::Protocol, transport::PortUse};
use libp2p_identity::PeerId;
use libp2p_swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
    handler::ConnectionEvent,
};

/// A behaviour whose connection handler is boxed; derefs to the behaviour.
#[derive(Debug)]
pub(crate) struct Boxed<B>(pub(crate) B);

impl<B> Deref for Boxed<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.0
    }
}

impl<B> DerefMut for Boxed<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.0
    }
}

/// A connection handler on the heap.
pub(crate) struct BoxedHandler<H>(Box<H>);

impl<H: ConnectionHandler> ConnectionHandler for BoxedHandler<H> {
    type FromBehaviour = H::FromBehaviour;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = H::InboundProtocol;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.0.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        self.0.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        self.0.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.0.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        self.0.on_behaviour_event(event)
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        self.0.on_connection_event(event)
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Boxed<B> {
    type ConnectionHandler = BoxedHandler<THandler<B>>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.0.handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addrs: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        let offered = self
            .0
            .handle_pending_outbound_connection(id, peer, addrs, role)?;
        Ok(unique_dial_addresses(peer, addrs, offered))
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0
            .handle_established_inbound_connection(id, peer, local, remote)
            .map(|h| BoxedHandler(Box::new(h)))
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
            .map(|h| BoxedHandler(Box::new(h)))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.0.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.0.on_connection_handler_event(peer, id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.0.poll(cx)
    }
}

/// `addr` without a trailing `/p2p/<peer>` naming `peer` (the swarm adds it
/// back when it dials).
fn without_own_suffix(addr: Multiaddr, peer: Option<PeerId>) -> Multiaddr {
    match (addr.iter().last(), peer) {
        (Some(Protocol::P2p(p)), Some(peer)) if p == peer => {
            let mut addr = addr;
            addr.pop();
            addr
        }
        _ => addr,
    }
}

/// The behaviours' `offered` addresses for a dial to `peer`, with the
/// suffix the swarm adds removed, without duplicates and without the
/// addresses the dial already has (`from_opts`, compared the same way).
fn unique_dial_addresses(
    peer: Option<PeerId>,
    from_opts: &[Multiaddr],
    offered: Vec<Multiaddr>,
) -> Vec<Multiaddr> {
    let mut seen: Vec<Multiaddr> = from_opts
        .iter()
        .map(|a| without_own_suffix(a.clone(), peer))
        .collect();
    let mut out = Vec::with_capacity(offered.len());
    for addr in offered {
        let addr = without_own_suffix(addr, peer);
        if !seen.contains(&addr) {
            seen.push(addr.clone());
            out.push(addr);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_offered_with_and_without_the_peer_suffix_is_dialed_once() {
        let peer = PeerId::random();
        let quic = a("/ip4/127.0.0.1/udp/4001/quic-v1");
        let tcp = a("/ip4/127.0.0.1/tcp/4001");
        let with = |m: &Multiaddr| m.clone().with_p2p(peer).unwrap();
        // The dial options name the QUIC address with the suffix; the
        // behaviours offer both addresses, with and without it.
        let out = unique_dial_addresses(
            Some(peer),
            &[with(&quic)],
            vec![quic.clone(), with(&tcp), tcp.clone(), with(&quic)],
        );
        assert_eq!(out, vec![tcp]);
    }

    #[test]
    fn other_peers_suffixes_and_relayed_addresses_are_kept_apart() {
        let peer = PeerId::random();
        let relay = PeerId::random();
        let circuit = a(&format!("/ip4/10.0.0.1/tcp/1/p2p/{relay}/p2p-circuit"));
        let via_relay = circuit.clone().with_p2p(peer).unwrap();
        let elsewhere = a(&format!("/ip4/10.0.0.2/tcp/1/p2p/{relay}"));
        let out = unique_dial_addresses(
            Some(peer),
            &[],
            vec![via_relay, circuit.clone(), elsewhere.clone()],
        );
        // The relayed address once, without the final suffix; an address
        // naming another peer is left for the swarm to refuse.
        assert_eq!(out, vec![circuit, elsewhere]);
        // With no peer id nothing is stripped, duplicates still go.
        let plain = a("/ip4/127.0.0.1/tcp/1");
        assert_eq!(
            unique_dial_addresses(None, std::slice::from_ref(&plain), vec![plain.clone()]),
            Vec::<Multiaddr>::new()
        );
    }
}
