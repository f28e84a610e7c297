//! The DHT on in-memory networks: lookups, records and providers across 50
//! nodes; persistence across a restart; store limits against a flood.

use std::time::Duration;

use blackhole_node::{DhtCommand, Handle, Multiaddr, Node, dht::Reply};

use futures::future::join_all;

use crate::support::{mem_addr, mem_config};

async fn dht(h: &Handle, cmd: DhtCommand) -> Reply {
    h.dht(cmd)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", h.peer_id()))
}

/// Starts `n` nodes bootstrapped from the first, and refreshes every
/// routing table.
///
/// Fifty in-process nodes of a debug build keep both cores busy while they
/// fill their tables (with the rest of the suite running beside them), so
/// queries here may take far longer than the 60 s default allows; what the
/// tests check is that lookups succeed, not how fast. The bootstrap queries
/// go in batches rather than all at once, as a network grows.
async fn network(n: usize) -> Vec<Handle> {
    let config = |boot: &[Multiaddr]| {
        let mut c = mem_config(boot);
        c.overlay.query_timeout = Duration::from_secs(300);
        c.overlay.query_stall_timeout = Duration::from_secs(60);
        c
    };
    let first = crate::support::start(config(&[])).await;
    let boot = vec![mem_addr(&first).await];
    let mut nodes = vec![first];
    for _ in 1..n {
        nodes.push(crate::support::start(config(&boot)).await);
    }
    // Every node but the first knows the first; a bootstrap query fills
    // the tables (twice, so late joiners are known to early ones too).
    for _ in 0..2 {
        for batch in nodes[1..].chunks(10) {
            let results = join_all(batch.iter().map(|h| h.dht(DhtCommand::bootstrap()))).await;
            for r in results {
                r.unwrap();
            }
        }
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_find_each_other_records_and_providers() {
    let nodes = network(50).await;
    let ids: Vec<_> = nodes.iter().map(|h| h.peer_id()).collect();

    // Every node finds every other through the DHT.
    let mut missing = Vec::new();
    for (i, h) in nodes.iter().enumerate() {
        let lookups = ids
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| h.dht(DhtCommand::find_peer(*p)));
        for (k, r) in join_all(lookups).await.into_iter().enumerate() {
            match r {
                Ok(Reply::Peer { found: true, .. }) => {}
                other => missing.push(format!("{i} -> {k}: {other:?}")),
            }
        }
    }
    // The overlay's guards, summed over the nodes, for a failure message.
    let counter = |name: &str| -> u64 {
        nodes
            .iter()
            .filter_map(|h| crate::support::metric(h, name))
            .sum()
    };
    assert!(
        missing.is_empty(),
        "{} of {} lookups failed: {:?}; closes replayed {}, queries stalled {}",
        missing.len(),
        50 * 49,
        &missing[..missing.len().min(5)],
        counter("blackhole_overlay_connection_closes_replayed_total"),
        counter("blackhole_overlay_queries_stalled_total"),
    );

    // The routing table lists buckets with peers and when we last saw them.
    let Reply::Table { buckets } = dht(&nodes[0], DhtCommand::table()).await else {
        panic!()
    };
    let entries: Vec<_> = buckets.iter().flat_map(|b| &b.peers).collect();
    assert!(entries.len() >= 20, "{} entries", entries.len());
    assert!(entries.iter().all(|p| !p.addresses.is_empty()));
    assert!(
        entries
            .iter()
            .any(|p| p.connected && p.last_seen_ms.is_some())
    );

    // A record put at one node is retrieved from every other.
    let Reply::Stored { stored_at } = dht(&nodes[7], DhtCommand::put("the-key", "the value")).await
    else {
        panic!()
    };
    assert!(stored_at >= 1);
    let gets = join_all(
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 7)
            .map(|(_, h)| h.dht(DhtCommand::get("the-key"))),
    )
    .await;
    for (i, r) in gets.into_iter().enumerate() {
        match r {
            Ok(Reply::Found { value, .. }) => assert_eq!(value, b"the value"),
            other => panic!("node {i}: {other:?}"),
        }
    }
    // A missing key is a clear not-found.
    let err = nodes[3]
        .dht(DhtCommand::get("no-such-key"))
        .await
        .unwrap_err();
    assert!(matches!(err, blackhole_node::Error::NotFound(_)), "{err}");

    // A provider is found.
    dht(&nodes[13], DhtCommand::provide("content")).await;
    let providers = join_all(
        [2usize, 29, 42, 49]
            .iter()
            .map(|&i| nodes[i].dht(DhtCommand::providers("content"))),
    )
    .await;
    for r in providers {
        let Ok(Reply::Providers { providers, .. }) = r else {
            panic!("{r:?}")
        };
        assert!(providers.contains(&ids[13]), "{providers:?}");
    }
    for h in nodes {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_peers_survive_a_restart_without_bootstrap() {
    let others = network(4).await;
    let boot = vec![mem_addr(&others[0]).await];
    let dir = tempfile::tempdir().unwrap();
    let key = blackhole_security::identity::generate();
    let node = Node::start_in(mem_config(&boot), key.clone(), dir.path())
        .await
        .unwrap();
    let h = node.handle();
    dht(&h, DhtCommand::bootstrap()).await;
    dht(&h, DhtCommand::put("kept", "across restarts")).await;
    dht(&h, DhtCommand::provide("provided-here")).await;
    let connected: Vec<_> = h.peers().await.unwrap().iter().map(|p| p.peer_id).collect();
    assert!(connected.len() >= 2, "{connected:?}");
    h.shutdown().await;
    node.wait().await;

    // No bootstrap list this time: the peer store brings the peers back.
    let mut events;
    let node = {
        let n = Node::start_in(mem_config(&[]), key, dir.path())
            .await
            .unwrap();
        events = n.handle().events();
        n
    };
    let h = node.handle();
    let Reply::Stats(stats) = dht(&h, DhtCommand::stats()).await else {
        panic!()
    };
    assert!(stats.records >= 1 && stats.provider_keys >= 1, "{stats:?}");
    // The record is served from the local store, before any network.
    let Reply::Found { value, .. } = dht(&h, DhtCommand::get("kept")).await else {
        panic!()
    };
    assert_eq!(value, b"across restarts");
    let peer = crate::support::wait_event(&mut events, Duration::from_secs(20), |e| match e {
        blackhole_node::Event::ConnectionEstablished { peer_id, .. } => Some(*peer_id),
        _ => None,
    })
    .await;
    assert!(connected.contains(&peer), "reconnected to a peer it knew");
    h.shutdown().await;
    for o in others {
        o.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_puts_hits_the_store_limits() {
    let mut small = mem_config(&[]);
    small.overlay.store.max_records = 10;
    let target = crate::support::start(small).await;
    let flooder = crate::support::start(mem_config(&[mem_addr(&target).await])).await;
    dht(&flooder, DhtCommand::bootstrap()).await;
    // All at once. The flooder's own store takes them; the target refuses
    // past 10 (and does not answer those requests, so they time out).
    let puts = (0..50).map(|i| flooder.dht(DhtCommand::put(format!("flood-{i}"), vec![7u8; 1000])));
    let _ = join_all(puts).await;
    let Reply::Stats(stats) = dht(&target, DhtCommand::stats()).await else {
        panic!()
    };
    assert_eq!(stats.records, 10, "{stats:?}");
    // A value above max_value_bytes is refused with a clear error.
    let err = flooder
        .dht(DhtCommand::put("big", vec![0u8; 70 * 1024]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("dht"), "{err}");
    target.shutdown().await;
    flooder.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_keeps_protected_peers_and_stops_at_the_low_watermark() {
    let mut c = mem_config(&[]);
    c.overlay.connections.low_watermark = 2;
    c.overlay.connections.high_watermark = 3;
    c.overlay.connections.grace_period = Duration::from_millis(1);
    c.overlay.connections.check_interval = Duration::from_millis(100);
    let hub = crate::support::start(c).await;
    let hub_addr = mem_addr(&hub).await;
    let mut spokes = Vec::new();
    for _ in 0..6 {
        // Without the DHT the spokes are outside the hub's routing table,
        // so the pruner takes them newest first.
        let mut c = mem_config(&[]);
        c.overlay.enabled = false;
        spokes.push(crate::support::start(c).await);
    }
    // The newest connection, the first the pruner would pick, is protected
    // before anything connects.
    let keep = spokes[5].peer_id();
    hub.protect(keep, true).await.unwrap();
    for s in &spokes {
        s.dial(hub_addr.clone()).await.unwrap();
    }
    // The hub prunes down to the low watermark, sparing the protected peer.
    let mut events = hub.events();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let peers: Vec<_> = hub
            .peers()
            .await
            .unwrap()
            .iter()
            .map(|p| p.peer_id)
            .collect();
        if peers.len() <= 2 {
            assert!(
                peers.contains(&keep),
                "the protected peer was pruned: {peers:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {} peers",
            peers.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
    }
    for s in spokes {
        s.shutdown().await;
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_database_is_moved_aside_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(blackhole_node::DATABASE_FILE);
    std::fs::write(&db, b"this is not a redb file, but it is somebody's data").unwrap();
    let node = Node::start_in(
        mem_config(&[]),
        blackhole_security::identity::generate(),
        dir.path(),
    )
    .await
    .unwrap();
    let h = node.handle();
    // The node runs with a fresh store...
    let Reply::Stats(stats) = dht(&h, DhtCommand::stats()).await else {
        panic!()
    };
    assert_eq!(stats.records, 0);
    // No peer to replicate to: the put reports that, but keeps it locally.
    let _ = h.dht(DhtCommand::put("new", "data")).await;
    let Reply::Stats(stats) = dht(&h, DhtCommand::stats()).await else {
        panic!()
    };
    assert_eq!(stats.records, 1);
    h.shutdown().await;
    node.wait().await;
    // ...and the old file is kept aside, byte for byte.
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(aside[0].path()).unwrap(),
        b"this is not a redb file, but it is somebody's data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_exchange_shares_good_peers_and_newcomers_use_them() {
    // b knows a and c; d only knows b.
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let mut c = mem_config(&[]);
        c.overlay.enabled = false;
        nodes.push(crate::support::start(c).await);
    }
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    a.dial(mem_addr(b).await).await.unwrap();
    c.dial(mem_addr(b).await).await.unwrap();
    crate::support::identified_peer(b, c.peer_id()).await;
    crate::support::identified_peer(b, a.peer_id()).await;

    // Asked explicitly, b shares a and c (never the asker).
    let shared: Vec<_> = c
        .peer_exchange(b.peer_id())
        .await
        .unwrap()
        .iter()
        .map(|p| p.peer_id)
        .collect();
    assert!(shared.contains(&a.peer_id()), "{shared:?}");
    assert!(!shared.contains(&c.peer_id()), "{shared:?}");

    // A newcomer that bootstraps from b alone asks it and dials what it shares.
    let mut cfg = mem_config(&[mem_addr(b).await]);
    cfg.overlay.enabled = false;
    let d = crate::support::start(cfg).await;
    let mut events = d.events();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let peers: Vec<_> = d.peers().await.unwrap().iter().map(|p| p.peer_id).collect();
        if peers.contains(&a.peer_id()) || peers.contains(&c.peer_id()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "d only knows {peers:?}"
        );
        // Wake on the next event (or after a second) and look again.
        let _ = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
    }
    d.shutdown().await;
    for n in nodes {
        n.shutdown().await;
    }
}

/// The bare remote of the tests below: our transport, identify (so our
/// node learns it speaks the DHT protocol) and streams, so it can take a
/// DHT request and hold it; an AutoNAT v2 client, which asks our node to
/// dial back the address candidates that `candidate` reports.
#[derive(libp2p_swarm::NetworkBehaviour)]
#[behaviour(prelude = "libp2p_swarm::derive_prelude")]
struct Mute {
    identify: libp2p_identify::Behaviour,
    stream: libp2p_stream::Behaviour,
    autonat: libp2p_autonat::v2::client::Behaviour,
    candidate: Candidate,
}

/// Reports an address as an external address candidate, once.
#[derive(Default)]
struct Candidate(Option<blackhole_node::Multiaddr>);

impl libp2p_swarm::NetworkBehaviour for Candidate {
    type ConnectionHandler = libp2p_swarm::dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: libp2p_swarm::ConnectionId,
        _: blackhole_node::PeerId,
        _: &blackhole_node::Multiaddr,
        _: &blackhole_node::Multiaddr,
    ) -> Result<libp2p_swarm::THandler<Self>, libp2p_swarm::ConnectionDenied> {
        Ok(libp2p_swarm::dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: libp2p_swarm::ConnectionId,
        _: blackhole_node::PeerId,
        _: &blackhole_node::Multiaddr,
        _: libp2p_swarm::derive_prelude::Endpoint,
        _: libp2p_swarm::derive_prelude::PortUse,
    ) -> Result<libp2p_swarm::THandler<Self>, libp2p_swarm::ConnectionDenied> {
        Ok(libp2p_swarm::dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: libp2p_swarm::FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: blackhole_node::PeerId,
        _: libp2p_swarm::ConnectionId,
        event: libp2p_swarm::THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<libp2p_swarm::ToSwarm<Self::ToSwarm, libp2p_swarm::THandlerInEvent<Self>>>
    {
        match self.0.take() {
            Some(a) => std::task::Poll::Ready(libp2p_swarm::ToSwarm::NewExternalAddrCandidate(a)),
            None => std::task::Poll::Pending,
        }
    }
}

enum MuteCmd {
    Dial(blackhole_node::Multiaddr),
    Close(libp2p_swarm::ConnectionId),
    /// Report this address as an external address candidate.
    Candidate(blackhole_node::Multiaddr),
}

/// A running [`Mute`] swarm, already dialed by (and in the routing table
/// of) `ours`.
struct MuteRemote {
    peer: blackhole_node::PeerId,
    /// DHT requests it took (and holds unanswered while kept).
    requests: libp2p_stream::IncomingStreams,
    cmd: tokio::sync::mpsc::Sender<MuteCmd>,
    /// Its connections as they come up.
    established: tokio::sync::mpsc::Receiver<libp2p_swarm::ConnectionId>,
    /// The first connection, ours to it.
    first: libp2p_swarm::ConnectionId,
    /// Candidates its AutoNAT client found unreachable.
    unreachable: tokio::sync::mpsc::Receiver<blackhole_node::Multiaddr>,
    driver: tokio::task::JoinHandle<()>,
}

const STEP: Duration = Duration::from_secs(20);

impl MuteRemote {
    async fn start(ours: &Handle) -> Self {
        use futures::StreamExt;
        use libp2p_swarm::{StreamProtocol, SwarmEvent};
        use tokio::sync::mpsc;

        let key = blackhole_security::identity::generate();
        let peer = key.public().to_peer_id();
        let mut registry = Default::default();
        let built = blackhole_transport::build(
            &key,
            &blackhole_transport::Config::default(),
            &Default::default(),
            &mut registry,
        )
        .unwrap();
        let mute = Mute {
            identify: libp2p_identify::Behaviour::new(libp2p_identify::Config::new(
                "/ipfs/id/1.0.0".into(),
                key.public(),
            )),
            stream: libp2p_stream::Behaviour::new(),
            autonat: Default::default(),
            candidate: Candidate::default(),
        };
        let mut swarm = libp2p_swarm::Swarm::new(
            built.transport,
            mute,
            peer,
            libp2p_swarm::Config::with_tokio_executor()
                .with_idle_connection_timeout(Duration::from_secs(300)),
        );
        let protocol = StreamProtocol::try_from_owned(c_protocol()).unwrap();
        let requests = swarm
            .behaviour()
            .stream
            .new_control()
            .accept(protocol)
            .unwrap();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        let (cmd, mut cmd_rx) = mpsc::channel(8);
        let (est_tx, mut established) = mpsc::channel(8);
        let (unreachable_tx, unreachable) = mpsc::channel(8);
        let driver = tokio::spawn(async move {
            loop {
                tokio::select! {
                    e = swarm.select_next_some() => match e {
                        SwarmEvent::ConnectionEstablished { connection_id, .. } => {
                            let _ = est_tx.send(connection_id).await;
                        }
                        SwarmEvent::Behaviour(MuteEvent::Autonat(e)) if e.result.is_err() => {
                            let _ = unreachable_tx.send(e.tested_addr).await;
                        }
                        _ => {}
                    },
                    Some(cmd) = cmd_rx.recv() => match cmd {
                        MuteCmd::Dial(a) => swarm.dial(a).unwrap(),
                        MuteCmd::Close(id) => assert!(swarm.close_connection(id)),
                        MuteCmd::Candidate(a) => swarm.behaviour_mut().candidate.0 = Some(a),
                    },
                }
            }
        });

        // One connection; our table holds the remote once identify told us.
        let dialed = ours
            .dial(format!("{addr}/p2p/{peer}").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(dialed, peer);
        let first = tokio::time::timeout(STEP, established.recv())
            .await
            .unwrap()
            .unwrap();
        crate::support::until("the remote in our routing table", STEP, || async {
            match ours.dht(DhtCommand::table()).await {
                Ok(Reply::Table { buckets }) => buckets
                    .iter()
                    .any(|b| b.peers.iter().any(|p| p.peer_id == peer)),
                _ => false,
            }
        })
        .await;
        Self {
            peer,
            requests,
            cmd,
            established,
            first,
            unreachable,
            driver,
        }
    }

    /// Starts a lookup of a record at `ours` and waits until the remote
    /// holds its request; the task gives the lookup's duration and outcome.
    async fn held_lookup(
        &mut self,
        ours: &Handle,
    ) -> (
        tokio::task::JoinHandle<(Duration, Result<Reply, blackhole_node::Error>)>,
        libp2p_swarm::Stream,
    ) {
        self.held(ours, DhtCommand::get(b"nobody-has-it".to_vec()))
            .await
    }

    /// Runs `cmd` at `ours` and waits until the remote holds its request.
    async fn held(
        &mut self,
        ours: &Handle,
        cmd: DhtCommand,
    ) -> (
        tokio::task::JoinHandle<(Duration, Result<Reply, blackhole_node::Error>)>,
        libp2p_swarm::Stream,
    ) {
        use futures::StreamExt;
        let h = ours.clone();
        let lookup = tokio::spawn(async move {
            let t = tokio::time::Instant::now();
            let r = h.dht(cmd).await;
            (t.elapsed(), r)
        });
        let (_, held) = tokio::time::timeout(STEP, self.requests.next())
            .await
            .expect("our request reached the remote")
            .unwrap();
        (lookup, held)
    }

    /// The remote dials `ours` too; the new connection once it is up.
    async fn dial(&mut self, ours: &Handle) -> libp2p_swarm::ConnectionId {
        let addr = crate::support::addr(ours, "tcp").await;
        self.cmd.send(MuteCmd::Dial(addr)).await.unwrap();
        tokio::time::timeout(STEP, self.established.recv())
            .await
            .unwrap()
            .unwrap()
    }
}

/// A node on loopback TCP in DHT server mode, after `tweak`.
async fn dht_server(tweak: impl FnOnce(&mut blackhole_node::Config)) -> Handle {
    let mut c = crate::support::config(&["/ip4/127.0.0.1/tcp/0"]);
    c.overlay.mode = blackhole_overlay::Mode::Server;
    tweak(&mut c);
    crate::support::start(c).await
}

/// Connections `ours` has to `peer`.
async fn connections_to(ours: &Handle, peer: blackhole_node::PeerId) -> usize {
    ours.peers()
        .await
        .unwrap()
        .iter()
        .find(|p| p.peer_id == peer)
        .map_or(0, |p| p.connections.len())
}

/// Answers a held FIND_NODE request: nobody closer (a response with no
/// peers, length-prefixed).
async fn answer_nobody_closer(mut held: libp2p_swarm::Stream) {
    use futures::AsyncWriteExt;
    held.write_all(&[2, 0x08, 0x04]).await.unwrap();
    held.close().await.unwrap();
}

/// How a lookup from [`MuteRemote::held`] ended, and after how long.
async fn ended(
    lookup: tokio::task::JoinHandle<(Duration, Result<Reply, blackhole_node::Error>)>,
) -> (Duration, Result<Reply, blackhole_node::Error>) {
    let (took, result) = tokio::time::timeout(Duration::from_secs(60), lookup)
        .await
        .expect("the lookup ends long before its query timeout")
        .unwrap();
    eprintln!("lookup ended after {took:?}: {result:?}");
    (took, result)
}

/// A query whose request went out on a connection that then closed, while
/// another connection to the same peer stayed up, fails that peer at once:
/// libp2p-kad alone forgets such a request, and the query waits out its
/// 10 s per-peer timeout (10.5 s measured with the overlay's
/// `on_connection_closed` mutated out, 4 ms with it). The remote takes our
/// request on its only connection, opens a second one, and closes the
/// first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lost_with_one_of_two_connections_fails_the_peer_at_once() {
    let ours = dht_server(|_| {}).await;
    let mut remote = MuteRemote::start(&ours).await;

    // Our lookup asks the remote, which holds the request unanswered.
    let (lookup, held) = remote.held_lookup(&ours).await;

    // A second connection, up on both sides, then the first one closes.
    remote.dial(&ours).await;
    crate::support::until("two connections on our side", STEP, || async {
        connections_to(&ours, remote.peer).await == 2
    })
    .await;
    remote.cmd.send(MuteCmd::Close(remote.first)).await.unwrap();

    let (took, result) = ended(lookup).await;
    assert!(!matches!(result, Ok(Reply::Found { .. })), "{result:?}");
    // Well under kad's 10 s peer timeout, which ends the lookup otherwise.
    assert!(
        took < Duration::from_secs(5),
        "the lost request was not failed: {took:?}"
    );
    drop(held);
    remote.driver.abort();
    ours.shutdown().await;
}

/// A query that nothing moves for `overlay.query_stall_timeout` is
/// finished with what it has, not left to its query timeout. Here the
/// only peer holds our request unanswered: without the stall check the
/// lookup ends at libp2p-kad's 10 s per-peer timeout; with a 1 s stall
/// limit it ends after about 1-2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_makes_no_progress_is_finished_after_the_stall_timeout() {
    let ours = dht_server(|c| c.overlay.query_stall_timeout = Duration::from_secs(1)).await;
    let mut remote = MuteRemote::start(&ours).await;

    let (lookup, held) = remote.held_lookup(&ours).await;
    let (took, result) = ended(lookup).await;
    assert!(!matches!(result, Ok(Reply::Found { .. })), "{result:?}");
    assert!(
        took < Duration::from_secs(5),
        "the stalled lookup was not finished: {took:?}"
    );
    // Ours and possibly the node's own bootstrap, which asked the remote too.
    let stalled = crate::support::metric(&ours, "blackhole_overlay_queries_stalled_total")
        .expect("the stall counter is exported");
    assert!(stalled >= 1, "{stalled}");
    drop(held);
    remote.driver.abort();
    ours.shutdown().await;
}

/// Kademlia's requests to a peer go through its oldest connection, and the
/// close of another connection to the peer does not fail them: a lookup
/// of the peer, answered after its newer connection closed, finds it.
/// (Reporting every such close to Kademlia as the peer's failure, as the
/// overlay once did, dropped those answers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_newer_connection_does_not_fail_requests_on_the_oldest() {
    let ours = dht_server(|_| {}).await;
    let mut remote = MuteRemote::start(&ours).await;
    let newer = remote.dial(&ours).await;
    let peer = remote.peer;
    crate::support::until("two connections on our side", STEP, || async {
        connections_to(&ours, peer).await == 2
    })
    .await;

    let (lookup, held) = remote.held(&ours, DhtCommand::find_peer(peer)).await;
    remote.cmd.send(MuteCmd::Close(newer)).await.unwrap();
    crate::support::until("the newer connection closed on our side", STEP, || async {
        connections_to(&ours, peer).await == 1
    })
    .await;
    answer_nobody_closer(held).await;

    let (_, result) = ended(lookup).await;
    assert!(
        matches!(result, Ok(Reply::Peer { found: true, .. })),
        "{result:?}"
    );
    remote.driver.abort();
    ours.shutdown().await;
}

/// A failed dial of a connected peer does not fail that peer's DHT
/// requests. Here the failed dial is our AutoNAT server's dial-back to an
/// address the peer does not listen on, made while our lookup of that very
/// peer waits for the peer's answer. libp2p-kad counts the peer as failed
/// in every running query on any failed dial of it, so the answer that
/// follows was dropped and the lookup did not find the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dial_of_a_connected_peer_does_not_fail_its_dht_answers() {
    let ours = dht_server(|_| {}).await;
    let mut remote = MuteRemote::start(&ours).await;
    // The AutoNAT client asks only peers it dialed.
    remote.dial(&ours).await;

    let (lookup, held) = remote.held(&ours, DhtCommand::find_peer(remote.peer)).await;

    // An address nothing listens on, which the remote asks us to test.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let addr: blackhole_node::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    remote
        .cmd
        .send(MuteCmd::Candidate(addr.clone()))
        .await
        .unwrap();
    // Our dial-back failed (the AutoNAT client probes every 5 s; kad gives
    // up on the held request 10 s after sending it).
    let failed = tokio::time::timeout(STEP, remote.unreachable.recv())
        .await
        .expect("the remote's AutoNAT client reports our failed dial-back")
        .unwrap();
    assert_eq!(failed, addr);

    // Now the remote answers.
    answer_nobody_closer(held).await;

    let (_, result) = ended(lookup).await;
    assert!(
        matches!(result, Ok(Reply::Peer { found: true, .. })),
        "{result:?}"
    );
    remote.driver.abort();
    ours.shutdown().await;
}

fn c_protocol() -> String {
    blackhole_overlay::Config::default().protocol
}
