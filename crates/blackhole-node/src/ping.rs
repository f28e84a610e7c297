//! The ping protocol (`/ipfs/ping/1.0.0`), answering more than one inbound
//! stream per connection.
//!
//! libp2p-ping answers a single inbound ping stream per connection and
//! drops the older one when another opens. The ping spec lets a listener
//! take two, and js-libp2p needs that: its connection monitor pings every
//! connection on a stream of its own every 10 s, so an explicit ping from a
//! js peer that came while the monitor's was open had one of the two closed
//! under it ("Cannot write to a stream that is closed"; seen in a 200-node
//! `cargo xtask test-net`, where busy nodes keep both open longer).
//!
//! Here libp2p-ping still sends our periodic pings and reports their round
//! trips; inbound streams never reach it. This handler answers them, up to
//! `max_inbound` at once per connection (one more closes the oldest, which
//! its peer has most likely given up), each closed when no ping comes for
//! `idle`.

use std::collections::VecDeque;
use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use libp2p_core::{Endpoint, Multiaddr, transport::PortUse};
use libp2p_identity::PeerId;
use libp2p_swarm::handler::{ConnectionEvent, FullyNegotiatedInbound};
use libp2p_swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, Stream, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm,
};

/// Bytes of one ping, fixed by the spec.
const PING_SIZE: usize = 32;

/// How many inbound streams a connection may hold and how long each may
/// wait for its next ping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inbound {
    pub max_streams: usize,
    pub idle: Duration,
}

/// libp2p-ping's behaviour with inbound streams answered by [`Handler`].
pub(crate) struct Behaviour {
    inner: libp2p_ping::Behaviour,
    inbound: Inbound,
}

impl Behaviour {
    pub(crate) fn new(config: libp2p_ping::Config, inbound: Inbound) -> Self {
        Self {
            inner: libp2p_ping::Behaviour::new(config),
            inbound,
        }
    }
}

type InnerHandler = <libp2p_ping::Behaviour as NetworkBehaviour>::ConnectionHandler;

/// libp2p-ping's handler for outbound pings; inbound streams are ours.
pub(crate) struct Handler {
    inner: InnerHandler,
    peer: PeerId,
    limits: Inbound,
    /// The inbound streams being answered, oldest first.
    answering: VecDeque<BoxFuture<'static, ()>>,
}

impl Handler {
    fn new(inner: InnerHandler, peer: PeerId, limits: Inbound) -> Self {
        Self {
            inner,
            peer,
            limits,
            answering: VecDeque::new(),
        }
    }
}

/// Echoes pings on `stream` until its peer closes it or sends none for
/// `idle`; returns how many it answered.
async fn answer(mut stream: Stream, idle: Duration) -> io::Result<u64> {
    let mut ping = [0u8; PING_SIZE];
    let mut answered = 0;
    loop {
        // The first byte may take up to `idle`; a ping begun must finish,
        // and its echo be taken, within the same bound.
        let round = async {
            match stream.read_exact(&mut ping).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) => return Err(e),
            }
            stream.write_all(&ping).await?;
            stream.flush().await?;
            Ok(true)
        };
        match tokio::time::timeout(idle, round).await {
            Ok(Ok(true)) => answered += 1,
            Ok(Ok(false)) => break,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no ping for {idle:?}"),
                ));
            }
        }
    }
    // Closing waits for the muxer to take our FIN: bounded too.
    let _ = tokio::time::timeout(idle, stream.close()).await;
    Ok(answered)
}

impl ConnectionHandler for Handler {
    type FromBehaviour = <InnerHandler as ConnectionHandler>::FromBehaviour;
    type ToBehaviour = <InnerHandler as ConnectionHandler>::ToBehaviour;
    type InboundProtocol = <InnerHandler as ConnectionHandler>::InboundProtocol;
    type OutboundProtocol = <InnerHandler as ConnectionHandler>::OutboundProtocol;
    type InboundOpenInfo = <InnerHandler as ConnectionHandler>::InboundOpenInfo;
    type OutboundOpenInfo = <InnerHandler as ConnectionHandler>::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.inner.listen_protocol()
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        self.inner.on_behaviour_event(event)
    }

    fn connection_keep_alive(&self) -> bool {
        // Inbound pings never keep a connection open, as in libp2p-ping.
        self.inner.connection_keep_alive()
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: mut stream,
                ..
            }) => {
                stream.ignore_for_keep_alive();
                if self.answering.len() >= self.limits.max_streams {
                    tracing::debug!(
                        peer = %self.peer,
                        max = self.limits.max_streams,
                        "ping: another inbound stream; closing the oldest"
                    );
                    self.answering.pop_front();
                }
                let (peer, idle) = (self.peer, self.limits.idle);
                self.answering.push_back(
                    async move {
                        match answer(stream, idle).await {
                            Ok(n) => tracing::trace!(%peer, answered = n, "ping stream closed"),
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "inbound ping stream failed")
                            }
                        }
                    }
                    .boxed(),
                );
            }
            other => self.inner.on_connection_event(other),
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        self.answering.retain_mut(|f| f.poll_unpin(cx).is_pending());
        self.inner.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = libp2p_ping::Event;

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
        let inner = self
            .inner
            .handle_established_inbound_connection(id, peer, local, remote)?;
        Ok(Handler::new(inner, peer, self.inbound))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self
            .inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)?;
        Ok(Handler::new(inner, peer, self.inbound))
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
        self.inner.poll(cx)
    }
}
