//! Our side of `cargo xtask bench`: a Blackhole node (the `blackhole-node`
//! library with its default configuration, API off) as server or client.
//!
//! Every command takes `--config FILE` to start from a node config file.
//!
//! serve   [--listen A]...                          prints {"peer_id","addrs"}; runs until stdin closes
//! perf    --addr A --upload N --download N [--security noise|tls]
//! connect --addr A --count N                       new connection + 1-byte perf round trip, N times
//! dht     --nodes N --records R --lookups L            N in-process nodes (DHT server mode) bootstrapped
//!                                                  from node 0; R puts, then L gets from random nodes
//! rpc     --calls N --size S                       two in-process nodes on loopback TCP; sequential
//!                                                  `_bh/echo` calls of a JSON string of S bytes
//! pubsub  --nodes N --messages M --size S [--degree D] [--load L] [--seed X]
//!         N in-process nodes on loopback TCP, all subscribed to one topic;
//!         node 0 publishes M probes 10 ms apart (alternately normal and
//!         high priority when L > 0, while node 1 publishes L messages of
//!         64 KiB as fast as it can); prints latencies and duplicates

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use anyhow::Context;
use blackhole_benches::{Args, OP_TIMEOUT, emit, wait_stdin_closed};
use blackhole_node::{Config, Event, Node};
use serde_json::json;

const USAGE: &str = "usage: blackhole-bench <serve|perf|connect|dht|rpc|pubsub> [--key value]...
Run by `cargo xtask bench`; each command's options are listed at the top of
benches/src/bin/blackhole_bench.rs.";

// The same allocator as the blackhole-node binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn config(args: &Args, listen: &[String]) -> anyhow::Result<Config> {
    // --config FILE: start from a node config file instead of the defaults.
    let mut c = match args.get("config") {
        Some(path) => Config::load(std::path::Path::new(path))?,
        None => Config::default(),
    };
    c.api.enabled = false;
    c.network.listen = listen.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    // The server accepts the harness's many connections and any size.
    c.connections.max_established_per_peer = 4096;
    c.connections.max_established = 8192;
    c.connections.max_established_incoming = 8192;
    c.connections.max_pending_incoming = 1024;
    c.connections.idle_timeout = Duration::from_secs(600);
    c.perf.max_bytes = u64::MAX;
    c.perf.timeout = OP_TIMEOUT;
    if let Some(s) = args.get("security") {
        c.transport.security =
            vec![serde_json::from_value(json!(s)).context("--security noise|tls")?];
    }
    Ok(c)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // RUST_LOG=libp2p_kad=debug and the like, on stderr.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse(USAGE)?;
    let key = blackhole_security::identity::generate();
    match args.command.as_str() {
        "serve" => {
            let mut listen = args.all("listen");
            if listen.is_empty() {
                listen = vec![
                    "/ip4/127.0.0.1/tcp/0".into(),
                    "/ip4/127.0.0.1/udp/0/quic-v1".into(),
                ];
            }
            let node = Node::start(config(&args, &listen)?, key).await?;
            let h = node.handle();
            let addrs: Vec<String> = h
                .listen_addrs()
                .await?
                .iter()
                .map(|a| format!("{a}/p2p/{}", h.peer_id()))
                .collect();
            emit(
                json!({ "peer_id": h.peer_id().to_string(), "addrs": addrs, "pid": std::process::id() }),
            );
            wait_stdin_closed().await;
            h.shutdown().await;
        }
        "perf" => {
            let node = Node::start(config(&args, &[])?, key).await?;
            let h = node.handle();
            let addr = args.get("addr").context("--addr")?.parse()?;
            let peer = h.dial(addr).await?;
            let r = h
                .perf(peer, args.num("upload", 0u64)?, args.num("download", 0u64)?)
                .await?;
            emit(serde_json::to_value(r)?);
            h.shutdown().await;
        }
        "connect" => {
            let node = Node::start(config(&args, &[])?, key).await?;
            let h = node.handle();
            let addr: blackhole_node::Multiaddr = args.get("addr").context("--addr")?.parse()?;
            let count: usize = args.num("count", 100)?;
            let mut events = h.events();
            let mut ms = Vec::with_capacity(count);
            let mut dial_ms = Vec::with_capacity(count);
            let start = Instant::now();
            for _ in 0..count {
                let t = Instant::now();
                let peer = h.dial(addr.clone()).await?;
                dial_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                h.perf(peer, 1, 1).await?;
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
                h.disconnect(peer).await?;
                // The next dial must open a new connection.
                tokio::time::timeout(OP_TIMEOUT, async {
                    loop {
                        if let Ok(Event::ConnectionClosed { remaining: 0, .. }) =
                            events.recv().await
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
            h.shutdown().await;
        }
        "pubsub" => pubsub(&args).await?,
        "rpc" => rpc(&args).await?,
        "dht" => dht(&args).await?,
        "relay" => relay(&args).await?,
        other => anyhow::bail!("unknown command {other}"),
    }
    Ok(())
}

async fn pubsub(args: &Args) -> anyhow::Result<()> {
    use blackhole_benches::fanout;
    use blackhole_node::{Priority, PublishOptions};
    let n: usize = args.num("nodes", 20)?;
    let messages: u64 = args.num("messages", 200)?;
    let size: usize = args.num("size", 256)?;
    let load: u64 = args.num("load", 0)?;
    let edges = fanout::edges(n, args.num("degree", 3)?, args.num("seed", 1)?);
    let mut nodes = Vec::new();
    for _ in 0..n {
        let mut c = config(args, &["/ip4/127.0.0.1/tcp/0".into()])?;
        c.discovery.mdns.mode = blackhole_discovery::MdnsMode::Off;
        // --same-topology 1: no dials of our own (topic discovery, peer
        // exchange, the DHT), so both stacks run on exactly the dialed graph.
        if args.num("same-topology", 0u8)? == 1 {
            c.pubsub.announce.dials_per_tick = 0;
            c.discovery.peer_exchange.enabled = false;
            c.overlay.enabled = false;
        }
        let node = Node::start(c, blackhole_security::identity::generate()).await?;
        nodes.push(node.handle());
    }
    let mut addrs = Vec::new();
    for h in &nodes {
        let a = h.listen_addrs().await?[0].clone();
        addrs.push(format!("{a}/p2p/{}", h.peer_id()).parse::<blackhole_node::Multiaddr>()?);
    }
    for (a, b) in &edges {
        nodes[*a].dial(addrs[*b].clone()).await?;
    }
    // Every node subscribes; deliveries go to one collector.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, u64, bool, Instant)>(1 << 16);
    for (i, h) in nodes.iter().enumerate() {
        let mut sub = h.subscribe(fanout::TOPIC).await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.recv().await {
                if let Some((seq, high)) = fanout::parse(&m.data)
                    && tx.send((i, seq, high, Instant::now())).await.is_err()
                {
                    return;
                }
            }
        });
    }
    drop(tx);
    // Wait for the mesh: every node has at least one mesh peer.
    let t = Instant::now();
    loop {
        let mut ready = true;
        for h in &nodes {
            if h.mesh(fanout::TOPIC).await?.mesh.is_empty() {
                ready = false;
                break;
            }
        }
        if ready {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < fanout::WAIT,
            "the mesh did not form in {:?}",
            fanout::WAIT
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mesh_seconds = t.elapsed().as_secs_f64();
    let loader = (load > 0).then(|| {
        let h = nodes[1].clone();
        tokio::spawn(async move {
            for k in 0..load {
                let _ = h
                    .publish(fanout::TOPIC, fanout::load(k), PublishOptions::default())
                    .await;
            }
        })
    });
    let mut sent = Vec::new();
    for seq in 0..messages {
        let high = load > 0 && seq % 2 == 1;
        let options = PublishOptions {
            priority: if high {
                Priority::High
            } else {
                Priority::Normal
            },
            ttl: None,
        };
        sent.push(Instant::now());
        nodes[0]
            .publish(fanout::TOPIC, fanout::probe(seq, high, size), options)
            .await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Collect until every other node has every probe, or time runs out.
    let expected = (n - 1) * messages as usize;
    let (mut normal, mut high) = (Vec::new(), Vec::new());
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + fanout::WAIT;
    while seen.len() < expected {
        let Ok(Some((node, seq, is_high, at))) = tokio::time::timeout_at(deadline, rx.recv()).await
        else {
            break;
        };
        if node == 0 || !seen.insert((node, seq)) {
            continue;
        }
        let ms = at.duration_since(sent[seq as usize]).as_secs_f64() * 1000.0;
        if is_high {
            high.push(ms)
        } else {
            normal.push(ms)
        }
    }
    if let Some(l) = loader {
        l.abort();
    }
    let duplicates = if load == 0 {
        let (mut all, mut unique) = (0.0, 0.0);
        for h in &nodes {
            let text = h.metrics().encode()?;
            all += fanout::counter(
                &text,
                "blackhole_pubsub_gossipsub_topic_msg_recv_counts_unfiltered",
                fanout::TOPIC,
            );
            unique += fanout::counter(
                &text,
                "blackhole_pubsub_gossipsub_topic_msg_recv_counts_total",
                fanout::TOPIC,
            );
        }
        Some((all - unique) / unique.max(1.0))
    } else {
        None
    };
    emit(fanout::report(
        &normal,
        &high,
        seen.len(),
        expected,
        duplicates,
        mesh_seconds,
    ));
    for h in &nodes {
        h.shutdown().await;
    }
    Ok(())
}

async fn rpc(args: &Args) -> anyhow::Result<()> {
    let calls: usize = args.num("calls", 1000)?;
    let size: usize = args.num("size", 1024)?;
    let mut handles = Vec::new();
    for _ in 0..2 {
        let mut c = config(args, &["/ip4/127.0.0.1/tcp/0".into()])?;
        c.discovery.mdns.mode = blackhole_discovery::MdnsMode::Off;
        let node = Node::start(c, blackhole_security::identity::generate()).await?;
        handles.push(node.handle());
    }
    let a = handles[0].listen_addrs().await?[0].clone();
    let addr: blackhole_node::Multiaddr = format!("{a}/p2p/{}", handles[0].peer_id()).parse()?;
    handles[1].dial(addr).await?;
    let (server, client) = (handles[0].peer_id(), handles[1].clone());
    let rpc = client.rpc()?;
    let request = serde_json::Value::String("x".repeat(size));
    // Warm up (the first stream negotiates).
    rpc.call::<blackhole_node::rpc::Echo>(server, &request, Default::default())
        .await?;
    let mut ms = Vec::with_capacity(calls);
    let start = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        let r = rpc
            .call::<blackhole_node::rpc::Echo>(server, &request, Default::default())
            .await?;
        anyhow::ensure!(r == request, "echo changed the request");
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    emit(json!({ "latency_ms": ms, "seconds": start.elapsed().as_secs_f64() }));
    for h in &handles {
        h.shutdown().await;
    }
    Ok(())
}

async fn dht(args: &Args) -> anyhow::Result<()> {
    use blackhole_benches::Rng;
    use blackhole_node::{DhtCommand, dht::Reply};
    let n: usize = args.num("nodes", 50)?;
    let records: usize = args.num("records", 20)?;
    let lookups: usize = args.num("lookups", 200)?;
    let mut rng = Rng::new(args.num("seed", 1)?);
    let mut nodes = Vec::new();
    let mut boot: Vec<blackhole_node::Multiaddr> = Vec::new();
    for _ in 0..n {
        let mut c = config(args, &["/ip4/127.0.0.1/tcp/0".into()])?;
        c.discovery.mdns.mode = blackhole_discovery::MdnsMode::Off;
        c.overlay.mode = blackhole_overlay::Mode::Server;
        c.discovery.bootstrap = boot.clone();
        let node = Node::start(c, blackhole_security::identity::generate()).await?;
        let h = node.handle();
        if boot.is_empty() {
            let a = h.listen_addrs().await?[0].clone();
            boot.push(format!("{a}/p2p/{}", h.peer_id()).parse()?);
        }
        nodes.push(h);
    }
    for r in futures::future::join_all(nodes.iter().skip(1).map(|h| h.dht(DhtCommand::bootstrap())))
        .await
    {
        r?;
    }
    let keys: Vec<String> = (0..records).map(|i| format!("bench/{i}")).collect();
    for k in &keys {
        nodes[rng.below(n)]
            .dht(DhtCommand::put(k.as_bytes(), k.as_bytes()))
            .await?;
    }
    let (mut ms, mut requests, mut found) = (Vec::new(), Vec::new(), 0usize);
    for _ in 0..lookups {
        let key = &keys[rng.below(records)];
        if let Ok(Reply::Found {
            requests: r,
            duration_ms,
            value,
            ..
        }) = nodes[rng.below(n)]
            .dht(DhtCommand::get(key.as_bytes()))
            .await
            && value == key.as_bytes()
        {
            found += 1;
            ms.push(duration_ms);
            requests.push(f64::from(r));
        }
    }
    emit(json!({ "latency_ms": ms, "requests": requests, "found": found, "lookups": lookups }));
    for h in &nodes {
        h.shutdown().await;
    }
    Ok(())
}

/// `relay --count N`: in one process a relay, a node holding a reservation
/// on it, and a dialer that connects N times through the relay and N
/// times directly, each time with a 1-byte perf round trip. Hole punching
/// is off, so the relayed connections stay relayed.
async fn relay(args: &Args) -> anyhow::Result<()> {
    use blackhole_nat::Switch;
    let count: usize = args.num("count", 20)?;
    let tcp = vec!["/ip4/127.0.0.1/tcp/0".to_owned()];
    let mut rc = config(args, &tcp)?;
    rc.nat.relay_server.mode = Switch::On;
    // The dialer opens a circuit per connection: lift the rate limits.
    for r in [
        &mut rc.nat.relay_server.circuit_rate_per_peer,
        &mut rc.nat.relay_server.circuit_rate_per_ip,
    ] {
        r.limit = 1_000_000;
    }
    rc.nat.relay_server.max_circuits = 1024;
    rc.nat.relay_server.max_circuits_per_peer = 1024;
    rc.nat.autonat.probe_interval = Duration::from_secs(1);
    let relay = Node::start(rc, blackhole_security::identity::generate()).await?;
    let relay = relay.handle();
    let relay_addr: blackhole_node::Multiaddr =
        format!("{}/p2p/{}", relay.listen_addrs().await?[0], relay.peer_id()).parse()?;
    // The relay grants reservations once AutoNAT confirms its address (the
    // listener is its AutoNAT server); the listener retries until then.
    let mut lc = config(args, &tcp)?;
    lc.nat.relay_client.mode = Switch::On;
    lc.nat.relay_client.relays = vec![relay_addr];
    lc.nat.relay_client.reservations = 1;
    lc.nat.relay_client.retry_after = Duration::from_secs(1);
    lc.nat.hole_punching = false;
    let listener = Node::start(lc, blackhole_security::identity::generate()).await?;
    let listener = listener.handle();
    let mut events = listener.events();
    let relayed = tokio::time::timeout(OP_TIMEOUT, async {
        loop {
            if let Ok(Event::Nat(blackhole_nat::Event::ReservationAccepted { addr, .. })) =
                events.recv().await
            {
                return addr;
            }
        }
    })
    .await
    .context("no relay reservation")?;
    let direct: blackhole_node::Multiaddr = format!(
        "{}/p2p/{}",
        listener.listen_addrs().await?[0],
        listener.peer_id()
    )
    .parse()?;
    let mut dc = config(args, &[])?;
    dc.nat.hole_punching = false;
    let dialer = Node::start(dc, blackhole_security::identity::generate()).await?;
    let dialer = dialer.handle();
    let mut closed = dialer.events();
    let mut out = serde_json::Map::new();
    for (name, addr) in [("relayed_ms", relayed), ("direct_ms", direct)] {
        let mut ms = Vec::with_capacity(count);
        for _ in 0..count {
            let t = Instant::now();
            let peer = dialer.dial(addr.clone()).await?;
            dialer.perf(peer, 1, 1).await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            dialer.disconnect(peer).await?;
            tokio::time::timeout(OP_TIMEOUT, async {
                loop {
                    if let Ok(Event::ConnectionClosed { remaining: 0, .. }) = closed.recv().await {
                        return;
                    }
                }
            })
            .await?;
        }
        out.insert(name.into(), json!(ms));
    }
    emit(serde_json::Value::Object(out));
    for h in [dialer, listener, relay] {
        h.shutdown().await;
    }
    Ok(())
}
