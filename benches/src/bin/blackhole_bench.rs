//! Our side of `cargo xtask bench`: a Blackhole node (the `blackhole-node`
//! library with its default configuration, API off) as server or client.
//!
//! Every command takes `--config FILE` to start from a node config file.
//!
//! serve   [--listen A]...                          prints {"peer_id","addrs"}; runs until stdin closes
//! perf    --addr A --upload N --download N [--security noise|tls]
//! connect --addr A --count N                       new connection + 1-byte perf round trip, N times

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use anyhow::Context;
use blackhole_benches::{Args, OP_TIMEOUT, emit, wait_stdin_closed};
use blackhole_node::{Config, Event, Node};
use serde_json::json;

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
    let args = Args::parse()?;
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
            let start = Instant::now();
            for _ in 0..count {
                let t = Instant::now();
                let peer = h.dial(addr.clone()).await?;
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
            emit(json!({ "latency_ms": ms, "seconds": start.elapsed().as_secs_f64() }));
            h.shutdown().await;
        }
        other => anyhow::bail!("unknown command {other}"),
    }
    Ok(())
}
