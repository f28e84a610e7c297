//! The node's side of the overlay: DHT commands from the handle, and the
//! replies the event loop sends when their queries finish.

use std::collections::HashMap;

use blackhole_overlay::{Bucket, Event as OverlayEvent, QueryId};
use libp2p_core::Multiaddr;
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::node::Error;

/// DHT queries in flight through the handle at once; more are refused.
pub const MAX_PENDING_QUERIES: usize = 512;

/// A DHT operation.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    Put { key: Vec<u8>, value: Vec<u8> },
    Get { key: Vec<u8> },
    Remove { key: Vec<u8> },
    Provide { key: Vec<u8> },
    StopProviding { key: Vec<u8> },
    Providers { key: Vec<u8> },
    FindPeer { peer: PeerId },
    Closest { key: Vec<u8> },
    Table,
    Bootstrap,
    Stats,
}

/// A peer and its addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerAddrs {
    /// The peer.
    pub peer_id: PeerId,
    /// Its addresses.
    pub addrs: Vec<Multiaddr>,
}

/// The store's counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Records stored.
    pub records: usize,
    /// Keys with provider records.
    pub provider_keys: usize,
    /// Peers in the routing table.
    pub routing_table_peers: usize,
    /// `server` or `client`.
    pub mode: String,
}

/// The outcome of a DHT operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reply {
    /// Stored locally and at `stored_at` peers.
    Stored { stored_at: u32 },
    /// The record.
    Found {
        #[serde(with = "hex_bytes")]
        value: Vec<u8>,
        publisher: Option<PeerId>,
        from: Option<PeerId>,
        requests: u32,
        duration_ms: f64,
    },
    /// Removed from the local store.
    Removed,
    /// Announced as provider at `stored_at` peers.
    Providing { stored_at: u32 },
    /// No longer announced.
    StoppedProviding,
    /// Providers of the key.
    Providers {
        providers: Vec<PeerId>,
        requests: u32,
        duration_ms: f64,
    },
    /// A peer lookup: `found` and its addresses if it was among the results.
    Peer {
        found: bool,
        peer: Option<PeerAddrs>,
        requests: u32,
        duration_ms: f64,
    },
    /// The closest peers to the key.
    Closest {
        peers: Vec<PeerAddrs>,
        requests: u32,
        duration_ms: f64,
    },
    /// The routing table.
    Table { buckets: Vec<Bucket> },
    /// A routing-table refresh finished.
    Bootstrapped,
    /// Store and table counters.
    Stats(StoreStats),
}

/// Values travel as hex in JSON (they are arbitrary bytes).
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        super::decode_hex(&s).ok_or_else(|| D::Error::custom("invalid hex"))
    }
}

/// Decodes lowercase or uppercase hex.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What a query's reply waits for.
pub(crate) enum Pending {
    Reply(oneshot::Sender<Result<Reply, Error>>),
    FindPeer(PeerId, oneshot::Sender<Result<Reply, Error>>),
}

/// Queries in flight, by id.
#[derive(Default)]
pub(crate) struct Queries {
    pending: HashMap<QueryId, Pending>,
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Queries {
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn insert(&mut self, id: QueryId, p: Pending) {
        self.pending.insert(id, p);
    }

    /// Answers the query an overlay event finishes, if any.
    pub(crate) fn on_event(&mut self, event: &OverlayEvent) {
        let (id, reply) = match event {
            OverlayEvent::RecordStored { id, stored_at, .. } => (
                id,
                Ok(Reply::Stored {
                    stored_at: *stored_at,
                }),
            ),
            OverlayEvent::RecordFound {
                id,
                record,
                from,
                requests,
                duration,
            } => (
                id,
                Ok(Reply::Found {
                    value: record.value.clone(),
                    publisher: record.publisher,
                    from: *from,
                    requests: *requests,
                    duration_ms: ms(*duration),
                }),
            ),
            OverlayEvent::Providing { id, stored_at, .. } => (
                id,
                Ok(Reply::Providing {
                    stored_at: *stored_at,
                }),
            ),
            OverlayEvent::ProvidersFound {
                id,
                providers,
                requests,
                duration,
                ..
            } => (
                id,
                Ok(Reply::Providers {
                    providers: providers.clone(),
                    requests: *requests,
                    duration_ms: ms(*duration),
                }),
            ),
            OverlayEvent::ClosestPeers {
                id,
                peers,
                requests,
                duration,
                ..
            } => {
                let peers: Vec<PeerAddrs> = peers
                    .iter()
                    .map(|p| PeerAddrs {
                        peer_id: p.peer_id,
                        addrs: p.addrs.clone(),
                    })
                    .collect();
                if let Some(Pending::FindPeer(target, _)) = self.pending.get(id) {
                    let peer = peers.iter().find(|p| p.peer_id == *target).cloned();
                    let reply = Reply::Peer {
                        found: peer.is_some(),
                        peer,
                        requests: *requests,
                        duration_ms: ms(*duration),
                    };
                    (id, Ok(reply))
                } else {
                    (
                        id,
                        Ok(Reply::Closest {
                            peers,
                            requests: *requests,
                            duration_ms: ms(*duration),
                        }),
                    )
                }
            }
            OverlayEvent::Bootstrapped { id } => (id, Ok(Reply::Bootstrapped)),
            OverlayEvent::QueryFailed {
                id,
                kind,
                error,
                not_found,
            } => {
                let e = if *not_found {
                    Error::NotFound(format!("no record for this key: {error}"))
                } else {
                    Error::Dht(format!("{kind}: {error}"))
                };
                (id, Err(e))
            }
            _ => return,
        };
        match self.pending.remove(id) {
            Some(Pending::Reply(tx) | Pending::FindPeer(_, tx)) => {
                let _ = tx.send(reply);
            }
            None => {}
        }
    }

    /// Fails every query (the node stops).
    pub(crate) fn fail_all(&mut self) {
        for (_, p) in self.pending.drain() {
            let (Pending::Reply(tx) | Pending::FindPeer(_, tx)) = p;
            let _ = tx.send(Err(Error::Stopped));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        assert_eq!(decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("zz"), None);
        let r = Reply::Found {
            value: vec![1, 2],
            publisher: None,
            from: None,
            requests: 1,
            duration_ms: 0.0,
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["value"], "0102");
        assert_eq!(serde_json::from_value::<Reply>(json).unwrap(), r);
    }
}
