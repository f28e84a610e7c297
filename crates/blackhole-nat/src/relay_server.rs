//! libp2p-relay's server, shown only direct connections.
//!
//! libp2p-relay 0.22's server records every connection, relayed ones
//! included (whose handler it makes a dummy), and on every change of its
//! advertisement status sends a status command to each recorded
//! connection: on a relayed one that lands on the dummy handler and panics
//! the connection task (`handler/either.rs: entered unreachable code`; seen
//! in the NAT lab when a relay reservation made a private node's relayed
//! address "external"). This wrapper keeps relayed connections out of its
//! sight, and keeps relayed addresses from counting as the external
//! addresses that make it advertise the hop protocol: a node reachable only
//! through a relay is no relay.

use std::task::{Context, Poll};

use either::Either;
use libp2p_core::{Endpoint, Multiaddr, multiaddr::Protocol, transport::PortUse};
use libp2p_identity::PeerId;
use libp2p_relay as relay;
use libp2p_swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// The wrapped relay server (public only because the connection handler
/// type names it).
#[allow(unreachable_pub, missing_debug_implementations)]
pub struct RelayServer(pub(crate) relay::Behaviour);

impl NetworkBehaviour for RelayServer {
    type ConnectionHandler = THandler<relay::Behaviour>;
    type ToSwarm = relay::Event;

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
        self.0
            .handle_pending_outbound_connection(id, peer, addrs, role)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if is_relayed(local) {
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        self.0
            .handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if is_relayed(addr) {
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        self.0
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        let hidden = match &event {
            FromSwarm::ConnectionEstablished(e) => e.endpoint.is_relayed(),
            FromSwarm::ConnectionClosed(e) => e.endpoint.is_relayed(),
            FromSwarm::ExternalAddrConfirmed(e) => is_relayed(e.addr),
            FromSwarm::ExternalAddrExpired(e) => is_relayed(e.addr),
            _ => false,
        };
        if !hidden {
            self.0.on_swarm_event(event);
        }
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
