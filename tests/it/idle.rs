//! Idle connections close, gossipsub peers included: gossipsub's
//! long-lived streams used to hold every connection to a gossipsub peer
//! open for good, whatever `connections.idle_timeout` said.

use std::time::Duration;

use crate::support::{mem_addr, mem_config, start, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_outside_every_mesh_close_when_idle() {
    let idle = |c: &mut blackhole_node::Config| {
        c.connections.idle_timeout = Duration::from_secs(2);
        // Nothing but gossipsub between them: no DHT, no RPC calls.
        c.overlay.enabled = false;
        c.nat.enabled = false;
    };
    let mut hc = mem_config(&[]);
    idle(&mut hc);
    let hub = start(hc).await;
    let hub_addr = mem_addr(&hub).await;
    let mut leaves = Vec::new();
    for _ in 0..16 {
        let mut c = mem_config(&[]);
        idle(&mut c);
        let leaf = start(c).await;
        leaf.dial(hub_addr.clone()).await.unwrap();
        leaves.push(leaf);
    }
    let connected = || async { hub.peers().await.unwrap().len() };
    until(
        "the hub sees its 16 leaves",
        Duration::from_secs(20),
        || async { connected().await == 16 },
    )
    .await;
    // Every node is in the announcements topic: the hub keeps at most
    // mesh_n_high (12) of them in its mesh, prunes the rest, and those
    // connections carry nothing else: they close.
    let high = blackhole_pubsub::Config::default().mesh_n_high;
    until(
        "connections outside the meshes close",
        Duration::from_secs(60),
        || async { connected().await <= high },
    )
    .await;
    // Mesh peers stay past the idle timeout. This checks an absence (no
    // close), which only time can show: 5 s is over twice the timeout.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let left = connected().await;
    assert!(left >= 1 && left <= high, "{left} connections left");
}
