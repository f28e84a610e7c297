//! Overlay configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Kademlia server or client mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Server once the node has a confirmed external address (it is
    /// reachable), client until then: libp2p-kad's automatic mode.
    Auto,
    /// Always answer DHT requests (for nodes known to be reachable, and for
    /// local networks where nothing confirms addresses).
    Server,
    /// Never answer DHT requests; only query.
    Client,
}

/// Overlay (Kademlia) configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Whether the DHT runs at all.
    pub enabled: bool,
    /// Server, client, or automatic.
    pub mode: Mode,
    /// The protocol name. Nodes only talk DHT with peers using the same name.
    pub protocol: String,
    /// k: the bucket size and the number of peers a record is stored at.
    pub replication_factor: usize,
    /// alpha: requests in flight per query.
    pub parallelism: usize,
    /// S/Kademlia disjoint lookup paths (more robust against bad peers,
    /// more requests).
    pub disjoint_paths: bool,
    /// Time allowed for one query.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// A query that sends, hears and loses nothing for this long is
    /// finished with what it has (see the overlay behaviour's stall check).
    /// Keep it above libp2p-kad's 10 s per-peer timeout, which is how long
    /// a healthy query may wait on slow peers.
    #[serde(with = "humantime_serde")]
    pub query_stall_timeout: Duration,
    /// Lifetime of records we store or publish.
    #[serde(with = "humantime_serde")]
    pub record_ttl: Duration,
    /// How often stored records are re-replicated to the closest peers.
    #[serde(with = "humantime_serde")]
    pub record_replication_interval: Duration,
    /// How often records we published are re-published.
    #[serde(with = "humantime_serde")]
    pub record_publication_interval: Duration,
    /// Lifetime of provider records.
    #[serde(with = "humantime_serde")]
    pub provider_record_ttl: Duration,
    /// How often we re-announce what we provide.
    #[serde(with = "humantime_serde")]
    pub provider_publication_interval: Duration,
    /// How often the routing table is refreshed (a bootstrap query).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// How often a random walk (a lookup of a random id) explores the network.
    #[serde(with = "humantime_serde")]
    pub random_walk_interval: Duration,
    /// How often expired records are deleted from the store.
    #[serde(with = "humantime_serde")]
    pub expiry_sweep_interval: Duration,
    /// Largest DHT message, in bytes.
    pub max_packet_size: usize,
    /// The record store.
    pub store: crate::store::Config,
    /// The IP diversity rule of the routing table.
    pub ip_diversity: DiversityConfig,
    /// Connection pruning.
    pub connections: PruneConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: Mode::Auto,
            protocol: "/blackhole/kad/1.0.0".into(),
            replication_factor: 20,
            parallelism: 3,
            disjoint_paths: true,
            query_timeout: Duration::from_secs(60),
            query_stall_timeout: Duration::from_secs(15),
            record_ttl: Duration::from_secs(36 * 3600),
            record_replication_interval: Duration::from_secs(3600),
            record_publication_interval: Duration::from_secs(22 * 3600),
            provider_record_ttl: Duration::from_secs(48 * 3600),
            provider_publication_interval: Duration::from_secs(12 * 3600),
            // go-libp2p-kad-dht's refresh interval. Every refresh queries
            // each bucket, and the connections a query opens close when
            // idle; at 5 min and a 2 min random walk, a 200-node test network
            // on 2 cores redialed ~140 connections/s while idle.
            refresh_interval: Duration::from_secs(600),
            random_walk_interval: Duration::from_secs(300),
            expiry_sweep_interval: Duration::from_secs(60),
            max_packet_size: 96 * 1024,
            store: crate::store::Config::default(),
            ip_diversity: DiversityConfig::default(),
            connections: PruneConfig::default(),
        }
    }
}

/// The routing table's IP diversity rule (go-libp2p-kad-dht's filter):
/// at most `max_per_group_per_bucket` peers from one IPv4 /16 (IPv6 /32)
/// in a bucket and `max_per_group_per_table` in the whole table. Loopback,
/// private and link-local addresses are exempt, so local networks work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiversityConfig {
    /// Whether the rule applies (to public addresses only).
    pub enabled: bool,
    /// Peers per /16 (IPv4) or /32 (IPv6) in one bucket.
    pub max_per_group_per_bucket: usize,
    /// Peers per /16 (IPv4) or /32 (IPv6) in the table.
    pub max_per_group_per_table: usize,
}

impl Default for DiversityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_per_group_per_bucket: 2,
            max_per_group_per_table: 3,
        }
    }
}

/// Connection pruning: above `high_watermark` connected peers, close
/// connections down to `low_watermark`, sparing protected peers, peers
/// connected for less than `grace_period` and busy peers, taking pubsub
/// mesh peers last, and keeping peers spread across the routing table's
/// buckets (see [`crate::prune`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PruneConfig {
    /// Peers kept after pruning.
    pub low_watermark: usize,
    /// Peers above which pruning starts.
    pub high_watermark: usize,
    /// New connections are not pruned before this age.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// How often the watermarks are checked.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

impl Default for PruneConfig {
    fn default() -> Self {
        Self {
            low_watermark: 160,
            high_watermark: 192,
            grace_period: Duration::from_secs(30),
            check_interval: Duration::from_secs(10),
        }
    }
}

/// A configuration value that cannot work, with the key that holds it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The key, relative to the overlay section.
    pub key: &'static str,
    /// Why the value is refused.
    pub reason: String,
}

impl Config {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason: &str| {
            Err(ConfigError {
                key,
                reason: reason.to_owned(),
            })
        };
        if !self.protocol.starts_with('/') {
            return err("protocol", "must start with '/'");
        }
        if self.replication_factor == 0 || self.replication_factor > 256 {
            return err("replication_factor", "must be between 1 and 256");
        }
        if self.parallelism == 0 || self.parallelism > 64 {
            return err("parallelism", "must be between 1 and 64");
        }
        for (key, d) in [
            ("query_timeout", self.query_timeout),
            ("query_stall_timeout", self.query_stall_timeout),
            ("record_ttl", self.record_ttl),
            (
                "record_replication_interval",
                self.record_replication_interval,
            ),
            (
                "record_publication_interval",
                self.record_publication_interval,
            ),
            ("provider_record_ttl", self.provider_record_ttl),
            (
                "provider_publication_interval",
                self.provider_publication_interval,
            ),
            ("refresh_interval", self.refresh_interval),
            ("random_walk_interval", self.random_walk_interval),
            ("expiry_sweep_interval", self.expiry_sweep_interval),
            ("connections.grace_period", self.connections.grace_period),
            (
                "connections.check_interval",
                self.connections.check_interval,
            ),
        ] {
            if d.is_zero() {
                return err(key, "must be greater than zero");
            }
        }
        if self.max_packet_size < 1024 {
            return err("max_packet_size", "must be at least 1 KiB");
        }
        if self.store.max_value_bytes + 1024 > self.max_packet_size {
            return err(
                "max_packet_size",
                "must exceed store.max_value_bytes by at least 1 KiB",
            );
        }
        if self.connections.low_watermark > self.connections.high_watermark {
            return err(
                "connections.low_watermark",
                "must not exceed connections.high_watermark",
            );
        }
        if self.connections.high_watermark == 0 {
            return err("connections.high_watermark", "must be at least 1");
        }
        if self.ip_diversity.max_per_group_per_bucket == 0
            || self.ip_diversity.max_per_group_per_table == 0
        {
            return err(
                "ip_diversity.max_per_group_per_bucket",
                "limits must be at least 1",
            );
        }
        Ok(())
    }
}
