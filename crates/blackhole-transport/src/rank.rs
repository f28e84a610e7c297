//! QUIC first, TCP a little later: happy eyeballs between the two.
//!
//! libp2p-swarm dials all of a peer's addresses at once (up to its dial
//! concurrency factor) and keeps the first connection that completes. A
//! peer listening on TCP and QUIC therefore gets two handshakes for every
//! dial, and the loser is aborted halfway: in a 200-node test network about
//! half of all inbound handshakes were such losers (`noise handshake
//! failed: unexpected end of file`), each costing both sides a key
//! exchange. go-libp2p ranks addresses instead; this wrapper (off unless
//! `quic.head_start` is set) does the same for the commonest case: when a
//! dial to a peer includes a QUIC address, its plain TCP addresses wait up
//! to `delay` and start only if QUIC has not won by then (the swarm drops
//! them when it does) or as soon as the QUIC attempt fails.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::{FutureExt, TryFutureExt, future::BoxFuture};
use libp2p_core::{
    Multiaddr,
    multiaddr::Protocol,
    transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent},
};
use tokio::sync::watch;

/// How long a QUIC attempt stays known to the TCP dials of the same peer.
/// The swarm creates all of a dial's attempts at once, so the TCP ones look
/// within moments; this only bounds the table.
const WINDOW: Duration = Duration::from_secs(5);
/// QUIC attempts remembered at once; beyond, new ones are not ranked (their
/// TCP addresses race as libp2p-swarm does by default).
const MAX_TRACKED: usize = 1024;

/// What a dial address is, for ranking.
enum Kind {
    /// QUIC to this host and peer.
    Quic(String),
    /// Plain TCP to this host and peer.
    Tcp(String),
    /// Anything else (WebSocket, relayed, memory): not ranked.
    Other,
}

/// `/ip4/1.2.3.4/udp/1/quic-v1/p2p/X` and `/ip4/1.2.3.4/tcp/2/p2p/X` have
/// the key `/ip4/1.2.3.4/p2p/X`.
fn kind(addr: &Multiaddr) -> Kind {
    let mut it = addr.iter();
    let host = match it.next() {
        Some(
            p @ (Protocol::Ip4(_)
            | Protocol::Ip6(_)
            | Protocol::Dns(_)
            | Protocol::Dns4(_)
            | Protocol::Dns6(_)),
        ) => p,
        _ => return Kind::Other,
    };
    let rest: Vec<Protocol<'_>> = it.collect();
    let (transport, peer) = match rest.as_slice() {
        [t @ .., Protocol::P2p(p)] => (t, Some(*p)),
        t => (t, None),
    };
    let key = || match peer {
        Some(p) => format!("{host}/p2p/{p}"),
        None => host.to_string(),
    };
    match transport {
        [Protocol::Udp(_), Protocol::QuicV1] => Kind::Quic(key()),
        [Protocol::Tcp(_)] => Kind::Tcp(key()),
        _ => Kind::Other,
    }
}

/// QUIC attempts in progress: when each started, and a flag set when it
/// failed.
type Attempts = HashMap<String, (Instant, watch::Sender<bool>)>;

/// A transport whose TCP dials give a concurrent QUIC dial to the same
/// peer a head start.
pub(crate) struct QuicFirst<T> {
    inner: T,
    delay: Duration,
    attempts: Arc<Mutex<Attempts>>,
}

impl<T> QuicFirst<T> {
    pub(crate) fn new(inner: T, delay: Duration) -> Self {
        Self {
            inner,
            delay,
            attempts: Arc::default(),
        }
    }
}

impl<T> Transport for QuicFirst<T>
where
    T: Transport + Unpin,
    T::Dial: Send + 'static,
    T::Output: Send + 'static,
    T::Error: Send + 'static,
{
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = BoxFuture<'static, Result<T::Output, T::Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let kind = match self.delay.is_zero() {
            true => Kind::Other,
            false => kind(&addr),
        };
        let dial = self.inner.dial(addr, opts)?;
        Ok(match kind {
            Kind::Quic(key) => {
                let now = Instant::now();
                let (tx, _) = watch::channel(false);
                let failed = tx.clone();
                if let Ok(mut a) = self.attempts.lock() {
                    if a.len() >= MAX_TRACKED {
                        a.retain(|_, (t, _)| now.duration_since(*t) < WINDOW);
                    }
                    if a.len() < MAX_TRACKED {
                        a.insert(key, (now, tx));
                    }
                }
                dial.inspect_err(move |_| {
                    failed.send_replace(true);
                })
                .boxed()
            }
            Kind::Tcp(key) => {
                let (attempts, delay) = (self.attempts.clone(), self.delay);
                async move {
                    // All of a dial's attempts exist before any is polled,
                    // so a QUIC attempt of this dial is in the table now.
                    let quic = attempts.lock().ok().and_then(|a| {
                        a.get(&key)
                            .filter(|(t, _)| t.elapsed() < WINDOW)
                            .map(|(_, tx)| tx.subscribe())
                    });
                    if let Some(mut failed) = quic {
                        tracing::trace!(%key, ?delay, "tcp dial waits for quic");
                        let _ = tokio::time::timeout(delay, failed.wait_for(|f| *f)).await;
                    }
                    dial.await
                }
                .boxed()
            }
            Kind::Other => dial.boxed(),
        })
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use futures::future::Either;
    use libp2p_core::{Endpoint, transport::PortUse};
    use libp2p_identity::{Keypair, PeerId};

    use super::*;
    use crate::{BoxedTransport, Config, build};

    fn transport(key: &Keypair) -> BoxedTransport {
        let mut registry = prometheus_client::registry::Registry::default();
        let mut config = Config::default();
        config.quic.head_start = Duration::from_millis(250);
        build(
            key,
            &config,
            &blackhole_mux::Config::default(),
            &mut registry,
        )
        .unwrap()
        .transport
    }

    fn dial_opts() -> DialOpts {
        DialOpts {
            role: Endpoint::Dialer,
            port_use: PortUse::New,
        }
    }

    /// A real QUIC listener of ours, driven in the background; its address.
    async fn quic_listener(key: &Keypair) -> Multiaddr {
        let mut t = transport(key);
        t.listen_on(
            ListenerId::next(),
            "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
        )
        .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut t = std::pin::pin!(t);
            loop {
                match futures::future::poll_fn(|cx| t.as_mut().poll(cx)).await {
                    TransportEvent::NewAddress { listen_addr, .. } => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(listen_addr);
                        }
                    }
                    TransportEvent::Incoming { upgrade, .. } => {
                        tokio::spawn(upgrade);
                    }
                    _ => {}
                }
            }
        });
        rx.await.unwrap()
    }

    /// A TCP port whose connections are only counted: nothing answers.
    fn silent_tcp() -> (std::net::TcpListener, Multiaddr) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        (l, format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap())
    }

    #[tokio::test]
    async fn tcp_never_starts_when_quic_wins() {
        let (kb, ka) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let peer = kb.public().to_peer_id();
        let quic = quic_listener(&kb).await.with_p2p(peer).unwrap();
        let (tcp, tcp_addr) = silent_tcp();
        let mut a = transport(&ka);
        // As the swarm does: every attempt created first (TCP listed first
        // here), then polled together; the first success wins.
        let t = a
            .dial(tcp_addr.with_p2p(peer).unwrap(), dial_opts())
            .unwrap();
        let q = a.dial(quic, dial_opts()).unwrap();
        let won = tokio::time::timeout(Duration::from_secs(10), futures::future::select(t, q))
            .await
            .expect("a dial completes");
        match won {
            Either::Right((Ok((p, _)), _)) => assert_eq!(p, peer),
            Either::Right((Err(e), _)) => panic!("quic failed: {e}"),
            Either::Left(_) => panic!("tcp finished first"),
        }
        assert_eq!(
            tcp.accept().map(|_| ()).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "no TCP connection may have been attempted"
        );
    }

    #[tokio::test]
    async fn tcp_starts_after_the_head_start_when_quic_is_silent() {
        let peer = PeerId::random();
        // A UDP port that never answers: the QUIC attempt hangs.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let quic: Multiaddr = format!(
            "/ip4/127.0.0.1/udp/{}/quic-v1",
            udp.local_addr().unwrap().port()
        )
        .parse()
        .unwrap();
        let (tcp, tcp_addr) = silent_tcp();
        let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
        let mut a = transport(&Keypair::generate_ed25519());
        let start = Instant::now();
        let _q = a.dial(quic.with_p2p(peer).unwrap(), dial_opts()).unwrap();
        let t = tokio::spawn(
            a.dial(tcp_addr.with_p2p(peer).unwrap(), dial_opts())
                .unwrap(),
        );
        tokio::time::timeout(Duration::from_secs(10), tcp.accept())
            .await
            .expect("tcp never started")
            .unwrap();
        let accepted = start.elapsed();
        assert!(
            accepted >= Duration::from_millis(250),
            "started after {accepted:?}"
        );
        t.abort();
    }

    fn key(a: &str) -> Option<(bool, String)> {
        match kind(&a.parse().unwrap()) {
            Kind::Quic(k) => Some((true, k)),
            Kind::Tcp(k) => Some((false, k)),
            Kind::Other => None,
        }
    }

    #[test]
    fn quic_and_tcp_of_one_peer_share_a_key() {
        let p = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
        let (q, kq) = key(&format!("/ip4/10.0.0.1/udp/4001/quic-v1/p2p/{p}")).unwrap();
        let (t, kt) = key(&format!("/ip4/10.0.0.1/tcp/4001/p2p/{p}")).unwrap();
        assert!(q && !t);
        assert_eq!(kq, kt);
        // Another peer behind the same address is another key.
        let other = "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE";
        assert_ne!(
            key(&format!("/ip4/10.0.0.1/tcp/1/p2p/{other}")).unwrap().1,
            kt
        );
        assert!(key("/dns4/example.com/tcp/1").is_some());
        // Not ranked: WebSocket, relayed, memory, QUIC drafts.
        for a in [
            "/ip4/10.0.0.1/tcp/1/ws",
            &format!("/ip4/10.0.0.1/tcp/1/p2p/{p}/p2p-circuit/p2p/{other}"),
            "/memory/5",
            "/ip4/10.0.0.1/udp/1/quic",
        ] {
            assert!(key(a).is_none(), "{a}");
        }
    }
}
