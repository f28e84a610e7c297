//! Two nodes connect and ping over every combination we offer, on real
//! loopback sockets: TCP and WebSocket × {Noise, TLS} × {Yamux, Mplex}, and
//! QUIC. Also: remote key types, failed handshakes, bad addresses.

use std::time::Duration;

use blackhole_mux::Protocol as Mux;
use blackhole_node::{Direction, Event, Handle};
use blackhole_security::Protocol as Sec;
use blackhole_transport::Kind;

use crate::support::{addr, config, identified_peer, start, start_with_key, wait_event};

const LISTEN_ALL: &[&str] = &[
    "/ip4/127.0.0.1/tcp/0",
    "/ip4/127.0.0.1/tcp/0/ws",
    "/ip4/127.0.0.1/udp/0/quic-v1",
];

/// A listener offering everything.
async fn listener() -> Handle {
    start(config(LISTEN_ALL)).await
}

/// A dialer offering only `sec` and `mux`.
async fn dialer(sec: Sec, mux: Mux) -> Handle {
    let mut c = config(&[]);
    c.transport.security = vec![sec];
    c.mux.protocols = vec![mux];
    start(c).await
}

/// Dials `listener` over `kind`, checks what both sides negotiated, pings
/// and moves some bytes.
async fn check(listener: &Handle, dialer: &Handle, kind: Kind, sec: Sec, mux: Option<Mux>) {
    let addrs = listener.listen_addrs().await.unwrap();
    let a = addrs
        .iter()
        .find(|a| Kind::of(a) == kind)
        .unwrap_or_else(|| panic!("no {kind:?} address in {addrs:?}"));
    let target: blackhole_node::Multiaddr =
        format!("{a}/p2p/{}", listener.peer_id()).parse().unwrap();
    let peer = dialer
        .dial(target.clone())
        .await
        .unwrap_or_else(|e| panic!("dial {target}: {e}"));
    assert_eq!(peer, listener.peer_id());

    let ours = identified_peer(dialer, peer).await;
    let theirs = identified_peer(listener, dialer.peer_id()).await;
    for (info, direction) in [(&ours, Direction::Outbound), (&theirs, Direction::Inbound)] {
        let c = info
            .connections
            .iter()
            .find(|c| c.direction == direction)
            .expect("a connection");
        assert_eq!(c.transport, kind, "{target}");
        assert_eq!(c.security, Some(sec), "{target}");
        assert_eq!(c.muxer, mux, "{target}");
    }
    assert!(
        ours.agent_version
            .as_deref()
            .unwrap()
            .starts_with("blackhole-node/")
    );

    let rtt = dialer.ping(peer).await.unwrap();
    assert!(rtt < Duration::from_secs(5));
    let report = dialer.perf(peer, 3 << 20, 2 << 20).await.unwrap();
    assert_eq!(
        (report.upload_bytes, report.download_bytes),
        (3 << 20, 2 << 20)
    );
    assert!(dialer.disconnect(peer).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_security_and_muxer_combination() {
    let l = listener().await;
    for kind in [Kind::Tcp, Kind::WebSocket] {
        for sec in [Sec::Noise, Sec::Tls] {
            for mux in [Mux::Yamux, Mux::Mplex] {
                let d = dialer(sec, mux).await;
                check(&l, &d, kind, sec, Some(mux)).await;
                d.shutdown().await;
            }
        }
    }
    let d = dialer(Sec::Noise, Mux::Yamux).await;
    check(&l, &d, Kind::Quic, Sec::Tls, None).await;
    d.shutdown().await;
    l.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preference_order_decides_and_mismatch_fails() {
    let mut c = config(&["/ip4/127.0.0.1/tcp/0"]);
    c.transport.security = vec![Sec::Noise];
    c.mux.protocols = vec![Mux::Mplex, Mux::Yamux];
    let l = start(c).await;

    // The dialer proposes in its own order; the listener accepts the first it supports.
    let mut c = config(&[]);
    c.transport.security = vec![Sec::Tls, Sec::Noise];
    c.mux.protocols = vec![Mux::Yamux, Mux::Mplex];
    let d = start(c).await;
    let target = addr(&l, "tcp").await;
    let peer = d.dial(target.clone()).await.unwrap();
    let info = identified_peer(&d, peer).await;
    assert_eq!(info.connections[0].security, Some(Sec::Noise));
    assert_eq!(info.connections[0].muxer, Some(Mux::Yamux));

    // No common security protocol: the dial fails with a reason, and the
    // listener reports the failed inbound handshake with the address.
    let mut events = l.events();
    let mut c = config(&[]);
    c.transport.security = vec![Sec::Tls];
    let only_tls = start(c).await;
    let err = only_tls.dial(target).await.unwrap_err().to_string();
    assert!(err.contains("dial failed"), "{err}");
    let failure = wait_event(&mut events, Duration::from_secs(10), |e| match e {
        Event::IncomingConnectionFailed {
            send_back_addr,
            error,
        } => Some((send_back_addr.clone(), error.clone())),
        _ => None,
    })
    .await;
    assert!(
        failure.0.to_string().starts_with("/ip4/127.0.0.1/tcp/"),
        "{failure:?}"
    );
    assert!(!failure.1.is_empty());
    for h in [d, only_tls, l] {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secp256k1_and_ecdsa_peers_are_accepted() {
    let l = listener().await;
    for (name, key) in [
        ("ed25519", blackhole_node::Keypair::generate_ed25519()),
        ("secp256k1", blackhole_node::Keypair::generate_secp256k1()),
        ("ecdsa", blackhole_node::Keypair::generate_ecdsa()),
    ] {
        for sec in [Sec::Noise, Sec::Tls] {
            let mut c = config(&[]);
            c.transport.security = vec![sec];
            let d = start_with_key(c, key.clone()).await;
            let peer = d
                .dial(addr(&l, "tcp").await)
                .await
                .unwrap_or_else(|e| panic!("{name}/{sec}: {e}"));
            d.ping(peer)
                .await
                .unwrap_or_else(|e| panic!("{name}/{sec}: {e}"));
            let seen = identified_peer(&l, d.peer_id()).await;
            assert_eq!(seen.peer_id, key.public().to_peer_id());
            d.shutdown().await;
        }
    }
    l.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_handshake_is_logged_with_address_not_a_panic() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = start(config(&["/ip4/127.0.0.1/tcp/0"])).await;
    let mut events = l.events();
    let a = l.listen_addrs().await.unwrap()[0].clone();
    let port: u16 = a.to_string().rsplit('/').next().unwrap().parse().unwrap();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let local = s.local_addr().unwrap();
    s.write_all(b"\x13/multistream/1.0.0\n\x07/noise\n")
        .await
        .unwrap();
    // A 5-byte "handshake message" that is not one: Noise fails at once.
    s.write_all(b"\x00\x05hello").await.unwrap();
    let (addr, error) = wait_event(&mut events, Duration::from_secs(30), |e| match e {
        Event::IncomingConnectionFailed {
            send_back_addr,
            error,
        } => Some((send_back_addr.clone(), error.clone())),
        _ => None,
    })
    .await;
    assert_eq!(
        addr.to_string(),
        format!("/ip4/127.0.0.1/tcp/{}", local.port())
    );
    assert!(!error.is_empty());
    // The node closed the connection and is still healthy.
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection was not closed");
    assert!(l.peers().await.unwrap().is_empty());
    l.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_unreachable_addresses_are_errors() {
    let d = start(config(&[])).await;
    // Nothing listens there.
    let err = d
        .dial("/ip4/127.0.0.1/tcp/1".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("dial failed"), "{err}");
    // No transport for this address.
    let err = d
        .dial("/ip4/127.0.0.1/udp/5/utp".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("dial failed"), "{err}");
    // Wrong peer id at a real address.
    let l = start(config(&["/ip4/127.0.0.1/tcp/0"])).await;
    let a = l.listen_addrs().await.unwrap()[0].clone();
    let other = blackhole_security::identity::generate()
        .public()
        .to_peer_id();
    let err = d
        .dial(format!("{a}/p2p/{other}").parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("dial failed"), "{err}");
    // A ping to a peer we cannot reach is an error in bounded time.
    let err = d.ping(other).await.unwrap_err();
    assert!(!err.to_string().is_empty());
    d.shutdown().await;
    l.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_times_out_in_the_handshake() {
    let mut c = config(&["/ip4/127.0.0.1/tcp/0"]);
    c.transport.upgrade_timeout = Duration::from_secs(1);
    let l = start(c).await;
    let mut events = l.events();
    let port: u16 = l.listen_addrs().await.unwrap()[0]
        .to_string()
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Connects and says nothing.
    let _s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let error = wait_event(&mut events, Duration::from_secs(15), |e| match e {
        Event::IncomingConnectionFailed { error, .. } => Some(error.clone()),
        _ => None,
    })
    .await;
    assert!(error.contains("did not finish within"), "{error}");
    let metrics = l.metrics().encode().unwrap();
    assert!(
        metrics.contains("blackhole_transport_upgrade_failures_total{stage=\"timeout\"} 1"),
        "{metrics}"
    );
    l.shutdown().await;
}

/// Closes `handle`'s connections to `peer` and waits until the last is gone.
async fn disconnect(handle: &Handle, peer: blackhole_node::PeerId) {
    let mut events = handle.events();
    assert!(handle.disconnect(peer).await.unwrap());
    wait_event(&mut events, Duration::from_secs(10), |e| match e {
        Event::ConnectionClosed {
            peer_id,
            remaining: 0,
            ..
        } if *peer_id == peer => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_peer_is_redialed_from_the_peer_store() {
    let l = start(config(&["/ip4/127.0.0.1/tcp/0"])).await;
    let d = start(config(&[])).await;
    let peer = d.dial(addr(&l, "tcp").await).await.unwrap();
    disconnect(&d, peer).await;
    // By peer id alone: the address comes from the peer store.
    d.ping(peer).await.unwrap();
    assert!(d.peers().await.unwrap().iter().any(|p| p.peer_id == peer));
    d.shutdown().await;
    l.shutdown().await;
}

/// The inbound connection attempts `handle` has counted (all transports).
fn incoming_attempts(handle: &Handle) -> u64 {
    handle
        .metrics()
        .encode()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("libp2p_swarm_connections_incoming_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redial_by_peer_id_opens_one_connection_per_address() {
    use blackhole_node::{DhtCommand, dht::Reply};
    let server = |c: &mut blackhole_node::Config| c.overlay.mode = blackhole_overlay::Mode::Server;
    let mut lc = config(&["/ip4/127.0.0.1/udp/0/quic-v1"]);
    server(&mut lc);
    let l = start(lc).await;
    let mut dc = config(&["/ip4/127.0.0.1/udp/0/quic-v1"]);
    server(&mut dc);
    let d = start(dc).await;
    let peer = d.dial(addr(&l, "quic").await).await.unwrap();
    // The dialer now knows the one address twice over: the DHT keeps the
    // address it dialed (with `/p2p/<peer>`, as the swarm dialed it), the
    // peer store identify's listen address (without). Before addresses
    // were made unique, a dial by peer id dialed both: two QUIC connections.
    crate::support::until(
        "the routing table holds the address with the peer suffix",
        Duration::from_secs(20),
        || async {
            let Ok(Reply::Table { buckets }) = d.dht(DhtCommand::table()).await else {
                return false;
            };
            let addrs: Vec<String> = buckets
                .iter()
                .flat_map(|b| &b.peers)
                .filter(|p| p.peer_id == peer)
                .flat_map(|p| p.addresses.iter().map(|a| a.to_string()))
                .collect();
            addrs.iter().any(|a| a.contains("/p2p/"))
        },
    )
    .await;
    disconnect(&d, peer).await;
    let before = incoming_attempts(&l);
    let mut inbound = l.events();
    let dialer = d.peer_id();
    // An inbound connection from the dialer, or one that failed.
    let arrival = move |e: &Event| match e {
        Event::ConnectionEstablished { peer_id, .. } if *peer_id == dialer => Some(()),
        Event::IncomingConnectionFailed { .. } => Some(()),
        _ => None,
    };
    d.ping(peer).await.unwrap();
    wait_event(&mut inbound, Duration::from_secs(10), arrival).await;
    // A duplicate attempt is dialed together with the first and arrives
    // with it (established, or failed when the dialer drops it); its
    // absence only time can show: no second arrival within 1 s.
    let second = tokio::time::timeout(
        Duration::from_secs(1),
        wait_event(&mut inbound, Duration::from_secs(10), arrival),
    )
    .await;
    assert!(second.is_err(), "a second inbound connection arrived");
    assert_eq!(
        incoming_attempts(&l) - before,
        1,
        "inbound attempts for one redial"
    );
    d.shutdown().await;
    l.shutdown().await;
}
