//! Discovery configuration.

use libp2p_core::{Multiaddr, multiaddr::Protocol};
use serde::{Deserialize, Serialize};

/// Where the node finds peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[derive(Default)]
pub struct Config {
    /// Bootstrap peers, dialed at start and protected from pruning. Each
    /// address ends in `/p2p/<peer>`, or is a `/dnsaddr/<domain>` whose TXT
    /// records (`dnsaddr=<multiaddr>`) name the peers.
    pub bootstrap: Vec<Multiaddr>,
    /// Peers dialed only when neither the peer store nor the bootstrap list
    /// yields a connection.
    pub fallback: Vec<Multiaddr>,
    /// The persistent peer store.
    pub peer_store: crate::peerstore::Config,
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
        self.peer_store.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
