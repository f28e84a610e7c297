//! Pubsub configuration.

use std::{net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

/// A configuration value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pubsub.{key}: {reason}")]
pub struct ConfigError {
    /// The key under `pubsub`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// Pubsub configuration. Every field has a documented default; see
/// [`Config::default`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Whether pubsub runs at all.
    pub enabled: bool,
    /// Largest application payload, in bytes. Larger publishes are refused;
    /// larger received messages are rejected.
    pub max_message_size: usize,
    /// Local subscriptions (topics and patterns) at most.
    pub max_subscriptions: usize,
    /// A second gossipsub instance (`/blackhole/meshsub-priority/1.1.0`)
    /// carries high-priority messages, so that on every hop they never wait
    /// behind queued normal traffic. Off: high priority is only a flag.
    pub priority_lane: bool,
    /// Gossipsub's heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Target mesh degree (D).
    pub mesh_n: usize,
    /// Below this the mesh grafts peers (D_lo).
    pub mesh_n_low: usize,
    /// Above this the mesh prunes peers (D_hi).
    pub mesh_n_high: usize,
    /// Heartbeats of messages kept for IWANT.
    pub history_length: usize,
    /// Heartbeats of messages advertised in IHAVE gossip.
    pub history_gossip: usize,
    /// How long message ids are remembered to drop duplicates.
    #[serde(with = "humantime_serde")]
    pub duplicate_cache_time: Duration,
    /// Send our own messages to every subscribed peer above the publish
    /// threshold, not only the mesh.
    pub flood_publish: bool,
    /// Time an application validator has for one message; after it the
    /// message is ignored (not delivered, not forwarded, no penalty).
    #[serde(with = "humantime_serde")]
    pub validation_timeout: Duration,
    /// Messages waiting for validators at once; more are ignored.
    pub max_pending_validations: usize,
    /// How long a publish waits for a first peer on a topic (dialing the
    /// peers that announced it) before it fails.
    #[serde(with = "humantime_serde")]
    pub publish_wait: Duration,
    /// Publishes waiting at once; more are refused.
    pub max_pending_publishes: usize,
    /// Topic announcements: how often, limits, and the registry.
    pub announce: AnnounceConfig,
    /// Peer scoring (gossipsub v1.1).
    pub score: ScoreConfig,
}

/// Topic announcements and the registry built from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnnounceConfig {
    /// How often a node re-announces its topics (it also announces on
    /// every change, at most once per `min_interval`).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Announcements from one node closer together than this are dropped.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Concrete topics (subscribed plus published) in one announcement.
    pub max_topics: usize,
    /// Wildcard patterns in one announcement.
    pub max_patterns: usize,
    /// Addresses in one announcement.
    pub max_addrs: usize,
    /// Nodes remembered in the registry.
    pub max_sources: usize,
    /// Distinct topics remembered in the registry.
    pub registry_max_topics: usize,
    /// Distinct patterns remembered in the registry.
    pub registry_max_patterns: usize,
    /// Peers dialed per second to find peers for our topics.
    pub dials_per_tick: usize,
    /// Neighbours a starting node asks for their registry, so that it
    /// knows the network's topics and patterns at once instead of after
    /// the next periodic announcements (0: wait for those).
    pub sync_peers: usize,
    /// Largest registry snapshot sent or accepted, in bytes (a sender
    /// keeps the freshest entries that fit).
    pub max_sync_bytes: usize,
}

/// Peer scoring parameters and thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreConfig {
    /// Whether peers are scored at all.
    pub enabled: bool,
    /// Below this we neither gossip to nor accept gossip from a peer.
    pub gossip_threshold: f64,
    /// Below this we do not flood-publish to a peer.
    pub publish_threshold: f64,
    /// Below this everything from a peer is ignored.
    pub graylist_threshold: f64,
    /// Above this we accept peer exchange on PRUNE.
    pub accept_px_threshold: f64,
    /// Median mesh score below which opportunistic grafting happens.
    pub opportunistic_graft_threshold: f64,
    /// Weight of each topic's score.
    pub topic_weight: f64,
    /// P4: weight of the squared count of invalid messages (rejected by
    /// validation) in a topic. Negative.
    pub invalid_message_weight: f64,
    /// P4: the count of invalid messages is multiplied by this every second.
    pub invalid_message_decay: f64,
    /// P2: weight of first deliveries. Positive.
    pub first_delivery_weight: f64,
    /// P6: weight of the squared excess of peers sharing one IP. Negative.
    pub ip_colocation_weight: f64,
    /// P6: peers on one IP before the penalty starts.
    pub ip_colocation_threshold: f64,
    /// IPs exempt from P6 (loopback by default, so local test networks work).
    pub ip_colocation_whitelist: Vec<IpAddr>,
    /// P7: weight of protocol misbehaviour (broken promises, GRAFT floods).
    pub behaviour_penalty_weight: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            max_message_size: 1024 * 1024,
            max_subscriptions: 1024,
            priority_lane: true,
            heartbeat_interval: Duration::from_secs(1),
            mesh_n: 6,
            mesh_n_low: 5,
            mesh_n_high: 12,
            history_length: 5,
            history_gossip: 3,
            duplicate_cache_time: Duration::from_secs(120),
            flood_publish: true,
            validation_timeout: Duration::from_secs(2),
            max_pending_validations: 1024,
            publish_wait: Duration::from_secs(10),
            max_pending_publishes: 256,
            announce: AnnounceConfig::default(),
            score: ScoreConfig::default(),
        }
    }
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            min_interval: Duration::from_secs(1),
            max_topics: 256,
            max_patterns: 64,
            max_addrs: 4,
            max_sources: 10_000,
            registry_max_topics: 50_000,
            registry_max_patterns: 4096,
            dials_per_tick: 4,
            sync_peers: 2,
            max_sync_bytes: 4 << 20,
        }
    }
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            gossip_threshold: -10.0,
            publish_threshold: -50.0,
            graylist_threshold: -80.0,
            accept_px_threshold: 10.0,
            opportunistic_graft_threshold: 20.0,
            topic_weight: 1.0,
            invalid_message_weight: -10.0,
            invalid_message_decay: 0.99,
            first_delivery_weight: 1.0,
            ip_colocation_weight: -5.0,
            ip_colocation_threshold: 10.0,
            ip_colocation_whitelist: vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            ],
            behaviour_penalty_weight: -10.0,
        }
    }
}

impl Config {
    /// Checks values that cannot work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| {
            Err(ConfigError {
                key: key.into(),
                reason,
            })
        };
        if self.max_message_size == 0 || self.max_message_size > 64 * 1024 * 1024 {
            return bad("max_message_size", "must be 1 byte to 64 MiB".into());
        }
        if !(self.mesh_n_low <= self.mesh_n && self.mesh_n <= self.mesh_n_high) || self.mesh_n == 0
        {
            return bad(
                "mesh_n",
                format!(
                    "need 0 < mesh_n_low ({}) <= mesh_n ({}) <= mesh_n_high ({})",
                    self.mesh_n_low, self.mesh_n, self.mesh_n_high
                ),
            );
        }
        if self.history_gossip > self.history_length {
            return bad(
                "history_gossip",
                format!("must not exceed history_length ({})", self.history_length),
            );
        }
        if self.heartbeat_interval.is_zero() {
            return bad("heartbeat_interval", "must be positive".into());
        }
        if self.announce.interval < self.announce.min_interval {
            return bad(
                "announce.interval",
                "must not be shorter than announce.min_interval".into(),
            );
        }
        if self.announce.max_topics == 0 || self.announce.max_sources == 0 {
            return bad("announce", "limits must be positive".into());
        }
        if self.announce.max_sync_bytes < 1024 {
            return bad(
                "announce.max_sync_bytes",
                "must be at least 1024 (one announcement)".into(),
            );
        }
        let s = &self.score;
        if !(s.graylist_threshold <= s.publish_threshold
            && s.publish_threshold <= s.gossip_threshold
            && s.gossip_threshold <= 0.0)
        {
            return bad(
                "score",
                "need graylist_threshold <= publish_threshold <= gossip_threshold <= 0".into(),
            );
        }
        if s.invalid_message_weight > 0.0
            || s.ip_colocation_weight > 0.0
            || s.behaviour_penalty_weight > 0.0
        {
            return bad("score", "penalty weights must be zero or negative".into());
        }
        Ok(())
    }
}
