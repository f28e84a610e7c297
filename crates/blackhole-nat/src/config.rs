//! NAT traversal configuration. Every field has a documented default.

use std::time::Duration;

use libp2p_core::Multiaddr;
use serde::{Deserialize, Serialize};

/// A configuration value that cannot work, with its key under `nat`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("nat.{key}: {reason}")]
pub struct ConfigError {
    /// The key under `nat`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// On, off, or decided by the node from what it observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    /// Decided at run time (see each field for what decides).
    Auto,
    /// Always on.
    On,
    /// Never on.
    Off,
}

/// A rate: `limit` events per `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Events allowed per interval (more than 0).
    pub limit: u32,
    /// The interval.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

/// NAT traversal configuration (`[nat]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Whether any of this runs. Off: no AutoNAT, relay, hole punching or
    /// port mapping; the node is whatever its addresses make it.
    pub enabled: bool,
    /// AutoNAT v2: which of our addresses others can dial.
    pub autonat: AutoNatConfig,
    /// Circuit relay v2, serving side.
    pub relay_server: RelayServerConfig,
    /// Circuit relay v2, client side: reservations on relays while we are
    /// not reachable.
    pub relay_client: RelayClientConfig,
    /// Hole punching (DCUtR): upgrade relayed connections to direct ones.
    /// Skipped on our side when our NAT maps endpoint-dependently
    /// (symmetric NAT), where it cannot succeed.
    pub hole_punching: bool,
    /// UPnP IGD port mapping. `auto`: on when the node listens on a
    /// non-loopback address (a search is a multicast on the local network,
    /// pointless on loopback); `on`; `off`.
    pub upnp: Switch,
    /// How many peers' observations of our address the NAT type detector
    /// keeps (the most recent ones).
    pub max_observations: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            autonat: AutoNatConfig::default(),
            relay_server: RelayServerConfig::default(),
            relay_client: RelayClientConfig::default(),
            hole_punching: true,
            upnp: Switch::Auto,
            max_observations: 64,
        }
    }
}

/// AutoNAT v2 settings (`[nat.autonat]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoNatConfig {
    /// Ask peers to dial our candidate addresses back; confirmed ones
    /// become our external addresses.
    pub client: bool,
    /// Dial back peers that ask us to.
    pub server: bool,
    /// How often untested candidate addresses are sent for testing.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Candidates tested per round (the most often observed first).
    pub max_candidates: usize,
}

impl Default for AutoNatConfig {
    fn default() -> Self {
        Self {
            client: true,
            server: true,
            probe_interval: Duration::from_secs(5),
            max_candidates: 10,
        }
    }
}

/// Relay server limits (`[nat.relay_server]`). libp2p-relay's defaults,
/// except where noted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayServerConfig {
    /// `auto`: serve (advertise the hop protocol) while the node has a
    /// confirmed external address, that is while it is publicly reachable;
    /// `on`: always; `off`: never.
    pub mode: Switch,
    /// Reservations held at once, over all peers.
    pub max_reservations: usize,
    /// Reservations one peer may hold.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before the client must renew it.
    #[serde(with = "humantime_serde")]
    pub reservation_duration: Duration,
    /// Circuits relayed at once.
    pub max_circuits: usize,
    /// Circuits relayed at once for one destination peer.
    pub max_circuits_per_peer: usize,
    /// How long one circuit may last.
    #[serde(with = "humantime_serde")]
    pub max_circuit_duration: Duration,
    /// Bytes one circuit may carry (each way). Enough for a hole punch
    /// and small exchanges; relays are a fallback, not a data path.
    pub max_circuit_bytes: u64,
    /// Reservation requests per peer.
    pub reservation_rate_per_peer: Rate,
    /// Reservation requests per IP address.
    pub reservation_rate_per_ip: Rate,
    /// Circuit requests per source peer.
    pub circuit_rate_per_peer: Rate,
    /// Circuit requests per source IP address.
    pub circuit_rate_per_ip: Rate,
}

impl Default for RelayServerConfig {
    fn default() -> Self {
        Self {
            mode: Switch::Auto,
            max_reservations: 128,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: 16,
            max_circuits_per_peer: 4,
            max_circuit_duration: Duration::from_secs(120),
            max_circuit_bytes: 1 << 17,
            reservation_rate_per_peer: Rate {
                limit: 30,
                interval: Duration::from_secs(120),
            },
            reservation_rate_per_ip: Rate {
                limit: 60,
                interval: Duration::from_secs(60),
            },
            circuit_rate_per_peer: Rate {
                limit: 30,
                interval: Duration::from_secs(120),
            },
            circuit_rate_per_ip: Rate {
                limit: 60,
                interval: Duration::from_secs(60),
            },
        }
    }
}

/// Relay client settings (`[nat.relay_client]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayClientConfig {
    /// `auto`: reserve slots while AutoNAT says we are not reachable;
    /// `on`: always reserve; `off`: never (we can still dial relayed
    /// addresses).
    pub mode: Switch,
    /// Relays to use first (`/ip4/…/tcp/…/p2p/<relay>`). Otherwise any
    /// connected peer that offers the hop protocol is a candidate.
    pub relays: Vec<Multiaddr>,
    /// Reservations to keep.
    pub reservations: usize,
    /// How long to wait before trying a relay again after its
    /// reservation failed or closed.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// How many relay candidates to remember.
    pub max_candidates: usize,
}

impl Default for RelayClientConfig {
    fn default() -> Self {
        Self {
            mode: Switch::Auto,
            relays: Vec::new(),
            reservations: 2,
            retry_after: Duration::from_secs(30),
            max_candidates: 32,
        }
    }
}

impl Config {
    /// Checks values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: &str, reason: &str| {
            Err(ConfigError {
                key: key.to_owned(),
                reason: reason.to_owned(),
            })
        };
        if self.autonat.probe_interval.is_zero() {
            return err("autonat.probe_interval", "must be more than 0");
        }
        if self.autonat.max_candidates == 0 {
            return err("autonat.max_candidates", "must be at least 1");
        }
        let r = &self.relay_server;
        for (key, v) in [
            ("max_reservations", r.max_reservations),
            ("max_reservations_per_peer", r.max_reservations_per_peer),
            ("max_circuits", r.max_circuits),
            ("max_circuits_per_peer", r.max_circuits_per_peer),
        ] {
            if v == 0 {
                return err(
                    &format!("relay_server.{key}"),
                    "must be at least 1 (use relay_server.mode = \"off\" to not serve)",
                );
            }
        }
        if r.reservation_duration.is_zero() || r.max_circuit_duration.is_zero() {
            return err("relay_server", "durations must be more than 0");
        }
        if r.max_circuit_bytes == 0 {
            return err("relay_server.max_circuit_bytes", "must be more than 0");
        }
        for (key, rate) in [
            ("reservation_rate_per_peer", r.reservation_rate_per_peer),
            ("reservation_rate_per_ip", r.reservation_rate_per_ip),
            ("circuit_rate_per_peer", r.circuit_rate_per_peer),
            ("circuit_rate_per_ip", r.circuit_rate_per_ip),
        ] {
            if rate.limit == 0 || rate.interval.is_zero() {
                return err(
                    &format!("relay_server.{key}"),
                    "limit and interval must be more than 0",
                );
            }
        }
        let c = &self.relay_client;
        if c.reservations == 0 && c.mode != Switch::Off {
            return err(
                "relay_client.reservations",
                "must be at least 1 (use relay_client.mode = \"off\" for none)",
            );
        }
        if c.max_candidates < c.reservations {
            return err(
                "relay_client.max_candidates",
                "must be at least relay_client.reservations",
            );
        }
        for relay in &c.relays {
            if !relay
                .iter()
                .any(|p| matches!(p, libp2p_core::multiaddr::Protocol::P2p(_)))
            {
                return err(
                    "relay_client.relays",
                    &format!("{relay} has no /p2p/<peer id>"),
                );
            }
            if relay
                .iter()
                .any(|p| p == libp2p_core::multiaddr::Protocol::P2pCircuit)
            {
                return err("relay_client.relays", &format!("{relay} is itself relayed"));
            }
        }
        if self.max_observations < 2 {
            return err("max_observations", "must be at least 2");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        Config::default().validate().unwrap();
        let mut c = Config::default();
        c.relay_server.max_circuits = 0;
        assert_eq!(c.validate().unwrap_err().key, "relay_server.max_circuits");
        let mut c = Config::default();
        c.relay_client.relays = vec!["/ip4/1.2.3.4/tcp/1".parse().unwrap()];
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("no /p2p/"), "{e}");
        let mut c = Config::default();
        c.relay_server.circuit_rate_per_ip.limit = 0;
        assert_eq!(
            c.validate().unwrap_err().key,
            "relay_server.circuit_rate_per_ip"
        );
    }
}
