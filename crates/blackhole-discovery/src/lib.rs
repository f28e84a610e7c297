//! Peer discovery.
//!
//! Layer 4 of the workspace, below the overlay. It owns where a node finds
//! its first peers and how it remembers good ones:
//!
//! - [`Config`]: the static bootstrap list (plain or `/dnsaddr` addresses,
//!   resolved by the transport's DNS layer) and fallback peers used only
//!   when nothing else connects;
//! - [`PeerStore`]: a bounded, persistent record of peers (addresses,
//!   protocols, agent, last seen, successes, failures, round-trip time) in
//!   the node's embedded database, so that a restarted node reconnects to
//!   its best known peers before, or without, bootstrap.
//!
//! It knows nothing of Kademlia, pubsub or the control API.
//!
//! ```
//! use blackhole_discovery::{PeerStore, peerstore::Config};
//! use libp2p_identity::PeerId;
//!
//! let mut store = PeerStore::in_memory(Config::default());
//! let peer = PeerId::random();
//! store.connected(peer, Some("/ip4/10.0.0.1/tcp/4001".parse().unwrap()), 1_000);
//! assert_eq!(store.best(1, &Default::default())[0].0, peer);
//! ```

mod config;
pub mod peerstore;
pub mod px;
pub mod rendezvous;

pub use config::{
    Config, ConfigError, MAX_NAMESPACE_LEN, MAX_NAMESPACES, MdnsConfig, MdnsMode,
    PeerExchangeConfig, RendezvousConfig,
};
pub use peerstore::PeerStore;
