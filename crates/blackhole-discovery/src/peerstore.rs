//! The persistent peer store.
//!
//! An in-memory map serves every read; changes are marked dirty and
//! written to the `peers` table of the node's redb database by
//! [`PeerStore::flush`], which the node calls periodically
//! (`peer_store.flush_interval`) and at shutdown. A crash loses at most the
//! changes since the last flush, never the file.
//!
//! Bounded: at most `max_peers` peers (when full, the peer with the worst
//! record makes room), `max_addrs_per_peer` addresses and
//! `max_protocols_per_peer` protocols each, agent strings cut at
//! `MAX_AGENT_LEN`. Time comes from the caller (unix milliseconds), so the
//! store has no clock of its own.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use libp2p_core::Multiaddr;
use libp2p_identity::PeerId;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const PEERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("peers");

/// The longest agent string kept.
pub const MAX_AGENT_LEN: usize = 128;

/// Peer store settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Whether peers are remembered on disk.
    pub enabled: bool,
    /// Peers remembered.
    pub max_peers: usize,
    /// Addresses remembered per peer.
    pub max_addrs_per_peer: usize,
    /// Protocols remembered per peer.
    pub max_protocols_per_peer: usize,
    /// Best known peers dialed at start, before the bootstrap list.
    pub reconnect_on_start: usize,
    /// How often changes are written to disk.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            max_peers: 10_000,
            max_addrs_per_peer: 8,
            max_protocols_per_peer: 32,
            reconnect_on_start: 8,
            flush_interval: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        let err = |key, reason: &str| {
            Err(crate::ConfigError {
                key,
                reason: reason.into(),
            })
        };
        if self.max_peers == 0 {
            return err("peer_store.max_peers", "must be at least 1");
        }
        if self.max_addrs_per_peer == 0 {
            return err("peer_store.max_addrs_per_peer", "must be at least 1");
        }
        if self.flush_interval.is_zero() {
            return err("peer_store.flush_interval", "must be at least 1s");
        }
        Ok(())
    }
}

/// What we know of one peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Addresses to dial it at, most recent first.
    pub addrs: Vec<Multiaddr>,
    /// Protocols it announced.
    pub protocols: Vec<String>,
    /// Its agent version.
    pub agent: Option<String>,
    /// When we last had a connection to it (unix milliseconds).
    pub last_seen_ms: u64,
    /// Connections established.
    pub successes: u32,
    /// Dials that failed.
    pub failures: u32,
    /// Smoothed round-trip time, in milliseconds.
    pub rtt_ms: Option<f64>,
}

impl PeerRecord {
    /// Higher is better: reliable, then recent.
    fn score(&self) -> (i64, u64) {
        (
            i64::from(self.successes) - 2 * i64::from(self.failures),
            self.last_seen_ms,
        )
    }
}

/// Errors of the peer store's disk side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database failed.
    #[error("peer store database: {0}")]
    Db(String),
}

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Db(e.to_string())
}

/// The peer store. See the module documentation.
#[derive(Debug)]
pub struct PeerStore {
    db: Option<Arc<redb::Database>>,
    peers: HashMap<PeerId, PeerRecord>,
    dirty: HashSet<PeerId>,
    removed: HashSet<PeerId>,
    config: Config,
}

impl PeerStore {
    /// A store that keeps nothing on disk.
    pub fn in_memory(config: Config) -> Self {
        Self {
            db: None,
            peers: HashMap::new(),
            dirty: HashSet::new(),
            removed: HashSet::new(),
            config,
        }
    }

    /// Opens the store in `db`, loading every peer. Undecodable entries are
    /// skipped (and logged); their number is returned.
    pub fn open(db: Arc<redb::Database>, config: Config) -> Result<(Self, usize), Error> {
        {
            let tx = db.begin_write().map_err(db_err)?;
            tx.open_table(PEERS).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
        let mut peers = HashMap::new();
        let mut skipped = 0;
        let tx = db.begin_read().map_err(db_err)?;
        let table = tx.open_table(PEERS).map_err(db_err)?;
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            match (
                PeerId::from_bytes(k.value()),
                serde_json::from_slice::<PeerRecord>(v.value()),
            ) {
                (Ok(peer), Ok(record)) if peers.len() < config.max_peers => {
                    peers.insert(peer, record);
                }
                (Ok(_), Ok(_)) => skipped += 1,
                (peer, record) => {
                    tracing::warn!(peer = ?peer.ok(), error = ?record.err(), "skipping an unreadable peer store entry");
                    skipped += 1;
                }
            }
        }
        drop(table);
        drop(tx);
        Ok((
            Self {
                db: Some(db),
                peers,
                dirty: HashSet::new(),
                removed: HashSet::new(),
                config,
            },
            skipped,
        ))
    }

    /// Peers remembered.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is remembered.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// What we know of `peer`.
    pub fn get(&self, peer: &PeerId) -> Option<&PeerRecord> {
        self.peers.get(peer)
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn entry(&mut self, peer: PeerId) -> &mut PeerRecord {
        if !self.peers.contains_key(&peer)
            && self.peers.len() >= self.config.max_peers
            && let Some(worst) = self
                .peers
                .iter()
                .min_by_key(|(_, r)| r.score())
                .map(|(p, _)| *p)
        {
            self.peers.remove(&worst);
            self.dirty.remove(&worst);
            self.removed.insert(worst);
        }
        self.dirty.insert(peer);
        self.removed.remove(&peer);
        self.peers.entry(peer).or_default()
    }

    fn add_addr(&mut self, peer: PeerId, addr: Multiaddr) {
        let max = self.config.max_addrs_per_peer;
        let r = self.entry(peer);
        r.addrs.retain(|a| a != &addr);
        r.addrs.insert(0, addr);
        r.addrs.truncate(max);
    }

    /// A connection to `peer` was established (`addr`: the address we
    /// dialed, if we dialed it).
    pub fn connected(&mut self, peer: PeerId, addr: Option<Multiaddr>, now_ms: u64) {
        if let Some(a) = addr {
            self.add_addr(peer, a);
        }
        let r = self.entry(peer);
        r.successes = r.successes.saturating_add(1);
        r.last_seen_ms = now_ms;
    }

    /// A dial to a known peer failed. Unknown peers are not added.
    pub fn dial_failed(&mut self, peer: PeerId) {
        if self.peers.contains_key(&peer) {
            let r = self.entry(peer);
            r.failures = r.failures.saturating_add(1);
        }
    }

    /// What identify told us about a connected peer.
    pub fn identified(
        &mut self,
        peer: PeerId,
        agent: &str,
        protocols: &[String],
        listen_addrs: &[Multiaddr],
        now_ms: u64,
    ) {
        let (max_p, max_a) = (
            self.config.max_protocols_per_peer,
            self.config.max_addrs_per_peer,
        );
        for a in listen_addrs.iter().take(max_a).rev() {
            self.add_addr(peer, a.clone());
        }
        let r = self.entry(peer);
        r.agent = Some(agent.chars().take(MAX_AGENT_LEN).collect());
        r.protocols = protocols.iter().take(max_p).cloned().collect();
        r.last_seen_ms = now_ms;
    }

    /// Addresses of `peer` learned from another peer (peer exchange): added
    /// without counting as a success, behind the addresses we know ourselves.
    pub fn learned(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        let max = self.config.max_addrs_per_peer;
        let r = self.entry(peer);
        for a in addrs {
            if r.addrs.len() >= max {
                break;
            }
            if !r.addrs.contains(a) {
                r.addrs.push(a.clone());
            }
        }
    }

    /// Peers we have connected to at least once and that fail less than
    /// they succeed, best first: what we share with peers that ask.
    pub fn good(&self, n: usize, exclude: &HashSet<PeerId>) -> Vec<(PeerId, Vec<Multiaddr>)> {
        self.ranked(n, exclude, |r| r.successes > r.failures)
    }

    /// A measured round trip to `peer` (smoothed, 1/8 weight like TCP).
    pub fn rtt(&mut self, peer: PeerId, ms: f64) {
        if self.peers.contains_key(&peer) && ms.is_finite() {
            let r = self.entry(peer);
            r.rtt_ms = Some(r.rtt_ms.map_or(ms, |old| old * 0.875 + ms * 0.125));
        }
    }

    /// Forgets `peer`.
    pub fn remove(&mut self, peer: &PeerId) {
        if self.peers.remove(peer).is_some() {
            self.dirty.remove(peer);
            self.removed.insert(*peer);
        }
    }

    /// Up to `n` peers with addresses, best first, not in `exclude`.
    pub fn best(&self, n: usize, exclude: &HashSet<PeerId>) -> Vec<(PeerId, Vec<Multiaddr>)> {
        self.ranked(n, exclude, |_| true)
    }

    fn ranked(
        &self,
        n: usize,
        exclude: &HashSet<PeerId>,
        keep: impl Fn(&PeerRecord) -> bool,
    ) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let mut v: Vec<(&PeerId, &PeerRecord)> = self
            .peers
            .iter()
            .filter(|(p, r)| !r.addrs.is_empty() && !exclude.contains(p) && keep(r))
            .collect();
        v.sort_by_key(|(p, r)| (std::cmp::Reverse(r.score()), p.to_bytes()));
        v.into_iter()
            .take(n)
            .map(|(p, r)| (*p, r.addrs.clone()))
            .collect()
    }

    /// Writes the changes since the last flush; returns how many entries.
    pub fn flush(&mut self) -> Result<usize, Error> {
        let Some(db) = &self.db else {
            self.dirty.clear();
            self.removed.clear();
            return Ok(0);
        };
        if self.dirty.is_empty() && self.removed.is_empty() {
            return Ok(0);
        }
        let tx = db.begin_write().map_err(db_err)?;
        let n = self.dirty.len() + self.removed.len();
        {
            let mut table = tx.open_table(PEERS).map_err(db_err)?;
            for peer in &self.removed {
                table.remove(peer.to_bytes().as_slice()).map_err(db_err)?;
            }
            for peer in &self.dirty {
                if let Some(r) = self.peers.get(peer) {
                    let value = serde_json::to_vec(r).map_err(db_err)?;
                    table
                        .insert(peer.to_bytes().as_slice(), value.as_slice())
                        .map_err(db_err)?;
                }
            }
        }
        tx.commit().map_err(db_err)?;
        self.dirty.clear();
        self.removed.clear();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u16) -> Multiaddr {
        format!("/ip4/10.0.0.1/tcp/{i}").parse().unwrap()
    }

    fn db(dir: &tempfile::TempDir) -> Arc<redb::Database> {
        Arc::new(redb::Database::create(dir.path().join("node.redb")).unwrap())
    }

    #[test]
    fn survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (PeerId::random(), PeerId::random());
        {
            let (mut s, skipped) = PeerStore::open(db(&dir), Config::default()).unwrap();
            assert_eq!(skipped, 0);
            s.connected(a, Some(addr(1)), 10);
            s.identified(a, "agent/1", &["/ipfs/id/1.0.0".into()], &[addr(2)], 11);
            s.rtt(a, 4.0);
            s.connected(b, Some(addr(3)), 5);
            s.dial_failed(b);
            assert_eq!(s.flush().unwrap(), 2);
            assert_eq!(s.flush().unwrap(), 0);
        }
        let (s, _) = PeerStore::open(db(&dir), Config::default()).unwrap();
        assert_eq!(s.len(), 2);
        let ra = s.get(&a).unwrap();
        assert_eq!(ra.addrs, vec![addr(2), addr(1)]);
        assert_eq!(ra.agent.as_deref(), Some("agent/1"));
        assert_eq!((ra.successes, ra.failures, ra.rtt_ms), (1, 0, Some(4.0)));
        // Reliable first.
        let best = s.best(2, &HashSet::new());
        assert_eq!(best[0].0, a);
        assert_eq!(best[1].0, b);
        assert_eq!(s.best(5, &HashSet::from([a])).len(), 1);
    }

    #[test]
    fn bounded_everywhere() {
        let config = Config {
            max_peers: 3,
            max_addrs_per_peer: 2,
            max_protocols_per_peer: 1,
            ..Config::default()
        };
        let mut s = PeerStore::in_memory(config);
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            s.connected(*p, Some(addr(i as u16)), i as u64);
        }
        assert_eq!(s.len(), 3);
        // The oldest (worst) made room.
        assert!(s.get(&peers[0]).is_none() && s.get(&peers[4]).is_some());
        let p = peers[4];
        s.identified(
            p,
            &"x".repeat(1000),
            &["a".into(), "b".into()],
            &[addr(10), addr(11), addr(12)],
            9,
        );
        let r = s.get(&p).unwrap();
        assert_eq!(r.addrs.len(), 2);
        assert_eq!(r.protocols.len(), 1);
        assert_eq!(r.agent.as_ref().unwrap().len(), MAX_AGENT_LEN);
        // Failures of unknown peers add nothing.
        s.dial_failed(PeerId::random());
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn garbage_entries_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let a = PeerId::random();
        {
            let (mut s, _) = PeerStore::open(db(&dir), Config::default()).unwrap();
            s.connected(a, Some(addr(1)), 1);
            s.flush().unwrap();
        }
        {
            let db = db(&dir);
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(PEERS).unwrap();
                t.insert(b"not a peer id".as_slice(), b"{}".as_slice())
                    .unwrap();
                t.insert(
                    PeerId::random().to_bytes().as_slice(),
                    b"not json".as_slice(),
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let (s, skipped) = PeerStore::open(db(&dir), Config::default()).unwrap();
        assert_eq!(skipped, 2);
        assert!(s.get(&a).is_some());
    }
}
