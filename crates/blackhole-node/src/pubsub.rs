//! Pubsub in the node: local subscriptions fed from the pubsub behaviour,
//! and publishes that wait for their outcome.

use std::{collections::HashMap, sync::Arc};

use blackhole_pubsub::{Behaviour, Event, Message, Pattern, PublishStatus, Published, TopicInfo};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::node::Error;

/// Messages queued for one local subscription; when it is full, newer
/// messages for it are dropped (and counted in [`Subscription::dropped`]).
pub const SUBSCRIPTION_QUEUE: usize = 1024;
/// Local subscriptions at once (each pattern can be held many times).
pub const MAX_LOCAL_SUBSCRIPTIONS: usize = 4096;

/// A message as the node hands it out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivered {
    /// Content id (hex).
    pub id: String,
    /// The concrete topic.
    pub topic: String,
    /// The payload.
    #[serde(with = "b64")]
    pub data: Vec<u8>,
    /// The publisher.
    pub source: Option<libp2p_identity::PeerId>,
    /// The peer it came from.
    pub from: libp2p_identity::PeerId,
    /// `normal` or `high`.
    pub priority: blackhole_pubsub::Priority,
    /// Expiry, unix milliseconds.
    pub expires_ms: Option<u64>,
    /// When this node received it, unix milliseconds.
    pub received_ms: u64,
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

impl Delivered {
    fn from_message(m: &Message) -> Self {
        Self {
            id: m.id.to_string(),
            topic: m.topic.to_string(),
            data: m.data.clone(),
            source: m.source,
            from: m.propagation_source,
            priority: m.priority,
            expires_ms: m.expires_ms,
            received_ms: crate::node::unix_ms(),
        }
    }

    /// The payload as text, if it is UTF-8.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.data).ok()
    }

    /// Whether it has expired by `now_ms` (unix milliseconds).
    pub fn expired_at(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| e <= now_ms)
    }
}

/// A local subscription: messages matching its pattern, until dropped.
#[derive(Debug)]
pub struct Subscription {
    pattern: String,
    rx: mpsc::Receiver<Delivered>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Subscription {
    /// The next message; `None` when the node stops. Messages that
    /// expired while they waited in this subscription's queue are skipped.
    pub async fn recv(&mut self) -> Option<Delivered> {
        loop {
            let m = self.rx.recv().await?;
            if !m.expired_at(crate::node::unix_ms()) {
                return Some(m);
            }
            tracing::trace!(pattern = %self.pattern, topic = %m.topic, "queued message expired");
        }
    }

    /// The pattern.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Messages dropped because this subscription's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Topics known in the network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Topics {
    /// Announced concrete topics (with ours).
    pub topics: Vec<TopicInfo>,
    /// Announced wildcard patterns and how many nodes hold each.
    pub patterns: Vec<(String, usize)>,
    /// Our own subscriptions.
    pub subscriptions: Vec<String>,
}

/// Peers of one topic or pattern.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mesh {
    /// The topic or pattern.
    pub topic: String,
    /// Peers in our gossipsub mesh for it.
    pub mesh: Vec<libp2p_identity::PeerId>,
    /// Connected peers subscribed to it.
    pub topic_peers: usize,
    /// Gossipsub scores of the mesh peers.
    pub scores: Vec<(libp2p_identity::PeerId, f64)>,
}

#[derive(Debug)]
pub(crate) enum Command {
    Subscribe {
        pattern: Pattern,
        reply: oneshot::Sender<Result<Subscription, Error>>,
    },
    Publish {
        topic: blackhole_pubsub::Topic,
        data: Vec<u8>,
        options: blackhole_pubsub::PublishOptions,
        reply: oneshot::Sender<Result<Published, Error>>,
    },
    Topics {
        prefix: String,
        limit: usize,
        reply: oneshot::Sender<Result<Topics, Error>>,
    },
    Mesh {
        pattern: Pattern,
        reply: oneshot::Sender<Result<Mesh, Error>>,
    },
    Score {
        peer: libp2p_identity::PeerId,
        reply: oneshot::Sender<Result<Option<f64>, Error>>,
    },
    Subscribers {
        topic: blackhole_pubsub::Topic,
        reply: oneshot::Sender<Result<Vec<libp2p_identity::PeerId>, Error>>,
    },
    Validator {
        pattern: Pattern,
        validator: ValidatorBox,
        reply: oneshot::Sender<Result<(), Error>>,
    },
}

/// An application validator, as it travels to the event loop.
#[derive(Clone)]
pub(crate) struct ValidatorBox(pub(crate) Arc<dyn blackhole_pubsub::Validator>);

impl std::fmt::Debug for ValidatorBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Validator")
    }
}

fn disabled<T>() -> Result<T, Error> {
    Err(Error::PubsubDisabled)
}

struct Local {
    pattern: Pattern,
    tx: mpsc::Sender<Delivered>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

/// The event loop's pubsub state.
#[derive(Default)]
pub(crate) struct State {
    locals: Vec<Local>,
    publishes: HashMap<u64, oneshot::Sender<Result<Published, Error>>>,
}

impl State {
    pub(crate) fn on_command(&mut self, pubsub: Option<&mut Behaviour>, cmd: Command) {
        let Some(b) = pubsub else {
            match cmd {
                Command::Subscribe { reply, .. } => drop(reply.send(disabled())),
                Command::Publish { reply, .. } => drop(reply.send(disabled())),
                Command::Topics { reply, .. } => drop(reply.send(disabled())),
                Command::Mesh { reply, .. } => drop(reply.send(disabled())),
                Command::Score { reply, .. } => drop(reply.send(disabled())),
                Command::Subscribers { reply, .. } => drop(reply.send(disabled())),
                Command::Validator { reply, .. } => drop(reply.send(disabled())),
            }
            return;
        };
        match cmd {
            Command::Subscribe { pattern, reply } => {
                self.gc(b);
                if self.locals.len() >= MAX_LOCAL_SUBSCRIPTIONS {
                    let _ = reply.send(Err(Error::Pubsub(format!(
                        "too many local subscriptions ({MAX_LOCAL_SUBSCRIPTIONS})"
                    ))));
                    return;
                }
                if let Err(e) = b.subscribe(pattern.clone()) {
                    let _ = reply.send(Err(Error::Pubsub(e.to_string())));
                    return;
                }
                let (tx, rx) = mpsc::channel(SUBSCRIPTION_QUEUE);
                let dropped = Arc::default();
                self.locals.push(Local {
                    pattern: pattern.clone(),
                    tx,
                    dropped: Arc::clone(&dropped),
                });
                tracing::debug!(%pattern, "subscribed");
                let _ = reply.send(Ok(Subscription {
                    pattern: pattern.to_string(),
                    rx,
                    dropped,
                }));
            }
            Command::Publish {
                topic,
                data,
                options,
                reply,
            } => match b.publish(topic, data, options) {
                Ok(PublishStatus::Done(p)) => drop(reply.send(Ok(p))),
                Ok(PublishStatus::Waiting(token)) => {
                    self.publishes.insert(token, reply);
                }
                Err(e) => drop(reply.send(Err(Error::Publish(e)))),
            },
            Command::Topics {
                prefix,
                limit,
                reply,
            } => {
                let _ = reply.send(Ok(Topics {
                    topics: b.topics(&prefix, limit),
                    patterns: b.patterns(),
                    subscriptions: b.subscriptions(),
                }));
            }
            Command::Mesh { pattern, reply } => {
                let mesh = b.mesh_peers(&pattern);
                let scores = mesh
                    .iter()
                    .filter_map(|p| b.peer_score(p).map(|s| (*p, s)))
                    .collect();
                let _ = reply.send(Ok(Mesh {
                    topic: pattern.to_string(),
                    topic_peers: b.topic_peers(&pattern),
                    mesh,
                    scores,
                }));
            }
            Command::Score { peer, reply } => {
                let _ = reply.send(Ok(b.peer_score(&peer)));
            }
            Command::Subscribers { topic, reply } => {
                let _ = reply.send(Ok(b.subscribers(&topic)));
            }
            Command::Validator {
                pattern,
                validator,
                reply,
            } => {
                b.set_validator(pattern, validator.0);
                let _ = reply.send(Ok(()));
            }
        }
    }

    pub(crate) fn on_event(&mut self, pubsub: Option<&mut Behaviour>, event: Event) {
        match event {
            // It may have waited (validation, the event queue): an expired
            // message is not delivered.
            Event::Message(m) if m.expired_at(crate::node::unix_ms()) => {
                tracing::trace!(topic = %m.topic, "message expired before delivery");
            }
            Event::Message(m) => {
                let mut closed = false;
                let mut delivered = None;
                for l in &self.locals {
                    if !l.pattern.matches(&m.topic) {
                        continue;
                    }
                    let d = delivered.get_or_insert_with(|| Delivered::from_message(&m));
                    match l.tx.try_send(d.clone()) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            l.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::debug!(pattern = %l.pattern, topic = %m.topic, "subscriber too slow: message dropped");
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
                    }
                }
                if closed && let Some(b) = pubsub {
                    self.gc(b);
                }
            }
            Event::PublishFinished { token, result } => {
                if let Some(reply) = self.publishes.remove(&token) {
                    let _ = reply.send(result.map_err(Error::Publish));
                }
            }
            _ => {}
        }
    }

    /// Drops subscriptions whose receiver is gone (a dropped
    /// [`Subscription`], an API client that closed its stream). The node
    /// calls it on every maintenance tick (each second), before a
    /// subscribe, and when a delivery finds a closed receiver.
    pub(crate) fn gc(&mut self, b: &mut Behaviour) {
        self.locals.retain(|l| {
            if l.tx.is_closed() {
                b.unsubscribe(&l.pattern);
                tracing::debug!(pattern = %l.pattern, "unsubscribed");
                false
            } else {
                true
            }
        });
        self.publishes.retain(|_, r| !r.is_closed());
    }

    /// Fails what nobody will answer any more.
    pub(crate) fn fail_all(&mut self) {
        for (_, r) in self.publishes.drain() {
            let _ = r.send(Err(Error::Stopped));
        }
        self.locals.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(data: &[u8], expires_ms: Option<u64>) -> Message {
        let peer = libp2p_identity::PeerId::random();
        Message {
            id: blackhole_pubsub::MessageId([0; 20]),
            topic: blackhole_pubsub::Topic::new("t/x").unwrap(),
            data: data.to_vec(),
            source: Some(peer),
            propagation_source: peer,
            priority: blackhole_pubsub::Priority::Normal,
            expires_ms,
        }
    }

    fn local(state: &mut State, pattern: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_QUEUE);
        let dropped = Arc::default();
        state.locals.push(Local {
            pattern: Pattern::new(pattern).unwrap(),
            tx,
            dropped: Arc::clone(&dropped),
        });
        Subscription {
            pattern: pattern.into(),
            rx,
            dropped,
        }
    }

    #[test]
    fn expired_messages_are_not_delivered_to_local_subscriptions() {
        let mut state = State::default();
        let mut sub = local(&mut state, "t/*");
        let now = crate::node::unix_ms();
        state.on_event(None, Event::Message(message(b"stale", Some(now - 1))));
        state.on_event(None, Event::Message(message(b"fresh", Some(now + 60_000))));
        state.on_event(None, Event::Message(message(b"forever", None)));
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| sub.rx.try_recv().ok())
            .map(|d| d.data)
            .collect();
        assert_eq!(got, [b"fresh".to_vec(), b"forever".to_vec()]);
    }

    #[tokio::test]
    async fn messages_that_expire_in_the_queue_are_skipped() {
        let mut state = State::default();
        let mut sub = local(&mut state, "t/*");
        let now = crate::node::unix_ms();
        // Queued while fresh, expired when read.
        let mut stale = Delivered::from_message(&message(b"stale", Some(now + 60_000)));
        stale.expires_ms = Some(now - 1);
        state.locals[0].tx.try_send(stale).unwrap();
        state.on_event(None, Event::Message(message(b"fresh", Some(now + 60_000))));
        let m = sub.recv().await.unwrap();
        assert_eq!(m.data, b"fresh");
    }
}
