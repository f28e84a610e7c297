//! The node's side of rendezvous: registering and discovering through the
//! handle, and keeping the configured registrations fresh.

use std::collections::{HashMap, VecDeque};

use libp2p_core::Multiaddr;
use libp2p_identity::PeerId;
use libp2p_rendezvous::{Cookie, Namespace, client};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::node::Error;

/// Rendezvous requests waiting for an answer through the handle.
pub const MAX_PENDING_REQUESTS: usize = 256;

/// One registration found by a discovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// The registered peer.
    pub peer_id: PeerId,
    /// Its signed addresses.
    pub addrs: Vec<Multiaddr>,
    /// The namespace.
    pub namespace: String,
    /// Seconds the registration lives.
    pub ttl_secs: u64,
}

/// The answer to a discovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Discovered {
    /// What the point returned.
    pub registrations: Vec<Registration>,
    /// Pass this back to get only newer registrations (paging), hex.
    pub cookie: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Decodes a cookie from [`Discovered::cookie`].
pub(crate) fn cookie(s: &str) -> Result<Cookie, Error> {
    let bytes =
        crate::dht::decode_hex(s).ok_or_else(|| Error::Rendezvous("cookie is not hex".into()))?;
    Cookie::from_wire_encoding(bytes).map_err(|e| Error::Rendezvous(format!("invalid cookie: {e}")))
}

/// Checks a namespace.
pub(crate) fn namespace(s: &str) -> Result<Namespace, Error> {
    Namespace::new(s.to_owned())
        .map_err(|_| Error::Rendezvous("namespace longer than 255 bytes".into()))
}

type RegisterReply = oneshot::Sender<Result<u64, Error>>;
type DiscoverReply = oneshot::Sender<Result<Discovered, Error>>;

/// Requests in flight, matched to events by point and namespace (the
/// client reports no request ids); answered first come, first served.
#[derive(Default)]
pub(crate) struct Pending {
    register: HashMap<(PeerId, String), VecDeque<RegisterReply>>,
    discover: HashMap<(PeerId, Option<String>), VecDeque<DiscoverReply>>,
    count: usize,
}

impl Pending {
    pub(crate) fn is_full(&self) -> bool {
        self.count >= MAX_PENDING_REQUESTS
    }

    pub(crate) fn add_register(&mut self, point: PeerId, ns: String, reply: RegisterReply) {
        self.count += 1;
        self.register
            .entry((point, ns))
            .or_default()
            .push_back(reply);
    }

    pub(crate) fn add_discover(&mut self, point: PeerId, ns: Option<String>, reply: DiscoverReply) {
        self.count += 1;
        self.discover
            .entry((point, ns))
            .or_default()
            .push_back(reply);
    }

    fn take_register(&mut self, point: PeerId, ns: &str) -> Option<RegisterReply> {
        let key = (point, ns.to_owned());
        let q = self.register.get_mut(&key)?;
        let r = q.pop_front();
        if q.is_empty() {
            self.register.remove(&key);
        }
        self.count -= usize::from(r.is_some());
        r
    }

    fn take_discover(&mut self, point: PeerId, ns: Option<String>) -> Option<DiscoverReply> {
        let key = (point, ns);
        let q = self.discover.get_mut(&key)?;
        let r = q.pop_front();
        if q.is_empty() {
            self.discover.remove(&key);
        }
        self.count -= usize::from(r.is_some());
        r
    }

    /// Answers the request a client event concludes. Returns the namespace
    /// and TTL of a successful registration (to schedule its refresh).
    pub(crate) fn on_event(&mut self, event: &client::Event) -> Option<(PeerId, String, u64)> {
        match event {
            client::Event::Registered {
                rendezvous_node,
                ttl,
                namespace,
            } => {
                if let Some(tx) = self.take_register(*rendezvous_node, &namespace.to_string()) {
                    let _ = tx.send(Ok(*ttl));
                }
                return Some((*rendezvous_node, namespace.to_string(), *ttl));
            }
            client::Event::RegisterFailed {
                rendezvous_node,
                namespace,
                error,
            } => {
                if let Some(tx) = self.take_register(*rendezvous_node, &namespace.to_string()) {
                    let _ = tx.send(Err(Error::Rendezvous(format!(
                        "registration refused: {error:?}"
                    ))));
                }
            }
            client::Event::Discovered {
                rendezvous_node,
                registrations,
                cookie,
            } => {
                let ns = cookie.namespace().map(|n| n.to_string());
                if let Some(tx) = self.take_discover(*rendezvous_node, ns) {
                    let registrations = registrations
                        .iter()
                        .map(|r| Registration {
                            peer_id: r.record.peer_id(),
                            addrs: r.record.addresses().to_vec(),
                            namespace: r.namespace.to_string(),
                            ttl_secs: r.ttl,
                        })
                        .collect();
                    let _ = tx.send(Ok(Discovered {
                        registrations,
                        cookie: hex(&cookie.clone().into_wire_encoding()),
                    }));
                }
            }
            client::Event::DiscoverFailed {
                rendezvous_node,
                namespace,
                error,
            } => {
                if let Some(tx) =
                    self.take_discover(*rendezvous_node, namespace.as_ref().map(|n| n.to_string()))
                {
                    let _ = tx.send(Err(Error::Rendezvous(format!(
                        "discovery refused: {error:?}"
                    ))));
                }
            }
            client::Event::Expired { .. } => {}
        }
        None
    }

    /// Fails everything (the node stops).
    pub(crate) fn fail_all(&mut self) {
        for (_, q) in self.register.drain() {
            for tx in q {
                let _ = tx.send(Err(Error::Stopped));
            }
        }
        for (_, q) in self.discover.drain() {
            for tx in q {
                let _ = tx.send(Err(Error::Stopped));
            }
        }
        self.count = 0;
    }
}
