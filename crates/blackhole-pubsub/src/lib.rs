//! Publish/subscribe: gossipsub with a topic hierarchy, wildcard
//! subscriptions, topic discovery, priorities, expiry and validation.
//!
//! Layer 6 of the workspace, beside `blackhole-rpc` and `blackhole-nat`.
//! It owns gossipsub (libp2p-gossipsub, v1.1 peer scoring on, v1.2
//! IDONTWANT, signed messages and strict validation) and everything we
//! build on top of it. It knows nothing of the DHT, RPC or the control
//! API; a [`Behaviour`] is one libp2p `NetworkBehaviour` any swarm can use.
//!
//! ```
//! use blackhole_pubsub::{Config, Pattern, Topic};
//! let p = Pattern::new("blocks/*/shard-3").unwrap();
//! assert!(p.matches(&Topic::new("blocks/eu/shard-3").unwrap()));
//! assert!(Config::default().validate().is_ok());
//! ```
//!
//! # Topics and patterns
//!
//! Topics are paths (`blocks/eu/shard-3`); subscriptions are patterns in
//! which `*` stands for one segment and a final `**` for one or more
//! ([`topic`]). Message ids are content based: SHA-256 over topic, expiry
//! and data, so publishing the same bytes twice on a topic within
//! `duplicate_cache_time` is refused as a duplicate (add a nonce to repeat
//! a message).
//!
//! # How wildcards work across the network
//!
//! No gossipsub implementation has wildcards, and a gossipsub message only
//! reaches the subscribers of its exact topic. We add two things:
//!
//! 1. **Announcements.** Every node subscribes to the topic `_bh/topics/1`
//!    and announces there, signed, what it subscribes to (topics and
//!    patterns), the topics it published on recently, and up to four
//!    addresses ([`wire`]). It announces on every change, at most once
//!    per `announce.min_interval` (whatever comes within it shares the
//!    next announcement), and every `announce.interval` (30 s); entries
//!    expire after three intervals. Each node does this periodic work at
//!    a phase of its own within the second (from its peer id), so nodes
//!    started together do not all announce at the same moment.
//!    A node with nothing to announce sends nothing (one empty
//!    announcement withdraws what it announced before), so nodes that do
//!    not use pubsub cost nothing. Each node keeps a bounded
//!    [`registry::Registry`] of what it heard (10,000 nodes, 50,000
//!    topics, 4,096 patterns by default; what does not fit is dropped and
//!    logged). Announcements from one node faster than half the minimum
//!    interval are dropped and not forwarded, so one node cannot flood
//!    the topic.
//!
//!    A starting node does not wait for the next round: the first
//!    `announce.sync_peers` (2) neighbours that join `_bh/topics/1` with
//!    it are asked for their registry ([`REGISTRY_PROTOCOL`], a snapshot
//!    of at most `announce.max_sync_bytes`, freshest entries first). A
//!    neighbour's own entry counts as its word; the others are hearsay:
//!    they fill gaps only, never replace what the node heard itself, give
//!    way to the source's own next announcement, make no room in a full
//!    registry (a source's own announcement evicts hearsay), and expire
//!    counting from when the neighbour heard them. A node answers each
//!    peer once per `announce.interval` (again within it: an empty
//!    snapshot) and at most eight peers a second (beyond, it refuses and
//!    the asker tries its next neighbour), so bootstrap nodes, which
//!    every starting node meets first, are not swamped. So a join costs one or two snapshots, not announcements
//!    to the whole network; reconnecting peers cost nothing.
//! 2. **Pattern topics.** A wildcard subscriber joins the gossipsub topic
//!    `_bh/p/<pattern>`. A publisher on topic `T` sends the message to `T`
//!    and, wrapped in an envelope that names `T`, to `_bh/p/<P>` for every
//!    announced pattern `P` that matches `T`. Receivers check that the
//!    envelope's topic matches the pattern (otherwise the message is
//!    rejected and the forwarder penalised). So a wildcard subscriber gets
//!    messages on topics that did not exist when it subscribed, without
//!    joining each one, and the publisher pays one extra send per matching
//!    pattern, not per subscriber.
//!
//! Each node delivers a message once, even if it arrives on its topic and
//! on several pattern topics (a bounded cache of 65,536 ids).
//!
//! A publish needs a connected peer on each target topic. When it has
//! none, it dials up to three peers that announced the topic (addresses
//! from the announcement, or from the swarm's other behaviours) and waits
//! up to `publish_wait` for one to subscribe; then it reports which
//! targets were reached ([`Published`]). Subscribers likewise dial
//! announced peers of their topics while they know fewer than `mesh_n_low`.
//!
//! Limits: wildcard delivery needs the publisher to have heard the
//! pattern's announcement: within seconds of subscribing on a connected
//! network. A node that joins later knows what its first neighbours knew
//! as soon as their snapshots arrive; what they had not heard either
//! reaches it with the next periodic announcements, up to one
//! `announce.interval` later. A lying neighbour can make a starting node
//! believe in subscriptions that do not exist (it then sends copies to
//! pattern topics nobody joined, or dials announced addresses in vain)
//! until the hearsay expires or the source announces.
//! Messages published by other implementations reach our wildcard
//! subscribers only if one of our nodes republishes them (none does).
//! Patterns are limited to 64 per announcement and 4,096 network-wide, and
//! one publish goes to at most 64 matching pattern topics
//! ([`MAX_PATTERN_TARGETS`]).
//!
//! # What announcements do not protect against
//!
//! Known limits of the design, documented rather than fixed:
//!
//! - **First come, first served.** The registry keeps what arrived first
//!   and drops what does not fit until entries expire (three intervals,
//!   90 s by default); a source that re-announces every interval stays.
//!   Identities cost nothing, and the per-source rate limit does not help
//!   against many sources: about 10,000 throwaway keys announcing once
//!   per interval fill `max_sources`, after which announcements from
//!   nodes not yet known are refused and not forwarded. The other tables
//!   fill with far fewer: at 64 patterns per announcement, 64 identities
//!   fill the 4,096 `registry_max_patterns`, and patterns announced after
//!   that are dropped (logged at debug level), so publishers that did not
//!   hear them before send nothing to those wildcard subscribers; at 256
//!   topics per announcement, about 200 fill the 50,000 topics.
//! - **Announcement traffic grows with the network.** Every node that
//!   subscribes or publishes announces every `announce.interval`, and
//!   every announcement reaches every node (and is forwarded by each to
//!   its mesh peers). With N such nodes and the default 30 s, each node
//!   receives about N / 30 announcements a second: some 330 a second at
//!   10,000 nodes. One is a few hundred bytes for a typical node and up
//!   to about 83 KiB at the limits (256 topics and 64 patterns of 256
//!   bytes, four addresses). Joins do not add to it: a starting node
//!   asks two neighbours for snapshots instead.
//! - **The 64-target cut.** A topic of k segments is matched by up to
//!   2^(k+1) - 1 distinct patterns (each segment itself or `*`, or a
//!   final `**` in place of the rest), so from six segments on more than
//!   [`MAX_PATTERN_TARGETS`] announced patterns can match one topic. The
//!   publisher then sorts the matching patterns by their text, byte by
//!   byte, and sends to the first 64 only (logging a warning). `*`
//!   (0x2A) sorts before digits and letters, so patterns with a wildcard
//!   early tend to be kept; which subscribers miss the message depends on
//!   how their patterns are spelled, not on when they subscribed or how
//!   many nodes hold a pattern, and anyone can announce patterns that
//!   sort first.
//!
//! # Priority
//!
//! gossipsub sends published and forwarded messages through one queue per
//! peer. High-priority messages travel on a second gossipsub instance (the
//! priority lane, protocol `/blackhole/meshsub-priority/1.1.0`) with its
//! own queues and streams, so on every hop they are never queued behind
//! normal messages. Only our nodes speak it: other implementations do not
//! receive high-priority messages. The lane runs gossipsub v1.1 rules
//! (libp2p-gossipsub offers no v1.2 for custom protocol names), so it has
//! no IDONTWANT; it is meant for small, urgent messages. It costs a second
//! mesh per topic (GRAFT/PRUNE and heartbeats) and about 1 KiB per
//! connection; `priority_lane = false` turns it off. `cargo xtask bench`
//! measures it: with 64 KiB messages flooding a topic, high-priority
//! probes arrived in 20 ms (median) and 86 ms (p99) against 68 ms and
//! 325 ms for normal ones (10 nodes, release build).
//!
//! # Expiry
//!
//! A message published with a TTL carries its expiry (unix milliseconds)
//! in its envelope. Every hop checks it on arrival and again when
//! validation finished (validators may take up to `validation_timeout`):
//! an expired message is ignored (neither delivered nor forwarded, no
//! penalty). An application should check [`Message::expired_at`] once
//! more if it queues messages before using them. Nodes' clocks must
//! roughly agree.
//!
//! # Validation
//!
//! Every message is validated before it is forwarded: envelopes and
//! announcements must parse, sizes must fit, and then every application
//! [`Validator`] whose pattern matches the topic runs, with
//! `validation_timeout`. Reject counts as an invalid message for the
//! forwarding peer (P4; with the defaults, three rejected messages take a
//! peer without other credit below the graylist threshold, for some
//! seconds, longer the more it sends); ignore drops without penalty.
//!
//! # Interoperability
//!
//! Messages without TTL or priority on concrete topics are the
//! application's bytes, so other gossipsub implementations (js-libp2p's
//! `@libp2p/gossipsub`, go-libp2p-pubsub) exchange them with us. The
//! exception: bytes that start with our envelope magic (`0xB7 'B' 'H'`)
//! go out in an envelope, so our receivers hand out exactly what was
//! published; other implementations see the envelope. Their
//! message ids differ from ours, which only makes IHAVE/IWANT gossip less
//! effective between implementations.

mod behaviour;
// Public types in a private module: they appear in `Lanes`' handler type only.
pub mod config;
#[allow(unreachable_pub, missing_debug_implementations)]
mod keep_alive;
mod metrics;

pub mod registry;
#[allow(unreachable_pub)] // in `Lanes`' handler type only, like `keep_alive`
mod sync;
pub mod topic;
pub mod wire;

pub use behaviour::{
    ANNOUNCE_TOPIC, Behaviour, Event, MAX_PATTERN_TARGETS, MAX_PEER_TOPICS, Message, MessageId,
    PATTERN_PREFIX, PRIORITY_PROTOCOL, Priority, PublishOptions, PublishStatus, Published,
    Validator, Verdict,
};
pub use config::{AnnounceConfig, Config, ConfigError, ScoreConfig};
pub use metrics::Metrics;
pub use registry::TopicInfo;
pub use sync::PROTOCOL as REGISTRY_PROTOCOL;
pub use topic::{Matcher, Pattern, Topic, TopicError};

/// Errors of [`Behaviour::new`] and [`Behaviour::subscribe`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// gossipsub refused the subscription.
    #[error("subscribe: {0}")]
    Subscribe(String),
    /// Too many subscriptions.
    #[error("too many subscriptions (max_subscriptions = {max})")]
    TooManySubscriptions { max: usize },
}

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The payload is larger than `max_message_size`.
    #[error("message of {size} bytes is larger than max_message_size ({max} bytes)")]
    TooLarge { size: usize, max: usize },
    /// The same bytes were published or received on this topic recently.
    #[error(
        "duplicate message {id}: the same data was sent on this topic recently (add a nonce to repeat it)"
    )]
    Duplicate { id: String },
    /// No subscriber could be reached.
    #[error("{}", no_subscribers(topic, waited))]
    NoSubscribers {
        topic: String,
        waited: std::time::Duration,
    },
}

fn no_subscribers(topic: &str, waited: &std::time::Duration) -> String {
    if waited.is_zero() {
        format!("no subscribers of {topic} are known (none connected, none announced)")
    } else {
        format!("no subscribers of {topic} could be reached within {waited:?}")
    }
}
