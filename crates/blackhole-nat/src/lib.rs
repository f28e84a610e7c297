//! NAT traversal: whether a node can be dialed, what NAT it is behind, and
//! how it is reached anyway.
//!
//! Layer 6 of the workspace, beside pubsub and RPC; the node composes it.
//! It runs rust-libp2p's protocols and adds what they leave to the
//! application:
//!
//! - **Reachability** ([`Reachability`]): AutoNAT v2 (client and server,
//!   `/libp2p/autonat/2/*`). Addresses peers observe (identify) are
//!   candidates; a random connected AutoNAT server dials each one back, and
//!   a candidate that answers becomes a confirmed external address. A node
//!   with a confirmed address (or a UPnP mapping, or a configured external
//!   address) is `public`; one whose candidates all failed is `private`.
//! - **NAT type** ([`NatType`], [`nat_type::Detector`]): from the address
//!   and port several peers observe for the same local port: none,
//!   endpoint-independent mapping (cone), endpoint-dependent mapping
//!   (symmetric). Used: behind a symmetric NAT the node does not take part
//!   in hole punching (the ports its peers would learn are useless), it
//!   relies on relays.
//! - **Relay server** (circuit relay v2): every node may serve; with
//!   `relay_server.mode = "auto"` it advertises the hop protocol only while
//!   it is publicly reachable. Reservations, circuits, circuit duration and
//!   bytes, and per-peer and per-IP request rates are limited
//!   ([`RelayServerConfig`]).
//! - **Relay client** (autorelay): while the node is private it keeps
//!   `relay_client.reservations` reservations, on the configured relays
//!   first, then on connected peers that offer the hop protocol; its
//!   relayed addresses (`…/p2p/<relay>/p2p-circuit`) are listen addresses
//!   and so travel in identify. A refused or closed reservation is retried
//!   after 1 s, 2 s, 4 s ... up to `relay_client.retry_after`; a relay that
//!   never answers is given up after libp2p-relay's 60 s stream timeout.
//!   When the node becomes public, its accepted reservations are dropped
//!   (pending ones once they are accepted: closing a listener while its
//!   request is in flight makes libp2p-relay 0.22 panic).
//! - **Hole punching** (DCUtR, over TCP and QUIC): a relayed connection is
//!   upgraded to a direct one by simultaneous dials, up to 3 attempts; the
//!   relayed connection stays as the fallback. Attempts and outcomes are
//!   counted (`blackhole_nat_hole_punch*`).
//! - **Port mapping** (UPnP IGD through libp2p-upnp): private listen
//!   addresses are mapped on the gateway, whose mapping becomes a confirmed
//!   external address. `upnp = "auto"` runs it only when the node listens
//!   beyond loopback. NAT-PMP and PCP are not supported (no maintained
//!   crate speaks them with libp2p).
//!
//! The node must include the [`RelayTransport`] returned by
//! [`Behaviour::new`] in its transport, and feed identify results to
//! [`Behaviour::on_identify`].
//!
//! Limits: observations kept for the NAT type (`max_observations`, default
//! 64), relay candidates (`relay_client.max_candidates`, 32), hole punches
//! tracked (1024), recent hole punch outcomes ([`RECENT_HOLE_PUNCHES`]),
//! distinct address candidates passed to AutoNAT and DCUtR over the node's
//! life ([`MAX_CANDIDATES`]: libp2p-autonat 0.16 keeps every candidate it
//! hears of, and peers choose what they say they observe). AutoNAT v2 never
//! tests a failed candidate again, so a node whose network changes learns
//! its new reachability from new candidates, not from the old ones.

mod behaviour;
mod config;
mod hole_punch;
mod metrics;
pub mod nat_type;
mod relay_server;

pub use behaviour::{
    Behaviour, Event, HolePunchOutcome, HolePunchStats, MAX_CANDIDATES, RECENT_HOLE_PUNCHES,
    Reachability, RelayServerStats, RelayTransport, Status, Upnp,
};
pub use config::{
    AutoNatConfig, Config, ConfigError, Rate, RelayClientConfig, RelayServerConfig, Switch,
};
pub use hole_punch::HolePunchEvent;
pub use metrics::Metrics;
pub use nat_type::NatType;

/// The relay hop protocol, which a relay offers.
pub const HOP_PROTOCOL: libp2p_swarm::StreamProtocol = libp2p_relay::HOP_PROTOCOL_NAME;
