//! Inbound streams of chosen protocols, each protocol into its own bounded
//! queue.
//!
//! libp2p-stream hands inbound streams to their acceptor through a channel
//! with room for one: a stream that arrives before the acceptor took the
//! previous one is dropped. A burst of calls (four callers sending 48
//! requests each at once) lost 2 to 7 of its 192 streams that way. Here
//! each protocol has a queue of a configured size, shared by all
//! connections; only a full queue drops a stream (counted in
//! `blackhole_mux_accept_dropped_total`, and logged with the peer
//! and protocol). Outbound streams are not this module's business.

use std::{
    collections::HashMap,
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use blackhole_metrics::{
    Registry,
    prometheus_client::metrics::{counter::Counter, family::Family},
};
use futures::future::{Ready, ready};
use libp2p_core::{
    Endpoint, Multiaddr, UpgradeInfo,
    transport::PortUse,
    upgrade::{DeniedUpgrade, InboundUpgrade},
};
use libp2p_identity::PeerId;
use libp2p_swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, Stream, StreamProtocol, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
    handler::{ConnectionEvent, FullyNegotiatedInbound},
};
use tokio::sync::mpsc;

type Queues = Arc<HashMap<StreamProtocol, mpsc::Sender<(PeerId, Stream)>>>;

/// `protocol="..."`.
type ProtocolLabel = Vec<(&'static str, String)>;

/// Builds an [`Accept`]: register each protocol with its queue size, then
/// [`Builder::build`].
#[derive(Debug, Default)]
pub struct Builder {
    queues: HashMap<StreamProtocol, mpsc::Sender<(PeerId, Stream)>>,
}

impl Builder {
    /// Accepts inbound streams of `protocol`, up to `capacity` waiting for
    /// the returned [`Incoming`] (at least 1). A second registration of the
    /// same protocol replaces the first, whose `Incoming` then ends.
    pub fn accept(&mut self, protocol: StreamProtocol, capacity: usize) -> Incoming {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.queues.insert(protocol, tx);
        Incoming { rx }
    }

    /// The behaviour, with its drop counter registered under
    /// `blackhole_mux_`.
    pub fn build(self, registry: &mut Registry) -> Accept {
        let dropped = Family::<ProtocolLabel, Counter>::default();
        blackhole_metrics::layer(registry, "mux").register(
            "accept_dropped",
            "Inbound streams of an accepted protocol dropped because its queue was full",
            dropped.clone(),
        );
        // Every protocol's count exists from the start, at 0.
        for protocol in self.queues.keys() {
            let _ = dropped.get_or_create(&vec![("protocol", protocol.to_string())]);
        }
        Accept {
            queues: Arc::new(self.queues),
            dropped,
        }
    }
}

/// The network behaviour: every connection takes inbound streams of the
/// registered protocols and queues them for their [`Incoming`].
pub struct Accept {
    queues: Queues,
    dropped: Family<ProtocolLabel, Counter>,
}

impl std::fmt::Debug for Accept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accept")
            .field("protocols", &self.queues.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Inbound streams of one protocol, with the peer each came from.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<(PeerId, Stream)>,
}

impl futures::Stream for Incoming {
    type Item = (PeerId, Stream);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Accept {
    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            peer,
            queues: self.queues.clone(),
            protocols: Protocols(self.queues.keys().cloned().collect()),
            dropped: self.dropped.clone(),
        }
    }
}

impl NetworkBehaviour for Accept {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// The registered protocols, offered to every inbound stream; the
/// negotiated one comes out with the stream.
#[derive(Debug, Clone)]
pub struct Protocols(Vec<StreamProtocol>);

impl UpgradeInfo for Protocols {
    type Info = StreamProtocol;
    type InfoIter = Vec<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone()
    }
}

impl InboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

/// One connection's side of [`Accept`].
#[derive(Debug)]
pub struct Handler {
    peer: PeerId,
    queues: Queues,
    protocols: Protocols,
    dropped: Family<ProtocolLabel, Counter>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Infallible;
    type InboundProtocol = Protocols;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Infallible;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(self.protocols.clone(), ())
    }

    fn connection_keep_alive(&self) -> bool {
        // Queued and accepted streams keep the connection up themselves.
        false
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, Infallible, Infallible>> {
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: Infallible) {
        match event {}
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<'_, Self::InboundProtocol, Self::OutboundProtocol, (), Infallible>,
    ) {
        if let ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
            protocol: (stream, protocol),
            ..
        }) = event
            && let Some(queue) = self.queues.get(&protocol)
        {
            match queue.try_send((self.peer, stream)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.dropped
                        .get_or_create(&vec![("protocol", protocol.to_string())])
                        .inc();
                    tracing::debug!(peer = %self.peer, %protocol, "inbound stream queue full: stream dropped");
                }
                // Nobody takes these streams any more (shutting down).
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}
