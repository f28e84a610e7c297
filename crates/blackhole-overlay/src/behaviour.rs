//! The overlay behaviour: libp2p-kad with our store, the IP diversity rule
//! on routing-table inserts, random walks, expiry sweeps, and query results
//! flattened into one final event per query.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    num::NonZeroUsize,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use blackhole_metrics::{
    Registry,
    prometheus_client::{
        encoding::EncodeLabelSet,
        metrics::{counter::Counter, family::Family, gauge::Gauge},
    },
};
use libp2p_core::{ConnectedPoint, Endpoint, Multiaddr, transport::PortUse};
use libp2p_identity::PeerId;
use libp2p_kad::{
    self as kad, GetClosestPeersOk, GetProvidersOk, GetRecordOk, KBucketKey, QueryId, QueryResult,
    Record, RecordKey,
};
use libp2p_swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, DialFailure, FromSwarm, NetworkBehaviour,
    NotifyHandler, StreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
    behaviour::ConnectionEstablished,
};

use crate::{
    config::{Config, ConfigError, Mode},
    diversity,
    store::PersistentStore,
};

/// The final outcome of an overlay query, or a notable change.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// `put` stored the record on `stored_at` peers (and locally).
    RecordStored {
        id: QueryId,
        key: RecordKey,
        stored_at: u32,
    },
    /// `get` found the record.
    RecordFound {
        id: QueryId,
        record: Record,
        from: Option<PeerId>,
        requests: u32,
        duration: Duration,
    },
    /// `start_providing` announced us on `stored_at` peers.
    Providing {
        id: QueryId,
        key: RecordKey,
        stored_at: u32,
    },
    /// `providers` finished; every provider found (possibly none).
    ProvidersFound {
        id: QueryId,
        key: RecordKey,
        providers: Vec<PeerId>,
        requests: u32,
        duration: Duration,
    },
    /// `closest_peers` or `find_peer` finished.
    ClosestPeers {
        id: QueryId,
        key: Vec<u8>,
        peers: Vec<kad::PeerInfo>,
        requests: u32,
        duration: Duration,
    },
    /// A query failed or timed out (`not_found`: a `get` that found no record).
    QueryFailed {
        id: QueryId,
        kind: &'static str,
        error: String,
        not_found: bool,
    },
    /// A bootstrap (routing-table refresh) finished.
    Bootstrapped { id: QueryId },
    /// A peer entered the routing table.
    PeerAdded { peer: PeerId },
    /// The diversity rule kept a peer out of the routing table.
    PeerRejected { peer: PeerId, address: Multiaddr },
    /// Our Kademlia mode changed.
    ModeChanged { mode: kad::Mode },
    /// Any other Kademlia event, unchanged.
    Kad(Box<kad::Event>),
}

/// One bucket of the routing table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bucket {
    /// log2 of the distance range (0..=255).
    pub index: u32,
    /// Its peers.
    pub peers: Vec<BucketPeer>,
}

/// A routing-table entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BucketPeer {
    /// The peer.
    pub peer_id: PeerId,
    /// Its known addresses.
    pub addresses: Vec<Multiaddr>,
    /// Whether it is connected now.
    pub connected: bool,
    /// When we last had a connection to it (unix milliseconds), if known;
    /// the overlay does not track this, the node fills it in.
    pub last_seen_ms: Option<u64>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Default)]
struct Metrics {
    queries: Family<QueryLabels, Counter>,
    routing_table_peers: Gauge,
    stored_records: Gauge,
    rejected: Counter,
    replayed_closes: Counter,
    stalled: Counter,
    dial_failures_ignored: Counter,
}

impl Metrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = blackhole_metrics::layer(registry, "overlay");
        r.register(
            "queries",
            "Finished DHT queries by kind and outcome",
            m.queries.clone(),
        );
        r.register(
            "routing_table_peers",
            "Peers in the routing table",
            m.routing_table_peers.clone(),
        );
        r.register(
            "stored_records",
            "Records in the local store",
            m.stored_records.clone(),
        );
        r.register(
            "diversity_rejections",
            "Peers kept out of the routing table by the IP diversity rule",
            m.rejected.clone(),
        );
        r.register(
            "connection_closes_replayed",
            "Connections that closed while queries ran and another connection to the \
             peer remained, reported to Kademlia as the peer's failure",
            m.replayed_closes.clone(),
        );
        r.register(
            "queries_stalled",
            "DHT queries finished early because nothing was sent, answered or lost \
             for query_stall_timeout",
            m.stalled.clone(),
        );
        r.register(
            "dial_failures_kept_from_queries",
            "Failed dials of connected peers, not counted as the peers' failure in DHT queries",
            m.dial_failures_ignored.clone(),
        );
        m
    }

    fn query(&self, kind: &'static str, ok: bool) {
        self.queries
            .get_or_create(&QueryLabels {
                kind,
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
    }
}

/// The overlay network behaviour.
pub struct Behaviour {
    kad: kad::Behaviour<PersistentStore>,
    /// Whether the configured mode is automatic.
    auto: bool,
    local: KBucketKey<PeerId>,
    protocol: StreamProtocol,
    filter: diversity::Filter,
    events: VecDeque<Event>,
    providers: HashMap<QueryId, (RecordKey, HashSet<PeerId>)>,
    random_walk: tokio::time::Interval,
    sweep: tokio::time::Interval,
    metrics: Metrics,
    /// Each connected peer's open connections, oldest first (see
    /// [`Behaviour::on_connection_closed`]). One entry per connection.
    connections: HashMap<PeerId, Vec<(ConnectionId, ConnectedPoint)>>,
    /// Connections Kademlia's requests went through (or may have: a
    /// peer's first connection takes the requests queued for it).
    requested: HashSet<ConnectionId>,
    /// See [`Behaviour::check_stalls`].
    stall_timeout: Duration,
    stall_check: tokio::time::Interval,
    /// Each running query's last (requests, successes, failures) and when
    /// they last changed.
    progress: HashMap<QueryId, ((u32, u32, u32), Instant)>,
    /// Each running bootstrap's steps so far: (succeeded, failed).
    bootstrap_steps: HashMap<QueryId, (u32, u32)>,
}

/// How often running queries are checked for stalls.
const STALL_CHECK: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behaviour")
            .field("local", self.local.preimage())
            .finish_non_exhaustive()
    }
}

/// The most providers collected for one query.
pub const MAX_PROVIDERS_PER_QUERY: usize = 256;

fn interval(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

impl Behaviour {
    /// Builds the overlay for `local` with `store`, registering metrics.
    pub fn new(
        local: PeerId,
        store: PersistentStore,
        config: &Config,
        registry: &mut Registry,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let protocol =
            StreamProtocol::try_from_owned(config.protocol.clone()).map_err(|e| ConfigError {
                key: "protocol",
                reason: e.to_string(),
            })?;
        let nz = |key, v: usize| {
            NonZeroUsize::new(v).ok_or(ConfigError {
                key,
                reason: "must be at least 1".into(),
            })
        };
        let mut kc = kad::Config::new(protocol.clone());
        kc.set_replication_factor(nz("replication_factor", config.replication_factor)?)
            .set_parallelism(nz("parallelism", config.parallelism)?)
            .disjoint_query_paths(config.disjoint_paths)
            .set_query_timeout(config.query_timeout)
            .set_record_ttl(Some(config.record_ttl))
            .set_replication_interval(Some(config.record_replication_interval))
            .set_publication_interval(Some(config.record_publication_interval))
            .set_provider_record_ttl(Some(config.provider_record_ttl))
            .set_provider_publication_interval(Some(config.provider_publication_interval))
            .set_max_packet_size(config.max_packet_size)
            .set_periodic_bootstrap_interval(Some(config.refresh_interval))
            .set_kbucket_inserts(kad::BucketInserts::Manual);
        let mut kad = kad::Behaviour::with_config(local, store, kc);
        kad.set_mode(match config.mode {
            Mode::Auto => None,
            Mode::Server => Some(kad::Mode::Server),
            Mode::Client => Some(kad::Mode::Client),
        });
        Ok(Self {
            kad,
            auto: config.mode == Mode::Auto,
            local: KBucketKey::from(local),
            protocol,
            filter: diversity::Filter::new(config.ip_diversity.clone()),
            events: VecDeque::new(),
            providers: HashMap::new(),
            random_walk: interval(config.random_walk_interval),
            sweep: interval(config.expiry_sweep_interval),
            metrics: Metrics::register(registry),
            connections: HashMap::new(),
            requested: HashSet::new(),
            stall_timeout: config.query_stall_timeout,
            stall_check: interval(STALL_CHECK),
            progress: HashMap::new(),
            bootstrap_steps: HashMap::new(),
        })
    }

    /// Passes a closed connection on to Kademlia, so that no query waits for
    /// an answer that cannot come.
    ///
    /// libp2p-kad sends a request on any one connection to the peer and
    /// forgets which; when that connection closes it fails the peer's
    /// outstanding requests only if it was the peer's last connection.
    /// Otherwise the query waits out its per-peer timeout (10 s) for a
    /// response that died with the connection. In the 50-node DHT
    /// benchmark such a close comes about once per run: an inbound
    /// connection whose dialer, the loser of a dial race, resets it
    /// milliseconds after it was established, while the winning connection
    /// stays up.
    ///
    /// So Kademlia's requests to a peer go through one connection, its
    /// oldest direct one (see `request_connection`), and while queries
    /// run, the close of a connection that requests went through, leaving
    /// others, is reported to Kademlia as the last one (every running
    /// query counts the peer as failed and goes on), followed by the next
    /// request connection as newly established (Kademlia sends to the peer
    /// through it again). The close of a connection no request went
    /// through is passed on as it is: failing the peer then would drop
    /// good answers (a lookup of that very peer would not find it).
    fn on_connection_closed(&mut self, e: ConnectionClosed<'_>) {
        let carried_requests = self.requested.remove(&e.connection_id);
        if let Some(list) = self.connections.get_mut(&e.peer_id) {
            list.retain(|(id, _)| *id != e.connection_id);
        }
        let remaining = self.request_connection(&e.peer_id).cloned();
        if remaining.is_none() {
            self.connections.remove(&e.peer_id);
        }
        match remaining {
            Some((connection_id, endpoint))
                if carried_requests
                    && e.remaining_established > 0
                    && self.kad.iter_queries().next().is_some() =>
            {
                self.metrics.replayed_closes.inc();
                tracing::debug!(
                    peer = %e.peer_id,
                    closed = ?e.connection_id,
                    "a connection closed while queries ran: reported to kademlia as the peer's failure"
                );
                self.kad
                    .on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                        remaining_established: 0,
                        ..e
                    }));
                self.kad
                    .on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
                        peer_id: e.peer_id,
                        connection_id,
                        endpoint: &endpoint,
                        failed_addresses: &[],
                        other_established: 0,
                    }));
            }
            _ => self.kad.on_swarm_event(FromSwarm::ConnectionClosed(e)),
        }
    }

    /// Finishes, with what they have, the queries that sent no request and
    /// heard no answer or failure for `query_stall_timeout`.
    ///
    /// libp2p-kad 0.49's disjoint-path lookups can stall until the query
    /// timeout (60 s): when an answer comes from a peer whose path has
    /// already finished, the answer is dropped and the peer stays
    /// "waiting" for the other paths. A path that later picks that peer
    /// waits for it, and its per-peer timeout does not fire while a
    /// not-yet-contacted peer sorts before it and the path is at its
    /// parallelism limit (`ClosestPeersIter::next` returns at that peer).
    /// Seen in about 1 of 12 runs of the 50-node DHT benchmark, as a
    /// bootstrap step that ended at 60 s. A healthy query waits at most
    /// the 10 s per-peer timeout without any of its counts changing, so a
    /// longer silence means the query will not move again.
    fn check_stalls(&mut self, now: Instant) {
        if self.kad.iter_queries().next().is_none() {
            self.progress.clear();
            self.bootstrap_steps.clear();
            return;
        }
        let mut running = HashSet::new();
        let mut stalled = Vec::new();
        for q in self.kad.iter_queries() {
            let s = q.stats();
            let mark = (s.num_requests(), s.num_successes(), s.num_failures());
            running.insert(q.id());
            let entry = self.progress.entry(q.id()).or_insert((mark, now));
            if entry.0 != mark {
                *entry = (mark, now);
            } else if now.duration_since(entry.1) >= self.stall_timeout {
                stalled.push((q.id(), mark));
            }
        }
        self.progress.retain(|id, _| running.contains(id));
        self.bootstrap_steps.retain(|id, _| running.contains(id));
        for (id, (requests, succeeded, failed)) in stalled {
            self.progress.remove(&id);
            self.metrics.stalled.inc();
            tracing::debug!(
                ?id,
                requests,
                succeeded,
                failed,
                stall = ?self.stall_timeout,
                "DHT query made no progress: finished with what it has"
            );
            self.finish(id);
        }
    }

    /// The connection Kademlia's requests to `peer` go through: its oldest
    /// direct one, else its oldest (relayed) one. A relayed circuit is
    /// limited in time and bytes, and a direct connection that hole
    /// punching adds later is the better path.
    fn request_connection(&self, peer: &PeerId) -> Option<&(ConnectionId, ConnectedPoint)> {
        let list = self.connections.get(peer)?;
        let relayed = |e: &ConnectedPoint| {
            e.get_remote_address()
                .iter()
                .any(|p| matches!(p, libp2p_core::multiaddr::Protocol::P2pCircuit))
        };
        list.iter()
            .find(|(_, e)| !relayed(e))
            .or_else(|| list.first())
    }

    /// The routing-table bucket `peer` falls in.
    pub fn bucket_of(&self, peer: &PeerId) -> Option<u32> {
        self.local.distance(&KBucketKey::from(*peer)).ilog2()
    }

    /// Adds `addr` for `peer` to the routing table, subject to the
    /// diversity rule; `false` if the rule refused it.
    pub fn add_address(&mut self, peer: PeerId, addr: Multiaddr) -> bool {
        let Some(bucket) = self.bucket_of(&peer) else {
            return false;
        };
        if !self.filter.admit(peer, bucket, &addr) {
            self.metrics.rejected.inc();
            tracing::debug!(%peer, %addr, "diversity rule keeps peer out of the routing table");
            self.events.push_back(Event::PeerRejected {
                peer,
                address: addr,
            });
            return false;
        }
        !matches!(
            self.kad.add_address(&peer, addr),
            kad::RoutingUpdate::Failed
        )
    }

    /// Feeds what identify learned: peers that speak our DHT protocol enter
    /// the routing table with their listen addresses.
    pub fn on_identify(
        &mut self,
        peer: PeerId,
        listen_addrs: &[Multiaddr],
        protocols: &[StreamProtocol],
    ) {
        if !protocols.contains(&self.protocol) {
            return;
        }
        for addr in listen_addrs.iter().take(16) {
            self.add_address(peer, addr.clone());
        }
    }

    /// Stores `value` under `key` locally and at the closest peers.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<QueryId, kad::store::Error> {
        let record = Record {
            key: RecordKey::new(&key),
            value,
            publisher: None,
            expires: None,
        };
        self.kad.put_record(record, kad::Quorum::One)
    }

    /// Looks `key` up, locally first, then in the network.
    pub fn get(&mut self, key: Vec<u8>) -> QueryId {
        self.kad.get_record(RecordKey::new(&key))
    }

    /// Removes `key` from the local store (copies elsewhere expire).
    pub fn remove(&mut self, key: &[u8]) {
        self.kad.remove_record(&RecordKey::new(&key));
    }

    /// Announces us as a provider of `key`.
    pub fn provide(&mut self, key: Vec<u8>) -> Result<QueryId, kad::store::Error> {
        self.kad.start_providing(RecordKey::new(&key))
    }

    /// Stops announcing us as a provider of `key`.
    pub fn stop_providing(&mut self, key: &[u8]) {
        self.kad.stop_providing(&RecordKey::new(&key));
    }

    /// Finds the providers of `key`.
    pub fn providers(&mut self, key: Vec<u8>) -> QueryId {
        let key = RecordKey::new(&key);
        let id = self.kad.get_providers(key.clone());
        self.providers.insert(id, (key, HashSet::new()));
        id
    }

    /// Finds the peers closest to `key`.
    pub fn closest_peers(&mut self, key: Vec<u8>) -> QueryId {
        self.kad.get_closest_peers(key)
    }

    /// Looks for `peer` (a lookup of its id; the result says whether it was found).
    pub fn find_peer(&mut self, peer: PeerId) -> QueryId {
        self.kad.get_closest_peers(peer)
    }

    /// Refreshes the routing table now.
    pub fn bootstrap(&mut self) -> Result<QueryId, kad::NoKnownPeers> {
        self.kad.bootstrap()
    }

    /// The routing table, non-empty buckets only.
    pub fn routing_table(&mut self) -> Vec<Bucket> {
        let mut out = Vec::new();
        for bucket in self.kad.kbuckets() {
            let peers: Vec<BucketPeer> = bucket
                .iter()
                .map(|e| BucketPeer {
                    peer_id: *e.node.key.preimage(),
                    addresses: e.node.value.iter().cloned().collect(),
                    connected: e.status == kad::NodeStatus::Connected,
                    last_seen_ms: None,
                })
                .collect();
            let local = &self.local;
            if let Some(index) = peers
                .first()
                .and_then(|p| local.distance(&KBucketKey::from(p.peer_id)).ilog2())
            {
                out.push(Bucket { index, peers });
            }
        }
        out
    }

    /// Number of peers in the routing table.
    pub fn routing_table_len(&mut self) -> usize {
        self.kad.kbuckets().map(|b| b.num_entries()).sum()
    }

    /// The local store.
    pub fn store(&mut self) -> &mut PersistentStore {
        self.kad.store_mut()
    }

    /// Our current Kademlia mode.
    pub fn mode(&self) -> kad::Mode {
        self.kad.mode()
    }

    /// Whether the node is reachable, as the NAT layer determined it:
    /// `Some(true)` serves DHT requests, `Some(false)` only queries,
    /// `None` leaves it to libp2p-kad (server once any external address is
    /// confirmed, relayed ones included). Only in automatic mode; a
    /// configured server or client mode stays.
    pub fn set_reachable(&mut self, reachable: Option<bool>) {
        if self.auto {
            self.kad.set_mode(reachable.map(|r| match r {
                true => kad::Mode::Server,
                false => kad::Mode::Client,
            }));
        }
    }

    /// The underlying Kademlia behaviour, for what this API does not cover.
    pub fn kad_mut(&mut self) -> &mut kad::Behaviour<PersistentStore> {
        &mut self.kad
    }

    fn finish(&mut self, id: QueryId) {
        if let Some(mut q) = self.kad.query_mut(&id) {
            q.finish();
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                stats,
                step,
            } => {
                self.on_query(id, result, &stats, step.last);
            }
            kad::Event::RoutablePeer { peer, address }
            | kad::Event::PendingRoutablePeer { peer, address } => {
                self.add_address(peer, address);
            }
            kad::Event::RoutingUpdated {
                peer,
                is_new_peer,
                old_peer,
                ..
            } => {
                if let Some(old) = old_peer {
                    self.filter.remove(&old);
                }
                let n = self.routing_table_len();
                self.metrics.routing_table_peers.set(n as i64);
                if is_new_peer {
                    self.events.push_back(Event::PeerAdded { peer });
                }
            }
            kad::Event::ModeChanged { new_mode } => {
                tracing::info!(mode = %new_mode, "DHT mode changed");
                self.events.push_back(Event::ModeChanged { mode: new_mode });
            }
            other => self.events.push_back(Event::Kad(Box::new(other))),
        }
    }

    fn on_query(&mut self, id: QueryId, result: QueryResult, stats: &kad::QueryStats, last: bool) {
        let requests = stats.num_requests();
        let duration = stats.duration().unwrap_or_default();
        let failed = |kind: &'static str, error: String| {
            tracing::debug!(
                ?id,
                kind,
                %error,
                requests,
                succeeded = stats.num_successes(),
                failed = stats.num_failures(),
                pending = stats.num_pending(),
                ?duration,
                "DHT query failed"
            );
            Event::QueryFailed {
                id,
                kind,
                error,
                not_found: false,
            }
        };
        let event = match result {
            QueryResult::PutRecord(Ok(ok)) => Some(Event::RecordStored {
                id,
                key: ok.key,
                stored_at: stats.num_successes(),
            }),
            QueryResult::PutRecord(Err(e)) => {
                let reason = match &e {
                    // The record is in our own store either way; say so.
                    kad::PutRecordError::QuorumFailed { success, .. } => format!(
                        "stored locally, but only {} DHT server peer(s) took a copy ({e}); peers in client mode store nothing",
                        success.len()
                    ),
                    _ => e.to_string(),
                };
                Some(failed("put", reason))
            }
            QueryResult::GetRecord(Ok(GetRecordOk::FoundRecord(r))) => {
                self.finish(id);
                Some(Event::RecordFound {
                    id,
                    record: r.record,
                    from: r.peer,
                    requests,
                    duration,
                })
            }
            QueryResult::GetRecord(Ok(GetRecordOk::FinishedWithNoAdditionalRecord { .. })) => None,
            QueryResult::GetRecord(Err(e)) => Some(Event::QueryFailed {
                id,
                kind: "get",
                not_found: matches!(e, kad::GetRecordError::NotFound { .. }),
                error: e.to_string(),
            }),
            QueryResult::StartProviding(Ok(ok)) => Some(Event::Providing {
                id,
                key: ok.key,
                stored_at: stats.num_successes(),
            }),
            QueryResult::StartProviding(Err(e)) => Some(failed("provide", e.to_string())),
            QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders { providers, .. })) => {
                if let Some((_, acc)) = self.providers.get_mut(&id) {
                    acc.extend(
                        providers
                            .into_iter()
                            .take(MAX_PROVIDERS_PER_QUERY.saturating_sub(acc.len())),
                    );
                }
                None
            }
            QueryResult::GetProviders(Ok(GetProvidersOk::FinishedWithNoAdditionalRecord {
                ..
            })) => None,
            QueryResult::GetProviders(Err(e)) => {
                self.providers.remove(&id);
                Some(failed("providers", e.to_string()))
            }
            QueryResult::GetClosestPeers(Ok(GetClosestPeersOk { key, peers })) => {
                Some(Event::ClosestPeers {
                    id,
                    key,
                    peers,
                    requests,
                    duration,
                })
            }
            QueryResult::GetClosestPeers(Err(e)) => Some(failed("closest_peers", e.to_string())),
            // A bootstrap is a lookup of our own id, then one per bucket;
            // libp2p-kad goes on after a step that timed out. It succeeded
            // if any step did.
            QueryResult::Bootstrap(r) => {
                let steps = self.bootstrap_steps.entry(id).or_default();
                match &r {
                    Ok(_) => steps.0 += 1,
                    Err(e) => {
                        steps.1 += 1;
                        tracing::debug!(?id, error = %e, last, "a bootstrap step failed");
                    }
                }
                if !last {
                    None
                } else {
                    let (ok, _) = self.bootstrap_steps.remove(&id).unwrap_or_default();
                    match r {
                        Err(e) if ok == 0 => Some(failed("bootstrap", e.to_string())),
                        _ => Some(Event::Bootstrapped { id }),
                    }
                }
            }
            QueryResult::RepublishProvider(_) | QueryResult::RepublishRecord(_) => None,
        };
        // Providers are reported once, when the query ends.
        if last && let Some((key, acc)) = self.providers.remove(&id) {
            self.metrics.query("providers", true);
            self.events.push_back(Event::ProvidersFound {
                id,
                key,
                providers: acc.into_iter().collect(),
                requests,
                duration,
            });
        }
        if let Some(e) = event {
            let (kind, ok) = match &e {
                Event::RecordStored { .. } => ("put", true),
                Event::RecordFound { .. } => ("get", true),
                Event::Providing { .. } => ("provide", true),
                Event::ClosestPeers { .. } => ("closest_peers", true),
                Event::Bootstrapped { .. } => ("bootstrap", true),
                Event::QueryFailed { kind, .. } => (*kind, false),
                _ => ("other", true),
            };
            self.metrics.query(kind, ok);
            self.events.push_back(e);
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler =
        <kad::Behaviour<PersistentStore> as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.kad
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.kad
            .handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.kad
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.kad
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                if e.other_established == 0 {
                    self.requested.insert(e.connection_id);
                }
                self.connections
                    .entry(e.peer_id)
                    .or_default()
                    .push((e.connection_id, e.endpoint.clone()));
                self.kad.on_swarm_event(event);
            }
            FromSwarm::ConnectionClosed(e) => self.on_connection_closed(e),
            // libp2p-kad fails a peer in every running query when any dial
            // of it fails, whoever dialed. With a connection up, its
            // requests go through that connection and a failed dial says
            // nothing about them: an AutoNAT server's dial-back to an
            // address the peer cannot be reached at (its purpose is to find
            // those) made lookups of that peer come back without it.
            FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer),
                error,
                ..
            }) if self.connections.contains_key(&peer) => {
                self.metrics.dial_failures_ignored.inc();
                tracing::debug!(
                    %peer,
                    %error,
                    "a dial failed while connected: not a failure of the peer's DHT requests"
                );
            }
            _ => self.kad.on_swarm_event(event),
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.kad.on_connection_handler_event(peer, id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Poll::Ready(ToSwarm::GenerateEvent(e));
            }
            if self.sweep.poll_tick(cx).is_ready() {
                let removed = self.kad.store_mut().remove_expired(Instant::now());
                let stats = self.kad.store_mut().stats();
                self.metrics.stored_records.set(stats.records as i64);
                if removed > 0 {
                    tracing::debug!(removed, "expired DHT entries removed");
                }
                continue;
            }
            if self.stall_check.poll_tick(cx).is_ready() {
                self.check_stalls(Instant::now());
                continue;
            }
            if self.random_walk.poll_tick(cx).is_ready() {
                if self.routing_table_len() > 0 {
                    self.kad.get_closest_peers(PeerId::random());
                }
                continue;
            }
            match self.kad.poll(cx) {
                Poll::Ready(ToSwarm::GenerateEvent(e)) => self.on_kad(e),
                // Requests go through one chosen connection of the peer, so
                // that a close of any other cannot lose them (see
                // `on_connection_closed` and `request_connection`).
                Poll::Ready(ToSwarm::NotifyHandler {
                    peer_id,
                    handler: NotifyHandler::Any,
                    event,
                }) => {
                    let handler = match self.request_connection(&peer_id) {
                        Some(&(id, _)) => {
                            self.requested.insert(id);
                            NotifyHandler::One(id)
                        }
                        None => NotifyHandler::Any,
                    };
                    return Poll::Ready(ToSwarm::NotifyHandler {
                        peer_id,
                        handler,
                        event,
                    });
                }
                Poll::Ready(other) => {
                    return Poll::Ready(other.map_out(|e| Event::Kad(Box::new(e))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
