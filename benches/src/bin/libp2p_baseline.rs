//! The baseline of `cargo xtask bench`: a plain rust-libp2p 0.57 node built
//! with `SwarmBuilder` and library defaults (TCP with Noise or TLS and
//! Yamux, QUIC), serving and running the libp2p perf protocol. The only
//! setting changed from the defaults is the idle connection timeout (0 by
//! default, which would close held connections at once).
//!
//! serve   [--listen A]...                                   prints {"peer_id","addrs","pid"}; runs until stdin closes
//!
//! serve, perf, connect and hold take `--protocols bare|full`: bare (the
//! default) runs only the perf protocol; full adds what our node runs on
//! every connection by default (identify, ping, Kademlia, gossipsub,
//! rendezvous client, relay client, DCUtR, AutoNAT v2 client and server),
//! each with library defaults.
//! perf    --addr A --upload N --download N [--security noise|tls]
//! connect --addr A --count N [--security noise|tls]         new connection + 1-byte perf round trip, N times
//! hold    --addr A --count N                                opens N connections, holds them until stdin closes
//! rpc     --calls N --size S                                two in-process swarms with libp2p-request-response
//!         (JSON codec, library defaults) on loopback TCP+Noise+Yamux; sequential echo requests
//! dht     --nodes N --records R --lookups L                 N in-process libp2p-kad nodes (MemoryStore,
//!         library defaults, server mode) bootstrapped from node 0; as `blackhole-bench dht`
//! pubsub  --nodes N --messages M --size S [--degree D] [--seed X]
//!         N in-process gossipsub nodes (library defaults, signed) on
//!         loopback TCP+Noise+Yamux, the same topology and probes as
//!         `blackhole-bench pubsub`

#![allow(clippy::unwrap_used, clippy::expect_used)]

const USAGE: &str =
    "usage: libp2p-baseline <serve|perf|connect|hold|rpc|dht|pubsub> [--key value]...
Run by `cargo xtask bench`; each command's options are listed at the top of
benches/src/bin/libp2p_baseline.rs.";
use std::time::{Duration, Instant};

use anyhow::Context;
use blackhole_benches::{Args, OP_TIMEOUT, emit, wait_stdin_closed};
use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm,
    swarm::{
        NetworkBehaviour, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use serde_json::json;

/// `--protocols bare` (the default): the perf protocol and nothing else.
#[derive(NetworkBehaviour)]
struct Bare {
    stream: libp2p_stream::Behaviour,
}

/// `--protocols full`: the protocols our node runs on every connection by
/// default, each with its library defaults, so that per-connection costs
/// (memory, establishment) compare like for like.
#[derive(NetworkBehaviour)]
struct Full {
    stream: libp2p_stream::Behaviour,
    identify: libp2p::identify::Behaviour,
    ping: libp2p::ping::Behaviour,
    kad: libp2p::kad::Behaviour<libp2p::kad::store::MemoryStore>,
    gossipsub: libp2p::gossipsub::Behaviour,
    rendezvous: libp2p::rendezvous::client::Behaviour,
    relay: libp2p::relay::client::Behaviour,
    dcutr: libp2p::dcutr::Behaviour,
    autonat_client: libp2p::autonat::v2::client::Behaviour,
    autonat_server: libp2p::autonat::v2::server::Behaviour,
}

/// A baseline swarm: one that serves and runs `/perf/1.0.0`.
trait Perf: NetworkBehaviour {
    fn stream(&self) -> &libp2p_stream::Behaviour;
}

impl Perf for Bare {
    fn stream(&self) -> &libp2p_stream::Behaviour {
        &self.stream
    }
}

impl Perf for Full {
    fn stream(&self) -> &libp2p_stream::Behaviour {
        &self.stream
    }
}

const IDLE: Duration = Duration::from_secs(600);

fn bare(security: &str) -> anyhow::Result<Swarm<Bare>> {
    macro_rules! build {
        ($sec:expr) => {
            libp2p::SwarmBuilder::with_new_identity()
                .with_tokio()
                .with_tcp(
                    libp2p::tcp::Config::default(),
                    $sec,
                    libp2p::yamux::Config::default,
                )?
                .with_quic()
                .with_behaviour(|_| Bare {
                    stream: libp2p_stream::Behaviour::new(),
                })?
                .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE))
                .build()
        };
    }
    Ok(match security {
        "noise" => build!(libp2p::noise::Config::new),
        "tls" => build!(libp2p::tls::Config::new),
        other => anyhow::bail!("--security {other}: noise or tls"),
    })
}

fn full_behaviour(
    key: &libp2p::identity::Keypair,
    relay: libp2p::relay::client::Behaviour,
) -> Result<Full, Box<dyn std::error::Error + Send + Sync>> {
    use libp2p::{autonat, dcutr, gossipsub, identify, kad, ping, rendezvous};
    let id = key.public().to_peer_id();
    Ok(Full {
        stream: libp2p_stream::Behaviour::new(),
        identify: identify::Behaviour::new(identify::Config::new(
            "/ipfs/id/1.0.0".into(),
            key.public(),
        )),
        ping: ping::Behaviour::default(),
        kad: kad::Behaviour::new(id, kad::store::MemoryStore::new(id)),
        gossipsub: gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossipsub::Config::default(),
        )
        .map_err(|e| format!("gossipsub: {e}"))?,
        rendezvous: rendezvous::client::Behaviour::new(key.clone()),
        relay,
        dcutr: dcutr::Behaviour::new(id),
        autonat_client: autonat::v2::client::Behaviour::default(),
        autonat_server: autonat::v2::server::Behaviour::default(),
    })
}

fn full(security: &str) -> anyhow::Result<Swarm<Full>> {
    macro_rules! build {
        ($sec:expr) => {
            libp2p::SwarmBuilder::with_new_identity()
                .with_tokio()
                .with_tcp(
                    libp2p::tcp::Config::default(),
                    $sec,
                    libp2p::yamux::Config::default,
                )?
                .with_quic()
                .with_relay_client($sec, libp2p::yamux::Config::default)?
                .with_behaviour(|key, relay| full_behaviour(key, relay))?
                .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE))
                .build()
        };
    }
    Ok(match security {
        "noise" => build!(libp2p::noise::Config::new),
        "tls" => build!(libp2p::tls::Config::new),
        other => anyhow::bail!("--security {other}: noise or tls"),
    })
}

fn peer_of(addr: &Multiaddr) -> anyhow::Result<PeerId> {
    match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => Ok(p),
        _ => anyhow::bail!("{addr} must end in /p2p/<peer>"),
    }
}

/// Drives the swarm until `fut` completes.
async fn drive<B: NetworkBehaviour, T>(
    swarm: &mut Swarm<B>,
    fut: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = swarm.select_next_some() => {}
        }
    }
}

/// Dials `addr` as a new connection and waits until it is established.
async fn connect<B: NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    addr: &Multiaddr,
) -> anyhow::Result<libp2p::swarm::ConnectionId> {
    let opts = DialOpts::peer_id(peer_of(addr)?)
        .addresses(vec![addr.clone()])
        .condition(PeerCondition::Always)
        .build();
    let id = opts.connection_id();
    swarm.dial(opts)?;
    tokio::time::timeout(OP_TIMEOUT, async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { connection_id, .. } if connection_id == id => {
                    return Ok(id);
                }
                SwarmEvent::OutgoingConnectionError {
                    connection_id,
                    error,
                    ..
                } if connection_id == id => {
                    anyhow::bail!("dial {addr}: {error}")
                }
                _ => {}
            }
        }
    })
    .await?
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse(USAGE)?;
    if args.command == "pubsub" {
        return pubsub::run(&args).await;
    }
    if args.command == "rpc" {
        return rpc::run(&args).await;
    }
    if args.command == "dht" {
        return dht::run(&args).await;
    }
    let security = args.get("security").unwrap_or("noise");
    match args.get("protocols").unwrap_or("bare") {
        "bare" => run(bare(security)?, &args).await,
        "full" => run(full(security)?, &args).await,
        other => anyhow::bail!("--protocols {other}: bare or full"),
    }
}

/// serve, perf, connect and hold, on either baseline swarm.
async fn run<B: Perf>(mut swarm: Swarm<B>, args: &Args) -> anyhow::Result<()> {
    let mut control = swarm.behaviour().stream().new_control();
    match args.command.as_str() {
        "serve" => {
            let mut listen = args.all("listen");
            if listen.is_empty() {
                listen = vec![
                    "/ip4/127.0.0.1/tcp/0".into(),
                    "/ip4/127.0.0.1/udp/0/quic-v1".into(),
                ];
            }
            for a in &listen {
                swarm.listen_on(a.parse()?)?;
            }
            let mut addrs = Vec::new();
            while addrs.len() < listen.len() {
                if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                    addrs.push(format!("{address}/p2p/{}", swarm.local_peer_id()));
                }
            }
            emit(
                json!({ "peer_id": swarm.local_peer_id().to_string(), "addrs": addrs, "pid": std::process::id() }),
            );
            let incoming = control.accept(blackhole_node::perf::PROTOCOL)?;
            let config = blackhole_node::config::PerfConfig {
                max_bytes: u64::MAX,
                max_concurrent: 64,
                timeout: OP_TIMEOUT,
                enabled: true,
            };
            // Never cancelled: the process exits when the harness is done.
            let stop = tokio_util::sync::CancellationToken::new();
            tokio::spawn(blackhole_node::perf::serve(incoming, config, stop));
            drive(&mut swarm, wait_stdin_closed()).await;
        }
        "perf" => {
            let addr: Multiaddr = args.get("addr").context("--addr")?.parse()?;
            connect(&mut swarm, &addr).await?;
            let (up, down) = (args.num("upload", 0u64)?, args.num("download", 0u64)?);
            let r = drive(
                &mut swarm,
                blackhole_node::perf::client(&mut control, peer_of(&addr)?, up, down),
            )
            .await?;
            emit(serde_json::to_value(r)?);
        }
        "connect" => {
            let addr: Multiaddr = args.get("addr").context("--addr")?.parse()?;
            let peer = peer_of(&addr)?;
            let count: usize = args.num("count", 100)?;
            let mut ms = Vec::with_capacity(count);
            let mut dial_ms = Vec::with_capacity(count);
            let start = Instant::now();
            for _ in 0..count {
                let t = Instant::now();
                let id = connect(&mut swarm, &addr).await?;
                dial_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                drive(
                    &mut swarm,
                    blackhole_node::perf::client(&mut control, peer, 1, 1),
                )
                .await?;
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
                swarm.close_connection(id);
                tokio::time::timeout(OP_TIMEOUT, async {
                    loop {
                        if let SwarmEvent::ConnectionClosed { connection_id, .. } =
                            swarm.select_next_some().await
                            && connection_id == id
                        {
                            return;
                        }
                    }
                })
                .await?;
            }
            emit(
                json!({ "latency_ms": ms, "dial_ms": dial_ms, "seconds": start.elapsed().as_secs_f64() }),
            );
        }
        "hold" => {
            let addr: Multiaddr = args.get("addr").context("--addr")?.parse()?;
            let count: usize = args.num("count", 1000)?;
            let peer = peer_of(&addr)?;
            let mut pending = 0;
            let mut established = 0;
            let mut dialed = 0;
            // At most 64 handshakes at once.
            tokio::time::timeout(OP_TIMEOUT, async {
                while established < count {
                    while dialed < count && pending < 64 {
                        let opts = DialOpts::peer_id(peer)
                            .addresses(vec![addr.clone()])
                            .condition(PeerCondition::Always)
                            .build();
                        swarm.dial(opts)?;
                        dialed += 1;
                        pending += 1;
                    }
                    match swarm.select_next_some().await {
                        SwarmEvent::ConnectionEstablished { .. } => {
                            established += 1;
                            pending -= 1;
                        }
                        SwarmEvent::OutgoingConnectionError { error, .. } => {
                            anyhow::bail!("dial: {error}")
                        }
                        _ => {}
                    }
                }
                Ok(())
            })
            .await??;
            emit(json!({ "event": "holding", "connections": established }));
            drive(&mut swarm, wait_stdin_closed()).await;
        }
        other => anyhow::bail!("unknown command {other}"),
    }
    Ok(())
}

mod pubsub {
    use std::time::{Duration, Instant};

    use blackhole_benches::{Args, emit, fanout};
    use futures::StreamExt;
    use libp2p::{Multiaddr, gossipsub, swarm::SwarmEvent};
    use tokio::sync::{mpsc, oneshot};

    enum Cmd {
        Dial(Multiaddr),
        Publish(Vec<u8>, oneshot::Sender<Result<(), String>>),
        MeshEmpty(oneshot::Sender<bool>),
        Metrics(oneshot::Sender<String>),
    }

    struct NodeHandle {
        cmds: mpsc::Sender<Cmd>,
        addr: Multiaddr,
    }

    async fn ask<T>(
        n: &NodeHandle,
        make: impl FnOnce(oneshot::Sender<T>) -> Cmd,
    ) -> anyhow::Result<T> {
        let (tx, rx) = oneshot::channel();
        n.cmds
            .send(make(tx))
            .await
            .map_err(|_| anyhow::anyhow!("node stopped"))?;
        Ok(tokio::time::timeout(fanout::WAIT, rx).await??)
    }

    async fn start(
        i: usize,
        deliveries: mpsc::Sender<(usize, u64, bool, Instant)>,
    ) -> anyhow::Result<NodeHandle> {
        let mut registry = prometheus_client::registry::Registry::default();
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default(),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )?
            .with_behaviour(|key| {
                gossipsub::Behaviour::<
                    gossipsub::IdentityTransform,
                    gossipsub::AllowAllSubscriptionFilter,
                >::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossipsub::Config::default(),
                )
                .map(|b| b.with_metrics(&mut registry, Default::default()))
                .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
            })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
            .build();
        swarm
            .behaviour_mut()
            .subscribe(&gossipsub::IdentTopic::new(fanout::TOPIC))?;
        swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break format!("{address}/p2p/{}", swarm.local_peer_id()).parse()?;
            }
        };
        let (tx, mut rx) = mpsc::channel(64);
        let topic = gossipsub::IdentTopic::new(fanout::TOPIC);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        None => return,
                        Some(Cmd::Dial(a)) => { let _ = swarm.dial(a); }
                        Some(Cmd::Publish(data, reply)) => {
                            let r = swarm.behaviour_mut().publish(topic.clone(), data);
                            let _ = reply.send(r.map(|_| ()).map_err(|e| e.to_string()));
                        }
                        Some(Cmd::MeshEmpty(reply)) => {
                            let empty = swarm.behaviour().mesh_peers(&topic.hash()).next().is_none();
                            let _ = reply.send(empty);
                        }
                        Some(Cmd::Metrics(reply)) => {
                            let mut text = String::new();
                            let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
                            let _ = reply.send(text);
                        }
                    },
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) = event
                            && let Some((seq, high)) = fanout::parse(&message.data)
                        {
                            let _ = deliveries.try_send((i, seq, high, Instant::now()));
                        }
                    }
                }
            }
        });
        Ok(NodeHandle { cmds: tx, addr })
    }

    pub(crate) async fn run(args: &Args) -> anyhow::Result<()> {
        let n: usize = args.num("nodes", 20)?;
        let messages: u64 = args.num("messages", 200)?;
        let size: usize = args.num("size", 256)?;
        let edges = fanout::edges(n, args.num("degree", 3)?, args.num("seed", 1)?);
        let (tx, mut rx) = mpsc::channel(1 << 16);
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(start(i, tx.clone()).await?);
        }
        drop(tx);
        for (a, b) in &edges {
            let addr = nodes[*b].addr.clone();
            nodes[*a].cmds.send(Cmd::Dial(addr)).await?;
        }
        let t = Instant::now();
        loop {
            let mut ready = true;
            for node in &nodes {
                if ask(node, Cmd::MeshEmpty).await? {
                    ready = false;
                    break;
                }
            }
            if ready {
                break;
            }
            anyhow::ensure!(t.elapsed() < fanout::WAIT, "the mesh did not form");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mesh_seconds = t.elapsed().as_secs_f64();
        let mut sent = Vec::new();
        for seq in 0..messages {
            sent.push(Instant::now());
            ask(&nodes[0], |r| {
                Cmd::Publish(fanout::probe(seq, false, size), r)
            })
            .await?
            .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let expected = (n - 1) * messages as usize;
        let mut latencies = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let deadline = tokio::time::Instant::now() + fanout::WAIT;
        while seen.len() < expected {
            let Ok(Some((node, seq, _, at))) = tokio::time::timeout_at(deadline, rx.recv()).await
            else {
                break;
            };
            if node == 0 || !seen.insert((node, seq)) {
                continue;
            }
            latencies.push(at.duration_since(sent[seq as usize]).as_secs_f64() * 1000.0);
        }
        let (mut all, mut unique) = (0.0, 0.0);
        for node in &nodes {
            let text = ask(node, Cmd::Metrics).await?;
            all += fanout::counter(&text, "topic_msg_recv_counts_unfiltered", fanout::TOPIC);
            unique += fanout::counter(&text, "topic_msg_recv_counts_total", fanout::TOPIC);
        }
        emit(fanout::report(
            &latencies,
            &[],
            seen.len(),
            expected,
            Some((all - unique) / unique.max(1.0)),
            mesh_seconds,
        ));
        Ok(())
    }
}

mod rpc {
    use std::time::{Duration, Instant};

    use blackhole_benches::{Args, OP_TIMEOUT, emit};
    use futures::StreamExt;
    use libp2p::{
        StreamProtocol, Swarm,
        request_response::{self, ProtocolSupport},
        swarm::SwarmEvent,
    };
    use serde_json::{Value, json};

    type Echo = request_response::json::Behaviour<Value, Value>;

    fn swarm() -> anyhow::Result<Swarm<Echo>> {
        Ok(libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default(),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )?
            .with_behaviour(|_| {
                Echo::new(
                    [(StreamProtocol::new("/bench/echo/1"), ProtocolSupport::Full)],
                    request_response::Config::default(),
                )
            })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
            .build())
    }

    pub(crate) async fn run(args: &Args) -> anyhow::Result<()> {
        let calls: usize = args.num("calls", 1000)?;
        let size: usize = args.num("size", 1024)?;
        let mut server = swarm()?;
        server.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
                break address;
            }
        };
        let server_id = *server.local_peer_id();
        tokio::spawn(async move {
            loop {
                if let SwarmEvent::Behaviour(request_response::Event::Message {
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                }) = server.select_next_some().await
                {
                    let _ = server.behaviour_mut().send_response(channel, request);
                }
            }
        });
        let mut client = swarm()?;
        client.dial(addr)?;
        tokio::time::timeout(OP_TIMEOUT, async {
            loop {
                match client.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { .. } => return Ok(()),
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        anyhow::bail!("dial: {error}")
                    }
                    _ => {}
                }
            }
        })
        .await??;
        let request = Value::String("x".repeat(size));
        let call = |client: &mut Swarm<Echo>| {
            client
                .behaviour_mut()
                .send_request(&server_id, request.clone())
        };
        let mut ms = Vec::with_capacity(calls);
        let mut start = Instant::now();
        // One warm-up call, then the measured ones.
        for k in 0..=calls {
            if k == 1 {
                start = Instant::now();
            }
            let t = Instant::now();
            let id = call(&mut client);
            tokio::time::timeout(OP_TIMEOUT, async {
                loop {
                    match client.select_next_some().await {
                        SwarmEvent::Behaviour(request_response::Event::Message {
                            message:
                                request_response::Message::Response {
                                    request_id,
                                    response,
                                },
                            ..
                        }) if request_id == id => {
                            anyhow::ensure!(response == request, "echo changed the request");
                            return Ok(());
                        }
                        SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                            error,
                            ..
                        }) => {
                            anyhow::bail!("request failed: {error}");
                        }
                        _ => {}
                    }
                }
            })
            .await??;
            if k > 0 {
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        emit(json!({ "latency_ms": ms, "seconds": start.elapsed().as_secs_f64() }));
        Ok(())
    }
}

mod dht {
    use std::time::{Duration, Instant};

    use blackhole_benches::{Args, Rng, emit};
    use futures::StreamExt;
    use libp2p::{
        Multiaddr, PeerId,
        kad::{self, store::MemoryStore},
        swarm::SwarmEvent,
    };
    use serde_json::json;
    use tokio::sync::{mpsc, oneshot};

    type Found = Option<(Vec<u8>, u32, f64)>;

    /// Kademlia with identify feeding it the peers' listen addresses (how
    /// rust-libp2p applications run it).
    #[derive(libp2p::swarm::NetworkBehaviour)]
    struct Dht {
        kad: kad::Behaviour<MemoryStore>,
        identify: libp2p::identify::Behaviour,
    }

    enum Cmd {
        Bootstrap(oneshot::Sender<bool>),
        Put(Vec<u8>, oneshot::Sender<Result<(), String>>),
        Get(Vec<u8>, oneshot::Sender<Found>),
    }

    enum Pending {
        Bootstrap(oneshot::Sender<bool>),
        Put(oneshot::Sender<Result<(), String>>),
        Get(oneshot::Sender<Found>, Instant),
    }

    const WAIT: Duration = Duration::from_secs(60);

    async fn start(
        boot: Option<(PeerId, Multiaddr)>,
    ) -> anyhow::Result<(mpsc::Sender<Cmd>, PeerId, Multiaddr)> {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default(),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )?
            .with_behaviour(|key| {
                let id = key.public().to_peer_id();
                Dht {
                    kad: kad::Behaviour::new(id, MemoryStore::new(id)),
                    identify: libp2p::identify::Behaviour::new(libp2p::identify::Config::new(
                        "/bench/1".into(),
                        key.public(),
                    )),
                }
            })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
            .build();
        swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
        swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        if let Some((peer, a)) = boot {
            swarm.behaviour_mut().kad.add_address(&peer, a);
        }
        let id = *swarm.local_peer_id();
        let (tx, mut rx) = mpsc::channel::<Cmd>(16);
        tokio::spawn(async move {
            let mut pending = std::collections::HashMap::new();
            loop {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        None => return,
                        Some(Cmd::Bootstrap(r)) => match swarm.behaviour_mut().kad.bootstrap() {
                            Ok(q) => { pending.insert(q, Pending::Bootstrap(r)); }
                            Err(_) => { let _ = r.send(false); }
                        },
                        Some(Cmd::Put(k, r)) => {
                            let rec = kad::Record::new(k.clone(), k);
                            match swarm.behaviour_mut().kad.put_record(rec, kad::Quorum::One) {
                                Ok(q) => { pending.insert(q, Pending::Put(r)); }
                                Err(e) => { let _ = r.send(Err(e.to_string())); }
                            }
                        }
                        Some(Cmd::Get(k, r)) => {
                            let q = swarm.behaviour_mut().kad.get_record(kad::RecordKey::new(&k));
                            pending.insert(q, Pending::Get(r, Instant::now()));
                        }
                    },
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::Behaviour(DhtEvent::Identify(libp2p::identify::Event::Received { peer_id, info, .. })) = &event {
                            for a in &info.listen_addrs {
                                swarm.behaviour_mut().kad.add_address(peer_id, a.clone());
                            }
                            continue;
                        }
                        let SwarmEvent::Behaviour(DhtEvent::Kad(kad::Event::OutboundQueryProgressed { id, result, stats, step })) = event else { continue };
                        match (result, pending.remove(&id)) {
                            (kad::QueryResult::Bootstrap(_), Some(Pending::Bootstrap(r))) => {
                                if step.last { let _ = r.send(true); } else { pending.insert(id, Pending::Bootstrap(r)); }
                            }
                            (kad::QueryResult::PutRecord(res), Some(Pending::Put(r))) => { let _ = r.send(res.map(|_| ()).map_err(|e| format!("{e:?}"))); }
                            (kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(rec))), Some(Pending::Get(r, t))) => {
                                let _ = r.send(Some((rec.record.value, stats.num_requests(), t.elapsed().as_secs_f64() * 1000.0)));
                                if let Some(mut q) = swarm.behaviour_mut().kad.query_mut(&id) { q.finish(); }
                            }
                            (kad::QueryResult::GetRecord(_), Some(Pending::Get(r, _))) => { let _ = r.send(None); }
                            (_, Some(p)) => { pending.insert(id, p); }
                            _ => {}
                        }
                    }
                }
            }
        });
        Ok((tx, id, addr))
    }

    async fn ask<T>(
        tx: &mpsc::Sender<Cmd>,
        make: impl FnOnce(oneshot::Sender<T>) -> Cmd,
    ) -> anyhow::Result<T> {
        let (s, r) = oneshot::channel();
        tx.send(make(s))
            .await
            .map_err(|_| anyhow::anyhow!("node stopped"))?;
        Ok(tokio::time::timeout(WAIT, r).await??)
    }

    pub(crate) async fn run(args: &Args) -> anyhow::Result<()> {
        let n: usize = args.num("nodes", 50)?;
        let records: usize = args.num("records", 20)?;
        let lookups: usize = args.num("lookups", 200)?;
        let mut rng = Rng::new(args.num("seed", 1)?);
        let (first, id0, addr0) = start(None).await?;
        let mut nodes = vec![first];
        for _ in 1..n {
            nodes.push(start(Some((id0, addr0.clone()))).await?.0);
        }
        for ok in
            futures::future::join_all(nodes.iter().skip(1).map(|t| ask(t, Cmd::Bootstrap))).await
        {
            anyhow::ensure!(ok?, "bootstrap failed");
        }
        let keys: Vec<String> = (0..records).map(|i| format!("bench/{i}")).collect();
        for k in &keys {
            let t = &nodes[rng.below(n)];
            // A put can fail its quorum while routing tables settle: retry.
            let mut last = Ok(());
            for _ in 0..3 {
                last = ask(t, |r| Cmd::Put(k.clone().into_bytes(), r)).await?;
                if last.is_ok() {
                    break;
                }
            }
            last.map_err(|e| anyhow::anyhow!("put {k}: {e}"))?;
        }
        let (mut ms, mut requests, mut found) = (Vec::new(), Vec::new(), 0usize);
        for _ in 0..lookups {
            let key = keys[rng.below(records)].clone();
            let t = &nodes[rng.below(n)];
            if let Some((value, r, d)) = ask(t, |s| Cmd::Get(key.clone().into_bytes(), s)).await?
                && value == key.as_bytes()
            {
                found += 1;
                ms.push(d);
                requests.push(f64::from(r));
            }
        }
        emit(json!({ "latency_ms": ms, "requests": requests, "found": found, "lookups": lookups }));
        Ok(())
    }
}
