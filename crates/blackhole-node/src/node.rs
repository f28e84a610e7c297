//! The node: the swarm, its event loop, and the handle that drives it.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use blackhole_metrics::{Registry, SharedRegistry, prometheus_client::metrics::gauge::Gauge};
use blackhole_transport::{Kind, Negotiated, NegotiatedTable};
use futures::StreamExt;
use libp2p_core::{Multiaddr, multiaddr::Protocol as AddrProtocol, transport::ListenerId};
use libp2p_identity::{Keypair, PeerId};
use libp2p_metrics::Recorder;
use libp2p_swarm::{
    ConnectionId, NetworkBehaviour, Swarm, SwarmEvent,
    dial_opts::{DialOpts, PeerCondition},
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use blackhole_discovery::PeerStore;

use crate::{Config, dht, perf};

/// Peers that can be marked protected through the handle.
pub const MAX_PROTECTED: usize = 1024;
/// How long after start the fallback peers wait for another connection.
const FALLBACK_DELAY: Duration = Duration::from_secs(10);
/// Automatic peer-exchange requests in flight at once.
const PX_MAX_INFLIGHT: usize = 4;
/// Time allowed for a rendezvous request through the handle.
const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the event loop does its periodic work.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

fn pubsub_pattern(s: &str) -> Result<blackhole_pubsub::Pattern, Error> {
    blackhole_pubsub::Pattern::new(s).map_err(|e| Error::Pubsub(e.to_string()))
}

fn pubsub_topic(s: &str) -> Result<blackhole_pubsub::Topic, Error> {
    blackhole_pubsub::Topic::new(s).map_err(|e| Error::Pubsub(e.to_string()))
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Commands waiting in the event loop's queue; senders wait when it is full.
pub const COMMAND_QUEUE: usize = 64;
/// Events kept for slow subscribers of [`Handle::events`]; a subscriber
/// that falls further behind skips the oldest (and is told how many).
pub const EVENT_QUEUE: usize = 1024;
/// Dials in progress at once through [`Handle::dial`]; more are refused.
pub const MAX_PENDING_DIALS: usize = 256;
/// How long a graceful shutdown waits for connections to close.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long start-up waits for each listener's first address.
const LISTEN_WAIT: Duration = Duration::from_secs(10);

/// The protocol version announced by identify.
pub const PROTOCOL_VERSION: &str = "/blackhole/1.0.0";

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p_swarm::derive_prelude")]
pub(crate) struct Behaviour {
    limits: libp2p_connection_limits::Behaviour,
    identify: libp2p_identify::Behaviour,
    ping: crate::ping::Behaviour,
    stream: libp2p_stream::Behaviour,
    accept: blackhole_mux::accept::Accept,
    overlay: libp2p_swarm::behaviour::toggle::Toggle<blackhole_overlay::Behaviour>,
    pubsub: libp2p_swarm::behaviour::toggle::Toggle<blackhole_pubsub::Behaviour>,
    rendezvous: libp2p_rendezvous::client::Behaviour,
    rendezvous_server: libp2p_swarm::behaviour::toggle::Toggle<crate::rendezvous_point::Point>,
    mdns: libp2p_swarm::behaviour::toggle::Toggle<libp2p_mdns::tokio::Behaviour>,
    nat: blackhole_nat::Behaviour,
    address_book: crate::address_book::AddressBook,
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// We dialed.
    Outbound,
    /// The peer dialed.
    Inbound,
}

/// One established connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The remote address.
    pub remote_addr: Multiaddr,
    /// Who dialed.
    pub direction: Direction,
    /// The transport family.
    pub transport: Kind,
    /// The secure channel.
    pub security: Option<blackhole_security::Protocol>,
    /// The multiplexer (`None` for QUIC's native streams).
    pub muxer: Option<blackhole_mux::Protocol>,
    /// Seconds since the connection was established.
    pub age_secs: f64,
}

/// A connected peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer.
    pub peer_id: PeerId,
    /// Its agent version, once identify has run.
    pub agent_version: Option<String>,
    /// Its identify protocol version.
    pub protocol_version: Option<String>,
    /// Protocols it supports, from identify.
    pub protocols: Vec<String>,
    /// Addresses it listens on, from identify.
    pub listen_addrs: Vec<Multiaddr>,
    /// The last ping round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Open connections.
    pub connections: Vec<ConnectionInfo>,
}

/// Something that happened in the node.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A listener has a new address.
    Listening { address: Multiaddr },
    /// A listener stopped.
    ListenerClosed {
        addresses: Vec<Multiaddr>,
        reason: Option<String>,
    },
    /// A connection is up.
    ConnectionEstablished {
        peer_id: PeerId,
        connection: ConnectionInfo,
    },
    /// A connection closed.
    ConnectionClosed {
        peer_id: PeerId,
        remote_addr: Multiaddr,
        cause: Option<String>,
        remaining: u32,
    },
    /// An inbound connection failed before it was established (for example
    /// a failed handshake).
    IncomingConnectionFailed {
        send_back_addr: Multiaddr,
        error: String,
    },
    /// An outbound connection failed.
    DialFailed {
        peer_id: Option<PeerId>,
        error: String,
    },
    /// A peer identified itself.
    Identified {
        peer_id: PeerId,
        agent_version: String,
        protocol_version: String,
    },
    /// The node is shutting down.
    ShuttingDown,
    /// As a rendezvous point: a peer registered in a namespace.
    RendezvousRegistered {
        peer_id: PeerId,
        namespace: String,
        ttl_secs: u64,
    },
    /// As a rendezvous point: a registration ended (expired or withdrawn).
    RendezvousRegistrationEnded { peer_id: PeerId, namespace: String },
    /// NAT traversal: reachability, NAT type, relay reservations, hole
    /// punches, port mappings.
    Nat(blackhole_nat::Event),
}

/// Errors of [`Node::start`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The transport could not be built.
    #[error("cannot build transport: {0}")]
    Transport(#[from] blackhole_transport::BuildError),
    /// A listen address could not be used.
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    /// The database could not be opened or read.
    #[error("storage: {0}")]
    Storage(String),
    /// The control API could not bind.
    #[error("cannot serve the control API on {addr}: {source}")]
    Api {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Errors of [`Handle`] calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The node has shut down.
    #[error("the node has shut down")]
    Stopped,
    /// The address is not usable (for example it names no transport we run).
    #[error("invalid address {addr}: {reason}")]
    InvalidAddress { addr: Multiaddr, reason: String },
    /// The dial failed.
    #[error("dial failed: {0}")]
    Dial(String),
    /// Too many dials are in progress.
    #[error("too many dials in progress ({MAX_PENDING_DIALS})")]
    TooManyDials,
    /// An operation did not finish in time.
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// A stream could not be opened or failed.
    #[error("{protocol} with {peer} failed: {reason}")]
    Stream {
        peer: PeerId,
        protocol: &'static str,
        reason: String,
    },
    /// A DHT operation failed.
    #[error("dht: {0}")]
    Dht(String),
    /// The DHT has no record for the key.
    #[error("not found: {0}")]
    NotFound(String),
    /// The DHT is disabled in the configuration.
    #[error("the DHT is disabled (overlay.enabled = false)")]
    DhtDisabled,
    /// A rendezvous request failed or was refused.
    #[error("rendezvous: {0}")]
    Rendezvous(String),
    /// RPC is disabled in the configuration.
    #[error("rpc is disabled (rpc.enabled = false)")]
    RpcDisabled,
    /// Pubsub is disabled in the configuration.
    #[error("pubsub is disabled (pubsub.enabled = false)")]
    PubsubDisabled,
    /// A pubsub request was refused (bad topic, too many subscriptions).
    #[error("pubsub: {0}")]
    Pubsub(String),
    /// A publish failed.
    #[error("publish: {0}")]
    Publish(#[from] blackhole_pubsub::PublishError),
    /// Too many DHT queries are in flight.
    #[error("too many DHT queries in flight ({})", crate::dht::MAX_PENDING_QUERIES)]
    TooManyQueries,
}

#[derive(Debug)]
pub(crate) enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, Error>>,
    },
    Disconnect {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    NatStatus(oneshot::Sender<blackhole_nat::Status>),
    Shutdown(oneshot::Sender<()>),
    Dht {
        cmd: dht::Command,
        reply: oneshot::Sender<Result<dht::Reply, Error>>,
    },
    Protect {
        peer: PeerId,
        on: bool,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Register {
        point: PeerId,
        namespace: String,
        ttl: Option<u64>,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    PxSample {
        asker: PeerId,
        reply: oneshot::Sender<Vec<blackhole_discovery::px::PeerAddrs>>,
    },
    PxLearned {
        from: PeerId,
        peers: Vec<blackhole_discovery::px::PeerAddrs>,
    },
    Pubsub(crate::pubsub::Command),
    Discover {
        point: PeerId,
        namespace: Option<String>,
        cookie: Option<String>,
        limit: Option<u64>,
        reply: oneshot::Sender<Result<crate::rendezvous::Discovered, Error>>,
    },
}

/// A cloneable handle to a running node.
#[derive(Clone)]
pub struct Handle {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    control: libp2p_stream::Control,
    metrics: SharedRegistry,
    config: Arc<Config>,
    api_addr: Arc<std::sync::OnceLock<SocketAddr>>,
    stopped: CancellationToken,
    pings: Arc<std::sync::Mutex<HashMap<PeerId, Arc<tokio::sync::Mutex<()>>>>>,
    rpc: Option<blackhole_rpc::Rpc>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Handle {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Like `call`, bounded by `after`: the event loop may be busy, and the
    /// answer may wait for the network.
    async fn call_timeout<T>(
        &self,
        what: &'static str,
        after: Duration,
        make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command,
    ) -> Result<T, Error> {
        tokio::time::timeout(after, self.call(make))
            .await
            .map_err(|_| Error::Timeout { what, after })??
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The addresses we listen on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Error> {
        self.call(Command::ListenAddrs).await
    }

    /// Connects to `addr` (with or without a trailing `/p2p/<peer>`) and
    /// returns the peer's id once the connection is established. An
    /// existing connection to that peer is reused.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, Error> {
        let after = self.config.connections.dial_timeout + Duration::from_secs(5);
        self.call_timeout("dial", after, |reply| Command::Dial { addr, reply })
            .await
    }

    /// Closes every connection to `peer`; `false` if there was none.
    pub async fn disconnect(&self, peer: PeerId) -> Result<bool, Error> {
        self.call(|reply| Command::Disconnect { peer, reply }).await
    }

    /// The connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        self.call(Command::Peers).await
    }

    /// Reachability, NAT type, external and relayed addresses, relays,
    /// hole punching and UPnP state.
    pub async fn nat_status(&self) -> Result<blackhole_nat::Status, Error> {
        self.call(Command::NatStatus).await
    }

    /// Measures one round trip to a peer with the ping protocol (dialing
    /// it if needed and its address is known).
    ///
    /// Pings to one peer are serialized: libp2p-ping peers keep a single
    /// inbound ping stream per connection and close the older one when a
    /// new one opens (ours answer `ping.max_inbound_streams` at once).
    pub async fn ping(&self, peer: PeerId) -> Result<Duration, Error> {
        let after = self.config.ping.timeout;
        let lock = {
            let mut pings = self.pings.lock().map_err(|_| Error::Stopped)?;
            // Forget peers nobody is pinging (bounded by concurrent calls).
            pings.retain(|_, l| Arc::strong_count(l) > 1);
            pings.entry(peer).or_default().clone()
        };
        let mut control = self.control.clone();
        tokio::time::timeout(after, async {
            let _turn = lock.lock().await;
            perf::ping(&mut control, peer).await
        })
        .await
        .map_err(|_| Error::Timeout {
            what: "ping",
            after,
        })?
    }

    /// Runs one perf stream with `peer`: uploads `upload` bytes, then
    /// downloads `download` bytes.
    pub async fn perf(
        &self,
        peer: PeerId,
        upload: u64,
        download: u64,
    ) -> Result<perf::Report, Error> {
        let after = self.config.perf.timeout;
        let mut control = self.control.clone();
        tokio::time::timeout(after, perf::client(&mut control, peer, upload, download))
            .await
            .map_err(|_| Error::Timeout {
                what: "perf",
                after,
            })?
    }

    /// Runs a DHT operation, waiting for its query to finish (bounded by
    /// `overlay.query_timeout`).
    pub async fn dht(&self, cmd: DhtCommand) -> Result<dht::Reply, Error> {
        let after = self.config.overlay.query_timeout + Duration::from_secs(5);
        self.call_timeout("dht query", after, |reply| Command::Dht {
            cmd: cmd.0,
            reply,
        })
        .await
    }

    /// Marks `peer` as protected from connection pruning (or not).
    pub async fn protect(&self, peer: PeerId, on: bool) -> Result<(), Error> {
        self.call(|reply| Command::Protect { peer, on, reply })
            .await?
    }

    /// Registers us in `namespace` at the rendezvous point `point` (which
    /// must be connected or dialable); returns the granted TTL in seconds.
    pub async fn rendezvous_register(
        &self,
        point: PeerId,
        namespace: String,
        ttl: Option<u64>,
    ) -> Result<u64, Error> {
        let after = RENDEZVOUS_TIMEOUT;
        self.call_timeout("rendezvous registration", after, |reply| {
            Command::Register {
                point,
                namespace,
                ttl,
                reply,
            }
        })
        .await
    }

    /// Asks `point` for registrations in `namespace` (all namespaces if
    /// `None`), newer than `cookie`, at most `limit`.
    pub async fn rendezvous_discover(
        &self,
        point: PeerId,
        namespace: Option<String>,
        cookie: Option<String>,
        limit: Option<u64>,
    ) -> Result<crate::rendezvous::Discovered, Error> {
        let after = RENDEZVOUS_TIMEOUT;
        self.call_timeout("rendezvous discovery", after, |reply| Command::Discover {
            point,
            namespace,
            cookie,
            limit,
            reply,
        })
        .await
    }

    /// Asks `peer` for the good peers it knows (peer exchange); what it
    /// shares goes into our peer store.
    pub async fn peer_exchange(
        &self,
        peer: PeerId,
    ) -> Result<Vec<blackhole_discovery::px::PeerAddrs>, Error> {
        let mut control = self.control.clone();
        let peers = crate::px::request(&mut control, peer).await?;
        self.commands
            .send(Command::PxLearned {
                from: peer,
                peers: peers.clone(),
            })
            .await
            .map_err(|_| Error::Stopped)?;
        Ok(peers)
    }

    async fn pubsub<T>(
        &self,
        what: &'static str,
        make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> crate::pubsub::Command,
    ) -> Result<T, Error> {
        let after = self.config.pubsub.publish_wait + Duration::from_secs(10);
        self.call_timeout(what, after, |reply| Command::Pubsub(make(reply)))
            .await
    }

    /// Subscribes to a topic or a wildcard pattern (`blocks/*/eu`,
    /// `blocks/**`); messages arrive on the returned subscription until
    /// it is dropped.
    pub async fn subscribe(&self, pattern: &str) -> Result<crate::pubsub::Subscription, Error> {
        let pattern = pubsub_pattern(pattern)?;
        self.pubsub("subscribe", |reply| crate::pubsub::Command::Subscribe {
            pattern,
            reply,
        })
        .await
    }

    /// Publishes `data` on `topic`. Waits (up to `pubsub.publish_wait`)
    /// for a first peer where none is connected yet.
    pub async fn publish(
        &self,
        topic: &str,
        data: Vec<u8>,
        options: blackhole_pubsub::PublishOptions,
    ) -> Result<blackhole_pubsub::Published, Error> {
        let topic = pubsub_topic(topic)?;
        self.pubsub("publish", |reply| crate::pubsub::Command::Publish {
            topic,
            data,
            options,
            reply,
        })
        .await
    }

    /// Topics announced in the network under `prefix` (`""` for all).
    pub async fn topics(&self, prefix: &str, limit: usize) -> Result<crate::pubsub::Topics, Error> {
        let prefix = prefix.to_owned();
        self.pubsub("topics", |reply| crate::pubsub::Command::Topics {
            prefix,
            limit,
            reply,
        })
        .await
    }

    /// Mesh peers of a topic or pattern we subscribe to.
    pub async fn mesh(&self, pattern: &str) -> Result<crate::pubsub::Mesh, Error> {
        let pattern = pubsub_pattern(pattern)?;
        self.pubsub("mesh", |reply| crate::pubsub::Command::Mesh {
            pattern,
            reply,
        })
        .await
    }

    /// A peer's gossipsub score, if it is known and scoring is on.
    pub async fn pubsub_score(&self, peer: PeerId) -> Result<Option<f64>, Error> {
        self.pubsub("score", |reply| crate::pubsub::Command::Score {
            peer,
            reply,
        })
        .await
    }

    /// Runs `validator` on every message whose topic matches `pattern`.
    pub async fn set_validator(
        &self,
        pattern: &str,
        validator: impl blackhole_pubsub::Validator,
    ) -> Result<(), Error> {
        let pattern = pubsub_pattern(pattern)?;
        let validator = crate::pubsub::ValidatorBox(Arc::new(validator));
        self.pubsub("validator", |reply| crate::pubsub::Command::Validator {
            pattern,
            validator,
            reply,
        })
        .await
    }

    /// The RPC service: register handlers, make calls.
    pub fn rpc(&self) -> Result<&blackhole_rpc::Rpc, Error> {
        self.rpc.as_ref().ok_or(Error::RpcDisabled)
    }

    /// Calls `method` at every connected peer (`rpc.max_group_concurrency`
    /// at once); returns every answer and failure (within the deadline of
    /// `options`).
    pub async fn rpc_broadcast(
        &self,
        method: &str,
        payload: Vec<u8>,
        options: blackhole_rpc::CallOptions,
    ) -> Result<blackhole_rpc::Multicast, Error> {
        let rpc = self.rpc()?;
        let peers: Vec<PeerId> = self.peers().await?.into_iter().map(|p| p.peer_id).collect();
        Ok(rpc
            .multicast(&peers, method, payload, peers.len(), options)
            .await)
    }

    /// Calls `method` at every peer known to subscribe to the pubsub
    /// `topic` (connected subscribers and those that announced it).
    pub async fn rpc_topic_broadcast(
        &self,
        topic: &str,
        method: &str,
        payload: Vec<u8>,
        options: blackhole_rpc::CallOptions,
    ) -> Result<blackhole_rpc::Multicast, Error> {
        let rpc = self.rpc()?;
        let topic = pubsub_topic(topic)?;
        let peers = self
            .pubsub("subscribers", |reply| crate::pubsub::Command::Subscribers {
                topic,
                reply,
            })
            .await?;
        Ok(rpc
            .multicast(&peers, method, payload, peers.len(), options)
            .await)
    }

    /// A handle on the node's stream protocols, for applications that run
    /// their own protocols on raw libp2p streams.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// Subscribes to node events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The metrics registry (Prometheus text via `encode`).
    pub fn metrics(&self) -> &SharedRegistry {
        &self.metrics
    }

    /// The address the control API is bound to, if it runs.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr.get().copied()
    }

    /// Shuts the node down gracefully: stops listening, closes connections
    /// (waiting up to [`SHUTDOWN_GRACE`]) and stops the control API.
    /// Returns once the event loop has ended.
    pub async fn shutdown(&self) {
        let _ = self.call(Command::Shutdown).await;
        self.stopped.cancelled().await;
    }

    /// Completes when the node has stopped.
    pub async fn stopped(&self) {
        self.stopped.cancelled().await;
    }

    pub(crate) fn set_api_addr(&self, addr: SocketAddr) {
        let _ = self.api_addr.set(addr);
    }
}

/// A DHT operation for [`Handle::dht`].
#[derive(Debug, Clone)]
pub struct DhtCommand(dht::Command);

impl DhtCommand {
    /// Store `value` under `key` (locally and at the closest peers).
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self(dht::Command::Put {
            key: key.into(),
            value: value.into(),
        })
    }
    /// Look `key` up.
    pub fn get(key: impl Into<Vec<u8>>) -> Self {
        Self(dht::Command::Get { key: key.into() })
    }
    /// Remove `key` from the local store.
    pub fn remove(key: impl Into<Vec<u8>>) -> Self {
        Self(dht::Command::Remove { key: key.into() })
    }
    /// Announce us as a provider of `key`.
    pub fn provide(key: impl Into<Vec<u8>>) -> Self {
        Self(dht::Command::Provide { key: key.into() })
    }
    /// Stop announcing us as a provider of `key`.
    pub fn stop_providing(key: impl Into<Vec<u8>>) -> Self {
        Self(dht::Command::StopProviding { key: key.into() })
    }
    /// Find the providers of `key`.
    pub fn providers(key: impl Into<Vec<u8>>) -> Self {
        Self(dht::Command::Providers { key: key.into() })
    }
    /// Look for `peer`.
    pub fn find_peer(peer: PeerId) -> Self {
        Self(dht::Command::FindPeer { peer })
    }
    /// The peers closest to `key`.
    pub fn closest(key: impl Into<Vec<u8>>) -> Self {
        Self(dht::Command::Closest { key: key.into() })
    }
    /// The routing table.
    pub fn table() -> Self {
        Self(dht::Command::Table)
    }
    /// Refresh the routing table now.
    pub fn bootstrap() -> Self {
        Self(dht::Command::Bootstrap)
    }
    /// Store and routing-table counters.
    pub fn stats() -> Self {
        Self(dht::Command::Stats)
    }
}

/// A running node. Dropping it does not stop the node; call
/// [`Handle::shutdown`].
#[derive(Debug)]
pub struct Node {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Builds the node from `config` with identity `key`, starts listening
    /// (waiting until every listener has an address), starts the control
    /// API when enabled, and runs the event loop on the current runtime.
    ///
    /// Nothing is kept on disk: DHT records and known peers live in
    /// memory. See [`Node::start_in`] for a node with a data directory.
    pub async fn start(config: Config, key: Keypair) -> Result<Node, StartError> {
        Self::start_with_db(config, key, None).await
    }

    /// Like [`Node::start`], keeping DHT records and the peer store in
    /// `<data_dir>/node.redb`. A database that cannot be opened is moved
    /// aside (`node.redb.corrupt-<unix time>`, logged) and a new one made.
    pub async fn start_in(
        config: Config,
        key: Keypair,
        data_dir: &std::path::Path,
    ) -> Result<Node, StartError> {
        let db = crate::datadir::open_database(&data_dir.join(crate::datadir::DATABASE_FILE))?;
        Self::start_with_db(config, key, Some(db)).await
    }

    async fn start_with_db(
        config: Config,
        key: Keypair,
        db: Option<Arc<redb::Database>>,
    ) -> Result<Node, StartError> {
        config.validate()?;
        let peer_id = key.public().to_peer_id();
        let mut registry = Registry::default();
        let libp2p_metrics = libp2p_metrics::Metrics::new(&mut registry);
        let (nat, relay_transport) = blackhole_nat::Behaviour::new(
            peer_id,
            &config.nat,
            &config.network.listen,
            &mut registry,
        )
        .map_err(|e| crate::config::ConfigError::Invalid {
            key: format!("nat.{}", e.key),
            reason: e.reason,
        })?;
        let built = blackhole_transport::build_with_relay(
            &key,
            &config.transport,
            &config.mux,
            Some(relay_transport),
            &mut registry,
        )?;
        let metrics = NodeMetrics::register(&mut registry);
        let transport = libp2p_core_timeout(built.transport, config.connections.dial_timeout);

        let c = &config.connections;
        let limits = libp2p_connection_limits::ConnectionLimits::default()
            .with_max_established(Some(c.max_established))
            .with_max_established_incoming(Some(c.max_established_incoming))
            .with_max_established_outgoing(Some(c.max_established_outgoing))
            .with_max_established_per_peer(Some(c.max_established_per_peer))
            .with_max_pending_incoming(Some(c.max_pending_incoming))
            .with_max_pending_outgoing(Some(c.max_pending_outgoing));
        let peer_store = match &db {
            Some(db) if config.discovery.peer_store.enabled => {
                let (store, skipped) =
                    PeerStore::open(db.clone(), config.discovery.peer_store.clone())
                        .map_err(|e| StartError::Storage(e.to_string()))?;
                if skipped > 0 {
                    tracing::warn!(
                        skipped,
                        "peer store entries could not be read and were skipped"
                    );
                }
                store
            }
            _ => PeerStore::in_memory(config.discovery.peer_store.clone()),
        };
        // Inbound streams of our own protocols, each into a queue of its
        // own (libp2p-stream keeps room for one stream only).
        let mut accept = blackhole_mux::accept::Builder::default();
        let perf_incoming = config
            .perf
            .enabled
            .then(|| accept.accept(perf::PROTOCOL, perf::INBOUND_QUEUE));
        let px_incoming = config
            .discovery
            .peer_exchange
            .enabled
            .then(|| accept.accept(crate::px::PROTOCOL, crate::px::INBOUND_QUEUE));
        let rpc_incoming = config
            .rpc
            .enabled
            .then(|| accept.accept(blackhole_rpc::PROTOCOL, config.rpc.max_inbound_total));
        let behaviour = Behaviour {
            limits: libp2p_connection_limits::Behaviour::new(limits),
            accept: accept.build(&mut registry),
            identify: libp2p_identify::Behaviour::new(
                libp2p_identify::Config::new(PROTOCOL_VERSION.to_owned(), key.public())
                    .with_agent_version(config.agent_version())
                    .with_interval(config.identify.interval)
                    .with_push_listen_addr_updates(true),
            ),
            ping: crate::ping::Behaviour::new(
                libp2p_ping::Config::new()
                    .with_interval(config.ping.interval)
                    .with_timeout(config.ping.timeout),
                crate::ping::Inbound {
                    max_streams: config.ping.max_inbound_streams,
                    idle: config.ping.inbound_idle_timeout,
                },
            ),
            stream: libp2p_stream::Behaviour::new(),
            overlay: libp2p_swarm::behaviour::toggle::Toggle::from(if config.overlay.enabled {
                let store = match &db {
                    Some(db) => blackhole_overlay::store::PersistentStore::open(
                        db.clone(),
                        peer_id,
                        config.overlay.store.clone(),
                    )
                    .map_err(|e| StartError::Storage(e.to_string()))?,
                    None => blackhole_overlay::store::PersistentStore::in_memory(
                        peer_id,
                        config.overlay.store.clone(),
                    ),
                };
                Some(
                    blackhole_overlay::Behaviour::new(
                        peer_id,
                        store,
                        &config.overlay,
                        &mut registry,
                    )
                    .map_err(|e| crate::config::ConfigError::Invalid {
                        key: format!("overlay.{}", e.key),
                        reason: e.reason,
                    })?,
                )
            } else {
                None
            }),
            pubsub: libp2p_swarm::behaviour::toggle::Toggle::from(if config.pubsub.enabled {
                Some(
                    blackhole_pubsub::Behaviour::new(&key, config.pubsub.clone(), &mut registry)
                        .map_err(|e| match e {
                            blackhole_pubsub::Error::Config(e) => {
                                crate::config::ConfigError::Invalid {
                                    key: format!("pubsub.{}", e.key),
                                    reason: e.reason,
                                }
                            }
                            other => crate::config::ConfigError::Invalid {
                                key: "pubsub".into(),
                                reason: other.to_string(),
                            },
                        })?,
                )
            } else {
                None
            }),
            mdns: libp2p_swarm::behaviour::toggle::Toggle::from(
                if config.discovery.mdns.enabled_for(&config.network.listen) {
                    let mdns = libp2p_mdns::Config {
                        query_interval: config.discovery.mdns.query_interval,
                        ..Default::default()
                    };
                    let b = libp2p_mdns::tokio::Behaviour::new(mdns, peer_id).map_err(|e| {
                        StartError::Listen {
                            addr: Multiaddr::empty(),
                            reason: format!("mdns: {e}"),
                        }
                    })?;
                    tracing::info!("mDNS on");
                    Some(b)
                } else {
                    None
                },
            ),
            rendezvous: libp2p_rendezvous::client::Behaviour::new(key.clone()),
            nat,
            address_book: crate::address_book::AddressBook { store: peer_store },
            rendezvous_server: libp2p_swarm::behaviour::toggle::Toggle::from(
                config.discovery.rendezvous.server.then(|| {
                    crate::rendezvous_point::Point::new(config.discovery.rendezvous.limits())
                }),
            ),
        };
        let control = behaviour.stream.new_control();
        let mut swarm = Swarm::new(
            transport,
            crate::boxed::Boxed(behaviour),
            peer_id,
            libp2p_swarm::Config::with_tokio_executor()
                .with_idle_connection_timeout(config.connections.idle_timeout),
        );
        for addr in &config.network.external_addresses {
            swarm.add_external_address(addr.clone());
        }
        let mut listeners = HashSet::new();
        for addr in &config.network.listen {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| StartError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
            listeners.insert(id);
        }

        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (events, _) = broadcast::channel(EVENT_QUEUE);
        let stopped = CancellationToken::new();
        let config = Arc::new(config);
        if let Some(incoming) = perf_incoming {
            tokio::spawn(perf::serve(incoming, config.perf.clone(), stopped.clone()));
        }
        if let Some(incoming) = px_incoming {
            tokio::spawn(crate::px::serve(
                incoming,
                commands.downgrade(),
                stopped.clone(),
            ));
        }
        let rpc = if let Some(incoming) = rpc_incoming {
            let rpc = blackhole_rpc::Rpc::new(control.clone(), config.rpc.clone(), &mut registry);
            crate::rpc::register_builtins(&rpc, peer_id, config.agent_version());
            let serving = rpc.clone();
            let stop = stopped.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = serving.serve(incoming) => {}
                    () = stop.cancelled() => {}
                }
            });
            Some(rpc)
        } else {
            None
        };
        if let Some(rpc) = &rpc {
            // A call to a peer we know no address of looks it up in the DHT
            // and dials what it finds. Weak: the RPC service, held by the
            // handle, must not keep the command channel open.
            let weak = commands.downgrade();
            rpc.set_connector(Arc::new(move |peer| Box::pin(reach(weak.clone(), peer))));
        }
        let handle = Handle {
            peer_id,
            commands,
            events: events.clone(),
            control,
            metrics: SharedRegistry::new(registry),
            config: config.clone(),
            api_addr: Arc::default(),
            stopped: stopped.clone(),
            pings: Arc::default(),
            rpc,
        };
        let mut event_loop = EventLoop {
            swarm,
            commands: command_rx,
            events,
            negotiated: built.negotiated,
            metrics: libp2p_metrics,
            node_metrics: metrics,
            peers: HashMap::new(),
            listen_addrs: Vec::new(),
            listeners: listeners.clone(),
            pending_dials: HashMap::new(),
            shutdown: None,
            queries: dht::Queries::default(),
            protected: HashSet::new(),
            last_flush: tokio::time::Instant::now(),
            last_prune: tokio::time::Instant::now(),
            fallback_at: Some(tokio::time::Instant::now() + FALLBACK_DELAY),
            config: config.clone(),
            rv_pending: crate::rendezvous::Pending::default(),
            rv_refresh: HashMap::new(),
            next_bootstrap: tokio::time::Instant::now() + config.discovery.bootstrap_retry,
            px_control: handle.control.clone(),
            px_commands: handle.commands.downgrade(),
            px_inflight: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            px_asked: HashSet::new(),
            pubsub: crate::pubsub::State::default(),
            rpc: handle.rpc.clone(),
        };
        // Wait for every listener's first address (or its failure).
        let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
        while !listeners.is_empty() {
            let event =
                tokio::time::timeout_at(deadline, event_loop.swarm.select_next_some()).await;
            let Ok(event) = event else { break };
            match &event {
                SwarmEvent::NewListenAddr { listener_id, .. } => {
                    listeners.remove(listener_id);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    addresses,
                    reason,
                } => {
                    let addr = addresses.first().cloned().unwrap_or_else(Multiaddr::empty);
                    let reason = match reason {
                        Err(e) => e.to_string(),
                        Ok(()) => "listener closed".into(),
                    };
                    if listeners.remove(listener_id) {
                        return Err(StartError::Listen { addr, reason });
                    }
                }
                SwarmEvent::ListenerError { listener_id, error }
                    if listeners.contains(listener_id) =>
                {
                    return Err(StartError::Listen {
                        addr: Multiaddr::empty(),
                        reason: error.to_string(),
                    });
                }
                _ => {}
            }
            event_loop.on_swarm_event(event);
        }
        // A listener on 0.0.0.0 reports one address per interface, in
        // quick succession. TCP dials reuse the listening port only from
        // an address already reported, so take the rest in before the
        // first dial (bootstrap): a dial from a random port gets its own
        // NAT mapping, which confuses NAT detection and hole punching.
        let unspecified = config.network.listen.iter().any(|a| {
            matches!(
                a.iter().next(),
                Some(libp2p_core::multiaddr::Protocol::Ip4(ip)) if ip.is_unspecified()
            ) || matches!(
                a.iter().next(),
                Some(libp2p_core::multiaddr::Protocol::Ip6(ip)) if ip.is_unspecified()
            )
        });
        let settle = tokio::time::Instant::now()
            + if unspecified {
                Duration::from_millis(500)
            } else {
                Duration::ZERO
            };
        while let Ok(Ok(event)) = tokio::time::timeout(
            Duration::from_millis(50),
            tokio::time::timeout_at(settle, event_loop.swarm.select_next_some()),
        )
        .await
        {
            event_loop.on_swarm_event(event);
        }

        if config.api.enabled {
            let listener = tokio::net::TcpListener::bind(config.api.listen)
                .await
                .map_err(|source| StartError::Api {
                    addr: config.api.listen,
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| StartError::Api {
                addr: config.api.listen,
                source,
            })?;
            handle.set_api_addr(addr);
            tokio::spawn(crate::api::serve(listener, handle.clone(), stopped.clone()));
        }

        let task = tokio::spawn(async move {
            event_loop.run().await;
            stopped.cancel();
        });
        tracing::info!(%peer_id, "node started");
        Ok(Node { handle, task })
    }

    /// A handle to the node.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Waits until the node has stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

fn libp2p_core_timeout(
    transport: blackhole_transport::BoxedTransport,
    timeout: Duration,
) -> blackhole_transport::BoxedTransport {
    use libp2p_core::Transport as _;
    libp2p_core::transport::timeout::TransportTimeout::with_outgoing_timeout(transport, timeout)
        .boxed()
}

/// The node's own gauges (`blackhole_node_*`).
#[derive(Debug, Clone, Default)]
struct NodeMetrics {
    connected_peers: Gauge,
    pending_dials: Gauge,
    command_queue_depth: Gauge,
}

impl NodeMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = blackhole_metrics::layer(registry, "node");
        r.register(
            "connected_peers",
            "Peers with at least one open connection",
            m.connected_peers.clone(),
        );
        r.register(
            "pending_dials",
            "Dials requested through the handle and not finished",
            m.pending_dials.clone(),
        );
        r.register(
            "command_queue_depth",
            "Commands waiting for the event loop (at most COMMAND_QUEUE)",
            m.command_queue_depth.clone(),
        );
        m
    }
}

struct PeerState {
    connections: HashMap<ConnectionId, (ConnectionInfo, Instant)>,
    agent_version: Option<String>,
    protocol_version: Option<String>,
    protocols: Vec<String>,
    listen_addrs: Vec<Multiaddr>,
    rtt: Option<Duration>,
}

/// The most identify-reported items kept per peer (protocols, addresses).
const MAX_IDENTIFY_ITEMS: usize = 64;

struct EventLoop {
    swarm: Swarm<crate::boxed::Boxed<Behaviour>>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    negotiated: NegotiatedTable,
    metrics: libp2p_metrics::Metrics,
    node_metrics: NodeMetrics,
    peers: HashMap<PeerId, PeerState>,
    listen_addrs: Vec<Multiaddr>,
    listeners: HashSet<ListenerId>,
    pending_dials: HashMap<ConnectionId, oneshot::Sender<Result<PeerId, Error>>>,
    shutdown: Option<(tokio::time::Instant, Vec<oneshot::Sender<()>>)>,
    queries: dht::Queries,
    protected: HashSet<PeerId>,
    last_flush: tokio::time::Instant,
    last_prune: tokio::time::Instant,
    fallback_at: Option<tokio::time::Instant>,
    config: Arc<Config>,
    rv_pending: crate::rendezvous::Pending,
    /// Configured registrations and when to renew them (points × namespaces).
    rv_refresh: HashMap<(PeerId, String), tokio::time::Instant>,
    /// When the bootstrap list is dialed again if nothing is connected.
    next_bootstrap: tokio::time::Instant,
    px_control: libp2p_stream::Control,
    /// Weak: the loop must not keep its own command channel open.
    px_commands: mpsc::WeakSender<Command>,
    px_inflight: Arc<std::sync::atomic::AtomicUsize>,
    /// Connected peers we already asked for peers.
    px_asked: HashSet<PeerId>,
    pubsub: crate::pubsub::State,
    /// The RPC service, for the peers it is busy with (not pruned).
    rpc: Option<blackhole_rpc::Rpc>,
}

impl EventLoop {
    async fn run(&mut self) {
        self.dial_known_peers();
        let mut maintenance = tokio::time::interval(MAINTENANCE_INTERVAL);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some((deadline, _)) = &self.shutdown
                && (self.peers.is_empty() || tokio::time::Instant::now() >= *deadline)
            {
                break;
            }
            let deadline = self.shutdown.as_ref().map(|(d, _)| *d);
            tokio::select! {
                // Local work first: commands, then the network.
                biased;
                cmd = self.commands.recv(), if self.shutdown.is_none() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => self.begin_shutdown(None),
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = maintenance.tick() => self.maintain(),
                _ = sleep_until(deadline) => {}
            }
            self.node_metrics
                .pending_dials
                .set(self.pending_dials.len() as i64);
            self.node_metrics
                .command_queue_depth
                .set(self.commands.len() as i64);
        }
        if let Some((_, replies)) = self.shutdown.take() {
            for reply in replies {
                let _ = reply.send(());
            }
        }
        // Fail the dials and queries nobody will answer any more.
        for (_, reply) in self.pending_dials.drain() {
            let _ = reply.send(Err(Error::Stopped));
        }
        self.queries.fail_all();
        self.rv_pending.fail_all();
        self.pubsub.fail_all();
        self.flush_stores();
        tracing::info!(peer_id = %self.swarm.local_peer_id(), "node stopped");
    }

    fn peer_store(&mut self) -> &mut PeerStore {
        &mut self.swarm.behaviour_mut().address_book.store
    }

    fn overlay(&mut self) -> Option<&mut blackhole_overlay::Behaviour> {
        self.swarm.behaviour_mut().overlay.as_mut()
    }

    /// At start: the best peers we remember, then the bootstrap list.
    fn dial_known_peers(&mut self) {
        let discovery = self.config.discovery.clone();
        let mut exclude = HashSet::new();
        for addr in &discovery.bootstrap {
            if let Some(p) = peer_of(addr) {
                self.protected.insert(p);
                exclude.insert(p);
                let plain: Multiaddr = addr
                    .iter()
                    .filter(|c| !matches!(c, AddrProtocol::P2p(_)))
                    .collect();
                if let Some(o) = self.overlay() {
                    o.add_address(p, plain);
                }
            }
            self.dial_quietly(addr.clone());
        }
        for addr in &discovery.rendezvous.points {
            if let Some(AddrProtocol::P2p(p)) = addr.iter().last() {
                self.protected.insert(p);
                exclude.insert(p);
                for ns in &discovery.rendezvous.namespaces {
                    self.rv_refresh
                        .insert((p, ns.clone()), tokio::time::Instant::now());
                }
                self.dial_quietly(addr.clone());
            }
        }
        let n = discovery.peer_store.reconnect_on_start;
        for (peer, addrs) in self.peer_store().best(n, &exclude) {
            tracing::debug!(%peer, "reconnecting to a known peer");
            let opts = DialOpts::peer_id(peer).addresses(addrs).build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, error = %e, "cannot dial known peer");
            }
        }
    }

    /// Dials a configured address (bootstrap, fallback, rendezvous point),
    /// logging failures to start the dial.
    fn dial_quietly(&mut self, addr: Multiaddr) {
        let opts = match peer_of(&addr) {
            Some(p) => DialOpts::peer_id(p).addresses(vec![addr.clone()]).build(),
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        if let Err(e) = self.swarm.dial(opts) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }

    /// Periodic work: fallback peers, peer store flushes, pruning.
    fn maintain(&mut self) {
        let now = tokio::time::Instant::now();
        if let Some(b) = self.swarm.behaviour_mut().pubsub.as_mut() {
            self.pubsub.gc(b);
        }
        if let Some(at) = self.fallback_at
            && now >= at
        {
            self.fallback_at = None;
            if self.peers.is_empty() && !self.config.discovery.fallback.is_empty() {
                tracing::info!("no peer connected yet: dialing the fallback peers");
                for addr in self.config.discovery.fallback.clone() {
                    self.dial_quietly(addr);
                }
            }
        }
        self.renew_registrations(now);
        if self.peers.is_empty() && now >= self.next_bootstrap {
            self.next_bootstrap = now + self.config.discovery.bootstrap_retry;
            if !self.config.discovery.bootstrap.is_empty() {
                tracing::info!("no peer connected: dialing the bootstrap list again");
                for addr in self.config.discovery.bootstrap.clone() {
                    self.dial_quietly(addr);
                }
            }
        }
        if now.duration_since(self.last_flush) >= self.config.discovery.peer_store.flush_interval {
            self.last_flush = now;
            self.flush_stores();
        }
        let prune = self.config.overlay.connections.clone();
        if self.overlay().is_some() && now.duration_since(self.last_prune) >= prune.check_interval {
            self.last_prune = now;
            self.prune(&prune);
        }
    }

    /// Registers (again) in the configured namespaces whose time has come,
    /// at the points we are connected to.
    fn renew_registrations(&mut self, now: tokio::time::Instant) {
        let ttl = self.config.discovery.rendezvous.ttl.as_secs();
        let due: Vec<(PeerId, String)> = self
            .rv_refresh
            .iter()
            .filter(|((point, _), at)| **at <= now && self.swarm.is_connected(point))
            .map(|(k, _)| k.clone())
            .collect();
        for (point, ns) in due {
            // Retry in a minute unless the answer reschedules it.
            self.rv_refresh
                .insert((point, ns.clone()), now + Duration::from_secs(60));
            let Ok(namespace) = crate::rendezvous::namespace(&ns) else {
                continue;
            };
            if let Err(e) =
                self.swarm
                    .behaviour_mut()
                    .rendezvous
                    .register(namespace, point, Some(ttl))
            {
                tracing::warn!(%point, namespace = %ns, error = %e, "cannot register at rendezvous point");
            }
        }
    }

    /// Remembers what a peer shared, and dials some of it while we have
    /// few peers.
    fn on_px_learned(&mut self, from: PeerId, peers: Vec<blackhole_discovery::px::PeerAddrs>) {
        let local = *self.swarm.local_peer_id();
        let mut dial_budget = self
            .config
            .discovery
            .peer_exchange
            .ask_below
            .saturating_sub(self.peers.len());
        tracing::debug!(%from, shared = peers.len(), "peer exchange");
        for p in peers.into_iter().filter(|p| p.peer_id != local) {
            self.peer_store().learned(p.peer_id, &p.addrs);
            if dial_budget > 0 && !self.swarm.is_connected(&p.peer_id) && !p.addrs.is_empty() {
                dial_budget -= 1;
                let opts = DialOpts::peer_id(p.peer_id).addresses(p.addrs).build();
                let _ = self.swarm.dial(opts);
            }
        }
    }

    /// Asks a newly identified peer for peers, while we have few.
    fn maybe_ask_px(&mut self, peer: PeerId, protocols: &[libp2p_swarm::StreamProtocol]) {
        use std::sync::atomic::Ordering;
        let px = &self.config.discovery.peer_exchange;
        if !px.enabled
            || self.peers.len() >= px.ask_below
            || !protocols.contains(&crate::px::PROTOCOL)
            || self.px_asked.contains(&peer)
            || self.px_inflight.load(Ordering::Relaxed) >= PX_MAX_INFLIGHT
        {
            return;
        }
        let Some(commands) = self.px_commands.upgrade() else {
            return;
        };
        self.px_asked.insert(peer);
        let mut control = self.px_control.clone();
        let inflight = self.px_inflight.clone();
        inflight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            match crate::px::request(&mut control, peer).await {
                Ok(peers) => {
                    let _ = commands
                        .send(Command::PxLearned { from: peer, peers })
                        .await;
                }
                Err(e) => tracing::debug!(%peer, error = %e, "peer exchange request failed"),
            }
            inflight.fetch_sub(1, Ordering::Relaxed);
        });
    }

    fn flush_stores(&mut self) {
        if let Err(e) = self.peer_store().flush() {
            tracing::warn!(error = %e, "cannot write the peer store");
        }
        // The DHT record store writes through on every change.
    }

    fn prune(&mut self, config: &blackhole_overlay::PruneConfig) {
        let protocol = self.config.overlay.protocol.clone();
        let busy: HashSet<PeerId> = self
            .rpc
            .as_ref()
            .map(|r| r.busy_peers().into_iter().collect())
            .unwrap_or_default();
        let mesh = self
            .swarm
            .behaviour()
            .pubsub
            .as_ref()
            .map(|p| p.in_any_mesh())
            .unwrap_or_default();
        let candidates: Vec<blackhole_overlay::prune::Candidate> = self
            .peers
            .iter()
            .map(|(peer, s)| blackhole_overlay::prune::Candidate {
                peer: *peer,
                protected: self.protected.contains(peer),
                bucket: s
                    .protocols
                    .contains(&protocol)
                    .then(|| {
                        self.swarm
                            .behaviour()
                            .overlay
                            .as_ref()
                            .and_then(|o| o.bucket_of(peer))
                    })
                    .flatten(),
                connected_since: s
                    .connections
                    .values()
                    .map(|(_, since)| *since)
                    .min()
                    .unwrap_or_else(Instant::now),
                busy: busy.contains(peer),
                in_mesh: mesh.contains(peer),
            })
            .collect();
        let victims = blackhole_overlay::prune::plan(
            &candidates,
            config.low_watermark,
            config.high_watermark,
            config.grace_period,
            Instant::now(),
        );
        if !victims.is_empty() {
            tracing::info!(
                connected = candidates.len(),
                pruning = victims.len(),
                busy = busy.len(),
                in_mesh = mesh.len(),
                "above the high watermark: pruning connections"
            );
        }
        for peer in victims {
            tracing::debug!(%peer, "pruned");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn on_dht(&mut self, cmd: dht::Command, reply: oneshot::Sender<Result<dht::Reply, Error>>) {
        use dht::{Command as C, Pending, Reply};
        if self.queries.len() >= dht::MAX_PENDING_QUERIES {
            let _ = reply.send(Err(Error::TooManyQueries));
            return;
        }
        let Some(o) = self.swarm.behaviour_mut().overlay.as_mut() else {
            let _ = reply.send(Err(Error::DhtDisabled));
            return;
        };
        let store_err = |e: blackhole_overlay::StoreLimitError| Error::Dht(e.to_string());
        let id = match cmd {
            C::Put { key, value } => o.put(key, value).map_err(store_err),
            C::Get { key } => Ok(o.get(key)),
            C::Remove { key } => {
                o.remove(&key);
                let _ = reply.send(Ok(Reply::Removed));
                return;
            }
            C::Provide { key } => o.provide(key).map_err(store_err),
            C::StopProviding { key } => {
                o.stop_providing(&key);
                let _ = reply.send(Ok(Reply::StoppedProviding));
                return;
            }
            C::Providers { key } => Ok(o.providers(key)),
            C::FindPeer { peer } => {
                let id = o.find_peer(peer);
                self.queries.insert(id, Pending::FindPeer(peer, reply));
                return;
            }
            C::Closest { key } => Ok(o.closest_peers(key)),
            C::Table => {
                let mut buckets = o.routing_table();
                let store = &self.swarm.behaviour().address_book.store;
                for p in buckets.iter_mut().flat_map(|b| b.peers.iter_mut()) {
                    p.last_seen_ms = store.get(&p.peer_id).map(|r| r.last_seen_ms);
                }
                let _ = reply.send(Ok(Reply::Table { buckets }));
                return;
            }
            C::Bootstrap => o.bootstrap().map_err(|e| Error::Dht(e.to_string())),
            C::Stats => {
                let stats = o.store().stats();
                let reply_stats = dht::StoreStats {
                    records: stats.records,
                    provider_keys: stats.provider_keys,
                    routing_table_peers: o.routing_table_len(),
                    mode: o.mode().to_string(),
                };
                let _ = reply.send(Ok(Reply::Stats(reply_stats)));
                return;
            }
        };
        match id {
            Ok(id) => self.queries.insert(id, Pending::Reply(reply)),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn emit(&self, event: Event) {
        // No subscribers is fine.
        let _ = self.events.send(event);
    }

    fn begin_shutdown(&mut self, reply: Option<oneshot::Sender<()>>) {
        let (_, replies) = self
            .shutdown
            .get_or_insert_with(|| (tokio::time::Instant::now() + SHUTDOWN_GRACE, Vec::new()));
        replies.extend(reply);
        tracing::info!(peers = self.peers.len(), "shutting down");
        self.emit(Event::ShuttingDown);
        for id in self.listeners.drain() {
            self.swarm.remove_listener(id);
        }
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.listen_addrs.clone());
            }
            Command::NatStatus(reply) => {
                let _ = reply.send(self.swarm.behaviour().nat.status());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.peer_infos());
            }
            Command::Disconnect { peer, reply } => {
                let _ = reply.send(self.swarm.disconnect_peer_id(peer).is_ok());
            }
            Command::Shutdown(reply) => {
                self.begin_shutdown(Some(reply));
            }
            Command::Dial { addr, reply } => self.dial(addr, reply),
            Command::Dht { cmd, reply } => self.on_dht(cmd, reply),
            Command::PxSample { asker, reply } => {
                let exclude = HashSet::from([asker, *self.swarm.local_peer_id()]);
                let sample = self
                    .peer_store()
                    .good(blackhole_discovery::px::MAX_PEERS, &exclude)
                    .into_iter()
                    .map(|(peer_id, addrs)| blackhole_discovery::px::PeerAddrs { peer_id, addrs })
                    .collect();
                let _ = reply.send(sample);
            }
            Command::PxLearned { from, peers } => self.on_px_learned(from, peers),
            Command::Pubsub(cmd) => {
                let b = self.swarm.behaviour_mut().pubsub.as_mut();
                self.pubsub.on_command(b, cmd);
            }
            Command::Register {
                point,
                namespace,
                ttl,
                reply,
            } => {
                if self.rv_pending.is_full() {
                    let _ =
                        reply.send(Err(Error::Rendezvous("too many requests in flight".into())));
                    return;
                }
                let ns = match crate::rendezvous::namespace(&namespace) {
                    Ok(ns) => ns,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                match self
                    .swarm
                    .behaviour_mut()
                    .rendezvous
                    .register(ns, point, ttl)
                {
                    Ok(()) => self.rv_pending.add_register(point, namespace, reply),
                    Err(e) => {
                        let _ = reply.send(Err(Error::Rendezvous(format!(
                            "{e} (set network.external_addresses: registrations carry our addresses)"
                        ))));
                    }
                }
            }
            Command::Discover {
                point,
                namespace,
                cookie,
                limit,
                reply,
            } => {
                if self.rv_pending.is_full() {
                    let _ =
                        reply.send(Err(Error::Rendezvous("too many requests in flight".into())));
                    return;
                }
                let ns = match namespace
                    .as_deref()
                    .map(crate::rendezvous::namespace)
                    .transpose()
                {
                    Ok(ns) => ns,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                let cookie = match cookie.as_deref().map(crate::rendezvous::cookie).transpose() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                self.swarm
                    .behaviour_mut()
                    .rendezvous
                    .discover(ns, cookie, limit, point);
                self.rv_pending.add_discover(point, namespace, reply);
            }
            Command::Protect { peer, on, reply } => {
                let result = if !on {
                    self.protected.remove(&peer);
                    Ok(())
                } else if self.protected.len() >= MAX_PROTECTED {
                    Err(Error::Dht(format!(
                        "at most {MAX_PROTECTED} peers can be protected"
                    )))
                } else {
                    self.protected.insert(peer);
                    Ok(())
                };
                let _ = reply.send(result);
            }
        }
    }

    fn dial(&mut self, addr: Multiaddr, reply: oneshot::Sender<Result<PeerId, Error>>) {
        let peer = peer_of(&addr);
        if let Some(peer) = peer
            && self.swarm.is_connected(&peer)
        {
            let _ = reply.send(Ok(peer));
            return;
        }
        if self.pending_dials.len() >= MAX_PENDING_DIALS {
            let _ = reply.send(Err(Error::TooManyDials));
            return;
        }
        let opts = match peer {
            Some(peer) => DialOpts::peer_id(peer)
                .addresses(vec![addr.clone()])
                .condition(PeerCondition::Always)
                .build(),
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.pending_dials.insert(id, reply);
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "dial refused");
                let _ = reply.send(Err(Error::Dial(e.to_string())));
            }
        }
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        let now = Instant::now();
        let mut out: Vec<PeerInfo> = self
            .peers
            .iter()
            .map(|(peer, s)| PeerInfo {
                peer_id: *peer,
                agent_version: s.agent_version.clone(),
                protocol_version: s.protocol_version.clone(),
                protocols: s.protocols.clone(),
                listen_addrs: s.listen_addrs.clone(),
                rtt_ms: s.rtt.map(|d| d.as_secs_f64() * 1000.0),
                connections: s
                    .connections
                    .values()
                    .map(|(c, since)| ConnectionInfo {
                        age_secs: now.duration_since(*since).as_secs_f64(),
                        ..c.clone()
                    })
                    .collect(),
            })
            .collect();
        out.sort_by_key(|p| p.peer_id.to_bytes());
        out
    }

    fn on_nat(&mut self, e: blackhole_nat::Event) {
        // The DHT serves while we are reachable (automatic mode): a private
        // node's relayed address would otherwise make libp2p-kad a server
        // that others cannot dial.
        if let blackhole_nat::Event::Reachability { reachability } = &e
            && let Some(o) = self.overlay()
        {
            o.set_reachable(match reachability {
                blackhole_nat::Reachability::Public => Some(true),
                blackhole_nat::Reachability::Private => Some(false),
                blackhole_nat::Reachability::Unknown => None,
            });
        }
        // The NAT layer logs each event with its peer and reason.
        self.emit(Event::Nat(e));
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.record(&event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => {
                self.metrics.record(&e);
                if let libp2p_identify::Event::Error { peer_id, error, .. } = &e {
                    if matches!(error, libp2p_swarm::StreamUpgradeError::NegotiationFailed) {
                        // Usually our identify push to a peer that runs
                        // identify without push (js-libp2p's default).
                        tracing::debug!(peer = %peer_id, "identify: the peer does not take our (push) protocol");
                    } else {
                        tracing::info!(peer = %peer_id, error = %error, "identify failed");
                    }
                }
                if let libp2p_identify::Event::Received {
                    peer_id,
                    info,
                    connection_id,
                } = e
                {
                    tracing::debug!(peer = %peer_id, agent = %info.agent_version, "identified");
                    self.swarm.behaviour_mut().nat.on_identify(
                        peer_id,
                        connection_id,
                        &info.protocols,
                        &info.observed_addr,
                    );
                    if let Some(s) = self.peers.get_mut(&peer_id) {
                        s.agent_version = Some(info.agent_version.clone());
                        s.protocol_version = Some(info.protocol_version.clone());
                        s.protocols = info
                            .protocols
                            .iter()
                            .take(MAX_IDENTIFY_ITEMS)
                            .map(|p| p.to_string())
                            .collect();
                        s.listen_addrs = info
                            .listen_addrs
                            .iter()
                            .take(MAX_IDENTIFY_ITEMS)
                            .cloned()
                            .collect();
                    }
                    let protocols: Vec<String> =
                        info.protocols.iter().map(|p| p.to_string()).collect();
                    self.peer_store().identified(
                        peer_id,
                        &info.agent_version,
                        &protocols,
                        &info.listen_addrs,
                        unix_ms(),
                    );
                    self.maybe_ask_px(peer_id, &info.protocols);
                    if let Some(o) = self.overlay() {
                        let listen: Vec<Multiaddr> = info
                            .listen_addrs
                            .iter()
                            .take(MAX_IDENTIFY_ITEMS)
                            .cloned()
                            .collect();
                        o.on_identify(peer_id, &listen, &info.protocols);
                    }
                    self.emit(Event::Identified {
                        peer_id,
                        agent_version: info.agent_version,
                        protocol_version: info.protocol_version,
                    });
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => {
                self.metrics.record(&e);
                match &e.result {
                    Ok(rtt) => {
                        if let Some(s) = self.peers.get_mut(&e.peer) {
                            s.rtt = Some(*rtt);
                        }
                        self.peer_store().rtt(e.peer, rtt.as_secs_f64() * 1000.0);
                    }
                    Err(err) => tracing::debug!(peer = %e.peer, error = %err, "ping failed"),
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Limits(never)) => match never {},
            SwarmEvent::Behaviour(BehaviourEvent::Stream(())) => {}
            SwarmEvent::Behaviour(BehaviourEvent::AddressBook(never)) => match never {},
            SwarmEvent::Behaviour(BehaviourEvent::Nat(e)) => self.on_nat(e),
            SwarmEvent::Behaviour(BehaviourEvent::Rendezvous(e)) => {
                if let Some((point, ns, ttl)) = self.rv_pending.on_event(&e) {
                    let key = (point, ns);
                    if self.rv_refresh.contains_key(&key) {
                        // Renew at half the granted lifetime.
                        let renew =
                            tokio::time::Instant::now() + Duration::from_secs(ttl.max(2) / 2);
                        self.rv_refresh.insert(key, renew);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(libp2p_mdns::Event::Discovered(found))) => {
                // Remember them; dial while we have few peers.
                let mut budget = self
                    .config
                    .discovery
                    .peer_exchange
                    .ask_below
                    .saturating_sub(self.peers.len());
                for (peer, addr) in found.into_iter().take(64) {
                    tracing::debug!(%peer, %addr, "found on the local network (mDNS)");
                    self.peer_store().learned(peer, std::slice::from_ref(&addr));
                    // Both sides hear each other at the same moment; if both
                    // dialed from their listening ports (port reuse), the two
                    // SYNs would meet as one TCP simultaneous open that neither
                    // handshake survives. Only the smaller peer id dials.
                    let ours = *self.swarm.local_peer_id();
                    if budget > 0 && ours < peer && !self.swarm.is_connected(&peer) {
                        budget -= 1;
                        let _ = self
                            .swarm
                            .dial(DialOpts::peer_id(peer).addresses(vec![addr]).build());
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(libp2p_mdns::Event::Expired(_))) => {}
            SwarmEvent::Behaviour(BehaviourEvent::RendezvousServer(e)) => {
                use crate::rendezvous_point::PointEvent as P;
                match e {
                    P::Registered {
                        peer,
                        namespace,
                        ttl,
                    } => self.emit(Event::RendezvousRegistered {
                        peer_id: peer,
                        namespace,
                        ttl_secs: ttl,
                    }),
                    P::Ended { peer, namespace } => self.emit(Event::RendezvousRegistrationEnded {
                        peer_id: peer,
                        namespace,
                    }),
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Pubsub(e)) => {
                let b = self.swarm.behaviour_mut().pubsub.as_mut();
                self.pubsub.on_event(b, e);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Overlay(e)) => {
                if let blackhole_overlay::Event::PeerRejected { peer, address } = &e {
                    tracing::debug!(%peer, %address, "kept out of the routing table by the diversity rule");
                }
                self.queries.on_event(&e);
            }
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                tracing::info!(%address, "listening");
                self.listeners.insert(listener_id);
                self.listen_addrs.push(address.clone());
                self.emit(Event::Listening { address });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                self.listeners.remove(&listener_id);
                self.listen_addrs.retain(|a| !addresses.contains(a));
                let reason = reason.err().map(|e| e.to_string());
                if let Some(r) = &reason {
                    tracing::warn!(?addresses, reason = %r, "listener closed");
                }
                self.emit(Event::ListenerClosed { addresses, reason });
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(error = %error, "listener error");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let remote_addr = endpoint.get_remote_address().clone();
                let transport = Kind::of(&remote_addr);
                let negotiated = match transport {
                    Kind::Quic => Some(Negotiated::QUIC),
                    _ => self.negotiated.take(&peer_id, &endpoint),
                };
                let info = ConnectionInfo {
                    remote_addr,
                    direction: if endpoint.is_dialer() {
                        Direction::Outbound
                    } else {
                        Direction::Inbound
                    },
                    transport,
                    security: negotiated.map(|n| n.security),
                    muxer: negotiated.and_then(|n| n.muxer),
                    age_secs: 0.0,
                };
                tracing::info!(
                    peer = %peer_id,
                    addr = %info.remote_addr,
                    direction = ?info.direction,
                    transport = transport.name(),
                    security = ?info.security,
                    muxer = ?info.muxer,
                    "connection established"
                );
                self.peers
                    .entry(peer_id)
                    .or_insert_with(|| PeerState {
                        connections: HashMap::new(),
                        agent_version: None,
                        protocol_version: None,
                        protocols: Vec::new(),
                        listen_addrs: Vec::new(),
                        rtt: None,
                    })
                    .connections
                    .insert(connection_id, (info.clone(), Instant::now()));
                self.node_metrics
                    .connected_peers
                    .set(self.peers.len() as i64);
                let dialed = endpoint
                    .is_dialer()
                    .then(|| endpoint.get_remote_address().clone());
                self.peer_store().connected(peer_id, dialed, unix_ms());
                if let Some(reply) = self.pending_dials.remove(&connection_id) {
                    // Peers the user dialed are kept through pruning.
                    if self.protected.len() < MAX_PROTECTED {
                        self.protected.insert(peer_id);
                    }
                    let _ = reply.send(Ok(peer_id));
                }
                self.emit(Event::ConnectionEstablished {
                    peer_id,
                    connection: info,
                });
                if self.shutdown.is_some() {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                cause,
            } => {
                let remote_addr = endpoint.get_remote_address().clone();
                let cause = cause.map(|c| error_chain(&c));
                tracing::info!(peer = %peer_id, addr = %remote_addr, cause = ?cause, "connection closed");
                if let Some(s) = self.peers.get_mut(&peer_id) {
                    s.connections.remove(&connection_id);
                    if s.connections.is_empty() {
                        self.peers.remove(&peer_id);
                        self.px_asked.remove(&peer_id);
                    }
                }
                self.node_metrics
                    .connected_peers
                    .set(self.peers.len() as i64);
                self.emit(Event::ConnectionClosed {
                    peer_id,
                    remote_addr,
                    cause,
                    remaining: num_established,
                });
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                let error = error_chain(&error);
                if abandoned_by_dialer(&error) {
                    tracing::debug!(remote = %send_back_addr, %error, "inbound connection abandoned by the dialer");
                } else {
                    tracing::warn!(remote = %send_back_addr, %error, "inbound connection failed");
                }
                self.emit(Event::IncomingConnectionFailed {
                    send_back_addr,
                    error,
                });
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                let message = error_chain(&error);
                tracing::warn!(peer = ?peer_id, error = %message, "outbound connection failed");
                if let Some(p) = peer_id {
                    self.peer_store().dial_failed(p);
                }
                if let Some(reply) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Err(Error::Dial(message.clone())));
                }
                self.emit(Event::DialFailed {
                    peer_id,
                    error: message,
                });
            }
            _ => {}
        }
    }
}

/// Whether an inbound connection's error says the dialer gave up
/// mid-handshake. That is usually the loser of its own race (it dials TCP
/// and QUIC at once and drops the slower one): tens of thousands of these
/// in a 200-node network, logged at debug level. Garbage and timeouts stay
/// warnings.
fn abandoned_by_dialer(error: &str) -> bool {
    [
        "Connection reset by peer",
        "Broken pipe",
        "aborted by peer",
        ": eof",
        // Our Noise handshake's read of a closed socket (io::ErrorKind::UnexpectedEof).
        "unexpected end of file",
    ]
    .iter()
    .any(|s| error.contains(s))
}

/// The peer id an address ends with (`/p2p/<peer>`).
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(AddrProtocol::P2p(p)) => Some(p),
        _ => None,
    }
}

/// An error with its sources, `outer: inner: innermost` (libp2p's errors
/// keep the reason in their sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Looks `peer` up in the DHT and dials the addresses found (for an RPC
/// call to a peer we know no address of); whether we are connected to it
/// after. Bounded by the DHT query timeout and the dial timeout.
async fn reach(commands: mpsc::WeakSender<Command>, peer: PeerId) -> bool {
    let Some(commands) = commands.upgrade() else {
        return false;
    };
    let (reply, rx) = oneshot::channel();
    let cmd = Command::Dht {
        cmd: dht::Command::FindPeer { peer },
        reply,
    };
    if commands.send(cmd).await.is_err() {
        return false;
    }
    let addrs = match rx.await {
        Ok(Ok(dht::Reply::Peer {
            peer: Some(found), ..
        })) => found.addrs,
        _ => return false,
    };
    tracing::debug!(%peer, addrs = addrs.len(), "found through the DHT; dialing");
    for addr in addrs {
        let addr = if addr
            .iter()
            .any(|p| matches!(p, libp2p_core::multiaddr::Protocol::P2p(_)))
        {
            addr
        } else {
            addr.with(libp2p_core::multiaddr::Protocol::P2p(peer))
        };
        let (reply, rx) = oneshot::channel();
        if commands.send(Command::Dial { addr, reply }).await.is_err() {
            return false;
        }
        if let Ok(Ok(p)) = rx.await
            && p == peer
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::abandoned_by_dialer;

    #[test]
    fn a_handshake_the_dialer_dropped_is_not_a_warning_but_garbage_is() {
        let prefix = "Listen error: Failed to negotiate transport protocol(s): ";
        // As logged in a 200-node network, where racing dials drop TCP.
        for dropped in [
            "noise handshake failed: i/o: unexpected end of file",
            "noise handshake failed: i/o: Connection reset by peer (os error 104)",
        ] {
            assert!(
                abandoned_by_dialer(&format!("{prefix}{dropped}")),
                "{dropped}"
            );
        }
        for bad in [
            "noise handshake failed: the identity key's signature of the noise static key is invalid",
            "noise handshake failed: invalid handshake payload: truncated",
            "security and multiplexer handshakes did not finish within 20s",
        ] {
            assert!(!abandoned_by_dialer(&format!("{prefix}{bad}")), "{bad}");
        }
    }
}
