//! Rendezvous: register, discover with paging, expiry, and the point's
//! limits against a peer that registers too much.

use std::time::Duration;

use blackhole_node::{Config, Event, Handle};

/// A memory-transport node at a fixed address it also announces (a
/// registration carries the registrant's external addresses).
async fn node(edit: impl FnOnce(&mut Config)) -> (Handle, String) {
    let port: u64 = rand_port();
    let addr = format!("/memory/{port}");
    let mut c = Config::default();
    c.transport.memory = true;
    c.transport.tcp.enabled = false;
    c.transport.quic.enabled = false;
    c.transport.websocket.enabled = false;
    c.network.listen = vec![addr.parse().unwrap()];
    c.network.external_addresses = vec![addr.parse().unwrap()];
    c.api.enabled = false;
    c.overlay.enabled = false;
    edit(&mut c);
    let h = crate::support::start(c).await;
    let full = format!("{addr}/p2p/{}", h.peer_id());
    (h, full)
}

fn rand_port() -> u64 {
    // Distinct memory ports per node: a process-wide counter from a random base.
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = u64::from(std::process::id()) << 20;
    base + 1000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_discover_page_and_expire() {
    let (point, point_addr) = node(|c| {
        c.discovery.rendezvous.server = true;
        c.discovery.rendezvous.min_ttl = Duration::from_secs(1);
    })
    .await;
    let mut point_events = point.events();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (h, _) = node(|_| {}).await;
        h.dial(point_addr.parse().unwrap()).await.unwrap();
        clients.push(h);
    }
    for (i, c) in clients.iter().enumerate() {
        let ttl = if i == 0 { 2 } else { 3600 };
        let granted = c
            .rendezvous_register(point.peer_id(), "blackhole/test".into(), Some(ttl))
            .await
            .unwrap();
        assert_eq!(granted, ttl);
        let seen =
            crate::support::wait_event(&mut point_events, Duration::from_secs(10), |e| match e {
                Event::RendezvousRegistered {
                    peer_id, ttl_secs, ..
                } => Some((*peer_id, *ttl_secs)),
                _ => None,
            })
            .await;
        assert_eq!(seen, (c.peer_id(), ttl));
    }
    let (seeker, _) = node(|_| {}).await;
    seeker.dial(point_addr.parse().unwrap()).await.unwrap();
    let all = seeker
        .rendezvous_discover(point.peer_id(), Some("blackhole/test".into()), None, None)
        .await
        .unwrap();
    let mut found: Vec<_> = all.registrations.iter().map(|r| r.peer_id).collect();
    found.sort();
    let mut expected: Vec<_> = clients.iter().map(|c| c.peer_id()).collect();
    expected.sort();
    assert_eq!(found, expected);
    assert!(all.registrations.iter().all(|r| !r.addrs.is_empty()));

    // Paging: one at a time, the cookie moves on.
    let mut seen = Vec::new();
    let mut cookie = None;
    for _ in 0..3 {
        let page = seeker
            .rendezvous_discover(
                point.peer_id(),
                Some("blackhole/test".into()),
                cookie,
                Some(1),
            )
            .await
            .unwrap();
        assert_eq!(page.registrations.len(), 1);
        seen.push(page.registrations[0].peer_id);
        cookie = Some(page.cookie);
    }
    seen.sort();
    assert_eq!(seen, expected);
    let rest = seeker
        .rendezvous_discover(
            point.peer_id(),
            Some("blackhole/test".into()),
            cookie,
            Some(1),
        )
        .await
        .unwrap();
    assert!(rest.registrations.is_empty());

    // The 2-second registration expires at the point (which says so);
    // the others stay.
    let expired =
        crate::support::wait_event(&mut point_events, Duration::from_secs(15), |e| match e {
            Event::RendezvousRegistrationEnded { peer_id, namespace } => {
                Some((*peer_id, namespace.clone()))
            }
            _ => None,
        })
        .await;
    assert_eq!(expired, (clients[0].peer_id(), "blackhole/test".to_owned()));
    let now = seeker
        .rendezvous_discover(point.peer_id(), Some("blackhole/test".into()), None, None)
        .await
        .unwrap();
    let ids: Vec<_> = now.registrations.iter().map(|r| r.peer_id).collect();
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&clients[0].peer_id()), "{ids:?}");

    // Bad input is an error, not a panic.
    let err = seeker
        .rendezvous_discover(point.peer_id(), None, Some("zz".into()), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cookie"), "{err}");
    let err = seeker
        .rendezvous_register(point.peer_id(), "x".repeat(300), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("255"), "{err}");
    for h in clients.into_iter().chain([seeker, point]) {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_flood_hits_the_points_limits() {
    let (point, point_addr) = node(|c| {
        c.discovery.rendezvous.server = true;
        c.discovery.rendezvous.max_registrations_per_peer = 5;
    })
    .await;
    let (flooder, _) = node(|_| {}).await;
    flooder.dial(point_addr.parse().unwrap()).await.unwrap();
    let mut ok = 0;
    let mut refused = 0;
    for i in 0..20 {
        match flooder
            .rendezvous_register(point.peer_id(), format!("ns-{i}"), None)
            .await
        {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.to_string().contains("refused"), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (5, 15));
    let all = flooder
        .rendezvous_discover(point.peer_id(), None, None, None)
        .await
        .unwrap();
    assert_eq!(all.registrations.len(), 5);
    flooder.shutdown().await;
    point.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_namespace_cannot_take_every_slot() {
    let (point, point_addr) = node(|c| {
        c.discovery.rendezvous.server = true;
        c.discovery.rendezvous.max_registrations_per_namespace = 2;
    })
    .await;
    let mut peers = Vec::new();
    for _ in 0..3 {
        let (p, _) = node(|_| {}).await;
        p.dial(point_addr.parse().unwrap()).await.unwrap();
        peers.push(p);
    }
    for p in &peers[..2] {
        p.rendezvous_register(point.peer_id(), "busy".into(), None)
            .await
            .unwrap();
    }
    let e = peers[2]
        .rendezvous_register(point.peer_id(), "busy".into(), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
    // Another namespace still has room, and a renewal is no new slot.
    peers[2]
        .rendezvous_register(point.peer_id(), "quiet".into(), None)
        .await
        .unwrap();
    peers[0]
        .rendezvous_register(point.peer_id(), "busy".into(), None)
        .await
        .unwrap();
    let busy = peers[2]
        .rendezvous_discover(point.peer_id(), Some("busy".into()), None, None)
        .await
        .unwrap();
    let mut found: Vec<_> = busy.registrations.iter().map(|r| r.peer_id).collect();
    found.sort();
    let mut want = vec![peers[0].peer_id(), peers[1].peer_id()];
    want.sort();
    assert_eq!(found, want);
    for p in peers {
        p.shutdown().await;
    }
    point.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_rendezvous_protocol_closes_the_stream() {
    use futures::{AsyncReadExt, AsyncWriteExt};
    let (point, point_addr) = node(|c| c.discovery.rendezvous.server = true).await;
    let (client, _) = node(|_| {}).await;
    client.dial(point_addr.parse().unwrap()).await.unwrap();
    let mut control = client.stream_control();
    let protocol = libp2p_swarm::StreamProtocol::new("/rendezvous/1.0.0");
    for garbage in [
        // A length prefix of 2^35 bytes: refused before any allocation.
        &[0xff, 0xff, 0xff, 0xff, 0x7f][..],
        // A varint that never ends.
        &[0xff; 12][..],
        // A body that is not a rendezvous message.
        b"\x05hello",
    ] {
        let mut s = control
            .open_stream(point.peer_id(), protocol.clone())
            .await
            .unwrap();
        s.write_all(garbage).await.unwrap();
        s.flush().await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
            .await
            .expect("the point closes the stream");
        assert!(
            read.is_err() || answer.is_empty(),
            "{garbage:?} got an answer: {answer:?}"
        );
    }
    // The point still serves, and counted none of it.
    client
        .rendezvous_register(point.peer_id(), "after-garbage".into(), None)
        .await
        .unwrap();
    let all = client
        .rendezvous_discover(point.peer_id(), None, None, None)
        .await
        .unwrap();
    assert_eq!(all.registrations.len(), 1);
    client.shutdown().await;
    point.shutdown().await;
}
