//! What our nodes put in gossipsub messages.
//!
//! ## Messages
//!
//! A message published on a concrete topic with no metadata is sent as the
//! application's bytes, unchanged, so any gossipsub implementation reads
//! it. A message with metadata (an expiry or high priority), one whose
//! bytes start with the envelope magic (so that a receiver cannot take
//! them for an envelope), and every copy sent on a pattern topic, is
//! wrapped in an envelope ([`Envelope::encode_for_topic`]):
//!
//! ```text
//! magic     3 bytes  0xB7 'B' 'H'
//! version   1 byte   1
//! flags     1 byte   bit 0: high priority; other bits must be 0
//! expires   8 bytes  big-endian unix time in milliseconds, 0 = never
//! topic     varint length, then that many bytes of UTF-8 (the concrete topic)
//! data      the rest
//! ```
//!
//! A message that starts with the magic but does not parse as an envelope
//! is a raw message (another implementation's bytes). An envelope whose
//! topic does not match the gossipsub topic it arrived on is rejected
//! ([`Envelope::decode_for_topic`]). Bytes from another implementation
//! that happen to form an envelope are read as one: we cannot tell.
//!
//! ## Announcements
//!
//! On the topic `_bh/topics/1`, each node announces what it subscribes to
//! and publishes, so that others can list active topics, find peers for a
//! topic, and send to wildcard subscribers:
//!
//! ```text
//! magic      3 bytes  0xB7 'B' 'A'
//! version    1 byte   1
//! seq        8 bytes  big-endian; larger replaces smaller from the same source
//! 4 lists, each a varint count and then varint-length-prefixed UTF-8 strings:
//!   subscribed concrete topics, wildcard patterns, published topics,
//!   addresses (multiaddrs as text)
//! ```
//!
//! ## Registry snapshots
//!
//! A node that starts asks a few neighbours for what they heard (the
//! protocol `/blackhole/pubsub/registry/1.0.0`: a request of one byte,
//! the version; the answer is a snapshot, and the stream closes):
//!
//! ```text
//! magic      3 bytes  0xB7 'B' 'S'
//! version    1 byte   1
//! count      varint
//! entries, each:
//!   source   varint length, then the peer id's bytes
//!   age      8 bytes  big-endian milliseconds since the sender heard it
//!   body     varint length, then an announcement as above
//! ```

use libp2p_identity::PeerId;

use crate::topic::{Pattern, Topic, TopicError};

const MSG_MAGIC: [u8; 3] = [0xB7, b'B', b'H'];
const ANN_MAGIC: [u8; 3] = [0xB7, b'B', b'A'];
const SNAP_MAGIC: [u8; 3] = [0xB7, b'B', b'S'];
/// Longest peer id in a snapshot (an identity-hashed secp256k1 or ed25519
/// key is under 64 bytes; RSA keys are hashed with SHA-256).
const MAX_PEER_ID_LEN: usize = 64;
const VERSION: u8 = 1;
const FLAG_HIGH: u8 = 1;
/// Envelope bytes besides the topic and data (magic, version, flags,
/// expiry, and at most two bytes of topic length).
pub const ENVELOPE_OVERHEAD: usize = 3 + 1 + 1 + 8 + 2;

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Ends early.
    #[error("truncated at byte {at}")]
    Truncated { at: usize },
    /// Not ours, or an unknown version.
    #[error("unknown magic or version")]
    NotOurs,
    /// A flag we do not know.
    #[error("unknown flags {0:#x}")]
    Flags(u8),
    /// Not UTF-8.
    #[error("string is not UTF-8")]
    Utf8,
    /// A topic or pattern that does not parse.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// More items than allowed.
    #[error("{what}: {count} items, at most {max}")]
    TooMany {
        what: &'static str,
        count: u64,
        max: usize,
    },
    /// A string longer than allowed.
    #[error("string of {len} bytes, at most {max}")]
    TooLong { len: u64, max: usize },
    /// Bytes after the end.
    #[error("{0} bytes after the end")]
    Trailing(usize),
    /// An envelope names another topic than the one it arrived on.
    #[error("envelope for topic {found} arrived on {arrived}")]
    TopicMismatch { arrived: String, found: String },
    /// A snapshot names a source that is not a peer id.
    #[error("not a peer id")]
    PeerId,
}

/// An enveloped message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// High priority.
    pub high_priority: bool,
    /// Expiry, unix milliseconds.
    pub expires_ms: Option<u64>,
    /// The concrete topic.
    pub topic: Topic,
    /// The application's bytes.
    pub data: Vec<u8>,
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(DecodeError::Truncated { at: self.at })?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let rest = &self.buf[self.at..];
        let (v, tail) = unsigned_varint::decode::u64(rest)
            .map_err(|_| DecodeError::Truncated { at: self.at })?;
        self.at += rest.len() - tail.len();
        Ok(v)
    }
    fn str(&mut self, max: usize) -> Result<&'a str, DecodeError> {
        let len = self.varint()?;
        if len > max as u64 {
            return Err(DecodeError::TooLong { len, max });
        }
        std::str::from_utf8(self.take(len as usize)?).map_err(|_| DecodeError::Utf8)
    }
    fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.at..];
        self.at = self.buf.len();
        out
    }
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    let mut buf = unsigned_varint::encode::u64_buffer();
    out.extend_from_slice(unsigned_varint::encode::u64(v, &mut buf));
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

impl Envelope {
    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(ENVELOPE_OVERHEAD + self.topic.as_str().len() + self.data.len());
        out.extend_from_slice(&MSG_MAGIC);
        out.push(VERSION);
        out.push(if self.high_priority { FLAG_HIGH } else { 0 });
        out.extend_from_slice(&self.expires_ms.unwrap_or(0).to_be_bytes());
        put_str(&mut out, self.topic.as_str());
        out.extend_from_slice(&self.data);
        out
    }

    /// Whether `bytes` claim to be an envelope (start with its magic).
    pub fn looks_like(bytes: &[u8]) -> bool {
        bytes.starts_with(&MSG_MAGIC)
    }

    /// The bytes to send on the envelope's own concrete topic: the
    /// application's bytes as they are when there is no metadata and
    /// they do not start with the envelope magic (any gossipsub
    /// implementation reads them); the envelope otherwise, so that
    /// [`Envelope::decode_for_topic`] gives back exactly `data`.
    pub fn encode_for_topic(&self) -> Vec<u8> {
        if self.high_priority || self.expires_ms.is_some() || Self::looks_like(&self.data) {
            self.encode()
        } else {
            self.data.clone()
        }
    }

    /// Reads what arrived on the concrete topic `topic`: an envelope
    /// naming `topic`, or else the raw bytes of a message without
    /// metadata. An envelope naming another topic is an error.
    pub fn decode_for_topic(topic: &Topic, bytes: Vec<u8>) -> Result<Self, DecodeError> {
        if let Some(Ok(env)) = Self::looks_like(&bytes).then(|| Self::decode(&bytes)) {
            if env.topic != *topic {
                return Err(DecodeError::TopicMismatch {
                    arrived: topic.to_string(),
                    found: env.topic.to_string(),
                });
            }
            return Ok(env);
        }
        Ok(Self {
            high_priority: false,
            expires_ms: None,
            topic: topic.clone(),
            data: bytes,
        })
    }

    /// Parses an envelope.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader { buf: bytes, at: 0 };
        if r.take(3)? != MSG_MAGIC || r.u8()? != VERSION {
            return Err(DecodeError::NotOurs);
        }
        let flags = r.u8()?;
        if flags & !FLAG_HIGH != 0 {
            return Err(DecodeError::Flags(flags));
        }
        let expires = r.u64()?;
        let topic = Topic::new(r.str(crate::topic::MAX_TOPIC_LEN)?)?;
        Ok(Self {
            high_priority: flags & FLAG_HIGH != 0,
            expires_ms: (expires != 0).then_some(expires),
            topic,
            data: r.rest().to_vec(),
        })
    }
}

/// Limits on what one announcement may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnouncementLimits {
    /// Concrete topics (subscribed plus published).
    pub max_topics: usize,
    /// Wildcard patterns.
    pub max_patterns: usize,
    /// Addresses.
    pub max_addrs: usize,
}

/// What a node tells the network about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Announcement {
    /// Orders announcements from one source (unix milliseconds at sending).
    pub seq: u64,
    /// Concrete topics it subscribes to.
    pub subscribed: Vec<Topic>,
    /// Wildcard patterns it subscribes to.
    pub patterns: Vec<Pattern>,
    /// Topics it published on recently.
    pub published: Vec<Topic>,
    /// Where to reach it.
    pub addrs: Vec<String>,
}

/// Longest address text in an announcement.
const MAX_ADDR_LEN: usize = 512;

impl Announcement {
    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&ANN_MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.seq.to_be_bytes());
        put_varint(&mut out, self.subscribed.len() as u64);
        self.subscribed
            .iter()
            .for_each(|t| put_str(&mut out, t.as_str()));
        put_varint(&mut out, self.patterns.len() as u64);
        self.patterns
            .iter()
            .for_each(|p| put_str(&mut out, p.as_str()));
        put_varint(&mut out, self.published.len() as u64);
        self.published
            .iter()
            .for_each(|t| put_str(&mut out, t.as_str()));
        put_varint(&mut out, self.addrs.len() as u64);
        self.addrs.iter().for_each(|a| put_str(&mut out, a));
        out
    }

    /// Parses an announcement within `limits`.
    pub fn decode(bytes: &[u8], limits: AnnouncementLimits) -> Result<Self, DecodeError> {
        let mut r = Reader { buf: bytes, at: 0 };
        if r.take(3)? != ANN_MAGIC || r.u8()? != VERSION {
            return Err(DecodeError::NotOurs);
        }
        let seq = r.u64()?;
        let count = |r: &mut Reader<'_>, what, max: usize| {
            let n = r.varint()?;
            if n > max as u64 {
                return Err(DecodeError::TooMany {
                    what,
                    count: n,
                    max,
                });
            }
            Ok(n as usize)
        };
        let mut topics = 0;
        let mut list = |r: &mut Reader<'_>, what| -> Result<Vec<Topic>, DecodeError> {
            let n = count(r, what, limits.max_topics - topics)?;
            topics += n;
            (0..n)
                .map(|_| Ok(Topic::new(r.str(crate::topic::MAX_TOPIC_LEN)?)?))
                .collect()
        };
        let subscribed = list(&mut r, "subscribed topics")?;
        let np = count(&mut r, "patterns", limits.max_patterns)?;
        let patterns = (0..np)
            .map(|_| Ok(Pattern::new(r.str(crate::topic::MAX_TOPIC_LEN)?)?))
            .collect::<Result<_, DecodeError>>()?;
        let published = list(&mut r, "published topics")?;
        let na = count(&mut r, "addresses", limits.max_addrs)?;
        let addrs = (0..na)
            .map(|_| Ok(r.str(MAX_ADDR_LEN)?.to_owned()))
            .collect::<Result<_, DecodeError>>()?;
        let trailing = r.rest().len();
        if trailing > 0 {
            return Err(DecodeError::Trailing(trailing));
        }
        Ok(Self {
            seq,
            subscribed,
            patterns,
            published,
            addrs,
        })
    }
}

/// One entry of a registry snapshot: what `source` last announced, as
/// heard by the sender `age_ms` milliseconds before it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// Who announced it.
    pub source: PeerId,
    /// How long ago the sender heard it.
    pub age_ms: u64,
    /// What it announced (what the sender kept of it).
    pub announcement: Announcement,
}

/// Encodes entries in order until the next would pass `max_bytes`; returns
/// the bytes and how many entries they hold.
pub fn encode_snapshot(entries: &[SnapshotEntry], max_bytes: usize) -> (Vec<u8>, usize) {
    let mut body = Vec::new();
    let mut count = 0usize;
    // Magic, version, and a count of at most 10 varint bytes.
    let head = SNAP_MAGIC.len() + 1 + 10;
    for e in entries {
        let mut one = Vec::new();
        let id = e.source.to_bytes();
        put_varint(&mut one, id.len() as u64);
        one.extend_from_slice(&id);
        one.extend_from_slice(&e.age_ms.to_be_bytes());
        let ann = e.announcement.encode();
        put_varint(&mut one, ann.len() as u64);
        one.extend_from_slice(&ann);
        if head + body.len() + one.len() > max_bytes {
            break;
        }
        body.extend_from_slice(&one);
        count += 1;
    }
    let mut out = Vec::with_capacity(head + body.len());
    out.extend_from_slice(&SNAP_MAGIC);
    out.push(VERSION);
    put_varint(&mut out, count as u64);
    out.extend_from_slice(&body);
    (out, count)
}

/// Parses a snapshot of at most `max_entries` entries, each announcement
/// within `limits`. One bad entry refuses the whole snapshot.
pub fn decode_snapshot(
    bytes: &[u8],
    limits: AnnouncementLimits,
    max_entries: usize,
) -> Result<Vec<SnapshotEntry>, DecodeError> {
    let mut r = Reader { buf: bytes, at: 0 };
    if r.take(3)? != SNAP_MAGIC || r.u8()? != VERSION {
        return Err(DecodeError::NotOurs);
    }
    let n = r.varint()?;
    if n > max_entries as u64 {
        return Err(DecodeError::TooMany {
            what: "snapshot entries",
            count: n,
            max: max_entries,
        });
    }
    let mut out = Vec::with_capacity((n as usize).min(1024));
    for _ in 0..n {
        let len = r.varint()?;
        if len > MAX_PEER_ID_LEN as u64 {
            return Err(DecodeError::TooLong {
                len,
                max: MAX_PEER_ID_LEN,
            });
        }
        let source = PeerId::from_bytes(r.take(len as usize)?).map_err(|_| DecodeError::PeerId)?;
        let age_ms = r.u64()?;
        let len = r.varint()?;
        let rest = (r.buf.len() - r.at) as u64;
        if len > rest {
            return Err(DecodeError::Truncated { at: r.at });
        }
        let announcement = Announcement::decode(r.take(len as usize)?, limits)?;
        out.push(SnapshotEntry {
            source,
            age_ms,
            announcement,
        });
    }
    let trailing = r.rest().len();
    if trailing > 0 {
        return Err(DecodeError::Trailing(trailing));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: AnnouncementLimits = AnnouncementLimits {
        max_topics: 8,
        max_patterns: 2,
        max_addrs: 2,
    };

    #[test]
    fn envelope_round_trips_and_refuses_garbage() {
        let e = Envelope {
            high_priority: true,
            expires_ms: Some(1_700_000_000_000),
            topic: Topic::new("a/b").unwrap(),
            data: b"hello".to_vec(),
        };
        let bytes = e.encode();
        assert!(Envelope::looks_like(&bytes));
        assert_eq!(Envelope::decode(&bytes).unwrap(), e);
        for cut in 0..bytes.len() - 5 {
            assert!(Envelope::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[4] = 0x80;
        assert_eq!(Envelope::decode(&bad), Err(DecodeError::Flags(0x80)));
        assert_eq!(Envelope::decode(b"hello"), Err(DecodeError::NotOurs));
        let mut huge = bytes[..13].to_vec();
        put_varint(&mut huge, u64::MAX);
        assert!(Envelope::decode(&huge).is_err());
    }

    #[test]
    fn data_on_a_topic_arrives_exactly_as_published() {
        let topic = Topic::new("a/b").unwrap();
        let env = |data: Vec<u8>, high, expires_ms| Envelope {
            high_priority: high,
            expires_ms,
            topic: topic.clone(),
            data,
        };
        let inner = env(b"inner".to_vec(), true, Some(5)).encode();
        let other = Envelope {
            topic: Topic::new("elsewhere").unwrap(),
            ..env(b"x".to_vec(), false, None)
        }
        .encode();
        let mut garbage = MSG_MAGIC.to_vec();
        garbage.extend_from_slice(b"\x01not an envelope");
        // Data that is (or starts like) an envelope, plain data, and data
        // with metadata all come back as they were published.
        for data in [
            inner,
            other,
            garbage,
            MSG_MAGIC.to_vec(),
            b"plain".to_vec(),
            Vec::new(),
        ] {
            for (high, expires) in [(false, None), (true, None), (false, Some(7))] {
                let sent = env(data.clone(), high, expires);
                let got = Envelope::decode_for_topic(&topic, sent.encode_for_topic());
                assert_eq!(got, Ok(sent), "data {data:?}");
            }
        }
        // Without metadata, plain data goes out unchanged (other
        // implementations read it); data that looks like an envelope does not.
        let plain = env(b"plain".to_vec(), false, None);
        assert_eq!(plain.encode_for_topic(), b"plain");
        let tricky = env(MSG_MAGIC.to_vec(), false, None);
        assert!(Envelope::decode(&tricky.encode_for_topic()).is_ok());
        // An envelope for another topic is refused.
        let stray = Envelope {
            topic: Topic::new("elsewhere").unwrap(),
            ..plain
        };
        assert!(matches!(
            Envelope::decode_for_topic(&topic, stray.encode()),
            Err(DecodeError::TopicMismatch { .. })
        ));
    }

    #[test]
    fn announcement_round_trips_within_limits() {
        let a = Announcement {
            seq: 7,
            subscribed: vec![Topic::new("a").unwrap(), Topic::new("b/c").unwrap()],
            patterns: vec![Pattern::new("x/**").unwrap()],
            published: vec![Topic::new("d").unwrap()],
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
        };
        let bytes = a.encode();
        assert_eq!(Announcement::decode(&bytes, LIMITS).unwrap(), a);
        for cut in 0..bytes.len() {
            assert!(
                Announcement::decode(&bytes[..cut], LIMITS).is_err(),
                "cut at {cut}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            Announcement::decode(&long, LIMITS),
            Err(DecodeError::Trailing(1))
        );
        let many = Announcement {
            subscribed: (0..9)
                .map(|i| Topic::new(format!("t{i}")).unwrap())
                .collect(),
            ..Default::default()
        };
        assert!(matches!(
            Announcement::decode(&many.encode(), LIMITS),
            Err(DecodeError::TooMany { .. })
        ));
        // Subscribed and published topics share one limit.
        let split = Announcement {
            subscribed: (0..5)
                .map(|i| Topic::new(format!("t{i}")).unwrap())
                .collect(),
            published: (0..5)
                .map(|i| Topic::new(format!("p{i}")).unwrap())
                .collect(),
            ..Default::default()
        };
        assert!(Announcement::decode(&split.encode(), LIMITS).is_err());
    }

    #[test]
    fn snapshots_round_trip_fit_their_budget_and_refuse_garbage() {
        let entry = |seq| SnapshotEntry {
            source: PeerId::random(),
            age_ms: seq * 1000,
            announcement: Announcement {
                seq,
                subscribed: vec![Topic::new("a/b").unwrap()],
                patterns: vec![Pattern::new("a/*").unwrap()],
                published: vec![],
                addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            },
        };
        let entries: Vec<_> = (1..=5).map(entry).collect();
        let (bytes, n) = encode_snapshot(&entries, usize::MAX);
        assert_eq!(n, 5);
        assert_eq!(decode_snapshot(&bytes, LIMITS, 5).unwrap(), entries);
        // A budget keeps whole entries only, in order.
        let (small, n) = encode_snapshot(&entries, bytes.len() - 1);
        assert_eq!(n, 4);
        assert!(small.len() < bytes.len());
        assert_eq!(decode_snapshot(&small, LIMITS, 5).unwrap(), entries[..4]);
        assert_eq!(encode_snapshot(&entries, 0).1, 0);
        // More entries than the reader allows, cuts, bad ids, trailing bytes.
        assert!(matches!(
            decode_snapshot(&bytes, LIMITS, 4),
            Err(DecodeError::TooMany { .. })
        ));
        for cut in 0..bytes.len() {
            assert!(
                decode_snapshot(&bytes[..cut], LIMITS, 5).is_err(),
                "cut at {cut}"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            decode_snapshot(&extra, LIMITS, 5),
            Err(DecodeError::Trailing(1))
        );
        let mut bad_id = bytes.clone();
        bad_id[6] ^= 0xFF;
        assert!(decode_snapshot(&bad_id, LIMITS, 5).is_err());
        let mut huge = SNAP_MAGIC.to_vec();
        huge.push(VERSION);
        put_varint(&mut huge, u64::MAX);
        assert!(decode_snapshot(&huge, LIMITS, usize::MAX).is_err());
        assert_eq!(
            decode_snapshot(b"hello", LIMITS, 5),
            Err(DecodeError::NotOurs)
        );
    }
}
