//! Our rendezvous point: the `/rendezvous/1.0.0` messages and the bounded
//! registration store behind them.
//!
//! libp2p-rendezvous's server limits registrations per peer and in total;
//! a point also needs a limit per namespace (one busy or abusive namespace
//! must not take every slot), so the node serves the protocol itself with
//! this store. Clients are unchanged: the wire format is the libp2p
//! specification's (protobuf `rendezvous.pb.Message`, length-prefixed),
//! and cookies keep libp2p-rendezvous's layout (8 bytes, then the
//! namespace) so its client pages through our answers.
//!
//! Plain data: no sockets, no clock (time is passed in, in seconds); the
//! signed peer record is checked by the caller, which knows the remote
//! peer.

use std::collections::{BTreeMap, HashMap};

use libp2p_identity::PeerId;

use crate::config::MAX_NAMESPACE_LEN;

/// The protocol name.
pub const PROTOCOL: &str = "/rendezvous/1.0.0";
/// Largest message read (libp2p-rendezvous uses the same).
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// Registrations one discover answer carries at most.
pub const MAX_DISCOVER_LIMIT: u64 = 1000;
/// The TTL of a registration that names none (the specification's 2 h).
pub const DEFAULT_TTL: u64 = 7200;
/// Largest signed peer record kept (one with a few dozen addresses is
/// under 2 KiB): registrations are remote input, and the total limit
/// times this is what the store can hold.
pub const MAX_RECORD: usize = 8 * 1024;
/// Record bytes one discover answer carries at most, well inside the
/// [`MAX_MESSAGE`] a client reads; the cookie continues after the last one.
pub const MAX_DISCOVER_BYTES: usize = 512 * 1024;

/// Response status codes (the specification's numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// Bad namespace.
    InvalidNamespace = 100,
    /// Bad or foreign signed peer record.
    InvalidSignedPeerRecord = 101,
    /// TTL out of range.
    InvalidTtl = 102,
    /// Cookie not ours or for another namespace.
    InvalidCookie = 103,
    /// Not allowed.
    NotAuthorized = 200,
    /// Our fault.
    InternalError = 300,
    /// A limit is reached.
    Unavailable = 400,
}

impl Status {
    fn from_i64(v: u64) -> Status {
        match v {
            0 => Status::Ok,
            100 => Status::InvalidNamespace,
            101 => Status::InvalidSignedPeerRecord,
            102 => Status::InvalidTtl,
            103 => Status::InvalidCookie,
            200 => Status::NotAuthorized,
            300 => Status::InternalError,
            _ => Status::Unavailable,
        }
    }
}

/// One registration on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRegistration {
    /// The namespace.
    pub namespace: String,
    /// The signed peer record (a signed envelope), as sent.
    pub record: Vec<u8>,
    /// Seconds.
    pub ttl: Option<u64>,
}

/// The messages of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Register in a namespace.
    Register(WireRegistration),
    /// The answer to a registration.
    RegisterResponse {
        /// Outcome.
        status: Status,
        /// Why, when not OK.
        text: String,
        /// Granted TTL.
        ttl: u64,
    },
    /// Withdraw from a namespace.
    Unregister {
        /// The namespace.
        namespace: String,
    },
    /// Ask for registrations.
    Discover {
        /// One namespace, or all.
        namespace: Option<String>,
        /// At most this many.
        limit: Option<u64>,
        /// Where the last page ended.
        cookie: Option<Vec<u8>>,
    },
    /// The answer to a discover.
    DiscoverResponse {
        /// Outcome.
        status: Status,
        /// Why, when not OK.
        text: String,
        /// Registrations.
        registrations: Vec<WireRegistration>,
        /// Where to continue.
        cookie: Vec<u8>,
    },
}

/// A message that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed rendezvous message: {0}")]
pub struct DecodeError(pub &'static str);

// --- protobuf, by hand: the messages are small and fixed ---------------

fn put_varint(out: &mut Vec<u8>, v: u64) {
    let mut buf = unsigned_varint::encode::u64_buffer();
    out.extend_from_slice(unsigned_varint::encode::u64(v, &mut buf));
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    put_key(out, field, 0);
    put_varint(out, v);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn get_varint(b: &mut &[u8]) -> Result<u64, DecodeError> {
    let (v, rest) = unsigned_varint::decode::u64(b).map_err(|e| match e {
        unsigned_varint::decode::Error::Insufficient => DecodeError("truncated varint"),
        _ => DecodeError("bad varint"),
    })?;
    *b = rest;
    Ok(v)
}

enum Field<'a> {
    Uint(u64),
    Bytes(&'a [u8]),
}

/// Iterates the fields of one protobuf message; unknown wire types fail.
fn fields(mut b: &[u8]) -> impl Iterator<Item = Result<(u32, Field<'_>), DecodeError>> {
    std::iter::from_fn(move || {
        if b.is_empty() {
            return None;
        }
        let r = (|| {
            let key = get_varint(&mut b)?;
            let field = u32::try_from(key >> 3).map_err(|_| DecodeError("field number"))?;
            match key & 7 {
                0 => Ok((field, Field::Uint(get_varint(&mut b)?))),
                2 => {
                    let len =
                        usize::try_from(get_varint(&mut b)?).map_err(|_| DecodeError("length"))?;
                    if len > b.len() {
                        return Err(DecodeError("truncated field"));
                    }
                    let (v, rest) = b.split_at(len);
                    b = rest;
                    Ok((field, Field::Bytes(v)))
                }
                _ => Err(DecodeError("unsupported wire type")),
            }
        })();
        if r.is_err() {
            b = &[];
        }
        Some(r)
    })
}

fn text(b: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError("string is not UTF-8"))
}

fn encode_registration(r: &WireRegistration) -> Vec<u8> {
    let mut m = Vec::new();
    put_bytes(&mut m, 1, r.namespace.as_bytes());
    put_bytes(&mut m, 2, &r.record);
    if let Some(ttl) = r.ttl {
        put_uint(&mut m, 3, ttl);
    }
    m
}

fn decode_registration(b: &[u8]) -> Result<WireRegistration, DecodeError> {
    let mut r = WireRegistration {
        namespace: String::new(),
        record: Vec::new(),
        ttl: None,
    };
    for f in fields(b) {
        match f? {
            (1, Field::Bytes(v)) => r.namespace = text(v)?,
            (2, Field::Bytes(v)) => r.record = v.to_vec(),
            (3, Field::Uint(v)) => r.ttl = Some(v),
            _ => {}
        }
    }
    Ok(r)
}

impl Message {
    /// The protobuf encoding (without the length prefix).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Message::Register(r) => {
                put_uint(&mut out, 1, 0);
                put_bytes(&mut out, 2, &encode_registration(r));
            }
            Message::RegisterResponse { status, text, ttl } => {
                put_uint(&mut out, 1, 1);
                let mut m = Vec::new();
                put_uint(&mut m, 1, *status as u64);
                if !text.is_empty() {
                    put_bytes(&mut m, 2, text.as_bytes());
                }
                put_uint(&mut m, 3, *ttl);
                put_bytes(&mut out, 3, &m);
            }
            Message::Unregister { namespace } => {
                put_uint(&mut out, 1, 2);
                let mut m = Vec::new();
                put_bytes(&mut m, 1, namespace.as_bytes());
                put_bytes(&mut out, 4, &m);
            }
            Message::Discover {
                namespace,
                limit,
                cookie,
            } => {
                put_uint(&mut out, 1, 3);
                let mut m = Vec::new();
                if let Some(ns) = namespace {
                    put_bytes(&mut m, 1, ns.as_bytes());
                }
                if let Some(l) = limit {
                    put_uint(&mut m, 2, *l);
                }
                if let Some(c) = cookie {
                    put_bytes(&mut m, 3, c);
                }
                put_bytes(&mut out, 5, &m);
            }
            Message::DiscoverResponse {
                status,
                text,
                registrations,
                cookie,
            } => {
                put_uint(&mut out, 1, 4);
                let mut m = Vec::new();
                for r in registrations {
                    put_bytes(&mut m, 1, &encode_registration(r));
                }
                put_bytes(&mut m, 2, cookie);
                put_uint(&mut m, 3, *status as u64);
                if !text.is_empty() {
                    put_bytes(&mut m, 4, text.as_bytes());
                }
                put_bytes(&mut out, 6, &m);
            }
        }
        out
    }

    /// Decodes one message (without the length prefix).
    pub fn decode(b: &[u8]) -> Result<Message, DecodeError> {
        if b.len() > MAX_MESSAGE {
            return Err(DecodeError("message too large"));
        }
        let mut typ = None;
        let mut bodies: [Option<&[u8]>; 7] = [None; 7];
        for f in fields(b) {
            match f? {
                (1, Field::Uint(t)) => typ = Some(t),
                (n @ 2..=6, Field::Bytes(v)) => bodies[n as usize] = Some(v),
                _ => {}
            }
        }
        let body = |n: usize| bodies[n].ok_or(DecodeError("missing body"));
        Ok(match typ.ok_or(DecodeError("missing type"))? {
            0 => Message::Register(decode_registration(body(2)?)?),
            1 => {
                let (mut status, mut t, mut ttl) = (Status::Ok, String::new(), 0);
                for f in fields(body(3)?) {
                    match f? {
                        (1, Field::Uint(v)) => status = Status::from_i64(v),
                        (2, Field::Bytes(v)) => t = text(v)?,
                        (3, Field::Uint(v)) => ttl = v,
                        _ => {}
                    }
                }
                Message::RegisterResponse {
                    status,
                    text: t,
                    ttl,
                }
            }
            2 => {
                let mut namespace = String::new();
                for f in fields(body(4)?) {
                    if let (1, Field::Bytes(v)) = f? {
                        namespace = text(v)?;
                    }
                }
                Message::Unregister { namespace }
            }
            3 => {
                let (mut namespace, mut limit, mut cookie) = (None, None, None);
                for f in fields(body(5)?) {
                    match f? {
                        (1, Field::Bytes(v)) => namespace = Some(text(v)?),
                        (2, Field::Uint(v)) => limit = Some(v),
                        (3, Field::Bytes(v)) => cookie = Some(v.to_vec()),
                        _ => {}
                    }
                }
                Message::Discover {
                    namespace,
                    limit,
                    cookie,
                }
            }
            4 => {
                let (mut status, mut t, mut regs, mut cookie) =
                    (Status::Ok, String::new(), Vec::new(), Vec::new());
                for f in fields(body(6)?) {
                    match f? {
                        (1, Field::Bytes(v)) => regs.push(decode_registration(v)?),
                        (2, Field::Bytes(v)) => cookie = v.to_vec(),
                        (3, Field::Uint(v)) => status = Status::from_i64(v),
                        (4, Field::Bytes(v)) => t = text(v)?,
                        _ => {}
                    }
                }
                Message::DiscoverResponse {
                    status,
                    text: t,
                    registrations: regs,
                    cookie,
                }
            }
            _ => return Err(DecodeError("unknown message type")),
        })
    }
}

// --- the store ----------------------------------------------------------

/// Limits of a rendezvous point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Registrations one peer may hold.
    pub per_peer: usize,
    /// Registrations one namespace may hold.
    pub per_namespace: usize,
    /// Registrations in total.
    pub total: usize,
    /// Shortest TTL accepted, seconds.
    pub min_ttl: u64,
    /// Longest TTL accepted, seconds.
    pub max_ttl: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    record: Vec<u8>,
    expires: u64,
    ttl: u64,
    /// Order of registration: cookies page by it.
    seq: u64,
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refused {
    /// The status to answer with.
    pub status: Status,
    /// Why.
    pub reason: String,
}

/// The registrations of a rendezvous point, bounded per peer, per
/// namespace and in total.
#[derive(Debug)]
pub struct Registrations {
    limits: Limits,
    entries: HashMap<(String, PeerId), Entry>,
    per_peer: HashMap<PeerId, usize>,
    per_namespace: HashMap<String, usize>,
    /// seq -> key, for paging in registration order.
    order: BTreeMap<u64, (String, PeerId)>,
    next_seq: u64,
}

/// A registration as discovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The namespace.
    pub namespace: String,
    /// The peer.
    pub peer: PeerId,
    /// Its signed peer record.
    pub record: Vec<u8>,
    /// Seconds left.
    pub ttl: u64,
}

/// Checks a namespace: 1 to 255 bytes.
pub fn check_namespace(ns: &str) -> Result<(), Refused> {
    if ns.is_empty() || ns.len() > MAX_NAMESPACE_LEN {
        return Err(Refused {
            status: Status::InvalidNamespace,
            reason: format!("namespace must be 1 to {MAX_NAMESPACE_LEN} bytes"),
        });
    }
    Ok(())
}

impl Registrations {
    /// An empty store.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            entries: HashMap::new(),
            per_peer: HashMap::new(),
            per_namespace: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 1,
        }
    }

    /// How many registrations are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many registrations `namespace` holds.
    pub fn in_namespace(&self, namespace: &str) -> usize {
        self.per_namespace.get(namespace).copied().unwrap_or(0)
    }

    /// Registers (or renews) `peer` in `namespace` at `now`; returns the
    /// granted TTL. A renewal replaces the old registration and counts
    /// against no limit again.
    pub fn register(
        &mut self,
        peer: PeerId,
        namespace: &str,
        record: Vec<u8>,
        ttl: Option<u64>,
        now: u64,
    ) -> Result<u64, Refused> {
        check_namespace(namespace)?;
        if record.len() > MAX_RECORD {
            return Err(Refused {
                status: Status::InvalidSignedPeerRecord,
                reason: format!(
                    "signed peer record of {} bytes (at most {MAX_RECORD})",
                    record.len()
                ),
            });
        }
        let ttl = ttl.unwrap_or(DEFAULT_TTL);
        if ttl < self.limits.min_ttl || ttl > self.limits.max_ttl {
            return Err(Refused {
                status: Status::InvalidTtl,
                reason: format!(
                    "ttl {ttl}s is outside {}s..{}s",
                    self.limits.min_ttl, self.limits.max_ttl
                ),
            });
        }
        let key = (namespace.to_owned(), peer);
        let renewal = self.entries.contains_key(&key);
        if !renewal {
            let full = |what: &str, limit: usize| Refused {
                status: Status::Unavailable,
                reason: format!("{what} limit of {limit} registrations reached"),
            };
            if self.per_peer.get(&peer).copied().unwrap_or(0) >= self.limits.per_peer {
                return Err(full("per-peer", self.limits.per_peer));
            }
            if self.in_namespace(namespace) >= self.limits.per_namespace {
                return Err(full("per-namespace", self.limits.per_namespace));
            }
            if self.entries.len() >= self.limits.total {
                return Err(full("total", self.limits.total));
            }
        }
        self.remove(&key);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(
            key.clone(),
            Entry {
                record,
                expires: now.saturating_add(ttl),
                ttl,
                seq,
            },
        );
        *self.per_peer.entry(peer).or_default() += 1;
        *self.per_namespace.entry(key.0.clone()).or_default() += 1;
        self.order.insert(seq, key);
        Ok(ttl)
    }

    fn remove(&mut self, key: &(String, PeerId)) -> bool {
        let Some(e) = self.entries.remove(key) else {
            return false;
        };
        self.order.remove(&e.seq);
        if let Some(n) = self.per_peer.get_mut(&key.1) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&key.1);
            }
        }
        if let Some(n) = self.per_namespace.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.per_namespace.remove(&key.0);
            }
        }
        true
    }

    /// Withdraws `peer` from `namespace`; whether it was registered.
    pub fn unregister(&mut self, peer: PeerId, namespace: &str) -> bool {
        self.remove(&(namespace.to_owned(), peer))
    }

    /// Drops what expired by `now`; returns the dropped (namespace, peer).
    pub fn expire(&mut self, now: u64) -> Vec<(String, PeerId)> {
        let gone: Vec<(String, PeerId)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.remove(k);
        }
        gone
    }

    /// Up to `limit` live registrations in `namespace` (or all), after the
    /// position in `cookie`; returns them and the cookie to continue from.
    pub fn discover(
        &self,
        namespace: Option<&str>,
        cookie: Option<&[u8]>,
        limit: u64,
        now: u64,
    ) -> Result<(Vec<Found>, Vec<u8>), Refused> {
        if let Some(ns) = namespace {
            check_namespace(ns)?;
        }
        let after = match cookie {
            None => 0,
            Some(c) => {
                let bad = || Refused {
                    status: Status::InvalidCookie,
                    reason: "cookie is not one of ours for this namespace".into(),
                };
                if c.len() < 8 {
                    return Err(bad());
                }
                let (pos, ns) = c.split_at(8);
                let ns = std::str::from_utf8(ns).map_err(|_| bad())?;
                if ns != namespace.unwrap_or("") {
                    return Err(bad());
                }
                u64::from_be_bytes(pos.try_into().map_err(|_| bad())?)
            }
        };
        let limit = limit.clamp(1, MAX_DISCOVER_LIMIT) as usize;
        let mut out = Vec::new();
        let mut last = after;
        let mut bytes = 0;
        for (&seq, key) in self.order.range(after.saturating_add(1)..) {
            if out.len() >= limit {
                break;
            }
            let live = self
                .entries
                .get(key)
                .filter(|e| e.expires > now && namespace.is_none_or(|ns| ns == key.0));
            let Some(e) = live else {
                last = seq;
                continue;
            };
            let size = e.record.len() + key.0.len();
            if !out.is_empty() && bytes + size > MAX_DISCOVER_BYTES {
                break;
            }
            bytes += size;
            last = seq;
            out.push(Found {
                namespace: key.0.clone(),
                peer: key.1,
                record: e.record.clone(),
                ttl: (e.expires - now).min(e.ttl),
            });
        }
        let mut cookie = last.to_be_bytes().to_vec();
        cookie.extend_from_slice(namespace.unwrap_or("").as_bytes());
        Ok((out, cookie))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            per_peer: 3,
            per_namespace: 2,
            total: 4,
            min_ttl: 10,
            max_ttl: 100,
        }
    }

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let msgs = [
            Message::Register(WireRegistration {
                namespace: "ns".into(),
                record: vec![1, 2, 3],
                ttl: Some(60),
            }),
            Message::RegisterResponse {
                status: Status::Unavailable,
                text: "full".into(),
                ttl: 0,
            },
            Message::Unregister {
                namespace: "ns".into(),
            },
            Message::Discover {
                namespace: Some("ns".into()),
                limit: Some(5),
                cookie: Some(vec![0; 10]),
            },
            Message::DiscoverResponse {
                status: Status::Ok,
                text: String::new(),
                registrations: vec![WireRegistration {
                    namespace: "ns".into(),
                    record: vec![9],
                    ttl: Some(7),
                }],
                cookie: vec![0, 0, 0, 0, 0, 0, 0, 1],
            },
        ];
        for m in msgs {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
        for garbage in [&[0xffu8; 12][..], &[0x08], &[0x12, 0x05, 1], &[0x08, 0x09]] {
            assert!(Message::decode(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn limits_per_peer_per_namespace_and_total() {
        let mut r = Registrations::new(limits());
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        r.register(a, "x", vec![], Some(50), 0).unwrap();
        r.register(b, "x", vec![], Some(50), 0).unwrap();
        let e = r.register(c, "x", vec![], Some(50), 0).unwrap_err();
        assert_eq!(e.status, Status::Unavailable);
        assert!(e.reason.contains("per-namespace"), "{e}");
        // A renewal is not a new registration.
        r.register(a, "x", vec![1], Some(60), 5).unwrap();
        r.register(a, "y", vec![], Some(50), 0).unwrap();
        r.register(a, "z", vec![], Some(50), 0).unwrap();
        let e = r.register(a, "w", vec![], Some(50), 0).unwrap_err();
        assert!(e.reason.contains("per-peer"), "{e}");
        let e = r.register(c, "q", vec![], Some(50), 0).unwrap_err();
        assert!(e.reason.contains("total"), "{e}");
        assert_eq!(r.len(), 4);
        assert_eq!(
            r.register(c, "q", vec![], Some(5), 0).unwrap_err().status,
            Status::InvalidTtl
        );
        assert_eq!(
            r.register(c, "", vec![], None, 0).unwrap_err().status,
            Status::InvalidNamespace
        );
        // Unregistering frees the slot.
        assert!(r.unregister(b, "x"));
        r.register(c, "x", vec![], Some(50), 0).unwrap();
    }

    #[test]
    fn big_records_are_refused_and_answers_stay_within_a_message() {
        let mut r = Registrations::new(Limits {
            per_peer: 10,
            per_namespace: 1000,
            total: 1000,
            ..limits()
        });
        let e = r
            .register(PeerId::random(), "x", vec![0; MAX_RECORD + 1], None, 0)
            .unwrap_err();
        assert_eq!(e.status, Status::InvalidSignedPeerRecord);
        let n = 2 * MAX_DISCOVER_BYTES / MAX_RECORD;
        for _ in 0..n {
            r.register(PeerId::random(), "x", vec![7; MAX_RECORD], Some(50), 0)
                .unwrap();
        }
        let (page, cookie) = r.discover(Some("x"), None, MAX_DISCOVER_LIMIT, 0).unwrap();
        assert!(page.len() < n, "{} of {n} in one answer", page.len());
        let reply = Message::DiscoverResponse {
            status: Status::Ok,
            text: String::new(),
            registrations: page
                .iter()
                .map(|f| WireRegistration {
                    namespace: f.namespace.clone(),
                    record: f.record.clone(),
                    ttl: Some(f.ttl),
                })
                .collect(),
            cookie: cookie.clone(),
        };
        assert!(reply.encode().len() < MAX_MESSAGE);
        // The cookie continues where a page stopped: nothing lost, nothing twice.
        let mut seen: std::collections::HashSet<PeerId> = page.iter().map(|f| f.peer).collect();
        let mut cookie = cookie;
        loop {
            let (more, next) = r
                .discover(Some("x"), Some(&cookie), MAX_DISCOVER_LIMIT, 0)
                .unwrap();
            if more.is_empty() {
                break;
            }
            for f in more {
                assert!(seen.insert(f.peer), "{} twice", f.peer);
            }
            cookie = next;
        }
        assert_eq!(seen.len(), n);
    }

    #[test]
    fn discover_pages_with_cookies_and_expiry_frees_slots() {
        let mut r = Registrations::new(Limits {
            per_namespace: 10,
            total: 10,
            ..limits()
        });
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            r.register(*p, "x", vec![i as u8], Some(10 + i as u64), 0)
                .unwrap();
        }
        let (first, cookie) = r.discover(Some("x"), None, 2, 0).unwrap();
        assert_eq!(first.len(), 2);
        let (rest, cookie2) = r.discover(Some("x"), Some(&cookie), 10, 0).unwrap();
        assert_eq!(rest.len(), 3);
        let (none, _) = r.discover(Some("x"), Some(&cookie2), 10, 0).unwrap();
        assert!(none.is_empty());
        assert_eq!(
            r.discover(Some("y"), Some(&cookie), 10, 0)
                .unwrap_err()
                .status,
            Status::InvalidCookie
        );
        assert_eq!(
            r.discover(Some("x"), Some(&[1, 2]), 10, 0)
                .unwrap_err()
                .status,
            Status::InvalidCookie
        );
        // The first two expire at 10 and 11.
        let gone = r.expire(11);
        assert_eq!(gone.len(), 2);
        let (live, _) = r.discover(None, None, 100, 11).unwrap();
        assert_eq!(live.len(), 3);
        assert_eq!(r.in_namespace("x"), 3);
    }
}
