//! NAT traversal machinery on loopback: AutoNAT confirming addresses, a
//! relay reservation, a connection through the relay, and its upgrade to a
//! direct connection by hole punching. Loopback has no NAT, so this proves
//! the protocols and the node's wiring; the namespace lab
//! (`cargo xtask test-net --lab nat`, tests/it/nat_lab.rs) proves them
//! behind real NATs.

use std::time::Duration;

use blackhole_nat::{Event as NatEvent, Reachability, Switch};
use blackhole_node::Event;
use blackhole_transport::Kind;

use crate::support::{addr, config, start, wait_event};

fn tcp_config() -> blackhole_node::Config {
    let mut c = config(&["/ip4/127.0.0.1/tcp/0"]);
    c.nat.autonat.probe_interval = Duration::from_secs(1);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autonat_confirms_a_dialable_address() {
    let servers = [start(tcp_config()).await, start(tcp_config()).await];
    let client = start(tcp_config()).await;
    let mut events = client.events();
    for s in &servers {
        client.dial(addr(s, "/tcp/").await).await.unwrap();
    }
    wait_event(&mut events, Duration::from_secs(30), |e| match e {
        Event::Nat(NatEvent::Reachability {
            reachability: Reachability::Public,
        }) => Some(()),
        _ => None,
    })
    .await;
    let status = client.nat_status().await.unwrap();
    assert_eq!(status.reachability, Reachability::Public);
    let listen = addr(&client, "/tcp/").await.to_string();
    assert!(
        status
            .external_addrs
            .iter()
            .any(|a| listen.starts_with(&a.to_string())),
        "confirmed {:?}, listening on {listen}",
        status.external_addrs
    );
    for h in servers.into_iter().chain([client]) {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_connection_then_hole_punched_to_direct() {
    let mut rc = tcp_config();
    rc.nat.relay_server.mode = Switch::On;
    let relay = start(rc).await;
    let relay_addr = addr(&relay, "/tcp/").await;

    // The listener reserves a slot on the relay whatever AutoNAT says.
    let mut lc = tcp_config();
    lc.nat.relay_client.mode = Switch::On;
    lc.nat.relay_client.relays = vec![relay_addr.clone()];
    lc.nat.relay_client.reservations = 1;
    let listener = start(lc).await;
    let mut listener_events = listener.events();
    let relayed = wait_event(&mut listener_events, Duration::from_secs(20), |e| match e {
        Event::Nat(NatEvent::ReservationAccepted { relay: r, addr }) if *r == relay.peer_id() => {
            Some(addr.clone())
        }
        _ => None,
    })
    .await;
    assert!(relayed.to_string().contains("/p2p-circuit"), "{relayed}");
    let status = listener.nat_status().await.unwrap();
    assert_eq!(status.relays, vec![relay.peer_id()]);
    assert_eq!(status.relayed_addrs, vec![relayed.clone()]);

    // A third node dials the listener through the relay only, and hole
    // punching (DCUtR) then gives the two a direct connection.
    let dialer = start(tcp_config()).await;
    let mut dialer_events = dialer.events();
    let peer = dialer.dial(relayed.clone()).await.unwrap();
    assert_eq!(peer, listener.peer_id());
    let first = dialer
        .peers()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.peer_id == peer)
        .unwrap();
    assert!(
        first.connections.iter().any(|c| c.transport == Kind::Relay),
        "{first:?}"
    );
    // Both sides dial; the one whose dial makes the connection reports it.
    let punched = |e: &Event| match e {
        Event::Nat(NatEvent::HolePunched { attempts, .. }) => Some(*attempts),
        Event::Nat(NatEvent::HolePunchFailed { reason, .. }) => {
            panic!("hole punch failed: {reason}")
        }
        _ => None,
    };
    let mut dialer_punch = dialer.events();
    let attempts = tokio::select! {
        a = wait_event(&mut listener_events, Duration::from_secs(30), punched) => a,
        a = wait_event(&mut dialer_punch, Duration::from_secs(30), punched) => a,
    };
    assert!((1..=3).contains(&attempts), "attempts {attempts}");
    wait_event(&mut dialer_events, Duration::from_secs(10), |e| match e {
        Event::ConnectionEstablished {
            peer_id,
            connection,
        } if *peer_id == listener.peer_id() && connection.transport != Kind::Relay => Some(()),
        _ => None,
    })
    .await;
    let (a, b) = (
        listener.nat_status().await.unwrap().hole_punch,
        dialer.nat_status().await.unwrap().hole_punch,
    );
    assert!(a.successes + b.successes >= 1, "{a:?} {b:?}");
    assert!(a.attempts + b.attempts >= 1, "{a:?} {b:?}");

    // A relay with no reservation for the target refuses the circuit.
    let nobody = blackhole_node::PeerId::random();
    let err = dialer
        .dial(
            format!("{relay_addr}/p2p-circuit/p2p/{nobody}")
                .parse()
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("dial failed"), "{err}");
    for h in [dialer, listener, relay] {
        h.shutdown().await;
    }
}
