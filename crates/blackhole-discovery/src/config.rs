//! Discovery configuration.

use std::time::Duration;

use libp2p_core::{Multiaddr, multiaddr::Protocol};
use serde::{Deserialize, Serialize};

/// Where the node finds peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Bootstrap peers, dialed at start and protected from pruning. Each
    /// address ends in `/p2p/<peer>`, or is a `/dnsaddr/<domain>` whose TXT
    /// records (`dnsaddr=<multiaddr>`) name the peers.
    pub bootstrap: Vec<Multiaddr>,
    /// Peers dialed only when neither the peer store nor the bootstrap list
    /// yields a connection.
    pub fallback: Vec<Multiaddr>,
    /// While no peer is connected, the bootstrap list is dialed again this
    /// often.
    #[serde(with = "humantime_serde")]
    pub bootstrap_retry: Duration,
    /// The persistent peer store.
    pub peer_store: crate::peerstore::Config,
    /// The rendezvous protocol, as a point (server) and as a client.
    pub rendezvous: RendezvousConfig,
    /// Peer exchange.
    pub peer_exchange: PeerExchangeConfig,
    /// mDNS on the local network.
    pub mdns: MdnsConfig,
}

/// When mDNS runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MdnsMode {
    /// On when the node listens on a local-network address: an
    /// unspecified address (0.0.0.0, ::) or a private, link-local or
    /// unique-local one. Off for nodes that listen only on loopback (test
    /// networks) or only on public addresses (servers).
    Auto,
    /// Always on.
    On,
    /// Always off.
    Off,
}

/// mDNS: announcing ourselves and finding peers on the local network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MdnsConfig {
    /// When mDNS runs.
    pub mode: MdnsMode,
    /// How often the network is queried.
    #[serde(with = "humantime_serde")]
    pub query_interval: Duration,
}

impl Default for MdnsConfig {
    fn default() -> Self {
        Self {
            mode: MdnsMode::Auto,
            query_interval: Duration::from_secs(300),
        }
    }
}

impl MdnsConfig {
    /// Whether mDNS runs for a node listening on `listen`.
    pub fn enabled_for(&self, listen: &[Multiaddr]) -> bool {
        use std::net::IpAddr;
        let local = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => v4.is_unspecified() || v4.is_private() || v4.is_link_local(),
            IpAddr::V6(v6) => {
                v6.is_unspecified()
                    || (v6.segments()[0] & 0xfe00) == 0xfc00
                    || (v6.segments()[0] & 0xffc0) == 0xfe80
            }
        };
        match self.mode {
            MdnsMode::On => true,
            MdnsMode::Off => false,
            MdnsMode::Auto => listen.iter().any(|a| {
                a.iter().any(|p| match p {
                    Protocol::Ip4(ip) => local(ip.into()),
                    Protocol::Ip6(ip) => local(ip.into()),
                    _ => false,
                })
            }),
        }
    }
}

/// Peer exchange: sharing known good peers with peers that ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerExchangeConfig {
    /// Answer peers that ask (with at most `px::MAX_PEERS` good peers).
    pub enabled: bool,
    /// Ask newly identified peers for theirs while we have fewer than this
    /// many connected peers, and dial some of what they share.
    pub ask_below: usize,
}

impl Default for PeerExchangeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ask_below: 8,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bootstrap: Vec::new(),
            fallback: Vec::new(),
            bootstrap_retry: Duration::from_secs(30),
            peer_store: crate::peerstore::Config::default(),
            rendezvous: RendezvousConfig::default(),
            peer_exchange: PeerExchangeConfig::default(),
            mdns: MdnsConfig::default(),
        }
    }
}

/// Rendezvous: namespaces where peers register and discover each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RendezvousConfig {
    /// Serve as a rendezvous point for other peers.
    pub server: bool,
    /// Registrations one peer may hold at this point.
    pub max_registrations_per_peer: usize,
    /// Registrations one namespace may hold at this point.
    pub max_registrations_per_namespace: usize,
    /// Registrations this point holds in total.
    pub max_registrations_total: usize,
    /// Accepted for older configuration files and ignored: our point's
    /// cookies carry their position, so it keeps none.
    pub max_cookies: usize,
    /// Shortest registration accepted.
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    /// Longest registration accepted.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Rendezvous points this node registers at (each ends in /p2p/<peer>).
    pub points: Vec<Multiaddr>,
    /// Namespaces this node registers in at every point, refreshed at half
    /// their TTL.
    pub namespaces: Vec<String>,
    /// Lifetime of our registrations.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        Self {
            server: false,
            max_registrations_per_peer: 32,
            max_registrations_per_namespace: 1000,
            max_registrations_total: 10_000,
            max_cookies: 1000,
            min_ttl: Duration::from_secs(2 * 3600),
            max_ttl: Duration::from_secs(72 * 3600),
            points: Vec::new(),
            namespaces: Vec::new(),
            ttl: Duration::from_secs(2 * 3600),
        }
    }
}

/// Longest namespace (the rendezvous specification's limit).
pub const MAX_NAMESPACE_LEN: usize = 255;
/// Namespaces a node registers in.
pub const MAX_NAMESPACES: usize = 64;

impl RendezvousConfig {
    /// The limits of our rendezvous point.
    pub fn limits(&self) -> crate::rendezvous::Limits {
        crate::rendezvous::Limits {
            per_peer: self.max_registrations_per_peer,
            per_namespace: self.max_registrations_per_namespace,
            total: self.max_registrations_total,
            min_ttl: self.min_ttl.as_secs(),
            max_ttl: self.max_ttl.as_secs(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason: &str| {
            Err(ConfigError {
                key,
                reason: reason.into(),
            })
        };
        if self.min_ttl.as_secs() == 0 || self.min_ttl > self.max_ttl {
            return err(
                "rendezvous.min_ttl",
                "must be at least 1s and at most rendezvous.max_ttl",
            );
        }
        if self.ttl.as_secs() == 0 {
            return err("rendezvous.ttl", "must be at least 1s");
        }
        if self.max_registrations_per_peer == 0
            || self.max_registrations_per_namespace == 0
            || self.max_registrations_total == 0
            || self.max_cookies == 0
        {
            return err(
                "rendezvous.max_registrations_per_peer",
                "limits must be at least 1",
            );
        }
        if self.namespaces.len() > MAX_NAMESPACES {
            return err("rendezvous.namespaces", "at most 64 namespaces");
        }
        if self
            .namespaces
            .iter()
            .any(|n| n.is_empty() || n.len() > MAX_NAMESPACE_LEN)
        {
            return err(
                "rendezvous.namespaces",
                "each namespace must be 1 to 255 bytes",
            );
        }
        check("rendezvous.points", &self.points)
    }
}

/// A configuration value that cannot work, with the key that holds it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The key, relative to the discovery section.
    pub key: &'static str,
    /// Why the value is refused.
    pub reason: String,
}

fn check(key: &'static str, addrs: &[Multiaddr]) -> Result<(), ConfigError> {
    for a in addrs {
        let dnsaddr = matches!(a.iter().next(), Some(Protocol::Dnsaddr(_)));
        let has_peer = matches!(a.iter().last(), Some(Protocol::P2p(_)));
        if !dnsaddr && !has_peer {
            return Err(ConfigError {
                key,
                reason: format!("{a} must end in /p2p/<peer id> (or be a /dnsaddr address)"),
            });
        }
    }
    Ok(())
}

impl Config {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check("bootstrap", &self.bootstrap)?;
        check("fallback", &self.fallback)?;
        if self.mdns.query_interval.is_zero() {
            return Err(ConfigError {
                key: "mdns.query_interval",
                reason: "must be greater than zero".into(),
            });
        }
        if self.bootstrap_retry.is_zero() {
            return Err(ConfigError {
                key: "bootstrap_retry",
                reason: "must be greater than zero".into(),
            });
        }
        self.rendezvous.validate()?;
        self.peer_store.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mdns_auto_is_on_only_for_local_networks() {
        let m = MdnsConfig::default();
        let on = |addrs: &[&str]| {
            m.enabled_for(&addrs.iter().map(|a| a.parse().unwrap()).collect::<Vec<_>>())
        };
        assert!(on(&["/ip4/0.0.0.0/tcp/4001"]));
        assert!(on(&["/ip4/192.168.1.5/tcp/4001"]));
        assert!(on(&["/ip6/::/tcp/4001"]));
        assert!(!on(&["/ip4/127.0.0.1/tcp/0"]));
        assert!(!on(&["/ip4/8.8.8.8/tcp/4001"]));
        assert!(!on(&["/memory/1"]));
        assert!(
            MdnsConfig {
                mode: MdnsMode::On,
                ..m.clone()
            }
            .enabled_for(&[])
        );
    }

    #[test]
    fn bootstrap_addresses_need_a_peer_id_or_dnsaddr() {
        let mut c = Config {
            bootstrap: vec!["/ip4/1.2.3.4/tcp/1".parse().unwrap()],
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "bootstrap");
        c.bootstrap = vec!["/dnsaddr/bootstrap.example.com".parse().unwrap()];
        c.validate().unwrap();
        c.fallback = vec![
            "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWGQmdpzHXCqLno4mMxWXKNFQHASBeF99gTm2JR8Vu5Bdc"
                .parse()
                .unwrap(),
        ];
        c.validate().unwrap();
    }
}
