//! Helpers: in-process nodes on real sockets, and waiting with timeouts.

use std::time::{Duration, Instant};

use blackhole_node::{Config, Event, Handle, Multiaddr, Node, PeerInfo};

/// A node configuration for tests: loopback listen addresses, no API.
/// This package's directory (`tests/`). Cargo says where it is at run time;
/// the compiled-in path is only a fallback, because cargo reuses a test
/// binary built from the same sources in another checkout sharing the
/// target directory.
pub(crate) fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

pub(crate) fn config(listen: &[&str]) -> Config {
    let mut c = Config::default();
    c.network.listen = listen.iter().map(|a| a.parse().unwrap()).collect();
    c.api.enabled = false;
    c
}

pub(crate) async fn start(config: Config) -> Handle {
    start_with_key(config, blackhole_security::identity::generate()).await
}

pub(crate) async fn start_with_key(config: Config, key: blackhole_node::Keypair) -> Handle {
    // RUST_LOG=debug shows the nodes' logs in failing tests.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let node = Node::start(config, key).await.expect("node starts");
    node.handle()
}

/// The first listen address of `handle` whose text contains `needle`, with
/// our `/p2p/` suffix.
pub(crate) async fn addr(handle: &Handle, needle: &str) -> Multiaddr {
    let a = handle
        .listen_addrs()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.to_string().contains(needle))
        .unwrap_or_else(|| panic!("no {needle} listen address"));
    format!("{a}/p2p/{}", handle.peer_id()).parse().unwrap()
}

/// Waits (up to `timeout`) for an event matching `pred`.
pub(crate) async fn wait_event<T>(
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    timeout: Duration,
    mut pred: impl FnMut(&Event) -> Option<T>,
) -> T {
    tokio::time::timeout(timeout, async {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    if let Some(t) = pred(&e) {
                        return t;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("event arrives in time")
}

/// The peer entry for `peer`, waiting (via events) until identify has
/// reported its agent version.
pub(crate) async fn identified_peer(handle: &Handle, peer: blackhole_node::PeerId) -> PeerInfo {
    let mut events = handle.events();
    let known = handle
        .peers()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.peer_id == peer);
    if let Some(p) = known.filter(|p| p.agent_version.is_some()) {
        return p;
    }
    wait_event(&mut events, Duration::from_secs(20), |e| match e {
        Event::Identified { peer_id, .. } if *peer_id == peer => Some(()),
        _ => None,
    })
    .await;
    handle
        .peers()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.peer_id == peer)
        .expect("peer still connected")
}

/// A node config on the memory transport, DHT in server mode, bootstrapping
/// from `bootstrap`.
pub(crate) fn mem_config(bootstrap: &[Multiaddr]) -> Config {
    let mut c = Config::default();
    c.transport.memory = true;
    c.transport.tcp.enabled = false;
    c.transport.quic.enabled = false;
    c.transport.websocket.enabled = false;
    c.network.listen = vec!["/memory/0".parse().unwrap()];
    c.api.enabled = false;
    c.connections.idle_timeout = Duration::from_secs(3600);
    c.overlay.mode = blackhole_overlay::Mode::Server;
    c.discovery.bootstrap = bootstrap.to_vec();
    c
}

/// The first listen address of a memory-transport node, with `/p2p/`.
pub(crate) async fn mem_addr(h: &Handle) -> Multiaddr {
    let a = h.listen_addrs().await.unwrap()[0].clone();
    format!("{a}/p2p/{}", h.peer_id()).parse().unwrap()
}

/// Polls `check` until it holds, up to `timeout`: for conditions no event
/// reports (what a node has heard from announcements, subscriptions).
pub(crate) async fn until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the metric line `name` (with its labels, if any) in `h`'s
/// metrics; `None` while it has no sample.
pub(crate) fn metric(h: &Handle, name: &str) -> Option<u64> {
    let text = h.metrics().encode().ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
