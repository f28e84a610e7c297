//! The NAT traversal behaviour: libp2p's AutoNAT v2, relay v2, DCUtR and
//! UPnP, composed, plus the state they feed (reachability, NAT type,
//! relay reservations) and the policy that uses it.

use std::{
    collections::{HashMap, VecDeque},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use libp2p_autonat::v2 as autonat;
use libp2p_core::{
    ConnectedPoint, Endpoint, Multiaddr, multiaddr::Protocol, transport::ListenerId,
    transport::PortUse,
};
use libp2p_identity::PeerId;
use libp2p_relay as relay;
use libp2p_swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, ListenOpts, NetworkBehaviour, StreamProtocol,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, behaviour::toggle::Toggle,
};
use serde::{Deserialize, Serialize};

use crate::{
    Config, ConfigError, Metrics, NatType, Switch,
    hole_punch::{HolePunch, HolePunchEvent},
    nat_type::Detector,
};

/// How many distinct address candidates (addresses peers observed us at)
/// are ever passed on to AutoNAT and hole punching; later ones are ignored.
pub const MAX_CANDIDATES: usize = 64;

/// Whether others can dial this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// Nothing tested yet.
    Unknown,
    /// AutoNAT servers could not dial any of our addresses, and no port is
    /// mapped: others reach us through relays.
    Private,
    /// At least one of our addresses is confirmed dialable (AutoNAT, UPnP
    /// or configuration).
    Public,
}

impl std::fmt::Display for Reachability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reachability::Unknown => "unknown",
            Reachability::Private => "private",
            Reachability::Public => "public",
        })
    }
}

impl Reachability {
    fn gauge(self) -> i64 {
        match self {
            Reachability::Unknown => 0,
            Reachability::Private => 1,
            Reachability::Public => 2,
        }
    }
}

/// What UPnP port mapping is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Upnp {
    /// Not running.
    Off,
    /// Looking for a gateway, or mapping.
    Searching,
    /// No gateway answered.
    GatewayNotFound,
    /// The gateway's own external address is not public (a NAT behind a
    /// NAT): mappings would not make us reachable.
    NonRoutableGateway,
    /// Ports are mapped.
    Mapped {
        /// The external addresses the gateway gave us.
        external_addrs: Vec<Multiaddr>,
    },
}

/// How many hole punch outcomes [`HolePunchStats::recent`] keeps.
pub const RECENT_HOLE_PUNCHES: usize = 32;

/// One hole punch's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolePunchOutcome {
    /// The peer.
    pub peer: PeerId,
    /// Our direct dials (0: the peer's dial got through first).
    pub attempts: u32,
    /// Whether a direct connection came of it.
    pub success: bool,
    /// Why not, when it failed.
    pub error: Option<String>,
}

/// Hole punching counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolePunchStats {
    /// Whether this node takes part (off when our NAT maps per destination).
    pub active: bool,
    /// Direct dials made.
    pub attempts: u64,
    /// Relayed connections upgraded to direct ones.
    pub successes: u64,
    /// Hole punches that ended without a direct connection.
    pub failures: u64,
    /// The latest outcomes, oldest first (at most
    /// [`RECENT_HOLE_PUNCHES`]).
    pub recent: VecDeque<HolePunchOutcome>,
}

impl HolePunchStats {
    fn record(&mut self, o: HolePunchOutcome) {
        if self.recent.len() >= RECENT_HOLE_PUNCHES {
            self.recent.pop_front();
        }
        self.recent.push_back(o);
    }
}

/// The relay server's load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayServerStats {
    /// Whether the relay server runs at all (`relay_server.mode` not off).
    pub enabled: bool,
    /// Whether it advertises the hop protocol now (it does while reachable).
    pub serving: bool,
    /// Reservations held for others.
    pub reservations: u64,
    /// Circuits being relayed.
    pub circuits: u64,
    /// Requests denied (limits, rates).
    pub denied: u64,
}

/// Everything the NAT layer knows, for the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Whether the NAT layer runs.
    pub enabled: bool,
    /// Whether others can dial us.
    pub reachability: Reachability,
    /// The NAT type, from what peers observe.
    pub nat_type: NatType,
    /// Our confirmed external (dialable) addresses.
    pub external_addrs: Vec<Multiaddr>,
    /// Addresses through relays we hold reservations on.
    pub relayed_addrs: Vec<Multiaddr>,
    /// Relays we hold (or are asking for) reservations on.
    pub relays: Vec<PeerId>,
    /// AutoNAT tests of our addresses that succeeded and failed.
    pub autonat_reachable: u64,
    /// See `autonat_reachable`.
    pub autonat_unreachable: u64,
    /// Observations of our address held by the NAT type detector.
    pub observations: usize,
    /// Hole punching.
    pub hole_punch: HolePunchStats,
    /// The relay server.
    pub relay_server: RelayServerStats,
    /// UPnP.
    pub upnp: Upnp,
}

/// What the NAT layer tells the node.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "nat", rename_all = "snake_case")]
pub enum Event {
    /// Reachability changed.
    Reachability {
        /// Now.
        reachability: Reachability,
    },
    /// The NAT type changed.
    NatType {
        /// Now.
        nat_type: NatType,
    },
    /// A relay accepted our reservation: we are reachable at `addr`.
    ReservationAccepted {
        /// The relay.
        relay: PeerId,
        /// Our address through it.
        addr: Multiaddr,
    },
    /// A reservation (or a request for one) ended.
    ReservationClosed {
        /// The relay.
        relay: PeerId,
        /// Why.
        reason: String,
    },
    /// A relayed connection with `peer` became a direct one.
    HolePunched {
        /// The peer.
        peer: PeerId,
        /// Our dials it took (0: the peer's dial got through first).
        attempts: u32,
    },
    /// Hole punching with `peer` failed; the relayed connection remains.
    HolePunchFailed {
        /// The peer.
        peer: PeerId,
        /// Our dials.
        attempts: u32,
        /// Why.
        reason: String,
    },
    /// A UPnP gateway mapped a port: we are reachable at `external`.
    PortMapped {
        /// The external address.
        external: Multiaddr,
    },
}

/// The composed libp2p behaviours (public only because the connection
/// handler type names it).
#[allow(unreachable_pub, missing_debug_implementations)]
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p_swarm::derive_prelude")]
pub struct Inner {
    autonat_client: Toggle<autonat::client::Behaviour>,
    autonat_server: Toggle<autonat::server::Behaviour>,
    relay_server: Toggle<crate::relay_server::RelayServer>,
    relay_client: relay::client::Behaviour,
    hole_punch: Toggle<HolePunch>,
    upnp: Toggle<libp2p_upnp::tokio::Behaviour>,
}

#[derive(Debug)]
struct Reservation {
    listener: ListenerId,
    /// Our addresses through the relay (one per relay address), once
    /// accepted.
    addrs: Vec<Multiaddr>,
}

/// The NAT traversal behaviour. Build it with [`Behaviour::new`], which
/// also returns the relay transport the node's transport must include.
pub struct Behaviour {
    inner: Inner,
    config: Config,
    local: PeerId,
    metrics: Metrics,
    detector: Detector,
    nat_type: NatType,
    reachability: Reachability,
    confirmed: Vec<Multiaddr>,
    autonat_reachable: u64,
    autonat_unreachable: u64,
    connections: HashMap<ConnectionId, (PeerId, ConnectedPoint)>,
    /// Relays from the configuration, then peers offering the hop
    /// protocol, in the order they were found.
    static_relays: Vec<(PeerId, Multiaddr)>,
    candidates: VecDeque<(PeerId, Multiaddr)>,
    reservations: HashMap<PeerId, Reservation>,
    backoff: HashMap<PeerId, Instant>,
    /// Address candidates passed on to AutoNAT and DCUtR.
    candidates_seen: std::collections::HashSet<Multiaddr>,
    /// Failed reservations in a row, per relay (cleared on success).
    failures: HashMap<PeerId, u32>,
    hole_punch: HolePunchStats,
    relay_server: RelayServerStats,
    upnp: Upnp,
    actions: VecDeque<ToSwarm<Event, THandlerInEvent<Inner>>>,
    tick: tokio::time::Interval,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("nat::Behaviour")
            .field("reachability", &self.reachability)
            .field("nat_type", &self.nat_type)
            .field("reservations", &self.reservations)
            .finish()
    }
}

/// The relay client transport: the node's transport must offer it (secured
/// and multiplexed like TCP) for relayed addresses to be dialable and
/// listenable.
pub type RelayTransport = relay::client::Transport;

/// An error with its sources: "a: b: c".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut last = s.clone();
    let mut src = e.source();
    while let Some(inner) = src {
        // Wrapping errors often repeat their source's text.
        let text = inner.to_string();
        if text != last {
            s.push_str(": ");
            s.push_str(&text);
        }
        last = text;
        src = inner.source();
    }
    s
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

fn is_loopback_or_memory(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        Some(Protocol::Memory(_)) => true,
        _ => false,
    }
}

fn with_peer(mut addr: Multiaddr, peer: PeerId) -> Multiaddr {
    if !matches!(addr.iter().last(), Some(Protocol::P2p(p)) if p == peer) {
        addr.push(Protocol::P2p(peer));
    }
    addr
}

fn rate(r: crate::config::Rate) -> (std::num::NonZeroU32, Duration) {
    (
        std::num::NonZeroU32::new(r.limit).unwrap_or(std::num::NonZeroU32::MIN),
        r.interval,
    )
}

impl Behaviour {
    /// Builds the behaviour for `local` from `config`. `listen` (the
    /// node's listen addresses) decides `upnp = "auto"`. Registers the
    /// `blackhole_nat_*` metrics.
    pub fn new(
        local: PeerId,
        config: &Config,
        listen: &[Multiaddr],
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<(Self, RelayTransport), ConfigError> {
        config.validate()?;
        let metrics = Metrics::register(registry);
        let (relay_transport, relay_client) = relay::client::new(local);
        let on = config.enabled;
        let autonat_client = (on && config.autonat.client).then(|| {
            autonat::client::Behaviour::new(
                rand010::make_rng::<rand010::rngs::StdRng>(),
                autonat::client::Config::default()
                    .with_probe_interval(config.autonat.probe_interval)
                    .with_max_candidates(config.autonat.max_candidates),
            )
        });
        let autonat_server =
            (on && config.autonat.server).then(autonat::server::Behaviour::default);
        let r = &config.relay_server;
        let relay_server = (on && r.mode != Switch::Off).then(|| {
            let (l, i) = rate(r.reservation_rate_per_peer);
            let relay_config = relay::Config {
                max_reservations: r.max_reservations,
                max_reservations_per_peer: r.max_reservations_per_peer,
                reservation_duration: r.reservation_duration,
                reservation_rate_limiters: Vec::new(),
                max_circuits: r.max_circuits,
                max_circuits_per_peer: r.max_circuits_per_peer,
                max_circuit_duration: r.max_circuit_duration,
                max_circuit_bytes: r.max_circuit_bytes,
                circuit_src_rate_limiters: Vec::new(),
            }
            .reservation_rate_per_peer(l, i);
            let (l, i) = rate(r.reservation_rate_per_ip);
            let relay_config = relay_config.reservation_rate_per_ip(l, i);
            let (l, i) = rate(r.circuit_rate_per_peer);
            let relay_config = relay_config.circuit_src_per_peer(l, i);
            let (l, i) = rate(r.circuit_rate_per_ip);
            let relay_config = relay_config.circuit_src_per_ip(l, i);
            let mut b = relay::Behaviour::new(local, relay_config);
            if r.mode == Switch::On {
                b.set_status(Some(relay::Status::Enable));
            }
            crate::relay_server::RelayServer(b)
        });
        let upnp_on = on
            && match config.upnp {
                Switch::On => true,
                Switch::Off => false,
                Switch::Auto => listen.iter().any(|a| !is_loopback_or_memory(a)),
            };
        let upnp = upnp_on.then(libp2p_upnp::tokio::Behaviour::default);
        let mut hole_punch = HolePunch::new(local);
        hole_punch.active = on && config.hole_punching;
        let static_relays = config
            .relay_client
            .relays
            .iter()
            .filter_map(|a| {
                let peer = a.iter().find_map(|p| match p {
                    Protocol::P2p(peer) => Some(peer),
                    _ => None,
                })?;
                Some((peer, a.clone()))
            })
            .collect();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let behaviour = Self {
            inner: Inner {
                autonat_client: autonat_client.into(),
                autonat_server: autonat_server.into(),
                relay_server: relay_server.into(),
                relay_client,
                hole_punch: (on && config.hole_punching).then_some(hole_punch).into(),
                upnp: upnp.into(),
            },
            config: config.clone(),
            local,
            detector: Detector::new(config.max_observations),
            nat_type: NatType::Unknown,
            reachability: Reachability::Unknown,
            confirmed: Vec::new(),
            autonat_reachable: 0,
            autonat_unreachable: 0,
            connections: HashMap::new(),
            static_relays,
            candidates: VecDeque::new(),
            reservations: HashMap::new(),
            backoff: HashMap::new(),
            failures: HashMap::new(),
            candidates_seen: Default::default(),
            hole_punch: HolePunchStats {
                active: on && config.hole_punching,
                ..Default::default()
            },
            relay_server: RelayServerStats {
                enabled: on && r.mode != Switch::Off,
                serving: on && r.mode == Switch::On,
                ..Default::default()
            },
            upnp: if upnp_on { Upnp::Searching } else { Upnp::Off },
            actions: VecDeque::new(),
            tick,
            metrics,
        };
        behaviour.set_type_gauge(NatType::Unknown);
        Ok((behaviour, relay_transport))
    }

    /// Whether others can dial us.
    pub fn reachability(&self) -> Reachability {
        self.reachability
    }

    /// The detected NAT type.
    pub fn nat_type(&self) -> NatType {
        self.nat_type
    }

    /// What the layer knows, for the API.
    pub fn status(&self) -> Status {
        let mut relays: Vec<PeerId> = self.reservations.keys().copied().collect();
        relays.sort();
        Status {
            enabled: self.config.enabled,
            reachability: self.reachability,
            nat_type: self.nat_type,
            external_addrs: self.confirmed.clone(),
            relayed_addrs: self
                .reservations
                .values()
                .flat_map(|r| r.addrs.iter().cloned())
                .collect(),
            relays,
            autonat_reachable: self.autonat_reachable,
            autonat_unreachable: self.autonat_unreachable,
            observations: self.detector.len(),
            hole_punch: self.hole_punch.clone(),
            relay_server: self.relay_server,
            upnp: self.upnp.clone(),
        }
    }

    /// Feeds what identify learnt on `connection` with `peer`: the
    /// protocols it offers (a relay offers the hop protocol) and the
    /// address it sees us at (for the NAT type).
    pub fn on_identify(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        protocols: &[StreamProtocol],
        observed: &Multiaddr,
    ) {
        if !self.config.enabled {
            return;
        }
        let endpoint = self.connections.get(&connection).map(|(_, e)| e.clone());
        if let Some(endpoint) = &endpoint {
            let observer = endpoint.get_remote_address();
            tracing::debug!(%peer, %observer, %observed, "observed address");
            if self.detector.observe(observer, observed) {
                self.update_nat_type();
            }
        }
        let hop = protocols.contains(&relay::HOP_PROTOCOL_NAME);
        if !hop {
            self.candidates.retain(|(p, _)| *p != peer);
            return;
        }
        // A relay is reached at the address we dialed it at.
        let Some(ConnectedPoint::Dialer { address, .. }) = endpoint else {
            return;
        };
        if is_relayed(&address) || self.candidates.iter().any(|(p, _)| *p == peer) {
            return;
        }
        if self.candidates.len() >= self.config.relay_client.max_candidates {
            self.candidates.pop_front();
        }
        tracing::debug!(relay = %peer, %address, "relay candidate");
        self.candidates.push_back((peer, with_peer(address, peer)));
    }

    fn set_type_gauge(&self, t: NatType) {
        for other in [
            NatType::Unknown,
            NatType::None,
            NatType::EndpointIndependent,
            NatType::EndpointDependent,
        ] {
            self.metrics
                .nat_type
                .get_or_create(&crate::metrics::Type {
                    r#type: other.as_str(),
                })
                .set(i64::from(other == t));
        }
    }

    fn update_nat_type(&mut self) {
        let t = self.detector.nat_type();
        if t == self.nat_type {
            return;
        }
        tracing::info!(from = %self.nat_type, to = %t, "NAT type");
        self.nat_type = t;
        self.set_type_gauge(t);
        let punch = self.config.hole_punching && t != NatType::EndpointDependent;
        if let Some(h) = self.inner.hole_punch.as_mut() {
            h.active = punch;
        }
        self.hole_punch.active = punch;
        self.actions
            .push_back(ToSwarm::GenerateEvent(Event::NatType { nat_type: t }));
        self.update_reachability();
    }

    fn update_reachability(&mut self) {
        // Behind a NAT (peers see a mapped address) nothing reaches us
        // unless something confirms an address: that is known as soon as
        // two peers have identified us, long before AutoNAT's dial-backs
        // to filtered ports time out.
        let behind_nat = matches!(
            self.nat_type,
            NatType::EndpointIndependent | NatType::EndpointDependent
        );
        let r = if !self.confirmed.is_empty() {
            Reachability::Public
        } else if self.autonat_unreachable > 0 || behind_nat {
            Reachability::Private
        } else {
            Reachability::Unknown
        };
        if r == self.reachability {
            return;
        }
        tracing::info!(from = %self.reachability, to = %r, addrs = ?self.confirmed, "reachability");
        self.reachability = r;
        self.metrics.reachability.set(r.gauge());
        self.actions
            .push_back(ToSwarm::GenerateEvent(Event::Reachability {
                reachability: r,
            }));
        self.plan_relays(Instant::now());
    }

    /// Keeps `relay_client.reservations` reservations while they are
    /// wanted, and none otherwise.
    fn plan_relays(&mut self, now: Instant) {
        let c = self.config.relay_client.clone();
        let want = self.config.enabled
            && match c.mode {
                Switch::On => true,
                Switch::Off => false,
                Switch::Auto => self.reachability == Reachability::Private,
            };
        if !want {
            // Only accepted reservations are dropped: closing the listener
            // of one still being requested races libp2p-relay's handling of
            // the answer (it panics on an answer for a closed listener), so
            // a pending one is dropped once accepted (this runs again
            // then). A request that never gets an answer ends with
            // libp2p-relay's own stream timeout (60 s).
            let accepted: Vec<PeerId> = self
                .reservations
                .iter()
                .filter(|(_, r)| !r.addrs.is_empty())
                .map(|(p, _)| *p)
                .collect();
            for relay in accepted {
                if let Some(r) = self.reservations.remove(&relay) {
                    tracing::info!(%relay, "dropping relay reservation: not needed");
                    self.actions
                        .push_back(ToSwarm::RemoveListener { id: r.listener });
                }
            }
            self.metrics.relay_reservations.set(0);
            return;
        }
        self.backoff.retain(|_, until| *until > now);
        let mut need = c.reservations.saturating_sub(self.reservations.len());
        let choices: Vec<(PeerId, Multiaddr)> = self
            .static_relays
            .iter()
            .chain(self.candidates.iter())
            .cloned()
            .collect();
        for (relay, addr) in choices {
            if need == 0 {
                break;
            }
            if relay == self.local
                || self.reservations.contains_key(&relay)
                || self.backoff.contains_key(&relay)
            {
                continue;
            }
            let circuit = with_peer(addr, relay).with(Protocol::P2pCircuit);
            tracing::info!(%relay, addr = %circuit, "asking for a relay reservation");
            let opts = ListenOpts::new(circuit);
            self.reservations.insert(
                relay,
                Reservation {
                    listener: opts.listener_id(),
                    addrs: Vec::new(),
                },
            );
            self.actions.push_back(ToSwarm::ListenOn { opts });
            need -= 1;
        }
    }

    fn reservation_of(&self, listener: ListenerId) -> Option<PeerId> {
        self.reservations
            .iter()
            .find(|(_, r)| r.listener == listener)
            .map(|(p, _)| *p)
    }

    /// After a failed or closed reservation: wait 1 s, 2 s, 4 s ... up to
    /// `relay_client.retry_after` before asking this relay again (a relay
    /// that just started may not know its external address yet, and
    /// refuses until it does).
    fn back_off(&mut self, relay: PeerId, now: Instant) {
        if self.failures.len() >= 256 {
            self.failures.clear();
        }
        let n = self.failures.entry(relay).or_default();
        let delay =
            Duration::from_secs(1u64 << (*n).min(16)).min(self.config.relay_client.retry_after);
        *n += 1;
        tracing::debug!(%relay, ?delay, "relay backoff");
        self.backoff.insert(relay, now + delay);
    }

    fn reservation_ended(&mut self, listener: ListenerId, reason: String) {
        let Some(relay) = self.reservation_of(listener) else {
            return;
        };
        self.reservations.remove(&relay);
        self.back_off(relay, Instant::now());
        self.metrics.relay_reservations.set(
            self.reservations
                .values()
                .filter(|r| !r.addrs.is_empty())
                .count() as i64,
        );
        tracing::info!(%relay, %reason, "relay reservation ended");
        self.actions
            .push_back(ToSwarm::GenerateEvent(Event::ReservationClosed {
                relay,
                reason,
            }));
    }

    fn on_inner_event(&mut self, event: InnerEvent) {
        match event {
            InnerEvent::AutonatClient(e) => {
                let ok = e.result.is_ok();
                tracing::debug!(addr = %e.tested_addr, server = %e.server, ok, "AutoNAT test");
                if ok {
                    self.autonat_reachable += 1;
                    Metrics::result(&self.metrics.autonat_probes, "reachable");
                } else {
                    self.autonat_unreachable += 1;
                    Metrics::result(&self.metrics.autonat_probes, "unreachable");
                }
                self.update_reachability();
            }
            InnerEvent::AutonatServer(e) => {
                let result = if e.result.is_ok() { "ok" } else { "error" };
                Metrics::result(&self.metrics.autonat_dial_backs, result);
            }
            InnerEvent::RelayServer(e) => self.on_relay_server(e),
            InnerEvent::RelayClient(e) => {
                tracing::debug!(?e, "relay client");
            }
            InnerEvent::HolePunch(HolePunchEvent::Attempt { peer }) => {
                tracing::debug!(%peer, "hole punch: dialing directly");
                self.hole_punch.attempts += 1;
                self.metrics.hole_punch_attempts.inc();
            }
            InnerEvent::HolePunch(HolePunchEvent::Outcome {
                peer,
                attempts,
                result,
            }) => match result {
                Ok(()) => {
                    tracing::info!(%peer, attempts, "hole punched: direct connection");
                    self.hole_punch.successes += 1;
                    self.hole_punch.record(HolePunchOutcome {
                        peer,
                        attempts,
                        success: true,
                        error: None,
                    });
                    Metrics::result(&self.metrics.hole_punches, "success");
                    self.actions
                        .push_back(ToSwarm::GenerateEvent(Event::HolePunched {
                            peer,
                            attempts,
                        }));
                }
                Err(reason) => {
                    tracing::info!(%peer, attempts, %reason, "hole punch failed; staying relayed");
                    self.hole_punch.failures += 1;
                    self.hole_punch.record(HolePunchOutcome {
                        peer,
                        attempts,
                        success: false,
                        error: Some(reason.clone()),
                    });
                    Metrics::result(&self.metrics.hole_punches, "failure");
                    self.actions
                        .push_back(ToSwarm::GenerateEvent(Event::HolePunchFailed {
                            peer,
                            attempts,
                            reason,
                        }));
                }
            },
            InnerEvent::Upnp(e) => self.on_upnp(e),
        }
    }

    fn on_relay_server(&mut self, e: relay::Event) {
        let s = &mut self.relay_server;
        match e {
            relay::Event::ReservationReqAccepted {
                src_peer_id,
                renewed,
            } => {
                if !renewed {
                    s.reservations += 1;
                }
                tracing::debug!(peer = %src_peer_id, renewed, "relay: reservation accepted");
            }
            relay::Event::ReservationClosed { .. } | relay::Event::ReservationTimedOut { .. } => {
                s.reservations = s.reservations.saturating_sub(1);
            }
            relay::Event::ReservationReqDenied { src_peer_id, .. } => {
                s.denied += 1;
                tracing::info!(peer = %src_peer_id, "relay: reservation denied (limits)");
                self.metrics
                    .relay_server_denied
                    .get_or_create(&crate::metrics::Kind {
                        kind: "reservation",
                    })
                    .inc();
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                ..
            } => {
                s.denied += 1;
                tracing::info!(src = %src_peer_id, dst = %dst_peer_id, "relay: circuit denied (limits or no reservation)");
                self.metrics
                    .relay_server_denied
                    .get_or_create(&crate::metrics::Kind { kind: "circuit" })
                    .inc();
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                s.circuits += 1;
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, "relay: circuit");
            }
            relay::Event::CircuitClosed { .. } => {
                s.circuits = s.circuits.saturating_sub(1);
            }
            relay::Event::StatusChanged { status } => {
                s.serving = status == relay::Status::Enable;
                tracing::info!(serving = s.serving, "relay server");
            }
            other => tracing::debug!(?other, "relay server"),
        }
        self.metrics
            .relay_server_reservations
            .set(self.relay_server.reservations as i64);
        self.metrics
            .relay_server_circuits
            .set(self.relay_server.circuits as i64);
    }

    fn on_upnp(&mut self, e: libp2p_upnp::Event) {
        match e {
            libp2p_upnp::Event::NewExternalAddr { external_addr, .. } => {
                tracing::info!(addr = %external_addr, "UPnP: port mapped");
                let mut addrs = match std::mem::replace(&mut self.upnp, Upnp::Searching) {
                    Upnp::Mapped { external_addrs } => external_addrs,
                    _ => Vec::new(),
                };
                if !addrs.contains(&external_addr) {
                    addrs.push(external_addr.clone());
                }
                self.metrics.upnp_mapped.set(addrs.len() as i64);
                self.upnp = Upnp::Mapped {
                    external_addrs: addrs,
                };
                self.actions
                    .push_back(ToSwarm::GenerateEvent(Event::PortMapped {
                        external: external_addr,
                    }));
            }
            libp2p_upnp::Event::ExpiredExternalAddr { external_addr, .. } => {
                tracing::info!(addr = %external_addr, "UPnP: mapping expired");
                if let Upnp::Mapped { external_addrs } = &mut self.upnp {
                    external_addrs.retain(|a| *a != external_addr);
                    self.metrics.upnp_mapped.set(external_addrs.len() as i64);
                }
            }
            libp2p_upnp::Event::GatewayNotFound => {
                tracing::info!("UPnP: no gateway answered");
                self.upnp = Upnp::GatewayNotFound;
            }
            libp2p_upnp::Event::NonRoutableGateway => {
                tracing::info!("UPnP: the gateway's external address is not public");
                self.upnp = Upnp::NonRoutableGateway;
            }
        }
    }

    fn on_swarm(&mut self, event: &FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.connections
                    .insert(e.connection_id, (e.peer_id, e.endpoint.clone()));
            }
            FromSwarm::ConnectionClosed(e) => {
                self.connections.remove(&e.connection_id);
            }
            FromSwarm::NewListenAddr(e) => {
                if let Some(relay) = self.reservation_of(e.listener_id) {
                    let addr = e.addr.clone();
                    tracing::info!(%relay, %addr, "relay reservation accepted");
                    if let Some(r) = self.reservations.get_mut(&relay)
                        && !r.addrs.contains(&addr)
                    {
                        r.addrs.push(addr.clone());
                    }
                    self.failures.remove(&relay);
                    self.metrics.relay_reservations.set(
                        self.reservations
                            .values()
                            .filter(|r| !r.addrs.is_empty())
                            .count() as i64,
                    );
                    self.actions
                        .push_back(ToSwarm::GenerateEvent(Event::ReservationAccepted {
                            relay,
                            addr,
                        }));
                    // Dropped at once if no longer wanted.
                    self.plan_relays(Instant::now());
                } else {
                    self.detector.add_local(e.addr);
                }
            }
            FromSwarm::ListenerClosed(e) => {
                let reason = match &e.reason {
                    Ok(()) => "closed".to_owned(),
                    Err(err) => error_chain(err),
                };
                self.reservation_ended(e.listener_id, reason);
            }
            FromSwarm::ListenerError(e) => {
                self.reservation_ended(e.listener_id, error_chain(e.err));
            }
            FromSwarm::ExternalAddrConfirmed(e)
                if !is_relayed(e.addr) && !self.confirmed.contains(e.addr) =>
            {
                self.confirmed.push(e.addr.clone());
                self.update_reachability();
            }
            FromSwarm::ExternalAddrExpired(e) => {
                let before = self.confirmed.len();
                self.confirmed.retain(|a| a != e.addr);
                if self.confirmed.len() != before {
                    self.update_reachability();
                }
            }
            _ => {}
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = THandler<Inner>;
    type ToSwarm = Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addrs: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addrs, role)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.on_swarm(&event);
        // Candidates come from what peers say they observe, so a peer can
        // invent any number of them, and libp2p-autonat 0.16 keeps every
        // candidate it is told forever (and asks servers to test each):
        // only the first MAX_CANDIDATES distinct ones reach it.
        if let FromSwarm::NewExternalAddrCandidate(c) = &event
            && !self.candidates_seen.contains(c.addr)
        {
            if self.candidates_seen.len() >= MAX_CANDIDATES {
                tracing::debug!(addr = %c.addr, "address candidate ignored: {MAX_CANDIDATES} already known");
                return;
            }
            self.candidates_seen.insert(c.addr.clone());
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        loop {
            if let Some(a) = self.actions.pop_front() {
                return Poll::Ready(a);
            }
            if self.tick.poll_tick(cx).is_ready() {
                self.plan_relays(Instant::now());
                continue;
            }
            match self.inner.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(ToSwarm::GenerateEvent(e)) => self.on_inner_event(e),
                Poll::Ready(other) => {
                    return Poll::Ready(other.map_out(|_| unreachable!("matched above")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses_and_loopback_detection() {
        let peer = PeerId::random();
        let a: Multiaddr = "/ip4/7.7.0.10/tcp/4001".parse().unwrap();
        let with = with_peer(a.clone(), peer);
        assert_eq!(with_peer(with.clone(), peer), with, "added once");
        assert!(is_relayed(&with.clone().with(Protocol::P2pCircuit)));
        assert!(is_loopback_or_memory(
            &"/ip4/127.0.0.1/tcp/1".parse().unwrap()
        ));
        assert!(is_loopback_or_memory(&"/memory/1".parse().unwrap()));
        assert!(!is_loopback_or_memory(
            &"/ip4/0.0.0.0/tcp/1".parse().unwrap()
        ));
    }
}
