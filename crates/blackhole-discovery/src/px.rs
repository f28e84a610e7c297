//! Peer exchange (`/blackhole/px/1.0.0`): a node shares a bounded sample of
//! the peers it knows to be good with a peer that asks.
//!
//! Wire format: the asking side opens a stream and closes its write side;
//! the answering side writes one JSON document, `{"peers": [{"peer_id":
//! "...", "addrs": ["/ip4/..."]}, ...]}`, at most [`MAX_MESSAGE_BYTES`]
//! long, and closes. At most [`MAX_PEERS`] peers with at most [`MAX_ADDRS`]
//! addresses each are accepted; anything larger, or not valid, is an error
//! and nothing of it is used.

use libp2p_core::Multiaddr;
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

/// The protocol name.
pub const PROTOCOL: &str = "/blackhole/px/1.0.0";
/// Peers in one answer.
pub const MAX_PEERS: usize = 16;
/// Addresses per peer in one answer.
pub const MAX_ADDRS: usize = 8;
/// The largest answer, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// A peer and where to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerAddrs {
    /// The peer.
    pub peer_id: PeerId,
    /// Its addresses.
    pub addrs: Vec<Multiaddr>,
}

#[derive(Serialize, Deserialize)]
struct Message {
    peers: Vec<PeerAddrs>,
}

/// Why an answer was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Longer than [`MAX_MESSAGE_BYTES`].
    #[error("peer exchange answer larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    /// Not a valid answer.
    #[error("invalid peer exchange answer: {0}")]
    Invalid(String),
    /// More peers or addresses than allowed.
    #[error("peer exchange answer over the limits ({MAX_PEERS} peers, {MAX_ADDRS} addresses each)")]
    OverLimits,
}

/// Encodes an answer, keeping the first [`MAX_PEERS`] peers and
/// [`MAX_ADDRS`] addresses of each, and dropping peers until it fits.
pub fn encode(peers: &[PeerAddrs]) -> Vec<u8> {
    let mut msg = Message {
        peers: peers
            .iter()
            .take(MAX_PEERS)
            .map(|p| PeerAddrs {
                peer_id: p.peer_id,
                addrs: p.addrs.iter().take(MAX_ADDRS).cloned().collect(),
            })
            .collect(),
    };
    loop {
        let bytes = serde_json::to_vec(&msg).unwrap_or_default();
        if bytes.len() <= MAX_MESSAGE_BYTES || msg.peers.is_empty() {
            return bytes;
        }
        msg.peers.pop();
    }
}

/// Decodes an answer, enforcing every limit.
pub fn decode(bytes: &[u8]) -> Result<Vec<PeerAddrs>, Error> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(Error::TooLarge);
    }
    let msg: Message = serde_json::from_slice(bytes).map_err(|e| Error::Invalid(e.to_string()))?;
    if msg.peers.len() > MAX_PEERS || msg.peers.iter().any(|p| p.addrs.len() > MAX_ADDRS) {
        return Err(Error::OverLimits);
    }
    Ok(msg.peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n_addrs: usize) -> PeerAddrs {
        PeerAddrs {
            peer_id: PeerId::random(),
            addrs: (0..n_addrs)
                .map(|i| format!("/ip4/10.0.0.1/tcp/{}", 1000 + i).parse().unwrap())
                .collect(),
        }
    }

    #[test]
    fn round_trip_within_limits() {
        let peers: Vec<_> = (0..20).map(|_| peer(10)).collect();
        let decoded = decode(&encode(&peers)).unwrap();
        assert_eq!(decoded.len(), MAX_PEERS);
        assert!(decoded.iter().all(|p| p.addrs.len() == MAX_ADDRS));
        assert_eq!(decoded[0].peer_id, peers[0].peer_id);
    }

    #[test]
    fn garbage_oversize_and_over_limit_answers_are_refused() {
        assert!(matches!(decode(b"not json"), Err(Error::Invalid(_))));
        assert!(matches!(
            decode(br#"{"peers":[{"peer_id":"nope","addrs":[]}]}"#),
            Err(Error::Invalid(_))
        ));
        assert_eq!(
            decode(&vec![b' '; MAX_MESSAGE_BYTES + 1]),
            Err(Error::TooLarge)
        );
        let too_many = serde_json::to_vec(&Message {
            peers: (0..MAX_PEERS + 1).map(|_| peer(1)).collect(),
        })
        .unwrap();
        assert_eq!(decode(&too_many), Err(Error::OverLimits));
        let fat = serde_json::to_vec(&Message {
            peers: vec![peer(MAX_ADDRS + 1)],
        })
        .unwrap();
        assert_eq!(decode(&fat), Err(Error::OverLimits));
    }
}
