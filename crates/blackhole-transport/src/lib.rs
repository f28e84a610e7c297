//! Transports and the connection upgrade pipeline.
//!
//! Layer 3 of the workspace, above `blackhole-security` and
//! `blackhole-mux`, which it applies as upgrades; it knows nothing of the
//! protocols that run on connections (identify, DHT, pubsub ...).
//!
//! [`build`] composes, from one [`Config`]:
//!
//! - TCP (`/ip4/…/tcp/…`): `TCP_NODELAY`, and port reuse on dial (a dial
//!   from a listening node uses its listening port as source port, which is
//!   what TCP hole punching needs; libp2p-tcp decides it per dial);
//! - WebSocket (`/…/tcp/…/ws`) over TCP;
//! - the in-memory transport (`/memory/N`) for tests;
//! - each stream transport secured by [`blackhole_security::Upgrade`] (Noise,
//!   TLS 1.3) and multiplexed by [`blackhole_mux::Upgrade`] (Yamux, Mplex),
//!   both negotiated per connection with multistream-select, with a timeout;
//! - QUIC v1 (`/…/udp/…/quic-v1`), which brings its own TLS 1.3 and streams;
//! - DNS (`/dns4`, `/dns6`, `/dns`, `/dnsaddr`) in front of all of them;
//! - byte counters per protocol stack (`libp2p_bandwidth`).
//!
//! What each connection negotiated is recorded in a [`NegotiatedTable`], for
//! the swarm to pick up when the connection is established.
//!
//! ```
//! use blackhole_transport::Config;
//!
//! let key = blackhole_security::identity::generate();
//! let mut registry = blackhole_metrics::Registry::default();
//! let built = blackhole_transport::build(&key, &Config::default(), &Default::default(), &mut registry).unwrap();
//! # let _ = built;
//! ```

mod config;
mod rank;
mod upgrade;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use futures::{AsyncRead, AsyncWrite, FutureExt};
use libp2p_core::{
    ConnectedPoint, Multiaddr, Transport,
    multiaddr::Protocol as AddrProtocol,
    muxing::StreamMuxerBox,
    transport::{Boxed, MemoryTransport, OptionalTransport},
};
use libp2p_identity::{Keypair, PeerId};

pub use config::{Config, ConfigError, DnsConfig, QuicConfig, TcpConfig, WebSocketConfig};
pub use upgrade::UpgradeError;

use blackhole_metrics::Registry;

/// The transport handed to the swarm.
pub type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// Errors of [`build`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A configuration value is invalid.
    #[error("transport.{0}")]
    Config(#[from] ConfigError),
    /// The multiplexing configuration is invalid.
    #[error("mux.{0}")]
    Mux(#[from] blackhole_mux::ConfigError),
    /// The security upgrade could not be built.
    #[error("security: {0}")]
    Security(#[from] blackhole_security::BuildError),
    /// The system DNS configuration could not be read.
    #[error("cannot read the system DNS configuration: {0}")]
    Dns(#[source] std::io::Error),
}

/// The transport family of a connection, derived from its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Plain TCP.
    Tcp,
    /// WebSocket over TCP.
    #[serde(rename = "websocket")]
    WebSocket,
    /// QUIC v1.
    Quic,
    /// The in-memory transport.
    Memory,
    /// A relayed circuit (`/p2p-circuit`).
    Relay,
    /// Anything else.
    Other,
}

impl Kind {
    /// The transport family of `addr`.
    pub fn of(addr: &Multiaddr) -> Kind {
        let mut kind = Kind::Other;
        for p in addr.iter() {
            kind = match p {
                AddrProtocol::P2pCircuit => return Kind::Relay,
                AddrProtocol::Ws(_) | AddrProtocol::Wss(_) => Kind::WebSocket,
                AddrProtocol::QuicV1 => Kind::Quic,
                AddrProtocol::Tcp(_) if kind == Kind::Other => Kind::Tcp,
                AddrProtocol::Memory(_) => Kind::Memory,
                _ => kind,
            };
        }
        kind
    }

    /// A short lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::WebSocket => "websocket",
            Kind::Quic => "quic",
            Kind::Memory => "memory",
            Kind::Relay => "relay",
            Kind::Other => "other",
        }
    }
}

/// What a connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Negotiated {
    /// The secure channel (`tls` for QUIC, whose handshake is TLS 1.3).
    pub security: blackhole_security::Protocol,
    /// The multiplexer, or `None` for QUIC's native streams.
    pub muxer: Option<blackhole_mux::Protocol>,
}

impl Negotiated {
    /// What a QUIC connection always uses.
    pub const QUIC: Negotiated = Negotiated {
        security: blackhole_security::Protocol::Tls,
        muxer: None,
    };
}

/// The most upgrades kept in a [`NegotiatedTable`] that the swarm has not
/// picked up (connections it refused after the upgrade); the oldest go first.
pub const MAX_PENDING_NEGOTIATED: usize = 1024;

/// Upgrades that completed, for the swarm to match with its
/// connection-established events by peer and endpoint.
#[derive(Debug, Clone, Default)]
pub struct NegotiatedTable(Arc<Mutex<VecDeque<(PeerId, ConnectedPoint, Negotiated)>>>);

impl NegotiatedTable {
    fn insert(&self, peer: PeerId, endpoint: ConnectedPoint, n: Negotiated) {
        if let Ok(mut t) = self.0.lock() {
            if t.len() >= MAX_PENDING_NEGOTIATED {
                t.pop_front();
            }
            t.push_back((peer, endpoint, n));
        }
    }

    /// Removes and returns what the connection to `peer` at `endpoint`
    /// negotiated. QUIC connections are not recorded: see [`Negotiated::QUIC`].
    ///
    /// The upgrade sees resolved addresses while the swarm knows the
    /// dialed one (`/dns4/…`), so when no entry matches the endpoint
    /// exactly, the oldest entry of `peer` in the same direction is used.
    pub fn take(&self, peer: &PeerId, endpoint: &ConnectedPoint) -> Option<Negotiated> {
        let mut t = self.0.lock().ok()?;
        let i = t
            .iter()
            .position(|(p, e, _)| p == peer && e == endpoint)
            .or_else(|| {
                t.iter()
                    .position(|(p, e, _)| p == peer && e.is_dialer() == endpoint.is_dialer())
            })?;
        t.remove(i).map(|(_, _, n)| n)
    }

    /// Number of entries not yet taken.
    pub fn len(&self) -> usize {
        self.0.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// Whether no entries are waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The result of [`build`].
#[derive(Debug)]
pub struct Built {
    /// The composed transport.
    pub transport: BoxedTransport,
    /// Where each upgraded connection records what it negotiated.
    pub negotiated: NegotiatedTable,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

fn boxed_io<T: Io>(t: T) -> Box<dyn Io> {
    Box::new(t)
}

/// Builds the transport described by `config` for the identity `key`,
/// registering its metrics in `registry`.
pub fn build(
    key: &Keypair,
    config: &Config,
    mux: &blackhole_mux::Config,
    registry: &mut Registry,
) -> Result<Built, BuildError> {
    build_with_relay(key, config, mux, None::<MemoryTransport>, registry)
}

/// Like [`build`], with a circuit relay client transport (from the NAT
/// layer) beside the others: relayed connections (`…/p2p-circuit/…`) are
/// secured and multiplexed like TCP ones.
pub fn build_with_relay<R>(
    key: &Keypair,
    config: &Config,
    mux: &blackhole_mux::Config,
    relay: Option<R>,
    registry: &mut Registry,
) -> Result<Built, BuildError>
where
    R: Transport + Send + Unpin + 'static,
    R::Output: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R::Error: Send + Sync + 'static,
    R::Dial: Send + 'static,
    R::ListenerUpgrade: Send + 'static,
{
    config.validate()?;
    let security = blackhole_security::Upgrade::new(key, &config.security)?;
    let mux_metrics = blackhole_mux::Metrics::register(registry);
    let muxer = blackhole_mux::Upgrade::new(mux, &mux_metrics)?;
    let metrics = upgrade::Metrics::register(registry);
    let negotiated = NegotiatedTable::default();

    let tcp_config = || {
        let mut c = libp2p_tcp::Config::new()
            .nodelay(config.tcp.nodelay)
            .listen_backlog(config.tcp.listen_backlog);
        if let Some(ttl) = config.tcp.ttl {
            c = c.ttl(ttl);
        }
        c
    };
    let tcp = match config.tcp.enabled {
        true => OptionalTransport::some(libp2p_tcp::tokio::Transport::new(tcp_config())),
        false => OptionalTransport::none(),
    };
    let ws = match config.websocket.enabled {
        true => {
            let mut ws =
                libp2p_websocket::Config::new(libp2p_tcp::tokio::Transport::new(tcp_config()));
            ws.set_max_data_size(config.websocket.max_data_size);
            OptionalTransport::some(ws)
        }
        false => OptionalTransport::none(),
    };
    let memory = match config.memory {
        true => OptionalTransport::some(MemoryTransport::default()),
        false => OptionalTransport::none(),
    };
    let relay = match relay {
        Some(r) => OptionalTransport::some(r),
        None => OptionalTransport::none(),
    };
    // Relayed addresses first: they start like TCP ones. WebSocket next:
    // its addresses end in /ws, which TCP refuses anyway.
    let streams = relay
        .map(|s, _| boxed_io(s))
        .or_transport(ws.map(|s, _| boxed_io(s)))
        .map(|either, _| either.into_inner())
        .or_transport(tcp.map(|s, _| boxed_io(s)))
        .map(|either, _| either.into_inner())
        .or_transport(memory.map(|s, _| boxed_io(s)))
        .map(|either, _| either.into_inner());

    let table = negotiated.clone();
    let timeout = config.upgrade_timeout;
    let upgraded = streams.and_then(move |io, endpoint| {
        let (security, muxer) = (security.clone(), muxer.clone());
        let (table, metrics) = (table.clone(), metrics.clone());
        upgrade::upgrade(io, endpoint, security, muxer, table, metrics, timeout).boxed()
    });

    let quic = match config.quic.enabled {
        true => OptionalTransport::some(
            libp2p_quic::tokio::Transport::new(config.quic.to_libp2p(key))
                .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn))),
        ),
        false => OptionalTransport::none(),
    };
    let all = upgraded
        .or_transport(quic)
        .map(|either, _| either.into_inner());
    // DNS goes outside everything: a DNS transport accepts every address
    // and resolves the ones it understands, so nothing may sit beside it.
    let all: Boxed<(PeerId, StreamMuxerBox)> = if config.dns.enabled {
        dns(all, &config.dns)?.boxed()
    } else {
        all.boxed()
    };
    // Outside DNS: the swarm calls `dial` for all of a dial's addresses
    // before polling any, so TCP attempts see their QUIC sibling.
    let all = rank::QuicFirst::new(all, config.quic.head_start).boxed();
    let transport = libp2p_metrics::BandwidthTransport::new(all, registry)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed();
    Ok(Built {
        transport,
        negotiated,
    })
}

/// The DNS layer: the system resolver, or the configured name servers.
fn dns<T>(inner: T, config: &DnsConfig) -> Result<libp2p_dns::tokio::Transport<T>, BuildError> {
    use hickory_resolver::config::{
        ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
    };
    if config.nameservers.is_empty() {
        return libp2p_dns::tokio::Transport::system(inner).map_err(BuildError::Dns);
    }
    let servers = config
        .nameservers
        .iter()
        .map(|sa| {
            let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
            udp.port = sa.port();
            tcp.port = sa.port();
            NameServerConfig::new(sa.ip(), true, vec![udp, tcp])
        })
        .collect();
    Ok(libp2p_dns::tokio::Transport::custom(
        inner,
        ResolverConfig::from_name_servers(servers),
        ResolverOpts::default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_addresses() {
        let k = |s: &str| Kind::of(&s.parse().unwrap());
        assert_eq!(k("/ip4/1.2.3.4/tcp/1"), Kind::Tcp);
        assert_eq!(k("/dns4/example.com/tcp/1/ws"), Kind::WebSocket);
        assert_eq!(k("/ip6/::1/udp/1/quic-v1"), Kind::Quic);
        assert_eq!(k("/memory/5"), Kind::Memory);
        assert_eq!(
            k(
                "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWGQmdpzHXCqLno4mMxWXKNFQHASBeF99gTm2JR8Vu5Bdc/p2p-circuit"
            ),
            Kind::Relay
        );
    }
}
