//! What the network announces: which peers subscribe to and publish on
//! which topics, and which wildcard patterns exist. Plain data, no I/O:
//! time is passed in.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use libp2p_identity::PeerId;

use crate::{
    topic::{Matcher, Pattern, Topic},
    wire::{Announcement, SnapshotEntry},
};

/// Limits of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sources remembered; announcements from new sources beyond this are
    /// refused until others expire.
    pub max_sources: usize,
    /// Distinct topics remembered; topics beyond this are dropped from
    /// the announcement that brings them.
    pub max_topics: usize,
    /// Distinct patterns remembered (likewise).
    pub max_patterns: usize,
    /// How long an announcement counts.
    pub ttl: Duration,
    /// Announcements from one source closer together than this are
    /// refused (not forwarded).
    pub min_interval: Duration,
}

/// Why an announcement was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// We have the same or a newer one from this source.
    #[error("stale announcement (seq {seq}, have {have})")]
    Stale { seq: u64, have: u64 },
    /// The source announced too recently.
    #[error("announced again after {after:?}, minimum {min:?}")]
    TooSoon { after: Duration, min: Duration },
    /// The registry is full of other sources.
    #[error("registry full ({max} sources)")]
    Full { max: usize },
    /// Hearsay about a source we already know of.
    #[error("source already known")]
    Known,
    /// Hearsay older than the TTL.
    #[error("older than the TTL")]
    Expired,
}

#[derive(Debug)]
struct Source {
    seq: u64,
    received: Instant,
    subscribed: Vec<Topic>,
    patterns: Vec<Pattern>,
    published: Vec<Topic>,
    addrs: Vec<String>,
    /// Heard from a neighbour's snapshot, not from the source itself.
    hearsay: bool,
}

/// Who is interested in a topic.
#[derive(Debug, Default, Clone)]
struct Interest {
    subscribers: HashSet<PeerId>,
    publishers: HashSet<PeerId>,
}

/// One topic in a listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicInfo {
    /// The topic.
    pub topic: String,
    /// Peers that announced a subscription.
    pub subscribers: usize,
    /// Peers that announced publishing recently.
    pub publishers: usize,
}

/// The network's announced topics.
#[derive(Debug)]
pub struct Registry {
    limits: Limits,
    sources: HashMap<PeerId, Source>,
    topics: BTreeMap<Topic, Interest>,
    patterns: HashMap<Pattern, HashSet<PeerId>>,
    matcher: Matcher<Pattern>,
}

impl Registry {
    /// An empty registry.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            sources: HashMap::new(),
            topics: BTreeMap::new(),
            patterns: HashMap::new(),
            matcher: Matcher::new(),
        }
    }

    /// Applies an announcement from `source` (authenticated by the
    /// message signature). Returns how many items were dropped for lack of
    /// room.
    pub fn apply(
        &mut self,
        source: PeerId,
        ann: Announcement,
        now: Instant,
    ) -> Result<usize, Refused> {
        if let Some(old) = self.sources.get(&source).filter(|o| !o.hearsay) {
            if ann.seq <= old.seq {
                return Err(Refused::Stale {
                    seq: ann.seq,
                    have: old.seq,
                });
            }
            let after = now.saturating_duration_since(old.received);
            if after < self.limits.min_interval {
                return Err(Refused::TooSoon {
                    after,
                    min: self.limits.min_interval,
                });
            }
        } else if !self.sources.contains_key(&source)
            && self.sources.len() >= self.limits.max_sources
        {
            self.expire(now);
            if self.sources.len() >= self.limits.max_sources {
                // The source's own word goes before hearsay: the oldest
                // hearsay entry makes room.
                let oldest_hearsay = self
                    .sources
                    .iter()
                    .filter(|(_, s)| s.hearsay)
                    .min_by_key(|(_, s)| s.received)
                    .map(|(p, _)| *p);
                match oldest_hearsay {
                    Some(p) => self.forget(&p),
                    None => {
                        return Err(Refused::Full {
                            max: self.limits.max_sources,
                        });
                    }
                }
            }
        }
        self.insert(source, ann, now, false)
    }

    /// Applies `source`'s announcement as a neighbour reported it, heard
    /// `age` ago. Hearsay never replaces what we know of a source, never
    /// makes room for itself, and counts from when the neighbour heard it
    /// (so passing it on does not prolong it); the source's own next
    /// announcement replaces it. Returns how many items were dropped.
    pub fn apply_hearsay(
        &mut self,
        source: PeerId,
        ann: Announcement,
        age: Duration,
        now: Instant,
    ) -> Result<usize, Refused> {
        if self.sources.contains_key(&source) {
            return Err(Refused::Known);
        }
        let received = match now.checked_sub(age) {
            Some(at) if age <= self.limits.ttl => at,
            _ => return Err(Refused::Expired),
        };
        if self.sources.len() >= self.limits.max_sources {
            return Err(Refused::Full {
                max: self.limits.max_sources,
            });
        }
        self.insert(source, ann, received, true)
    }

    /// What we know, freshest first, at most `max` entries.
    pub fn snapshot(&self, now: Instant, max: usize) -> Vec<SnapshotEntry> {
        let mut out: Vec<SnapshotEntry> = self
            .sources
            .iter()
            .map(|(p, s)| SnapshotEntry {
                source: *p,
                age_ms: now.saturating_duration_since(s.received).as_millis() as u64,
                announcement: Announcement {
                    seq: s.seq,
                    subscribed: s.subscribed.clone(),
                    patterns: s.patterns.clone(),
                    published: s.published.clone(),
                    addrs: s.addrs.clone(),
                },
            })
            .collect();
        out.sort_by_key(|e| e.age_ms);
        out.truncate(max);
        out
    }

    fn insert(
        &mut self,
        source: PeerId,
        mut ann: Announcement,
        received: Instant,
        hearsay: bool,
    ) -> Result<usize, Refused> {
        self.forget(&source);
        let mut dropped = 0;
        let max_topics = self.limits.max_topics;
        let mut admit =
            |topics: &mut BTreeMap<Topic, Interest>, list: Vec<Topic>, publisher: bool| {
                let mut kept = Vec::with_capacity(list.len());
                for t in list {
                    if !topics.contains_key(&t) && topics.len() >= max_topics {
                        dropped += 1;
                        continue;
                    }
                    let i = topics.entry(t.clone()).or_default();
                    if publisher {
                        i.publishers.insert(source);
                    } else {
                        i.subscribers.insert(source);
                    }
                    kept.push(t);
                }
                kept
            };
        ann.subscribed = admit(&mut self.topics, std::mem::take(&mut ann.subscribed), false);
        ann.published = admit(&mut self.topics, std::mem::take(&mut ann.published), true);
        let max_patterns = self.limits.max_patterns;
        ann.patterns.retain(|p| {
            let ok = self.patterns.contains_key(p) || self.patterns.len() < max_patterns;
            if ok {
                let peers = self.patterns.entry(p.clone()).or_default();
                if peers.is_empty() {
                    self.matcher.insert(p, p.clone());
                }
                peers.insert(source);
            } else {
                dropped += 1;
            }
            ok
        });
        self.sources.insert(
            source,
            Source {
                seq: ann.seq,
                received,
                subscribed: ann.subscribed,
                patterns: ann.patterns,
                published: ann.published,
                addrs: ann.addrs,
                hearsay,
            },
        );
        Ok(dropped)
    }

    /// Removes `source`'s announcement from the indexes.
    fn forget(&mut self, source: &PeerId) {
        let Some(old) = self.sources.remove(source) else {
            return;
        };
        for t in old.subscribed.iter().chain(&old.published) {
            if let Some(i) = self.topics.get_mut(t) {
                i.subscribers.remove(source);
                i.publishers.remove(source);
                if i.subscribers.is_empty() && i.publishers.is_empty() {
                    self.topics.remove(t);
                }
            }
        }
        for p in &old.patterns {
            if let Some(peers) = self.patterns.get_mut(p) {
                peers.remove(source);
                if peers.is_empty() {
                    self.patterns.remove(p);
                    self.matcher.remove(p, p);
                }
            }
        }
    }

    /// Drops announcements older than the TTL; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.limits.ttl;
        let old: Vec<PeerId> = self
            .sources
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.received) > ttl)
            .map(|(p, _)| *p)
            .collect();
        for p in &old {
            self.forget(p);
        }
        old.len()
    }

    /// Peers that announced a subscription to `topic`.
    pub fn subscribers(&self, topic: &Topic) -> impl Iterator<Item = &PeerId> {
        self.topics
            .get(topic)
            .into_iter()
            .flat_map(|i| i.subscribers.iter())
    }

    /// Peers that announced a subscription to `pattern`.
    pub fn pattern_subscribers(&self, pattern: &Pattern) -> impl Iterator<Item = &PeerId> {
        self.patterns.get(pattern).into_iter().flatten()
    }

    /// Announced wildcard patterns that match `topic`.
    pub fn patterns_matching(&self, topic: &Topic) -> Vec<Pattern> {
        self.matcher.matches(topic)
    }

    /// Announced topics under `prefix` (all with `""`), in order, at most
    /// `limit`.
    pub fn topics(&self, prefix: &str, limit: usize) -> Vec<TopicInfo> {
        self.topics
            .iter()
            .filter(|(t, _)| t.is_under(prefix))
            .take(limit)
            .map(|(t, i)| TopicInfo {
                topic: t.to_string(),
                subscribers: i.subscribers.len(),
                publishers: i.publishers.len(),
            })
            .collect()
    }

    /// Announced wildcard patterns and how many peers hold each.
    pub fn patterns(&self) -> Vec<(String, usize)> {
        let mut out: Vec<_> = self
            .patterns
            .iter()
            .map(|(p, peers)| (p.to_string(), peers.len()))
            .collect();
        out.sort();
        out
    }

    /// The addresses `peer` announced.
    pub fn addrs(&self, peer: &PeerId) -> &[String] {
        self.sources.get(peer).map(|s| &s.addrs[..]).unwrap_or(&[])
    }

    /// Sources remembered.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// Distinct topics remembered.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_sources: 2,
            max_topics: 3,
            max_patterns: 1,
            ttl: Duration::from_secs(60),
            min_interval: Duration::from_secs(1),
        }
    }

    fn ann(seq: u64, subs: &[&str], pats: &[&str]) -> Announcement {
        Announcement {
            seq,
            subscribed: subs.iter().map(|s| Topic::new(*s).unwrap()).collect(),
            patterns: pats.iter().map(|s| Pattern::new(*s).unwrap()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn newer_announcements_replace_older_and_expire() {
        let mut r = Registry::new(limits());
        let (a, b) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        assert_eq!(r.apply(a, ann(1, &["x/1", "x/2"], &["x/*"]), t0), Ok(0));
        assert_eq!(r.subscribers(&Topic::new("x/1").unwrap()).count(), 1);
        assert_eq!(r.patterns_matching(&Topic::new("x/9").unwrap()).len(), 1);
        assert!(matches!(
            r.apply(a, ann(1, &[], &[]), t0 + Duration::from_secs(5)),
            Err(Refused::Stale { .. })
        ));
        assert!(matches!(
            r.apply(a, ann(2, &[], &[]), t0),
            Err(Refused::TooSoon { .. })
        ));
        // b's second pattern and fourth topic do not fit.
        assert_eq!(r.apply(b, ann(1, &["x/1", "y", "z"], &["q/**"]), t0), Ok(2));
        assert_eq!(r.topic_count(), 3);
        assert_eq!(r.topics("x", 10).len(), 2);
        assert_eq!(r.topics("x", 10)[0].subscribers, 2);
        // a withdraws everything; its topics and pattern go.
        assert_eq!(
            r.apply(a, ann(2, &[], &[]), t0 + Duration::from_secs(2)),
            Ok(0)
        );
        assert_eq!(r.topics("", 10).len(), 2);
        assert!(r.patterns_matching(&Topic::new("x/9").unwrap()).is_empty());
        // A third source does not fit until the others expire.
        let c = PeerId::random();
        assert!(matches!(
            r.apply(c, ann(1, &[], &[]), t0 + Duration::from_secs(3)),
            Err(Refused::Full { .. })
        ));
        assert_eq!(
            r.apply(c, ann(1, &["w"], &[]), t0 + Duration::from_secs(100)),
            Ok(0)
        );
        assert_eq!(r.sources(), 1);
        assert_eq!(r.topics("", 10).len(), 1);
    }

    #[test]
    fn hearsay_fills_gaps_only_ages_from_when_it_was_heard_and_yields_to_the_source() {
        let mut r = Registry::new(limits());
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let t0 = Instant::now() + Duration::from_secs(1000);
        let s = Duration::from_secs;
        assert_eq!(r.apply(a, ann(5, &["x"], &[]), t0), Ok(0));
        // Hearsay about a known source, or older than the TTL, is refused.
        assert_eq!(
            r.apply_hearsay(a, ann(9, &["y"], &[]), s(1), t0),
            Err(Refused::Known)
        );
        assert_eq!(
            r.apply_hearsay(b, ann(1, &["y"], &[]), s(61), t0),
            Err(Refused::Expired)
        );
        assert_eq!(r.apply_hearsay(b, ann(7, &["y"], &[]), s(50), t0), Ok(0));
        assert_eq!(r.subscribers(&Topic::new("y").unwrap()).count(), 1);
        // Full (two sources): hearsay makes no room.
        assert!(matches!(
            r.apply_hearsay(c, ann(1, &["z"], &[]), s(1), t0),
            Err(Refused::Full { .. })
        ));
        // The snapshot: freshest first, with ages.
        let snap = r.snapshot(t0, 10);
        assert_eq!(snap.len(), 2);
        assert_eq!((snap[0].source, snap[0].age_ms), (a, 0));
        assert_eq!(
            (snap[1].source, snap[1].age_ms, snap[1].announcement.seq),
            (b, 50_000, 7)
        );
        assert_eq!(r.snapshot(t0, 1).len(), 1);
        // b's hearsay expires 60 s after it was first heard, not after t0.
        assert_eq!(r.expire(t0 + s(11)), 1);
        assert_eq!(r.apply_hearsay(b, ann(7, &["y"], &[]), s(1), t0), Ok(0));
        // b's own word replaces hearsay whatever its seq and timing.
        assert_eq!(r.apply(b, ann(1, &["w"], &[]), t0), Ok(0));
        assert_eq!(r.subscribers(&Topic::new("y").unwrap()).count(), 0);
        assert_eq!(r.subscribers(&Topic::new("w").unwrap()).count(), 1);
        // A new source's own word evicts hearsay when full.
        let mut r = Registry::new(limits());
        assert_eq!(r.apply(a, ann(1, &[], &[]), t0), Ok(0));
        assert_eq!(r.apply_hearsay(b, ann(1, &["y"], &[]), s(1), t0), Ok(0));
        assert_eq!(r.apply(c, ann(1, &["z"], &[]), t0), Ok(0));
        assert_eq!(r.sources(), 2);
        assert_eq!(r.subscribers(&Topic::new("y").unwrap()).count(), 0);
        assert!(matches!(
            r.apply(PeerId::random(), ann(1, &[], &[]), t0),
            Err(Refused::Full { .. })
        ));
    }
}
