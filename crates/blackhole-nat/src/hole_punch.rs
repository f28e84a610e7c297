//! DCUtR with attempt counting, and switched off on relayed connections
//! while our own NAT is known to map per destination.

use std::{
    collections::{HashMap, VecDeque},
    task::{Context, Poll},
};

use either::Either;
use libp2p_core::{Endpoint, Multiaddr, multiaddr::Protocol, transport::PortUse};
use libp2p_identity::PeerId;
use libp2p_swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};

/// At most this many peers with hole punches in progress are tracked.
const MAX_TRACKED: usize = 1024;

/// What hole punching did.
#[derive(Debug)]
pub enum HolePunchEvent {
    /// A direct dial to `peer` started.
    Attempt {
        /// The peer.
        peer: PeerId,
    },
    /// Hole punching with `peer` ended.
    Outcome {
        /// The peer.
        peer: PeerId,
        /// Our dials it took (0 when the peer's dial got through first).
        attempts: u32,
        /// `Err` with the reason when no direct connection came of it.
        result: Result<(), String>,
    },
}

/// libp2p-dcutr, wrapped (public only because the connection handler
/// type names it).
#[allow(unreachable_pub)]
pub struct HolePunch {
    inner: libp2p_dcutr::Behaviour,
    /// Whether to take part on new relayed connections.
    pub(crate) active: bool,
    attempts: HashMap<PeerId, u32>,
    events: VecDeque<HolePunchEvent>,
}

impl std::fmt::Debug for HolePunch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HolePunch")
            .field("active", &self.active)
            .field("in_progress", &self.attempts.len())
            .finish()
    }
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

impl HolePunch {
    pub(crate) fn new(local: PeerId) -> Self {
        Self {
            inner: libp2p_dcutr::Behaviour::new(local),
            active: true,
            attempts: HashMap::new(),
            events: VecDeque::new(),
        }
    }
}

type Handler = THandler<libp2p_dcutr::Behaviour>;

impl NetworkBehaviour for HolePunch {
    type ConnectionHandler = Handler;
    type ToSwarm = HolePunchEvent;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addrs: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addrs, role)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<Handler, ConnectionDenied> {
        if !self.active && is_relayed(local) {
            tracing::debug!(%peer, "not hole punching: our NAT maps per destination");
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        self.inner
            .handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<Handler, ConnectionDenied> {
        if !self.active && is_relayed(addr) {
            tracing::debug!(%peer, "not hole punching: our NAT maps per destination");
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        self.inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Poll::Ready(ToSwarm::GenerateEvent(e));
            }
            match self.inner.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(ToSwarm::GenerateEvent(libp2p_dcutr::Event {
                    remote_peer_id,
                    result,
                })) => {
                    let attempts = self.attempts.remove(&remote_peer_id).unwrap_or(0);
                    self.events.push_back(HolePunchEvent::Outcome {
                        peer: remote_peer_id,
                        attempts,
                        result: result
                            .map(|_| ())
                            .map_err(|e| crate::behaviour::error_chain(&e)),
                    });
                }
                Poll::Ready(ToSwarm::Dial { opts }) => {
                    if let Some(peer) = opts.get_peer_id() {
                        if self.attempts.len() >= MAX_TRACKED {
                            self.attempts.clear();
                        }
                        *self.attempts.entry(peer).or_default() += 1;
                        self.events.push_back(HolePunchEvent::Attempt { peer });
                    }
                    return Poll::Ready(ToSwarm::Dial { opts });
                }
                Poll::Ready(other) => {
                    return Poll::Ready(other.map_out(|_| unreachable!("matched above")));
                }
            }
        }
    }
}
