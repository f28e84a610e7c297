//! Connection pruning decisions, as a plain function (no I/O, no clock).
//!
//! Above the high watermark, close connections to unprotected peers until
//! the low watermark is reached. Protected peers (bootstrap peers, peers
//! the user dialed, peers the application marked), peers in their grace
//! period and busy peers (a call or stream in progress) are never chosen.
//! Peers in a pubsub mesh go only when no other peer can. Otherwise peers
//! outside the routing table go first; then peers from the most crowded
//! bucket, so that the table keeps peers at every distance; within a
//! bucket the most recent connections go first, since long-lived peers
//! are the most likely to stay (Kademlia's own preference).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use libp2p_identity::PeerId;

/// A connected peer, as the pruner sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The peer.
    pub peer: PeerId,
    /// Never prune.
    pub protected: bool,
    /// Its routing-table bucket, if it is in the table.
    pub bucket: Option<u32>,
    /// When its oldest open connection was established.
    pub connected_since: Instant,
    /// A call or stream to or from it is in progress: not now.
    pub busy: bool,
    /// It is in a pubsub mesh: last.
    pub in_mesh: bool,
}

/// The peers to disconnect, given the connected peers at `now`.
pub fn plan(
    peers: &[Candidate],
    low: usize,
    high: usize,
    grace: Duration,
    now: Instant,
) -> Vec<PeerId> {
    if peers.len() <= high {
        return Vec::new();
    }
    let mut excess = peers.len().saturating_sub(low);
    let eligible = |mesh: bool| -> Vec<&Candidate> {
        peers
            .iter()
            .filter(|c| {
                !c.protected
                    && !c.busy
                    && c.in_mesh == mesh
                    && now.saturating_duration_since(c.connected_since) >= grace
            })
            .collect()
    };
    // Counting every connected peer in a bucket, protected or not.
    let mut population: HashMap<u32, usize> = HashMap::new();
    for c in peers {
        if let Some(b) = c.bucket {
            *population.entry(b).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for tier in [eligible(false), eligible(true)] {
        pick(tier, &mut population, &mut excess, &mut out);
    }
    out
}

/// Moves up to `excess` peers of `eligible` to `out`, in pruning order.
fn pick(
    mut eligible: Vec<&Candidate>,
    population: &mut HashMap<u32, usize>,
    excess: &mut usize,
    out: &mut Vec<PeerId>,
) {
    // Outside the table first, newest first.
    eligible.sort_by_key(|c| std::cmp::Reverse(c.connected_since));
    eligible.retain(|c| {
        if *excess > 0 && c.bucket.is_none() {
            out.push(c.peer);
            *excess -= 1;
            false
        } else {
            c.bucket.is_some()
        }
    });
    // Then from the most crowded bucket, newest first.
    while *excess > 0 {
        let Some(bucket) = eligible
            .iter()
            .filter_map(|c| c.bucket)
            .max_by_key(|b| (population.get(b).copied().unwrap_or(0), *b))
        else {
            break;
        };
        let Some(i) = eligible.iter().position(|c| c.bucket == Some(bucket)) else {
            break;
        };
        out.push(eligible.remove(i).peer);
        if let Some(p) = population.get_mut(&bucket) {
            *p -= 1;
        }
        *excess -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(protected: bool, bucket: Option<u32>, age_s: u64, now: Instant) -> Candidate {
        Candidate {
            peer: PeerId::random(),
            protected,
            bucket,
            connected_since: now - Duration::from_secs(age_s),
            busy: false,
            in_mesh: false,
        }
    }

    #[test]
    fn nothing_below_the_high_watermark() {
        let now = Instant::now() + Duration::from_secs(1000);
        let peers: Vec<_> = (0..10).map(|_| cand(false, Some(1), 100, now)).collect();
        assert!(plan(&peers, 5, 10, Duration::from_secs(30), now).is_empty());
    }

    #[test]
    fn prunes_to_low_sparing_protected_and_young_and_spreading_buckets() {
        let now = Instant::now() + Duration::from_secs(1000);
        let mut peers = Vec::new();
        peers.push(cand(true, Some(250), 100, now)); // protected
        peers.push(cand(false, Some(250), 5, now)); // in grace
        peers.push(cand(false, None, 100, now)); // not in the table: first to go
        for age in [100, 200, 300, 400, 500, 600] {
            peers.push(cand(false, Some(255), age, now)); // a crowded bucket
        }
        peers.push(cand(false, Some(240), 100, now)); // alone in its bucket
        let out = plan(&peers, 6, 8, Duration::from_secs(30), now);
        assert_eq!(out.len(), peers.len() - 6);
        assert!(!out.contains(&peers[0].peer), "protected");
        assert!(!out.contains(&peers[1].peer), "grace period");
        assert_eq!(out[0], peers[2].peer, "outside the table first");
        assert!(
            !out.contains(&peers[9].peer),
            "the only peer of a bucket stays"
        );
        // From the crowded bucket, the newest went.
        assert!(out.contains(&peers[3].peer) && out.contains(&peers[4].peer));
        assert!(!out.contains(&peers[8].peer));
    }

    #[test]
    fn busy_peers_stay_and_mesh_peers_go_last() {
        let now = Instant::now() + Duration::from_secs(1000);
        let mut peers: Vec<_> = (0..10).map(|_| cand(false, None, 100, now)).collect();
        for p in &mut peers[0..4] {
            p.busy = true;
        }
        for p in &mut peers[4..7] {
            p.in_mesh = true;
        }
        // 10 connected, 4 must go: the 3 idle non-mesh peers, then one
        // mesh peer; no busy one.
        let out = plan(&peers, 6, 8, Duration::from_secs(30), now);
        assert_eq!(out.len(), 4);
        assert!(
            out[..3]
                .iter()
                .all(|p| peers[7..].iter().any(|c| c.peer == *p))
        );
        assert!(peers[4..7].iter().any(|c| c.peer == out[3]));
        assert!(peers[..4].iter().all(|c| !out.contains(&c.peer)), "busy");
    }

    #[test]
    fn cannot_go_below_what_is_protected() {
        let now = Instant::now() + Duration::from_secs(1000);
        let peers: Vec<_> = (0..10).map(|_| cand(true, Some(1), 100, now)).collect();
        assert!(plan(&peers, 2, 5, Duration::from_secs(30), now).is_empty());
    }
}
