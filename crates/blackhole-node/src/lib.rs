//! The Blackhole node: every layer composed into one libp2p swarm.
//!
//! The top of the workspace: nothing depends on this crate. It owns the
//! swarm and its event loop ([`Node`], driven through a cloneable
//! [`Handle`]), the configuration file ([`Config`]), the data directory
//! ([`DataDir`]), the HTTP/JSON control API ([`api`]) and its client
//! ([`client`]), and the `blackhole-node` binary. It is the only crate that
//! knows about the control API and JSON.
//!
//! Every node runs identify, ping and the perf protocol, within the
//! connection limits and idle timeout of its configuration.
//!
//! ```no_run
//! use blackhole_node::{Config, Node};
//!
//! # async fn example() -> anyhow::Result<()> {
//! let mut config = Config::default();
//! config.network.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
//! config.api.enabled = false;
//! let node = Node::start(config, blackhole_security::identity::generate()).await?;
//! let handle = node.handle();
//! println!("{} listens on {:?}", handle.peer_id(), handle.listen_addrs().await?);
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

mod address_book;
pub mod api;
mod boxed;
pub mod client;
pub mod config;
mod datadir;
pub mod dht;
mod node;
pub mod perf;
mod ping;
pub mod pubsub;
pub mod px;
pub mod rendezvous;
mod rendezvous_point;
pub mod rpc;

pub use config::Config;
pub use datadir::{
    API_ADDR_FILE, CONFIG_FILE, DATABASE_FILE, DataDir, Error as DataDirError, open_database,
};
pub use node::{
    COMMAND_QUEUE, ConnectionInfo, DhtCommand, Direction, EVENT_QUEUE, Error, Event, Handle,
    MAX_PENDING_DIALS, MAX_PROTECTED, Node, PROTOCOL_VERSION, PeerInfo, SHUTDOWN_GRACE, StartError,
};

pub use blackhole_pubsub::{Priority, PublishOptions, Published, Verdict};
pub use blackhole_security::{Keypair, PeerId};
pub use libp2p_core::Multiaddr;
