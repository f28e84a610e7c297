//! The structured overlay: Kademlia.
//!
//! Layer 5 of the workspace. It owns the Kademlia DHT (libp2p-kad) with
//! our persistent, bounded record store ([`store`]), routing-table
//! maintenance and connection pruning. It knows nothing of pubsub, RPC or
//! the control API.

mod behaviour;
pub mod config;
pub mod diversity;
pub mod prune;
pub mod store;

pub use behaviour::{Behaviour, Bucket, BucketPeer, Event, MAX_PROVIDERS_PER_QUERY};
pub use config::{Config, ConfigError, DiversityConfig, Mode, PruneConfig};
/// Why the store refused a record (`put`, `provide`).
pub use libp2p_kad::store::Error as StoreLimitError;
pub use libp2p_kad::{QueryId, Record, RecordKey};
