//! Our rendezvous point: `/rendezvous/1.0.0` served with
//! libp2p-request-response, the wire format and the bounded store of
//! `blackhole_discovery::rendezvous` (limits per peer, per namespace and
//! in total; libp2p-rendezvous's server has no per-namespace limit), and
//! signed peer records checked against the registering peer.

use std::{
    collections::VecDeque,
    io,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use blackhole_discovery::rendezvous::{
    Found, Limits, MAX_DISCOVER_LIMIT, MAX_MESSAGE, Message, PROTOCOL, Registrations, Status,
    WireRegistration,
};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p_core::{Endpoint, Multiaddr, PeerRecord, SignedEnvelope, transport::PortUse};
use libp2p_identity::PeerId;
use libp2p_request_response as rr;
use libp2p_swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, StreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};

/// How long a peer has to send its request and read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests served at once per connection.
const MAX_STREAMS: usize = 16;

/// Length-prefixed (unsigned varint) protobuf messages, at most
/// [`MAX_MESSAGE`] bytes: a larger prefix is refused before allocating.
#[derive(Debug, Clone, Default)]
pub(crate) struct Codec;

async fn read_message<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Message> {
    let len = unsigned_varint::aio::read_u64(&mut *io)
        .await
        .map_err(|e| match e {
            unsigned_varint::io::ReadError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        })?;
    if len > MAX_MESSAGE as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("rendezvous message of {len} bytes (at most {MAX_MESSAGE})"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    io.read_exact(&mut buf).await?;
    Message::decode(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_message<T: AsyncWrite + Unpin + Send>(io: &mut T, m: Message) -> io::Result<()> {
    let body = m.encode();
    let mut buf = unsigned_varint::encode::u64_buffer();
    let mut out = unsigned_varint::encode::u64(body.len() as u64, &mut buf).to_vec();
    out.extend_from_slice(&body);
    io.write_all(&out).await?;
    io.flush().await
}

impl rr::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Message;
    type Response = Message;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Message>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Message>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        m: Message,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, m).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        m: Message,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, m).await
    }
}

/// What the point did.
#[derive(Debug)]
pub(crate) enum PointEvent {
    /// A peer registered (or renewed).
    Registered {
        peer: PeerId,
        namespace: String,
        ttl: u64,
    },
    /// A registration ended (withdrawn or expired).
    Ended { peer: PeerId, namespace: String },
}

/// The rendezvous point behaviour.
pub(crate) struct Point {
    rr: rr::Behaviour<Codec>,
    store: Registrations,
    started: Instant,
    tick: tokio::time::Interval,
    events: VecDeque<PointEvent>,
}

impl std::fmt::Debug for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Point")
            .field("registrations", &self.store.len())
            .finish()
    }
}

impl Point {
    pub(crate) fn new(limits: Limits) -> Self {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            rr: rr::Behaviour::with_codec(
                Codec,
                [(StreamProtocol::new(PROTOCOL), rr::ProtocolSupport::Inbound)],
                rr::Config::default()
                    .with_request_timeout(REQUEST_TIMEOUT)
                    .with_max_concurrent_streams(MAX_STREAMS),
            ),
            store: Registrations::new(limits),
            started: Instant::now(),
            tick,
            events: VecDeque::new(),
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The answer to `request` from `peer` (`None`: no answer, as for an
    /// unregistration).
    fn serve(&mut self, peer: PeerId, request: Message) -> Option<Message> {
        let now = self.now();
        match request {
            Message::Register(r) => {
                let refused = |status, text: String| Message::RegisterResponse {
                    status,
                    text,
                    ttl: 0,
                };
                let record = match SignedEnvelope::from_protobuf_encoding(&r.record)
                    .map_err(|e| e.to_string())
                    .and_then(|env| {
                        PeerRecord::from_signed_envelope(env).map_err(|e| e.to_string())
                    }) {
                    Ok(record) => record,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "rendezvous: bad signed peer record");
                        return Some(refused(Status::InvalidSignedPeerRecord, e));
                    }
                };
                if record.peer_id() != peer {
                    tracing::info!(%peer, record = %record.peer_id(), "rendezvous: a peer tried to register another peer");
                    return Some(refused(
                        Status::NotAuthorized,
                        "the signed peer record is another peer's".into(),
                    ));
                }
                Some(
                    match self
                        .store
                        .register(peer, &r.namespace, r.record, r.ttl, now)
                    {
                        Ok(ttl) => {
                            self.events.push_back(PointEvent::Registered {
                                peer,
                                namespace: r.namespace,
                                ttl,
                            });
                            Message::RegisterResponse {
                                status: Status::Ok,
                                text: String::new(),
                                ttl,
                            }
                        }
                        Err(e) => {
                            tracing::info!(%peer, namespace = %r.namespace, reason = %e, "rendezvous: registration refused");
                            refused(e.status, e.reason)
                        }
                    },
                )
            }
            Message::Unregister { namespace } => {
                if self.store.unregister(peer, &namespace) {
                    self.events.push_back(PointEvent::Ended { peer, namespace });
                }
                None
            }
            Message::Discover {
                namespace,
                limit,
                cookie,
            } => Some(
                match self.store.discover(
                    namespace.as_deref(),
                    cookie.as_deref(),
                    limit.unwrap_or(MAX_DISCOVER_LIMIT),
                    now,
                ) {
                    Ok((found, cookie)) => Message::DiscoverResponse {
                        status: Status::Ok,
                        text: String::new(),
                        registrations: found
                            .into_iter()
                            .map(
                                |Found {
                                     namespace,
                                     record,
                                     ttl,
                                     ..
                                 }| WireRegistration {
                                    namespace,
                                    record,
                                    ttl: Some(ttl),
                                },
                            )
                            .collect(),
                        cookie,
                    },
                    Err(e) => Message::DiscoverResponse {
                        status: e.status,
                        text: e.reason,
                        registrations: Vec::new(),
                        cookie: Vec::new(),
                    },
                },
            ),
            // Answers are not requests.
            Message::RegisterResponse { .. } | Message::DiscoverResponse { .. } => None,
        }
    }
}

impl NetworkBehaviour for Point {
    type ConnectionHandler = THandler<rr::Behaviour<Codec>>;
    type ToSwarm = PointEvent;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.rr.handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addrs: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.rr
            .handle_pending_outbound_connection(id, peer, addrs, role)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.rr
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
        self.rr
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.rr.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.rr.on_connection_handler_event(peer, id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Poll::Ready(ToSwarm::GenerateEvent(e));
            }
            if self.tick.poll_tick(cx).is_ready() {
                let now = self.now();
                for (namespace, peer) in self.store.expire(now) {
                    self.events.push_back(PointEvent::Ended { peer, namespace });
                }
                continue;
            }
            match self.rr.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(ToSwarm::GenerateEvent(e)) => match e {
                    rr::Event::Message {
                        peer,
                        message:
                            rr::Message::Request {
                                request, channel, ..
                            },
                        ..
                    } => {
                        if let Some(answer) = self.serve(peer, request) {
                            // Err: the peer is gone; nothing to do.
                            let _ = self.rr.send_response(channel, answer);
                        }
                    }
                    rr::Event::InboundFailure { peer, error, .. } => {
                        tracing::debug!(%peer, %error, "rendezvous: request failed");
                    }
                    _ => {}
                },
                Poll::Ready(other) => {
                    return Poll::Ready(other.map_out(|_| unreachable!("matched above")));
                }
            }
        }
    }
}
