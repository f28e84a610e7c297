//! The libp2p driver: two gossipsub lanes, announcements, validation,
//! wildcard delivery and publish readiness.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use libp2p_core::{Endpoint, Multiaddr, transport::PortUse};
use libp2p_gossipsub as gossipsub;
use libp2p_identity::{Keypair, PeerId};
use libp2p_request_response as rr;
use libp2p_swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
    behaviour::toggle::Toggle,
    dial_opts::{DialOpts, PeerCondition},
};
use sha2::{Digest, Sha256};

use crate::{
    Config, Error, Metrics, PublishError,
    keep_alive::Quiet,
    registry::{self, Registry, TopicInfo},
    sync,
    topic::{Matcher, Pattern, Topic},
    wire::{self, Announcement, AnnouncementLimits, ENVELOPE_OVERHEAD, Envelope, SnapshotEntry},
};

/// The gossipsub topic of announcements.
pub const ANNOUNCE_TOPIC: &str = "_bh/topics/1";
/// Prefix of the gossipsub topics that carry copies for wildcard
/// subscribers: `_bh/p/` followed by the pattern.
pub const PATTERN_PREFIX: &str = "_bh/p/";
/// The priority lane's protocol.
pub const PRIORITY_PROTOCOL: &str = "/blackhole/meshsub-priority/1.1.0";
/// Message ids remembered to deliver each message once per node.
const MAX_SEEN: usize = 65_536;
/// Topics we remember publishing on (for announcements).
const MAX_PUBLISHED: usize = 1024;
/// Peers remembered as recently dialed for topic discovery.
const MAX_DIALED: usize = 4096;
/// How long before a peer is dialed again for topic discovery.
const REDIAL_AFTER: Duration = Duration::from_secs(30);
/// Pattern topics one publish is sent to at most (beyond, the first in
/// order; announced patterns are remote input).
pub const MAX_PATTERN_TARGETS: usize = 64;
/// Announcers remembered per waiting publish target (as dial candidates).
const MAX_ANNOUNCERS_PER_TARGET: usize = 16;
/// Peers dialed for one waiting publish target.
const DIALS_PER_TARGET: usize = 3;
/// How often the behaviour does its periodic work.
const TICK: Duration = Duration::from_secs(1);
/// Peers remembered as having been sent our registry within the last
/// `announce.interval` (each gets it once per interval; asking again
/// within it, or when this is full, gets an empty snapshot).
const MAX_SERVED: usize = 1024;
/// Registry snapshots served per second at most (a node many starting
/// nodes bootstrap from must not spend its bandwidth on them); requests
/// beyond are refused, and the asker tries another neighbour.
const SERVE_PER_SEC: usize = 8;
/// Peers a starting node asks for their registry at most (some may not
/// speak the protocol or fail).
const MAX_SYNC_ASKS: usize = 16;
/// How long a registry request may take.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// How urgent a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Normal traffic.
    #[default]
    Normal,
    /// Sent ahead of normal traffic on every hop (the priority lane).
    High,
}

/// Options of a publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// How urgent.
    pub priority: Priority,
    /// The message expires this long after publishing: it is neither
    /// delivered nor forwarded after that.
    pub ttl: Option<Duration>,
}

/// What a validator decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver and forward.
    Accept,
    /// Invalid: drop it and lower the forwarding peer's score.
    Reject,
    /// Drop it without penalty.
    Ignore,
}

/// An application validator: decides about each message on the topics it
/// was registered for. It runs concurrently with the network; it has
/// `validation_timeout` to answer.
pub trait Validator: Send + Sync + 'static {
    /// Decides about `message`.
    fn validate(&self, message: &Message) -> BoxFuture<'static, Verdict>;
}

impl<F, Fut> Validator for F
where
    F: Fn(&Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Verdict> + Send + 'static,
{
    fn validate(&self, message: &Message) -> BoxFuture<'static, Verdict> {
        self(message).boxed()
    }
}

/// A message's identity: SHA-256 over its concrete topic, expiry and
/// data, first 20 bytes. The same bytes published twice on one topic are
/// the same message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 20]);

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl MessageId {
    fn of(topic: &Topic, expires_ms: Option<u64>, data: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update((topic.as_str().len() as u64).to_be_bytes());
        h.update(topic.as_str());
        h.update(expires_ms.unwrap_or(0).to_be_bytes());
        h.update(data);
        let d = h.finalize();
        let mut id = [0u8; 20];
        id.copy_from_slice(&d[..20]);
        Self(id)
    }
}

/// A message delivered to this node.
#[derive(Debug, Clone)]
pub struct Message {
    /// Its identity.
    pub id: MessageId,
    /// The concrete topic it was published on.
    pub topic: Topic,
    /// The application's bytes.
    pub data: Vec<u8>,
    /// The publisher (messages are signed).
    pub source: Option<PeerId>,
    /// The peer that forwarded it to us (ourselves for our own messages).
    pub propagation_source: PeerId,
    /// Its priority.
    pub priority: Priority,
    /// When it expires, unix milliseconds.
    pub expires_ms: Option<u64>,
}

/// The result of a publish.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Published {
    /// The message id (hex).
    pub id: String,
    /// Gossipsub topics it went out on: the topic itself and one per
    /// matching wildcard pattern (`_bh/p/<pattern>`).
    pub sent_on: Vec<String>,
    /// Targets nobody could be found for in time.
    pub unreached: Vec<String>,
    /// Whether it was also delivered to this node's own subscriptions.
    pub local: bool,
}

/// Events for the application.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A message for our subscriptions (once per message per node).
    Message(Message),
    /// A publish that had to wait for peers finished.
    PublishFinished {
        /// The token [`Behaviour::publish`] returned.
        token: u64,
        /// The outcome.
        result: Result<Published, PublishError>,
    },
}

/// What [`Behaviour::publish`] did.
#[derive(Debug)]
pub enum PublishStatus {
    /// Sent (or delivered locally) right away.
    Done(Published),
    /// Waiting for peers; an [`Event::PublishFinished`] with this token follows.
    Waiting(u64),
}

/// Topics one peer may hold subscriptions to (gossipsub tracks them per
/// peer); subscriptions beyond are refused.
pub const MAX_PEER_TOPICS: usize = 4096;
/// Subscriptions in one gossipsub message from a peer.
const MAX_SUBSCRIPTIONS_PER_REQUEST: usize = 1024;

type Filter = gossipsub::MaxCountSubscriptionFilter<gossipsub::AllowAllSubscriptionFilter>;
type Gossipsub = gossipsub::Behaviour<gossipsub::IdentityTransform, Filter>;

/// The two gossipsub instances. Public only because its connection
/// handler is [`Behaviour`]'s; not reachable from outside the crate.
#[derive(libp2p_swarm::NetworkBehaviour)]
#[behaviour(prelude = "libp2p_swarm::derive_prelude")]
#[allow(unreachable_pub, missing_debug_implementations)] // see above
pub struct Lanes {
    normal: Quiet<Gossipsub>,
    priority: Toggle<Quiet<Gossipsub>>,
    /// Registry snapshots for starting nodes.
    sync: rr::Behaviour<sync::Codec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Lane {
    Normal,
    Priority,
}

struct Target {
    lane: Lane,
    gossip: gossipsub::TopicHash,
    /// Shared by every target of one publish.
    bytes: Arc<Vec<u8>>,
    /// Who can be dialed for it.
    announcers: Vec<PeerId>,
}

struct Pending {
    token: u64,
    id: MessageId,
    deadline: Instant,
    published: Published,
    waiting: Vec<Target>,
}

struct Validated {
    lane: Lane,
    gossip_id: gossipsub::MessageId,
    message: Message,
    verdict: Verdict,
}

/// When to announce. Plain logic; time is passed in.
#[derive(Debug)]
struct AnnounceSchedule {
    /// When we last announced (or decided there was nothing to say).
    last: Option<Instant>,
    /// What we would announce changed since.
    changed: bool,
}

impl Default for AnnounceSchedule {
    fn default() -> Self {
        Self {
            last: None,
            changed: true,
        }
    }
}

impl AnnounceSchedule {
    /// Every `interval`; sooner after a change, but never
    /// twice within `min_interval` (whatever comes within it waits for,
    /// and shares, the next announcement).
    fn due(&self, now: Instant, interval: Duration, min_interval: Duration) -> bool {
        match self.last {
            None => true,
            Some(last) => {
                let since = now.saturating_duration_since(last);
                since >= interval || (self.changed && since >= min_interval)
            }
        }
    }

    fn sent(&mut self, now: Instant) {
        self.last = Some(now);
        self.changed = false;
    }
}

/// The pubsub behaviour. See the crate docs for the design.
pub struct Behaviour {
    lanes: Lanes,
    config: Config,
    local: PeerId,
    metrics: Metrics,
    /// Local subscriptions: pattern → how many times subscribed.
    subscriptions: HashMap<Pattern, usize>,
    /// The same, for matching incoming topics.
    matcher: Matcher<Pattern>,
    validators: Matcher<usize>,
    validator_list: Vec<(Pattern, Arc<dyn Validator>)>,
    validations: FuturesUnordered<BoxFuture<'static, Validated>>,
    registry: Registry,
    /// Connected peers subscribed to each gossipsub topic, per lane.
    topic_peers: HashMap<(Lane, gossipsub::TopicHash), HashSet<PeerId>>,
    connected: HashSet<PeerId>,
    seen: HashSet<MessageId>,
    seen_order: VecDeque<(Instant, MessageId)>,
    published: HashMap<Topic, Instant>,
    pending: Vec<Pending>,
    next_token: u64,
    dialed: HashMap<PeerId, Instant>,
    dials: VecDeque<PeerId>,
    events: VecDeque<Event>,
    listen_addrs: Vec<Multiaddr>,
    external_addrs: Vec<Multiaddr>,
    schedule: AnnounceSchedule,
    last_seq: u64,
    /// Our last announcement, unless it named nothing.
    last_announcement: Option<Announcement>,
    /// Registry snapshots asked and served.
    sync: SyncState,
    tick: tokio::time::Interval,
}

/// Registry snapshots: the ones a starting node asks its first neighbours
/// for, and the ones it serves.
#[derive(Debug, Default)]
struct SyncState {
    /// Peers asked (at most `MAX_SYNC_ASKS`).
    asked: HashSet<PeerId>,
    in_flight: usize,
    /// Snapshots received and applied.
    done: usize,
    /// Peers served, and when (at most `MAX_SERVED`).
    served: HashMap<PeerId, Instant>,
    /// When the snapshots of the last second were served (at most
    /// `SERVE_PER_SEC`).
    served_recently: VecDeque<Instant>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behaviour")
            .field("local", &self.local)
            .field("subscriptions", &self.subscriptions.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Message {
    /// Whether it has expired by `now_ms` (unix milliseconds).
    pub fn expired_at(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| e <= now_ms)
    }
}

fn gossip_config(config: &Config, priority: bool) -> Result<gossipsub::Config, Error> {
    let mut b = gossipsub::ConfigBuilder::default();
    b.validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .message_id_fn(|m: &gossipsub::Message| {
            let mut h = Sha256::new();
            h.update((m.topic.as_str().len() as u64).to_be_bytes());
            h.update(m.topic.as_str());
            h.update(&m.data);
            gossipsub::MessageId::from(&h.finalize()[..20])
        })
        .max_transmit_size(config.max_message_size + ENVELOPE_OVERHEAD + 2 * 1024)
        .heartbeat_interval(config.heartbeat_interval)
        .mesh_n(config.mesh_n)
        .mesh_n_low(config.mesh_n_low)
        .mesh_n_high(config.mesh_n_high)
        .mesh_outbound_min((config.mesh_n_low / 2).min(config.mesh_n / 2))
        .history_length(config.history_length)
        .history_gossip(config.history_gossip)
        .duplicate_cache_time(config.duplicate_cache_time)
        .flood_publish(config.flood_publish);
    if priority {
        b.protocol_id(PRIORITY_PROTOCOL, gossipsub::Version::V1_1);
    }
    b.build().map_err(|e| {
        Error::Config(crate::ConfigError {
            key: "gossipsub".into(),
            reason: e.to_string(),
        })
    })
}

fn score_params(config: &Config) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let s = &config.score;
    let params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: s.ip_colocation_weight,
        ip_colocation_factor_threshold: s.ip_colocation_threshold,
        ip_colocation_factor_whitelist: s.ip_colocation_whitelist.iter().copied().collect(),
        behaviour_penalty_weight: s.behaviour_penalty_weight,
        ..Default::default()
    };
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: s.gossip_threshold,
        publish_threshold: s.publish_threshold,
        graylist_threshold: s.graylist_threshold,
        accept_px_threshold: s.accept_px_threshold,
        opportunistic_graft_threshold: s.opportunistic_graft_threshold,
    };
    (params, thresholds)
}

/// Per-topic scoring: rewards first deliveries, punishes invalid
/// messages; no mesh-delivery-rate penalties, because we cannot know how
/// busy an application's topic is meant to be.
fn topic_params(config: &Config) -> gossipsub::TopicScoreParams {
    let s = &config.score;
    gossipsub::TopicScoreParams {
        topic_weight: s.topic_weight,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        first_message_deliveries_weight: s.first_delivery_weight,
        first_message_deliveries_decay: 0.5,
        first_message_deliveries_cap: 50.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: s.invalid_message_weight,
        invalid_message_deliveries_decay: s.invalid_message_decay,
        ..Default::default()
    }
}

/// Where in each [`TICK`] a node does its periodic work: spread evenly
/// over the tick by the peer id (itself random), the same for a node
/// every time.
fn tick_phase(peer: &PeerId) -> Duration {
    let mut h = Sha256::new();
    h.update(peer.to_bytes());
    let d = h.finalize();
    let x = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    let tick_ms = TICK.as_millis() as u64;
    Duration::from_millis(x % tick_ms)
}

fn pattern_gossip_topic(p: &Pattern) -> gossipsub::TopicHash {
    gossipsub::TopicHash::from_raw(format!("{PATTERN_PREFIX}{p}"))
}

/// The gossipsub topic a local subscription uses.
fn gossip_topic_of(p: &Pattern) -> gossipsub::TopicHash {
    match p.as_topic() {
        Some(t) => gossipsub::TopicHash::from_raw(t.as_str()),
        None => pattern_gossip_topic(p),
    }
}

impl Behaviour {
    /// A pubsub behaviour for `key`'s node, registering its metrics in
    /// `registry`.
    pub fn new(
        key: &Keypair,
        config: Config,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<Self, Error> {
        config.validate()?;
        let make = |priority: bool| -> Result<Gossipsub, Error> {
            let mut b = Gossipsub::new_with_subscription_filter(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config(&config, priority)?,
                gossipsub::MaxCountSubscriptionFilter {
                    filter: gossipsub::AllowAllSubscriptionFilter {},
                    max_subscribed_topics: MAX_PEER_TOPICS,
                    max_subscriptions_per_request: MAX_SUBSCRIPTIONS_PER_REQUEST,
                },
            )
            .map_err(|e| {
                Error::Config(crate::ConfigError {
                    key: "gossipsub".into(),
                    reason: e.into(),
                })
            })?;
            if config.score.enabled {
                let (p, t) = score_params(&config);
                b.with_peer_score(p, t).map_err(|e| {
                    Error::Config(crate::ConfigError {
                        key: "score".into(),
                        reason: e,
                    })
                })?;
            }
            Ok(b)
        };
        // gossipsub's own metrics (mesh sizes, messages received with
        // and without duplicates, queue sizes) under
        // blackhole_pubsub_gossipsub_* and blackhole_pubsub_priority_*.
        let layer = blackhole_metrics::layer(registry, "pubsub");
        let normal = make(false)?.with_metrics(
            layer.sub_registry_with_prefix("gossipsub"),
            gossipsub::MetricsConfig::default(),
        );
        let priority = if config.priority_lane {
            Some(make(true)?.with_metrics(
                layer.sub_registry_with_prefix("priority"),
                gossipsub::MetricsConfig::default(),
            ))
        } else {
            None
        };
        let a = &config.announce;
        let registry_limits = registry::Limits {
            max_sources: a.max_sources,
            max_topics: a.registry_max_topics,
            max_patterns: a.registry_max_patterns,
            ttl: a.interval * 3,
            min_interval: a.min_interval / 2,
        };
        // Each node ticks at a phase of its own (from its peer id) within
        // the tick: nodes started together would otherwise tick, and so
        // announce, together, and a network's announcements flooding at
        // once held up messages (20 in-process nodes: the benchmark's p99
        // went from ~5 to 11-24 ms while they did).
        let phase = tick_phase(&key.public().to_peer_id());
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut me = Self {
            lanes: Lanes {
                normal: Quiet::new(normal, &[ANNOUNCE_TOPIC]),
                priority: priority.map(|p| Quiet::new(p, &[])).into(),
                sync: rr::Behaviour::with_codec(
                    sync::Codec {
                        max_bytes: config.announce.max_sync_bytes,
                    },
                    [(sync::PROTOCOL, rr::ProtocolSupport::Full)],
                    rr::Config::default()
                        .with_request_timeout(SYNC_TIMEOUT)
                        .with_max_concurrent_streams(MAX_SYNC_ASKS),
                ),
            },
            local: key.public().to_peer_id(),
            metrics: Metrics::register(registry),
            subscriptions: HashMap::new(),
            matcher: Matcher::new(),
            validators: Matcher::new(),
            validator_list: Vec::new(),
            validations: FuturesUnordered::new(),
            registry: Registry::new(registry_limits),
            topic_peers: HashMap::new(),
            connected: HashSet::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            published: HashMap::new(),
            pending: Vec::new(),
            next_token: 1,
            dialed: HashMap::new(),
            dials: VecDeque::new(),
            events: VecDeque::new(),
            listen_addrs: Vec::new(),
            external_addrs: Vec::new(),
            schedule: AnnounceSchedule::default(),
            last_seq: 0,
            last_announcement: None,
            sync: SyncState::default(),
            tick,
            config,
        };
        me.join(
            Lane::Normal,
            &gossipsub::TopicHash::from_raw(ANNOUNCE_TOPIC),
        )?;
        Ok(me)
    }

    fn lane(&mut self, lane: Lane) -> Option<&mut Quiet<Gossipsub>> {
        match lane {
            Lane::Normal => Some(&mut self.lanes.normal),
            Lane::Priority => self.lanes.priority.as_mut(),
        }
    }

    fn lanes_enabled(&self) -> &'static [Lane] {
        if self.lanes.priority.is_enabled() {
            &[Lane::Normal, Lane::Priority]
        } else {
            &[Lane::Normal]
        }
    }

    fn join(&mut self, lane: Lane, topic: &gossipsub::TopicHash) -> Result<(), Error> {
        let scoring = self.config.score.enabled;
        let params = topic_params(&self.config);
        let Some(g) = self.lane(lane) else {
            return Ok(());
        };
        let t = gossipsub::IdentTopic::new(topic.as_str());
        g.subscribe(&t)
            .map_err(|e| Error::Subscribe(e.to_string()))?;
        if scoring {
            g.set_topic_params(t, params)
                .map_err(|e| Error::Subscribe(e.to_string()))?;
        }
        Ok(())
    }

    /// Subscribes to a topic or a wildcard pattern. Subscribing to the same
    /// pattern again counts; each needs an [`Behaviour::unsubscribe`].
    pub fn subscribe(&mut self, pattern: Pattern) -> Result<(), Error> {
        if let Some(n) = self.subscriptions.get_mut(&pattern) {
            *n += 1;
            return Ok(());
        }
        if self.subscriptions.len() >= self.config.max_subscriptions {
            return Err(Error::TooManySubscriptions {
                max: self.config.max_subscriptions,
            });
        }
        let gossip = gossip_topic_of(&pattern);
        for &lane in self.lanes_enabled() {
            self.join(lane, &gossip)?;
            // Peers that subscribed before we did.
            let known: HashSet<PeerId> = match lane {
                Lane::Normal => Some(&self.lanes.normal),
                Lane::Priority => self.lanes.priority.as_ref(),
            }
            .map(|g| {
                g.all_peers()
                    .filter(|(_, topics)| topics.contains(&&gossip))
                    .map(|(p, _)| *p)
                    .collect()
            })
            .unwrap_or_default();
            if !known.is_empty() {
                self.topic_peers.insert((lane, gossip.clone()), known);
            }
        }
        self.matcher.insert(&pattern, pattern.clone());
        self.subscriptions.insert(pattern, 1);
        self.schedule.changed = true;
        self.metrics
            .subscriptions
            .set(self.subscriptions.len() as i64);
        Ok(())
    }

    /// Drops one subscription to `pattern`; returns whether there was one.
    pub fn unsubscribe(&mut self, pattern: &Pattern) -> bool {
        let Some(n) = self.subscriptions.get_mut(pattern) else {
            return false;
        };
        *n -= 1;
        if *n > 0 {
            return true;
        }
        self.subscriptions.remove(pattern);
        self.matcher.remove(pattern, pattern);
        let gossip = gossip_topic_of(pattern);
        self.topic_peers.retain(|(_, t), _| *t != gossip);
        let t = gossipsub::IdentTopic::new(gossip_topic_of(pattern).as_str());
        for &lane in self.lanes_enabled() {
            if let Some(g) = self.lane(lane) {
                g.unsubscribe(&t);
            }
        }
        self.schedule.changed = true;
        self.metrics
            .subscriptions
            .set(self.subscriptions.len() as i64);
        true
    }

    /// Our subscriptions.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut out: Vec<String> = self.subscriptions.keys().map(|p| p.to_string()).collect();
        out.sort();
        out
    }

    /// Runs `validator` on every message whose topic matches `pattern`
    /// (several validators may apply; all must accept).
    pub fn set_validator(&mut self, pattern: Pattern, validator: Arc<dyn Validator>) {
        self.validators.insert(&pattern, self.validator_list.len());
        self.validator_list.push((pattern, validator));
    }

    /// Topics announced in the network under `prefix`, with our own.
    pub fn topics(&self, prefix: &str, limit: usize) -> Vec<TopicInfo> {
        let mut out = self.registry.topics(prefix, limit);
        let mine = self
            .subscriptions
            .keys()
            .filter_map(Pattern::as_topic)
            .map(|t| (t, true))
            .chain(self.published.keys().cloned().map(|t| (t, false)));
        for (t, subscribed) in mine {
            if !t.is_under(prefix) {
                continue;
            }
            let entry = match out.iter_mut().find(|i| i.topic == t.as_str()) {
                Some(e) => e,
                None => {
                    out.push(TopicInfo {
                        topic: t.to_string(),
                        subscribers: 0,
                        publishers: 0,
                    });
                    let last = out.len() - 1;
                    &mut out[last]
                }
            };
            if subscribed {
                entry.subscribers += 1;
            } else {
                entry.publishers += 1;
            }
        }
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        out.truncate(limit);
        out
    }

    /// Wildcard patterns announced in the network, with how many nodes
    /// hold each (this node included).
    pub fn patterns(&self) -> Vec<(String, usize)> {
        let mut out = self.registry.patterns();
        for p in self.subscriptions.keys().filter(|p| p.is_wildcard()) {
            match out.iter_mut().find(|(q, _)| q == p.as_str()) {
                Some((_, n)) => *n += 1,
                None => out.push((p.to_string(), 1)),
            }
        }
        out.sort();
        out
    }

    /// Mesh peers of a topic or pattern we subscribe to (normal lane).
    pub fn mesh_peers(&self, pattern: &Pattern) -> Vec<PeerId> {
        self.lanes
            .normal
            .mesh_peers(&gossip_topic_of(pattern))
            .copied()
            .collect()
    }

    /// Peers in any mesh of either lane (they carry our messages: the
    /// node prunes their connections last).
    pub fn in_any_mesh(&self) -> HashSet<PeerId> {
        let mut out: HashSet<PeerId> = self.lanes.normal.all_mesh_peers().copied().collect();
        if let Some(p) = self.lanes.priority.as_ref() {
            out.extend(p.all_mesh_peers().copied());
        }
        out
    }

    /// Connected peers subscribed to a topic or pattern (normal lane).
    pub fn topic_peers(&self, pattern: &Pattern) -> usize {
        self.topic_peers
            .get(&(Lane::Normal, gossip_topic_of(pattern)))
            .map_or(0, HashSet::len)
    }

    /// Peers known to subscribe to `topic`: connected ones that told us
    /// (gossipsub) and those that announced it, without this node.
    pub fn subscribers(&self, topic: &Topic) -> Vec<PeerId> {
        let hash = gossipsub::TopicHash::from_raw(topic.as_str());
        let mut out: Vec<PeerId> = self
            .lanes
            .normal
            .all_peers()
            .filter(|(_, topics)| topics.contains(&&hash))
            .map(|(p, _)| p)
            .chain(self.registry.subscribers(topic))
            .copied()
            .filter(|p| *p != self.local)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A peer's gossipsub score (normal lane), if scoring is on.
    pub fn peer_score(&self, peer: &PeerId) -> Option<f64> {
        self.lanes.normal.peer_score(peer)
    }

    /// Publishes `data` on `topic`.
    pub fn publish(
        &mut self,
        topic: Topic,
        data: Vec<u8>,
        options: PublishOptions,
    ) -> Result<PublishStatus, PublishError> {
        if data.len() > self.config.max_message_size {
            return Err(PublishError::TooLarge {
                size: data.len(),
                max: self.config.max_message_size,
            });
        }
        let expires_ms = options
            .ttl
            .map(|ttl| unix_ms().saturating_add(ttl.as_millis() as u64));
        let id = MessageId::of(&topic, expires_ms, &data);
        if self.seen.contains(&id) {
            return Err(PublishError::Duplicate { id: id.to_string() });
        }
        let high = options.priority == Priority::High;
        let lane = if high && self.lanes.priority.is_enabled() {
            Lane::Priority
        } else {
            Lane::Normal
        };
        let envelope = Envelope {
            high_priority: high,
            expires_ms,
            topic: topic.clone(),
            data,
        };
        let now = Instant::now();
        self.remember_published(&topic, now);
        let mut targets = Vec::new();
        let direct = envelope.encode_for_topic();
        targets.push(Target {
            lane,
            gossip: gossipsub::TopicHash::from_raw(topic.as_str()),
            bytes: Arc::new(direct),
            announcers: self
                .registry
                .subscribers(&topic)
                .take(MAX_ANNOUNCERS_PER_TARGET)
                .copied()
                .collect(),
        });
        let mut patterns = self.registry.patterns_matching(&topic);
        if patterns.len() > MAX_PATTERN_TARGETS {
            // Announced patterns are remote input: they must not turn one
            // publish into thousands of sends.
            tracing::warn!(%topic, matching = patterns.len(), kept = MAX_PATTERN_TARGETS, "too many announced patterns match; sending to the first");
            patterns.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            patterns.truncate(MAX_PATTERN_TARGETS);
        }
        if !patterns.is_empty() {
            let wrapped = Arc::new(envelope.encode());
            for p in patterns {
                targets.push(Target {
                    lane,
                    gossip: pattern_gossip_topic(&p),
                    bytes: wrapped.clone(),
                    announcers: self
                        .registry
                        .pattern_subscribers(&p)
                        .take(MAX_ANNOUNCERS_PER_TARGET)
                        .copied()
                        .collect(),
                });
            }
        }
        // Our own subscriptions see it too, once (unless it expired at
        // once: a TTL of zero).
        let local = self.matcher.matches(&topic).into_iter().next().is_some()
            && expires_ms.is_none_or(|e| e > unix_ms());
        self.mark_seen(id, now);
        if local {
            self.events.push_back(Event::Message(Message {
                id,
                topic: topic.clone(),
                data: envelope.data.clone(),
                source: Some(self.local),
                propagation_source: self.local,
                priority: options.priority,
                expires_ms,
            }));
        }
        let mut published = Published {
            id: id.to_string(),
            sent_on: Vec::new(),
            unreached: Vec::new(),
            local,
        };
        let mut waiting = Vec::new();
        for target in targets {
            match self.try_send(&target) {
                Ok(()) => published.sent_on.push(target.gossip.to_string()),
                Err(e) if target.announcers.is_empty() => {
                    tracing::debug!(topic = %target.gossip, error = %e, "nobody to send to");
                    published.unreached.push(target.gossip.to_string());
                }
                Err(_) => {
                    self.dial_announcers(&target.announcers, DIALS_PER_TARGET, now);
                    waiting.push(target);
                }
            }
        }
        self.metrics.published.inc();
        if waiting.is_empty() || self.pending.len() >= self.config.max_pending_publishes {
            published
                .unreached
                .extend(waiting.iter().map(|t| t.gossip.to_string()));
            let result = finish(published, &topic);
            if result.is_err() {
                // Nothing went out: the same bytes may be published again.
                self.seen.remove(&id);
                self.metrics.publish_failures.inc();
            }
            return result;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.pending.push(Pending {
            token,
            id,
            deadline: now + self.config.publish_wait,
            published,
            waiting,
        });
        self.metrics
            .pending_publishes
            .set(self.pending.len() as i64);
        Ok(PublishStatus::Waiting(token))
    }

    fn try_send(&mut self, target: &Target) -> Result<(), gossipsub::PublishError> {
        let gossip = gossipsub::IdentTopic::new(target.gossip.as_str());
        let Some(g) = self.lane(target.lane) else {
            return Err(gossipsub::PublishError::NoPeersSubscribedToTopic);
        };
        g.publish(gossip, target.bytes.as_ref().clone()).map(|_| ())
    }

    fn remember_published(&mut self, topic: &Topic, now: Instant) {
        if !self.published.contains_key(topic) {
            self.schedule.changed = true;
            if self.published.len() >= MAX_PUBLISHED
                && let Some(oldest) = self
                    .published
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(t, _)| t.clone())
            {
                self.published.remove(&oldest);
            }
        }
        self.published.insert(topic.clone(), now);
    }

    fn dial_announcers(&mut self, peers: &[PeerId], max: usize, now: Instant) -> usize {
        let mut n = 0;
        for p in peers {
            if n >= max {
                break;
            }
            if *p == self.local || self.connected.contains(p) {
                continue;
            }
            if self
                .dialed
                .get(p)
                .is_some_and(|at| now.saturating_duration_since(*at) < REDIAL_AFTER)
            {
                continue;
            }
            if self.dialed.len() >= MAX_DIALED {
                self.dialed
                    .retain(|_, at| now.saturating_duration_since(*at) < REDIAL_AFTER);
                if self.dialed.len() >= MAX_DIALED {
                    break;
                }
            }
            self.dialed.insert(*p, now);
            self.dials.push_back(*p);
            n += 1;
        }
        n
    }

    fn mark_seen(&mut self, id: MessageId, now: Instant) {
        let window = self.config.duplicate_cache_time;
        while let Some((at, old)) = self.seen_order.front() {
            if self.seen_order.len() < MAX_SEEN && now.saturating_duration_since(*at) < window {
                break;
            }
            self.seen.remove(old);
            self.seen_order.pop_front();
        }
        if self.seen.insert(id) {
            self.seen_order.push_back((now, id));
        }
    }

    /// Retries waiting publish targets on `gossip` after a peer subscribed.
    fn retry_pending(&mut self, lane: Lane, gossip: &gossipsub::TopicHash) {
        let mut pending = std::mem::take(&mut self.pending);
        for p in &mut pending {
            let mut still = Vec::new();
            for target in std::mem::take(&mut p.waiting) {
                if target.lane == lane && &target.gossip == gossip && self.try_send(&target).is_ok()
                {
                    p.published.sent_on.push(target.gossip.to_string());
                } else {
                    still.push(target);
                }
            }
            p.waiting = still;
        }
        self.pending = pending;
        self.finish_pending(Instant::now());
    }

    fn finish_pending(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            if p.waiting.is_empty() || now >= p.deadline {
                let mut p = self.pending.swap_remove(i);
                p.published
                    .unreached
                    .extend(p.waiting.iter().map(|t| t.gossip.to_string()));
                let topic = p.waiting.first().map(|t| t.gossip.to_string());
                let result = if p.published.sent_on.is_empty() && !p.published.local {
                    self.metrics.publish_failures.inc();
                    self.seen.remove(&p.id);
                    Err(PublishError::NoSubscribers {
                        topic: topic.unwrap_or_default(),
                        waited: self.config.publish_wait,
                    })
                } else {
                    Ok(p.published)
                };
                self.events.push_back(Event::PublishFinished {
                    token: p.token,
                    result,
                });
            } else {
                i += 1;
            }
        }
        self.metrics
            .pending_publishes
            .set(self.pending.len() as i64);
    }

    fn on_tick(&mut self, now: Instant) {
        self.finish_pending(now);
        self.registry.expire(now);
        let published_ttl = self.config.announce.interval * 2;
        let before = self.published.len();
        self.published
            .retain(|_, at| now.saturating_duration_since(*at) < published_ttl);
        if self.published.len() != before {
            self.schedule.changed = true;
        }
        self.maybe_announce(now);
        self.discover(now);
        self.metrics
            .registry_topics
            .set(self.registry.topic_count() as i64);
        self.metrics
            .registry_sources
            .set(self.registry.sources() as i64);
    }

    /// Dials announced peers of our topics where we know too few.
    fn discover(&mut self, now: Instant) {
        let mut budget = self.config.announce.dials_per_tick;
        let want = self.config.mesh_n_low;
        let subs: Vec<Pattern> = self.subscriptions.keys().cloned().collect();
        for p in subs {
            if budget == 0 {
                break;
            }
            let have = self.topic_peers(&p);
            if have >= want {
                continue;
            }
            let candidates: Vec<PeerId> = match p.as_topic() {
                Some(t) => self.registry.subscribers(&t).copied().collect(),
                None => self.registry.pattern_subscribers(&p).copied().collect(),
            };
            budget -= self.dial_announcers(&candidates, budget.min(want - have), now);
        }
    }

    fn maybe_announce(&mut self, now: Instant) {
        let a = &self.config.announce;
        if !self.schedule.due(now, a.interval, a.min_interval) {
            return;
        }
        let mut subscribed: Vec<Topic> = self
            .subscriptions
            .keys()
            .filter_map(Pattern::as_topic)
            .collect();
        subscribed.sort();
        subscribed.truncate(a.max_topics);
        let mut patterns: Vec<Pattern> = self
            .subscriptions
            .keys()
            .filter(|p| p.is_wildcard())
            .cloned()
            .collect();
        patterns.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        patterns.truncate(a.max_patterns);
        let mut published: Vec<(Instant, Topic)> = self
            .published
            .iter()
            .map(|(t, at)| (*at, t.clone()))
            .collect();
        published.sort_by_key(|x| std::cmp::Reverse(x.0));
        let room = a.max_topics - subscribed.len();
        let published: Vec<Topic> = published.into_iter().take(room).map(|(_, t)| t).collect();
        let addrs = self
            .external_addrs
            .iter()
            .chain(&self.listen_addrs)
            .take(a.max_addrs)
            .map(|m| m.to_string())
            .collect();
        // A node with nothing to announce stays quiet (most nodes of a
        // network may not use pubsub at all); after it had something, one
        // empty announcement withdraws it at once.
        let empty = subscribed.is_empty() && patterns.is_empty() && published.is_empty();
        if empty && self.last_announcement.is_none() {
            self.schedule.sent(now);
            return;
        }
        let seq = unix_ms().max(self.last_seq + 1);
        let ann = Announcement {
            seq,
            subscribed,
            patterns,
            published,
            addrs,
        };
        let t = gossipsub::IdentTopic::new(ANNOUNCE_TOPIC);
        match self.lanes.normal.publish(t, ann.encode()) {
            Ok(_) => {
                self.last_announcement = (!empty).then_some(ann);
                self.last_seq = seq;
                self.schedule.sent(now);
                self.metrics.announcements_sent.inc();
            }
            // Nobody to tell yet: try again next tick.
            Err(e) => tracing::trace!(error = %e, "announcement not sent"),
        }
    }

    fn announcement_limits(&self) -> AnnouncementLimits {
        AnnouncementLimits {
            max_topics: self.config.announce.max_topics,
            max_patterns: self.config.announce.max_patterns,
            max_addrs: self.config.announce.max_addrs,
        }
    }

    /// `peer` joined the announcement topic: while this node has fewer
    /// than `sync_peers` registry snapshots (received or coming), ask it
    /// for one. Only a starting node asks; after that, announcements keep
    /// the registry current.
    fn maybe_sync(&mut self, peer: PeerId) {
        let s = &mut self.sync;
        if s.done + s.in_flight >= self.config.announce.sync_peers
            || s.asked.len() >= MAX_SYNC_ASKS
            || !s.asked.insert(peer)
        {
            return;
        }
        s.in_flight += 1;
        tracing::debug!(%peer, "asking a neighbour for its topic registry");
        self.lanes.sync.send_request(&peer, sync::Request);
    }

    fn on_sync_event(&mut self, event: rr::Event<sync::Request, Vec<u8>>) {
        let now = Instant::now();
        match event {
            rr::Event::Message {
                peer,
                message: rr::Message::Request { channel, .. },
                ..
            } => {
                match self.snapshot_for(peer, now) {
                    // Fails only if the peer is gone.
                    Some(bytes) => drop(self.lanes.sync.send_response(channel, bytes)),
                    // Dropping the channel closes the stream: the asker
                    // sees a failure and asks another neighbour.
                    None => drop(channel),
                }
            }
            rr::Event::Message {
                peer,
                message: rr::Message::Response { response, .. },
                ..
            } => {
                self.sync.in_flight = self.sync.in_flight.saturating_sub(1);
                self.apply_snapshot(peer, &response, now);
            }
            rr::Event::OutboundFailure { peer, error, .. } => {
                self.sync.in_flight = self.sync.in_flight.saturating_sub(1);
                tracing::debug!(%peer, %error, "no topic registry from this neighbour");
            }
            rr::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "topic registry not sent");
            }
            rr::Event::ResponseSent { .. } => {}
        }
    }

    /// The snapshot for `peer`: our own announcement and what we heard,
    /// freshest first, within `max_sync_bytes`; empty if it was served
    /// within the last `announce.interval` (a snapshot costs more to send
    /// than to ask for). `None` (refused) beyond `SERVE_PER_SEC`, or
    /// while `MAX_SERVED` peers were served within the interval.
    fn snapshot_for(&mut self, peer: PeerId, now: Instant) -> Option<Vec<u8>> {
        let a = &self.config.announce;
        let recent = |at: &Instant| now.saturating_duration_since(*at) < a.interval;
        let served = &mut self.sync.served;
        if served.get(&peer).is_some_and(recent) {
            tracing::debug!(%peer, "topic registry asked for again; sending an empty one");
            return Some(wire::encode_snapshot(&[], a.max_sync_bytes).0);
        }
        if served.len() >= MAX_SERVED && !served.contains_key(&peer) {
            served.retain(|_, at| recent(at));
        }
        let last_second = &mut self.sync.served_recently;
        while last_second
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= Duration::from_secs(1))
        {
            last_second.pop_front();
        }
        if served.len() >= MAX_SERVED || last_second.len() >= SERVE_PER_SEC {
            tracing::debug!(%peer, "too many topic registries asked for; refusing");
            return None;
        }
        last_second.push_back(now);
        served.insert(peer, now);
        let own = self
            .last_announcement
            .clone()
            .map(|announcement| SnapshotEntry {
                source: self.local,
                age_ms: 0,
                announcement,
            });
        let entries: Vec<SnapshotEntry> = own
            .into_iter()
            .chain(self.registry.snapshot(now, a.max_sources))
            .filter(|e| e.source != peer)
            .collect();
        let (bytes, n) = wire::encode_snapshot(&entries, a.max_sync_bytes);
        if n < entries.len() {
            tracing::debug!(%peer, sent = n, known = entries.len(), "topic registry cut to max_sync_bytes");
        }
        self.metrics.snapshots_served.inc();
        Some(bytes)
    }

    /// Applies a neighbour's snapshot: its own announcement as its word
    /// (the stream is authenticated), the others as hearsay, which never
    /// replaces what we heard ourselves and gives way to the source's own
    /// next announcement.
    fn apply_snapshot(&mut self, peer: PeerId, bytes: &[u8], now: Instant) {
        let a = &self.config.announce;
        let entries = match wire::decode_snapshot(bytes, self.announcement_limits(), a.max_sources)
        {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bad topic registry from a neighbour");
                return;
            }
        };
        let total = entries.len();
        let (mut applied, mut dropped) = (0usize, 0usize);
        for e in entries {
            if e.source == self.local {
                continue;
            }
            let r = if e.source == peer {
                self.registry.apply(peer, e.announcement, now)
            } else {
                let age = Duration::from_millis(e.age_ms);
                self.registry
                    .apply_hearsay(e.source, e.announcement, age, now)
            };
            if let Ok(d) = r {
                applied += 1;
                dropped += d;
            }
        }
        self.sync.done += 1;
        self.metrics.snapshots_received.inc();
        tracing::debug!(%peer, entries = total, applied, dropped, "topic registry from a neighbour");
    }

    fn on_lane_event(&mut self, lane: Lane, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => self.on_message(lane, propagation_source, message_id, message),
            gossipsub::Event::Subscribed { peer_id, topic } => {
                // Only topics this node uses are tracked (ours, the
                // announcements, and waiting publishes), so a peer's
                // subscriptions cannot grow this map.
                if self.tracks(&topic) {
                    self.topic_peers
                        .entry((lane, topic.clone()))
                        .or_default()
                        .insert(peer_id);
                }
                self.retry_pending(lane, &topic);
                if lane == Lane::Normal && topic.as_str() == ANNOUNCE_TOPIC {
                    self.maybe_sync(peer_id);
                }
            }
            gossipsub::Event::Unsubscribed { peer_id, topic } => {
                if let Some(set) = self.topic_peers.get_mut(&(lane, topic.clone())) {
                    set.remove(&peer_id);
                    if set.is_empty() {
                        self.topic_peers.remove(&(lane, topic));
                    }
                }
            }
            gossipsub::Event::GossipsubNotSupported { peer_id } => {
                tracing::trace!(peer = %peer_id, ?lane, "peer does not speak this gossipsub lane");
            }
            gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            } => {
                tracing::debug!(peer = %peer_id, ?lane, ?failed_messages, "slow gossipsub peer");
            }
        }
    }

    fn tracks(&self, topic: &gossipsub::TopicHash) -> bool {
        topic.as_str() == ANNOUNCE_TOPIC
            || self
                .subscriptions
                .keys()
                .any(|p| gossip_topic_of(p) == *topic)
            || self
                .pending
                .iter()
                .any(|p| p.waiting.iter().any(|t| t.gossip == *topic))
    }

    fn report(&mut self, lane: Lane, id: &gossipsub::MessageId, from: &PeerId, verdict: Verdict) {
        let acceptance = match verdict {
            Verdict::Accept => gossipsub::MessageAcceptance::Accept,
            Verdict::Reject => gossipsub::MessageAcceptance::Reject,
            Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
        };
        if let Some(g) = self.lane(lane) {
            g.report_message_validation_result(id, from, acceptance);
        }
    }

    fn reject(&mut self, lane: Lane, id: &gossipsub::MessageId, from: &PeerId, why: &'static str) {
        tracing::debug!(peer = %from, reason = why, "message rejected");
        self.metrics.rejected(why);
        self.report(lane, id, from, Verdict::Reject);
    }

    fn on_message(
        &mut self,
        lane: Lane,
        from: PeerId,
        gossip_id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let now = Instant::now();
        let gossip = message.topic.as_str();
        if gossip == ANNOUNCE_TOPIC {
            let limits = self.announcement_limits();
            let Some(source) = message.source else {
                return self.reject(lane, &gossip_id, &from, "unsigned announcement");
            };
            let ann = match Announcement::decode(&message.data, limits) {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(peer = %from, %source, error = %e, "bad announcement");
                    return self.reject(lane, &gossip_id, &from, "bad announcement");
                }
            };
            let verdict = match self.registry.apply(source, ann, now) {
                Ok(dropped) => {
                    if dropped > 0 {
                        tracing::debug!(%source, dropped, "registry full: announced items dropped");
                    }
                    self.metrics.announcements_received.inc();
                    Verdict::Accept
                }
                Err(e) => {
                    tracing::trace!(%source, reason = %e, "announcement ignored");
                    self.metrics.ignored("announcement");
                    Verdict::Ignore
                }
            };
            self.report(lane, &gossip_id, &from, verdict);
            return;
        }
        // Work out the concrete topic and the payload.
        let (topic, data, priority, expires_ms) =
            if let Some(p) = gossip.strip_prefix(PATTERN_PREFIX) {
                let Ok(pattern) = Pattern::new(p) else {
                    return self.reject(lane, &gossip_id, &from, "bad pattern topic");
                };
                let Ok(env) = Envelope::decode(&message.data) else {
                    return self.reject(lane, &gossip_id, &from, "bad envelope");
                };
                if !pattern.matches(&env.topic) {
                    return self.reject(lane, &gossip_id, &from, "topic does not match pattern");
                }
                (env.topic, env.data, env.high_priority, env.expires_ms)
            } else {
                let Ok(topic) = Topic::new(gossip) else {
                    return self.reject(lane, &gossip_id, &from, "bad topic");
                };
                match Envelope::decode_for_topic(&topic, message.data) {
                    Ok(env) => (env.topic, env.data, env.high_priority, env.expires_ms),
                    Err(_) => {
                        return self.reject(lane, &gossip_id, &from, "envelope topic mismatch");
                    }
                }
            };
        if data.len() > self.config.max_message_size {
            return self.reject(lane, &gossip_id, &from, "too large");
        }
        if expires_ms.is_some_and(|e| e <= unix_ms()) {
            tracing::trace!(peer = %from, %topic, "expired message dropped");
            self.metrics.expired.inc();
            self.report(lane, &gossip_id, &from, Verdict::Ignore);
            return;
        }
        let msg = Message {
            id: MessageId::of(&topic, expires_ms, &data),
            topic,
            data,
            source: message.source,
            propagation_source: from,
            priority: if priority {
                Priority::High
            } else {
                Priority::Normal
            },
            expires_ms,
        };
        let validators: Vec<Arc<dyn Validator>> = self
            .validators
            .matches(&msg.topic)
            .into_iter()
            .filter_map(|i| self.validator_list.get(i).map(|(_, v)| v.clone()))
            .collect();
        if validators.is_empty() {
            return self.finish_validation(Validated {
                lane,
                gossip_id,
                message: msg,
                verdict: Verdict::Accept,
            });
        }
        if self.validations.len() >= self.config.max_pending_validations {
            self.metrics.ignored("validation queue full");
            self.report(lane, &gossip_id, &from, Verdict::Ignore);
            return;
        }
        let timeout = self.config.validation_timeout;
        let futures: Vec<_> = validators.iter().map(|v| v.validate(&msg)).collect();
        let metrics = self.metrics.clone();
        self.validations.push(
            async move {
                let all = async {
                    for f in futures {
                        let v = f.await;
                        if v != Verdict::Accept {
                            return v;
                        }
                    }
                    Verdict::Accept
                };
                let verdict = match tokio::time::timeout(timeout, all).await {
                    Ok(v) => v,
                    Err(_) => {
                        metrics.validation_timeouts.inc();
                        Verdict::Ignore
                    }
                };
                Validated {
                    lane,
                    gossip_id,
                    message: msg,
                    verdict,
                }
            }
            .boxed(),
        );
        self.metrics
            .pending_validations
            .set(self.validations.len() as i64);
    }

    fn finish_validation(&mut self, v: Validated) {
        let from = v.message.propagation_source;
        // Validators may have taken up to validation_timeout: a message
        // that expired meanwhile is neither delivered nor forwarded.
        if v.verdict == Verdict::Accept && v.message.expired_at(unix_ms()) {
            tracing::trace!(peer = %from, topic = %v.message.topic, "message expired during validation");
            self.metrics.expired.inc();
            return self.report(v.lane, &v.gossip_id, &from, Verdict::Ignore);
        }
        match v.verdict {
            Verdict::Reject => return self.reject(v.lane, &v.gossip_id, &from, "validator"),
            Verdict::Ignore => {
                self.metrics.ignored("validator");
                return self.report(v.lane, &v.gossip_id, &from, Verdict::Ignore);
            }
            Verdict::Accept => self.report(v.lane, &v.gossip_id, &from, Verdict::Accept),
        }
        if self.seen.contains(&v.message.id) {
            self.metrics.duplicates.inc();
            return;
        }
        self.mark_seen(v.message.id, Instant::now());
        self.metrics.delivered.inc();
        self.events.push_back(Event::Message(v.message));
    }
}

fn finish(published: Published, topic: &Topic) -> Result<PublishStatus, PublishError> {
    if published.sent_on.is_empty() && !published.local {
        return Err(PublishError::NoSubscribers {
            topic: topic.to_string(),
            waited: Duration::ZERO,
        });
    }
    Ok(PublishStatus::Done(published))
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = THandler<Lanes>;
    type ToSwarm = Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.lanes
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.lanes.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        let mut out = self.lanes.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )?;
        if let Some(peer) = maybe_peer {
            out.extend(
                self.registry
                    .addrs(&peer)
                    .iter()
                    .filter_map(|a| a.parse::<Multiaddr>().ok()),
            );
        }
        Ok(out)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.lanes.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match &event {
            FromSwarm::ConnectionEstablished(e) => {
                self.connected.insert(e.peer_id);
            }
            FromSwarm::ConnectionClosed(e) if e.remaining_established == 0 => {
                self.connected.remove(&e.peer_id);
                self.topic_peers.retain(|_, set| {
                    set.remove(&e.peer_id);
                    !set.is_empty()
                });
            }
            FromSwarm::NewListenAddr(e) if !self.listen_addrs.contains(e.addr) => {
                self.listen_addrs.push(e.addr.clone());
                self.schedule.changed = true;
            }
            FromSwarm::ExpiredListenAddr(e) => {
                self.listen_addrs.retain(|a| a != e.addr);
            }
            FromSwarm::ExternalAddrConfirmed(e) if !self.external_addrs.contains(e.addr) => {
                self.external_addrs.push(e.addr.clone());
                self.schedule.changed = true;
            }
            FromSwarm::ExternalAddrExpired(e) => {
                self.external_addrs.retain(|a| a != e.addr);
            }
            _ => {}
        }
        self.lanes.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.lanes
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        loop {
            // Local work first.
            if let Some(e) = self.events.pop_front() {
                return Poll::Ready(ToSwarm::GenerateEvent(e));
            }
            if let Some(peer) = self.dials.pop_front() {
                tracing::debug!(%peer, "dialing a peer announced for one of our topics");
                return Poll::Ready(ToSwarm::Dial {
                    opts: DialOpts::peer_id(peer)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build(),
                });
            }
            if self.tick.poll_tick(cx).is_ready() {
                self.on_tick(Instant::now());
                continue;
            }
            if let Poll::Ready(Some(v)) = self.validations.poll_next_unpin(cx) {
                self.metrics
                    .pending_validations
                    .set(self.validations.len() as i64);
                self.finish_validation(v);
                continue;
            }
            match self.lanes.poll(cx) {
                Poll::Ready(ToSwarm::GenerateEvent(e)) => {
                    match e {
                        LanesEvent::Normal(e) => self.on_lane_event(Lane::Normal, e),
                        LanesEvent::Priority(e) => self.on_lane_event(Lane::Priority, e),
                        LanesEvent::Sync(e) => self.on_sync_event(e),
                    }
                    continue;
                }
                Poll::Ready(other) => {
                    return Poll::Ready(other.map_out(|_| unreachable!("events handled above")));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_tick_at_phases_spread_over_the_tick() {
        let phases: Vec<Duration> = (0..200).map(|_| tick_phase(&PeerId::random())).collect();
        assert!(phases.iter().all(|p| *p < TICK));
        // Each tenth of the tick holds some of 200 nodes (a uniform spread
        // leaves one empty with probability ~1e-8).
        for tenth in 0..10 {
            let (lo, hi) = (TICK * tenth / 10, TICK * (tenth + 1) / 10);
            assert!(
                phases.iter().any(|p| (lo..hi).contains(p)),
                "no node in {lo:?}..{hi:?}"
            );
        }
        let p = PeerId::random();
        assert_eq!(tick_phase(&p), tick_phase(&p), "a node's phase is its own");
    }

    #[test]
    fn changes_bring_the_next_announcement_forward_at_most_once_per_min_interval() {
        let (interval, min) = (Duration::from_secs(30), Duration::from_secs(1));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = AnnounceSchedule::default();
        assert!(s.due(t0, interval, min), "the first announcement");
        s.sent(t0);
        assert!(!s.due(at(5_000), interval, min), "nothing new: wait");
        // Two changes within min_interval share one announcement.
        s.changed = true;
        assert!(!s.due(at(500), interval, min), "too soon after the last");
        assert!(s.due(at(1_000), interval, min));
        s.sent(at(1_000));
        // Without a change, the next is a full interval later.
        assert!(!s.due(at(30_999), interval, min));
        assert!(s.due(at(31_000), interval, min));
    }

    #[tokio::test]
    async fn snapshots_go_once_per_peer_per_interval_and_at_most_serve_per_sec_a_second() {
        let mut reg = prometheus_client::registry::Registry::default();
        let key = Keypair::generate_ed25519();
        let mut b = Behaviour::new(&key, Config::default(), &mut reg).unwrap();
        b.last_announcement = Some(Announcement {
            seq: 1,
            subscribed: vec![Topic::new("a/b").unwrap()],
            ..Default::default()
        });
        let entries = |b: &Behaviour, bytes: &[u8]| {
            wire::decode_snapshot(bytes, b.announcement_limits(), 10)
                .unwrap()
                .len()
        };
        let t0 = Instant::now();
        let peers: Vec<PeerId> = (0..=SERVE_PER_SEC).map(|_| PeerId::random()).collect();
        for p in &peers[..SERVE_PER_SEC] {
            let bytes = b.snapshot_for(*p, t0).unwrap();
            assert_eq!(entries(&b, &bytes), 1, "our own announcement");
        }
        // One more within the second is refused; a peer already served
        // gets an empty snapshot.
        assert!(b.snapshot_for(peers[SERVE_PER_SEC], t0).is_none());
        let again = b.snapshot_for(peers[0], t0).unwrap();
        assert_eq!(entries(&b, &again), 0);
        // A second later there is room again; an interval later, the
        // first peer is served in full again.
        let later = t0 + Duration::from_secs(1);
        assert!(b.snapshot_for(peers[SERVE_PER_SEC], later).is_some());
        let next = t0 + b.config.announce.interval;
        let full = b.snapshot_for(peers[0], next).unwrap();
        assert_eq!(entries(&b, &full), 1);
    }
}
