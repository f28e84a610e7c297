//! Lets connections to gossipsub peers go idle.
//!
//! gossipsub keeps one long-lived stream each way to every peer that
//! speaks it, and libp2p-swarm treats a connection with a live stream as
//! in use. So every connection to a gossipsub peer stayed open for good,
//! whatever `connections.idle_timeout` said: in a 200-node network every
//! node ended up connected to about 170 others (each kept busy by pings,
//! QUIC keep-alives and heartbeats) because every DHT lookup's connection
//! stayed.
//!
//! [`Quiet`] wraps a gossipsub instance so that its streams do not count
//! ([`libp2p_swarm::Stream::ignore_for_keep_alive`], as ping does). A
//! connection then stays open while gossipsub wants it (the peer is in a
//! mesh of ours), while a peer recently sent us a message on a topic
//! other than the background ones (announcements), or while we recently
//! published on a topic we do not subscribe to (fanout, where no mesh
//! holds the peers), plus `idle_timeout`; and while any other protocol
//! keeps it.

use std::{
    collections::{HashSet, VecDeque},
    ops::{Deref, DerefMut},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use libp2p_core::{Endpoint, Multiaddr, transport::PortUse};
use libp2p_gossipsub as gossipsub;
use libp2p_identity::PeerId;
use libp2p_swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
    handler::{
        ConnectionEvent, FullyNegotiatedInbound, FullyNegotiatedOutbound, InboundUpgradeSend,
        OutboundUpgradeSend,
    },
};

/// How long a message keeps a connection in use (then `idle_timeout`
/// more before it closes).
const USED_FOR: Duration = Duration::from_secs(30);
/// Peers marked in use by one fanout publish, at most.
const MAX_MARKED: usize = 64;

/// A gossipsub instance whose streams do not hold connections open.
pub struct Quiet<B: NetworkBehaviour> {
    inner: B,
    /// Topics whose traffic does not count as use (announcements reach
    /// every peer).
    background: HashSet<gossipsub::TopicHash>,
    pending: VecDeque<(PeerId, Instant)>,
}

impl<B: NetworkBehaviour> Deref for Quiet<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B: NetworkBehaviour> DerefMut for Quiet<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: NetworkBehaviour> Quiet<B> {
    pub(crate) fn new(inner: B, background: &[&str]) -> Self {
        Self {
            inner,
            background: background
                .iter()
                .map(|t| gossipsub::TopicHash::from_raw(*t))
                .collect(),
            pending: VecDeque::new(),
        }
    }

    fn mark(&mut self, peer: PeerId) {
        // One mark per peer per poll is plenty; bounded by the peers the
        // inner behaviour reports.
        if self.pending.len() < 4 * MAX_MARKED && !self.pending.iter().any(|(p, _)| *p == peer) {
            self.pending.push_back((peer, Instant::now() + USED_FOR));
        }
    }
}

impl<D, F> Quiet<gossipsub::Behaviour<D, F>>
where
    D: gossipsub::DataTransform + Send + 'static,
    F: gossipsub::TopicSubscriptionFilter + Send + 'static,
{
    /// Publishes through gossipsub; on a topic we do not subscribe to
    /// (fanout), the connections to the topic's peers count as in use.
    pub(crate) fn publish(
        &mut self,
        topic: impl Into<gossipsub::TopicHash>,
        data: impl Into<Vec<u8>>,
    ) -> Result<gossipsub::MessageId, gossipsub::PublishError> {
        let topic = topic.into();
        let id = self.inner.publish(topic.clone(), data)?;
        if !self.background.contains(&topic) && !self.inner.topics().any(|t| *t == topic) {
            let peers: Vec<PeerId> = self
                .inner
                .all_peers()
                .filter(|(_, topics)| topics.contains(&&topic))
                .map(|(p, _)| *p)
                .take(MAX_MARKED)
                .collect();
            for p in peers {
                self.mark(p);
            }
        }
        Ok(id)
    }
}

impl<D, F> NetworkBehaviour for Quiet<gossipsub::Behaviour<D, F>>
where
    D: gossipsub::DataTransform + Send + 'static,
    F: gossipsub::TopicSubscriptionFilter + Send + 'static,
{
    type ConnectionHandler = Handler<THandler<gossipsub::Behaviour<D, F>>>;
    type ToSwarm = gossipsub::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_inbound_connection(id, peer, local, remote)
            .map(Handler::new)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, effective_role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_outbound_connection(id, peer, addr, role_override, port_use)
            .map(Handler::new)
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
        if let Some((peer, until)) = self.pending.pop_front() {
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::Any,
                event: In::Used(until),
            });
        }
        let event = std::task::ready!(self.inner.poll(cx));
        if let ToSwarm::GenerateEvent(gossipsub::Event::Message {
            propagation_source,
            message,
            ..
        }) = &event
            && !self.background.contains(&message.topic)
        {
            self.mark(*propagation_source);
        }
        Poll::Ready(event.map_in(In::Gossip))
    }
}

/// What the behaviour tells a [`Handler`].
#[derive(Debug)]
pub enum In<T> {
    /// For gossipsub's handler.
    Gossip(T),
    /// The connection carries messages: keep it until then.
    Used(Instant),
}

/// gossipsub's connection handler, with its streams not holding the
/// connection open.
pub struct Handler<H> {
    inner: H,
    used_until: Option<Instant>,
}

impl<H> Handler<H> {
    fn new(inner: H) -> Self {
        Self {
            inner,
            used_until: None,
        }
    }
}

impl<H> ConnectionHandler for Handler<H>
where
    H: ConnectionHandler,
    <H::InboundProtocol as InboundUpgradeSend>::Output: GossipStream,
    <H::OutboundProtocol as OutboundUpgradeSend>::Output: GossipStream,
{
    type FromBehaviour = In<H::FromBehaviour>;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = H::InboundProtocol;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.inner.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        self.inner.connection_keep_alive() || self.used_until.is_some_and(|u| u > Instant::now())
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        self.inner.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {
            In::Gossip(e) => self.inner.on_behaviour_event(e),
            In::Used(until) => {
                self.used_until = Some(self.used_until.map_or(until, |u| u.max(until)));
            }
        }
    }

    fn on_connection_event(
        &mut self,
        mut event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        match &mut event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol, ..
            }) => protocol.let_idle(),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol, ..
            }) => protocol.let_idle(),
            _ => {}
        }
        self.inner.on_connection_event(event)
    }
}

/// A negotiated gossipsub stream (`(Framed<Stream, codec>, PeerKind)`,
/// inbound inside a `future::Either` with the denied upgrade), which can be told
/// not to hold its connection open.
pub trait GossipStream {
    fn let_idle(&mut self);
}

impl<C, K> GossipStream for (asynchronous_codec::Framed<libp2p_swarm::Stream, C>, K) {
    fn let_idle(&mut self) {
        // Framed derefs to the stream it frames.
        self.0.ignore_for_keep_alive();
    }
}

impl<A: GossipStream, B: GossipStream> GossipStream for futures::future::Either<A, B> {
    fn let_idle(&mut self) {
        match self {
            futures::future::Either::Left(a) => a.let_idle(),
            futures::future::Either::Right(b) => b.let_idle(),
        }
    }
}

impl GossipStream for std::convert::Infallible {
    fn let_idle(&mut self) {
        match *self {}
    }
}
