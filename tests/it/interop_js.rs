//! Interop with a real js-libp2p 3.x peer (tests/interop/js): dial and
//! ping both ways over TCP + Noise + Yamux, identify, 100 MiB on one
//! stream in both directions (js-libp2p's yamux sends DATA frames as large
//! as its send window; our multiplexer splits them, see blackhole-mux),
//! and gossipsub messages both ways with `@libp2p/gossipsub`.
//!
//! Needs `npm ci` in tests/interop/js (`.ci/run` does it). Without it the
//! tests say so and pass, unless BLACKHOLE_REQUIRE_INTEROP=1 (set by CI),
//! which makes a missing install a failure.

use std::{collections::HashMap, path::PathBuf, process::Stdio, time::Duration};

use blackhole_node::{Event, Handle, PeerId, PublishOptions};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
    time::Instant,
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

const GOSSIP_TOPIC: &str = "interop/gossip";
/// Bound on each phase of the gossipsub test (connect and subscribe, one
/// direction of messages, the other).
const GOSSIP_TIMEOUT: Duration = Duration::from_secs(30);
const GOSSIP_MESSAGES: usize = 5;
/// Between two checks of something we can only poll (our node reports
/// no event when a remote peer subscribes).
const POLL: Duration = Duration::from_millis(50);

/// The gossipsub side of a listening js peer: its stdin for commands and
/// its stdout, where every `message` event is kept whenever it shows up
/// (so a duplicate is counted even while waiting for something else).
struct JsGossip {
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    messages: Vec<serde_json::Value>,
    next_id: u64,
}

impl JsGossip {
    /// Reads events until `pred` accepts one (before `deadline`); an
    /// `error` event that answers no command fails the test.
    async fn until(
        &mut self,
        what: &str,
        deadline: Instant,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let read = async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("js peer ended before {what}"));
                let v: serde_json::Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
                if v["event"] == "message" {
                    self.messages.push(v.clone());
                }
                if pred(&v) {
                    return v;
                }
                if v["event"] == "error" && v["id"].is_null() {
                    panic!("js peer reported an error: {line}");
                }
            }
        };
        tokio::time::timeout_at(deadline, read)
            .await
            .unwrap_or_else(|_| panic!("js peer: no {what} in time"))
    }

    /// Has the js peer publish `data`; retries (until `deadline`) while it
    /// has nobody to send to, since js gossipsub only learns of our
    /// subscription and opens its stream to us asynchronously. A failed
    /// attempt sent nothing, so retrying cannot duplicate. Returns the
    /// peers it was sent to.
    async fn publish(&mut self, topic: &str, data: &str, deadline: Instant) -> Vec<String> {
        loop {
            self.next_id += 1;
            let id = self.next_id;
            let cmd = serde_json::json!({"cmd": "publish", "id": id, "topic": topic, "data": data});
            self.stdin
                .write_all(format!("{cmd}\n").as_bytes())
                .await
                .unwrap();
            let answer = self
                .until("an answer to publish", deadline, |v| v["id"] == id)
                .await;
            if answer["event"] == "published" {
                return answer["recipients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_str().unwrap().to_owned())
                    .collect();
            }
            let error = answer["message"].as_str().unwrap_or_default();
            assert!(
                error.contains("NoPeersSubscribedToTopic") || error.contains("NoRecipients"),
                "js publish failed: {answer}"
            );
            assert!(Instant::now() < deadline, "js could not publish: {answer}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// How often the js peer delivered each payload on `topic` from `from`.
    fn received(&self, topic: &str, from: &PeerId) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for m in &self.messages {
            assert_eq!(
                m["topic"], topic,
                "js delivered a topic it did not subscribe: {m}"
            );
            assert_eq!(m["from"].as_str(), Some(from.to_string().as_str()), "{m}");
            *counts
                .entry(m["data"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        counts
    }
}

/// Our node publishes to a js-libp2p gossipsub peer and receives what it
/// publishes: each message exactly once, signed by its publisher. Each
/// side publishes five messages and then an end marker; the receiver reads
/// until it has all six, so a duplicate delivered before the marker shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossipsub_both_ways_with_js() {
    let Some(node) = node_binary() else { return };
    let mut child = spawn(&node, &["listen", "--topic", GOSSIP_TOPIC]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = next_event(&mut lines, "listening").await;
    let js_addr = listening["addrs"][0].as_str().unwrap().parse().unwrap();
    let js_peer: PeerId = listening["peer_id"].as_str().unwrap().parse().unwrap();
    let mut js = JsGossip {
        stdin: child.stdin.take().unwrap(),
        lines,
        messages: Vec::new(),
        next_id: 0,
    };

    let ours = our_node().await;
    let me = ours.peer_id();
    let mut sub = ours.subscribe(GOSSIP_TOPIC).await.unwrap();
    assert_eq!(ours.dial(js_addr).await.unwrap(), js_peer);

    // Each side sees the other subscribed: js says so, ours is polled.
    let deadline = Instant::now() + GOSSIP_TIMEOUT;
    let me_str = me.to_string();
    js.until("our subscription", deadline, |v| {
        v["event"] == "subscription-change"
            && v["peer_id"] == me_str.as_str()
            && v["topic"] == GOSSIP_TOPIC
            && v["subscribed"] == true
    })
    .await;
    while ours.mesh(GOSSIP_TOPIC).await.unwrap().topic_peers == 0 {
        assert!(
            Instant::now() < deadline,
            "our node never saw the js peer subscribe to {GOSSIP_TOPIC}"
        );
        tokio::time::sleep(POLL).await;
    }

    // Rust -> js.
    let started = Instant::now();
    let ours_sent: Vec<String> = (0..GOSSIP_MESSAGES)
        .map(|i| format!("rust->js {i}"))
        .chain(["rust->js end".to_owned()])
        .collect();
    for data in &ours_sent {
        let published = ours
            .publish(
                GOSSIP_TOPIC,
                data.clone().into_bytes(),
                PublishOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(published.sent_on, [GOSSIP_TOPIC], "{data}: {published:?}");
        assert!(published.unreached.is_empty(), "{data}: {published:?}");
    }
    let deadline = Instant::now() + GOSSIP_TIMEOUT;
    while ours_sent
        .iter()
        .any(|d| !js.received(GOSSIP_TOPIC, &me).contains_key(d))
    {
        js.until("our messages", deadline, |v| v["event"] == "message")
            .await;
    }
    eprintln!(
        "rust -> js: {} messages in {:?}",
        ours_sent.len(),
        started.elapsed()
    );

    // js -> Rust.
    let started = Instant::now();
    let js_sent: Vec<String> = (0..GOSSIP_MESSAGES)
        .map(|i| format!("js->rust {i}"))
        .chain(["js->rust end".to_owned()])
        .collect();
    let deadline = Instant::now() + GOSSIP_TIMEOUT;
    for data in &js_sent {
        let recipients = js.publish(GOSSIP_TOPIC, data, deadline).await;
        assert_eq!(recipients, [me_str.as_str()], "{data}");
    }
    // Our own messages come back on our subscription too (delivered
    // locally when published), each once.
    let mut got: HashMap<(PeerId, String), usize> = HashMap::new();
    let all_in = |got: &HashMap<(PeerId, String), usize>| {
        js_sent
            .iter()
            .all(|d| got.contains_key(&(js_peer, d.clone())))
            && ours_sent.iter().all(|d| got.contains_key(&(me, d.clone())))
    };
    while !all_in(&got) {
        let m = tokio::time::timeout_at(deadline, sub.recv())
            .await
            .expect("js messages arrive in time")
            .expect("our node is running");
        assert_eq!(m.topic, GOSSIP_TOPIC, "{m:?}");
        let source = m.source.expect("signed messages name their source");
        if source == js_peer {
            assert_eq!(m.from, js_peer, "{m:?}");
        }
        *got.entry((source, m.text().unwrap().to_owned()))
            .or_default() += 1;
    }
    eprintln!(
        "js -> rust: {} messages ({} publish attempts) in {:?}",
        js_sent.len(),
        js.next_id,
        started.elapsed()
    );

    let expected = |source: PeerId, sent: &[String]| -> HashMap<(PeerId, String), usize> {
        sent.iter().map(|d| ((source, d.clone()), 1)).collect()
    };
    let mut want = expected(js_peer, &js_sent);
    want.extend(expected(me, &ours_sent));
    assert_eq!(got, want, "our subscription: each message exactly once");
    assert_eq!(sub.dropped(), 0);
    let js_want: HashMap<String, usize> = ours_sent.iter().map(|d| (d.clone(), 1)).collect();
    assert_eq!(
        js.received(GOSSIP_TOPIC, &me),
        js_want,
        "js: each of our messages exactly once"
    );
    // js grafts us when it learns of our subscription (and our heartbeat
    // would graft it within a second anyway): the mesh forms across
    // implementations.
    let deadline = Instant::now() + GOSSIP_TIMEOUT;
    loop {
        let mesh = ours.mesh(GOSSIP_TOPIC).await.unwrap();
        if mesh.mesh.contains(&js_peer) {
            eprintln!("our mesh for {GOSSIP_TOPIC}: {mesh:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "js peer not in our mesh: {mesh:?}"
        );
        tokio::time::sleep(POLL).await;
    }

    drop(js.stdin);
    let status = tokio::time::timeout(PROCESS_TIMEOUT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "js peer exited with {status}");
    ours.shutdown().await;
}
