//! Interop with a real js-libp2p 3.x peer (tests/interop/js): dial and
//! ping both ways over TCP + Noise + Yamux, identify, and 100 MiB on one
//! stream in both directions (js-libp2p's yamux sends DATA frames as large
//! as its send window; our multiplexer splits them, see blackhole-mux).
//!
//! Needs `npm ci` in tests/interop/js (`.ci/run` does it). Without it the
//! tests say so and pass, unless BLACKHOLE_REQUIRE_INTEROP=1 (set by CI),
//! which makes a missing install a failure.

use std::{path::PathBuf, process::Stdio, time::Duration};

use blackhole_node::{Event, Handle};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

use crate::support::{addr, config, identified_peer, start, wait_event};

const BULK: u64 = 100 * 1024 * 1024;
const PROCESS_TIMEOUT: Duration = Duration::from_secs(300);

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/js")
}

/// The Node 22 binary installed by `npm ci`, or `None` (and why) when the
/// interop dependencies are not installed.
fn node_binary() -> Option<PathBuf> {
    let node = js_dir().join("node_modules/.bin/node");
    if node.exists() && js_dir().join("node_modules/libp2p").exists() {
        return Some(node);
    }
    let msg = format!(
        "js-libp2p interop skipped: run `npm ci` in {}",
        js_dir().display()
    );
    if std::env::var("BLACKHOLE_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{msg} (BLACKHOLE_REQUIRE_INTEROP=1)");
    }
    eprintln!("{msg}");
    None
}

fn spawn(node: &PathBuf, args: &[&str]) -> Child {
    Command::new(node)
        .arg(js_dir().join("peer.mjs"))
        .args(args)
        .current_dir(js_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the js peer starts")
}

/// Reads JSON lines until one with `"event": event` (an `"error"` event fails).
async fn next_event(lines: &mut Lines<BufReader<ChildStdout>>, event: &str) -> serde_json::Value {
    tokio::time::timeout(PROCESS_TIMEOUT, async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("js peer ended before {event}"));
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            if v["event"] == "error" {
                panic!("js peer reported an error: {line}");
            }
            if v["event"] == event {
                return v;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("js peer: no {event} within {PROCESS_TIMEOUT:?}"))
}

async fn our_node() -> Handle {
    start(config(&["/ip4/127.0.0.1/tcp/0"])).await
}

fn split_frames(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("blackhole_mux_yamux_frames_split_total"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_dials_pings_identifies_and_transfers_100_mib_both_ways() {
    let Some(node) = node_binary() else { return };
    let ours = our_node().await;
    let target = addr(&ours, "tcp").await.to_string();
    let bulk = BULK.to_string();
    let mut events = ours.events();
    let mut js = spawn(
        &node,
        &["dial", &target, "--upload", &bulk, "--download", &bulk],
    );
    let mut lines = BufReader::new(js.stdout.take().unwrap()).lines();

    let ping = next_event(&mut lines, "ping").await;
    assert!(ping["rtt_ms"].as_f64().is_some(), "{ping}");
    let identify = next_event(&mut lines, "identify").await;
    assert!(
        identify["agent"]
            .as_str()
            .unwrap()
            .starts_with("blackhole-node/"),
        "{identify}"
    );
    assert_eq!(
        identify["peer_id"].as_str(),
        Some(ours.peer_id().to_string().as_str())
    );
    // Our side identified the js peer too (the js process may be gone
    // already, so look at the events rather than the peer list).
    let (js_peer, agent) = wait_event(&mut events, Duration::from_secs(20), |e| match e {
        Event::Identified {
            peer_id,
            agent_version,
            ..
        } => Some((*peer_id, agent_version.clone())),
        _ => None,
    })
    .await;
    assert!(agent.contains("js-libp2p/3."), "{js_peer}: {agent}");
    let perf = next_event(&mut lines, "perf").await;
    assert_eq!(perf["upload_bytes"].as_u64(), Some(BULK), "{perf}");
    assert_eq!(perf["download_bytes"].as_u64(), Some(BULK), "{perf}");
    let status = tokio::time::timeout(PROCESS_TIMEOUT, js.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "js peer exited with {status}");
    eprintln!(
        "js -> rust perf: upload {:.2}s, download {:.2}s; yamux frames split: {}",
        perf["upload_seconds"].as_f64().unwrap_or(0.0),
        perf["download_seconds"].as_f64().unwrap_or(0.0),
        split_frames(&ours.metrics().encode().unwrap())
    );
    ours.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_dial_ping_identify_and_transfer_100_mib_both_ways() {
    let Some(node) = node_binary() else { return };
    let mut js = spawn(&node, &["listen"]);
    let mut lines = BufReader::new(js.stdout.take().unwrap()).lines();
    let listening = next_event(&mut lines, "listening").await;
    let js_addr = listening["addrs"][0].as_str().unwrap().parse().unwrap();
    let ours = our_node().await;

    let peer = ours.dial(js_addr).await.unwrap();
    assert_eq!(peer.to_string(), listening["peer_id"].as_str().unwrap());
    let rtt = ours.ping(peer).await.unwrap();
    assert!(rtt < Duration::from_secs(5));
    let info = identified_peer(&ours, peer).await;
    let agent = info.agent_version.unwrap();
    assert!(agent.contains("js-libp2p/3."), "{agent}");
    let c = &info.connections[0];
    assert_eq!(
        (c.security, c.muxer),
        (
            Some(blackhole_security::Protocol::Noise),
            Some(blackhole_mux::Protocol::Yamux)
        )
    );

    let report = ours.perf(peer, BULK, BULK).await.unwrap();
    assert_eq!((report.upload_bytes, report.download_bytes), (BULK, BULK));
    eprintln!(
        "rust -> js perf: upload {:.2}s, download {:.2}s; yamux frames split: {}",
        report.upload_seconds,
        report.download_seconds,
        split_frames(&ours.metrics().encode().unwrap())
    );

    // And the js listener dials a second node of ours from its side.
    let second = our_node().await;
    let cmd = serde_json::json!({
        "cmd": "dial_ping_perf",
        "addr": addr(&second, "tcp").await.to_string(),
        "upload": 1 << 20,
        "download": 1 << 20,
    });
    let stdin = js.stdin.as_mut().unwrap();
    stdin
        .write_all(format!("{cmd}\n").as_bytes())
        .await
        .unwrap();
    let perf = next_event(&mut lines, "perf").await;
    assert_eq!(perf["download_bytes"].as_u64(), Some(1 << 20), "{perf}");

    drop(js.stdin.take());
    let status = tokio::time::timeout(PROCESS_TIMEOUT, js.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "js peer exited with {status}");
    ours.shutdown().await;
    second.shutdown().await;
}
