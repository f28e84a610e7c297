//! Interop with a real js-libp2p 3.x peer (tests/interop/js): dial and
//! ping both ways over TCP + Noise + Yamux (and over TLS 1.3, 10 MiB
//! each way), identify, 100 MiB on one
//! stream in both directions (js-libp2p's yamux sends DATA frames as large
//! as its send window; our multiplexer splits them, see blackhole-mux),
//! gossipsub messages both ways with `@libp2p/gossipsub`, and the Kademlia
//! DHT with `@libp2p/kad-dht` speaking our protocol name: records,
//! provider records and peer lookups both ways.
//!
//! Needs `npm ci` in tests/interop/js (`.ci/run` does it). Without it the
//! tests say so and pass, unless BLACKHOLE_REQUIRE_INTEROP=1 (set by CI),
//! which makes a missing install a failure.

use std::{collections::HashMap, path::PathBuf, process::Stdio, time::Duration};

use blackhole_node::{DhtCommand, Event, Handle, Multiaddr, PeerId, PublishOptions, dht::Reply};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
    time::Instant,
};

use crate::support::{addr, config, identified_peer, start, until, wait_event};

const BULK: u64 = 100 * 1024 * 1024;
const PROCESS_TIMEOUT: Duration = Duration::from_secs(300);

fn js_dir() -> PathBuf {
    crate::support::manifest_dir().join("interop/js")
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

/// Waits (bounded) for the js process to end and checks it succeeded.
async fn exits_cleanly(js: &mut Child, what: &str) {
    let status = tokio::time::timeout(PROCESS_TIMEOUT, js.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} still running after {PROCESS_TIMEOUT:?}"))
        .unwrap();
    assert!(status.success(), "{what} exited with {status}");
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
    exits_cleanly(&mut js, "js peer").await;
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
    exits_cleanly(&mut js, "js peer").await;
    ours.shutdown().await;
    second.shutdown().await;
}

/// TLS 1.3 with js-libp2p's `@libp2p/tls` (Node's OpenSSL) on the other
/// side, since our TLS configurations are our own: js dials us, we dial
/// js, 10 MiB each way on one stream both times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_js_both_ways() {
    let Some(node) = node_binary() else { return };
    let mut c = config(&["/ip4/127.0.0.1/tcp/0"]);
    c.transport.security = vec![blackhole_security::Protocol::Tls];
    let ours = start(c).await;
    let size = 10u64 << 20;
    let n = size.to_string();

    let target = addr(&ours, "tcp").await.to_string();
    let mut js = spawn(
        &node,
        &[
            "dial",
            &target,
            "--upload",
            &n,
            "--download",
            &n,
            "--security",
            "tls",
        ],
    );
    let mut lines = BufReader::new(js.stdout.take().unwrap()).lines();
    next_event(&mut lines, "ping").await;
    let perf = next_event(&mut lines, "perf").await;
    assert_eq!(perf["upload_bytes"].as_u64(), Some(size), "{perf}");
    assert_eq!(perf["download_bytes"].as_u64(), Some(size), "{perf}");
    exits_cleanly(&mut js, "js dialer").await;

    let mut js = spawn(&node, &["listen", "--security", "tls"]);
    let mut lines = BufReader::new(js.stdout.take().unwrap()).lines();
    let listening = next_event(&mut lines, "listening").await;
    let js_addr = listening["addrs"][0].as_str().unwrap().parse().unwrap();
    let peer = ours.dial(js_addr).await.unwrap();
    let info = identified_peer(&ours, peer).await;
    assert!(info.agent_version.unwrap().contains("js-libp2p/3."));
    assert_eq!(
        info.connections[0].security,
        Some(blackhole_security::Protocol::Tls)
    );
    let report = ours.perf(peer, size, size).await.unwrap();
    assert_eq!((report.upload_bytes, report.download_bytes), (size, size));
    drop(js.stdin.take());
    exits_cleanly(&mut js, "js listener").await;
    ours.shutdown().await;
}

const GOSSIP_TOPIC: &str = "interop/gossip";
/// Bound on each phase of the gossipsub test (connect and subscribe, one
/// direction of messages, the other).
const GOSSIP_TIMEOUT: Duration = Duration::from_secs(30);
const GOSSIP_MESSAGES: usize = 5;
/// Between two checks of something we can only poll (our node reports
/// no event when a remote peer subscribes).
const POLL: Duration = Duration::from_millis(50);

/// A listening js peer: its stdin for commands and its stdout, where every
/// gossipsub `message` event is kept whenever it shows up (so a duplicate
/// is counted even while waiting for something else).
struct JsPeer {
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    messages: Vec<serde_json::Value>,
    next_id: u64,
}

impl JsPeer {
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

    /// Sends `cmd` with a fresh `id` and returns the event answering it:
    /// `Ok` with the result, `Err` with the js peer's error message.
    async fn call(
        &mut self,
        mut cmd: serde_json::Value,
        deadline: Instant,
    ) -> Result<serde_json::Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        cmd["id"] = id.into();
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .unwrap();
        let what = format!("an answer to {cmd}");
        let answer = self.until(&what, deadline, |v| v["id"] == id).await;
        if answer["event"] == "error" {
            return Err(answer["message"].as_str().unwrap_or_default().to_owned());
        }
        Ok(answer)
    }

    /// Repeats `cmd` (every POLL, until `deadline`) until its answer
    /// satisfies `done`; an error answer fails the test.
    async fn poll(
        &mut self,
        cmd: serde_json::Value,
        deadline: Instant,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        loop {
            let answer = self
                .call(cmd.clone(), deadline)
                .await
                .unwrap_or_else(|e| panic!("js: {cmd}: {e}"));
            if done(&answer) {
                return answer;
            }
            assert!(Instant::now() < deadline, "js: {cmd}: still {answer}");
            tokio::time::sleep(POLL).await;
        }
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
    let mut js = JsPeer {
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
    exits_cleanly(&mut child, "js peer").await;
    ours.shutdown().await;
}

/// Bound on each DHT step of the DHT test (our query timeout is shorter).
const DHT_TIMEOUT: Duration = Duration::from_secs(45);

/// One of our nodes as a DHT server on a TCP loopback port it also
/// announces as its external address: libp2p-kad puts only external
/// addresses in the provider records it sends, and js kad-dht drops a
/// provider record without addresses (loopback confirms nothing, so the
/// address is configured, as a reachable deployment would).
async fn dht_node() -> Handle {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let mut c = config(&[&listen.to_string()]);
    c.network.external_addresses = vec![listen];
    c.overlay.mode = blackhole_overlay::Mode::Server;
    c.overlay.query_timeout = Duration::from_secs(20);
    c.connections.idle_timeout = Duration::from_secs(3600);
    start(c).await
}

async fn dht(h: &Handle, cmd: DhtCommand) -> Reply {
    h.dht(cmd)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", h.peer_id()))
}

async fn in_table(h: &Handle, peer: PeerId) -> bool {
    match h.dht(DhtCommand::table()).await {
        Ok(Reply::Table { buckets }) => buckets
            .iter()
            .flat_map(|b| &b.peers)
            .any(|p| p.peer_id == peer),
        _ => false,
    }
}

/// Waits until `peer` is in the js peer's routing table (js adds a peer
/// once identify shows our protocol and a ping answers).
async fn js_table_has(js: &mut JsPeer, peer: &str) {
    let deadline = Instant::now() + DHT_TIMEOUT;
    loop {
        let table = js
            .call(serde_json::json!({"cmd": "dht-table"}), deadline)
            .await
            .unwrap();
        if strings(&table["peers"]).iter().any(|p| p == peer) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{peer} never entered js's table: {table}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A sha2-256-shaped multihash (0x12 0x20 + 32 bytes) naming `label`: the
/// only provider keys js kad-dht accepts (it decodes them as CIDv0); the
/// digest is not checked, so it is the label padded to 32 bytes.
fn provider_key(label: &str) -> Vec<u8> {
    let mut key = vec![0x12, 0x20];
    key.extend(format!("{label:<32}").bytes().take(32));
    key
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Kademlia between our nodes and a js-libp2p kad-dht peer on our protocol
/// name (/blackhole/kad/1.0.0). Our nodes A and B know each other; D is
/// js's only peer while js puts a record, then leaves; js joins through A;
/// C comes last and knows only js. Each exchange is checked where the
/// answer can only have come from the other implementation: GET_VALUE,
/// PUT_VALUE, ADD_PROVIDER, GET_PROVIDERS and FIND_NODE, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_records_providers_and_peers_with_js() {
    let Some(node) = node_binary() else { return };
    let mut child = spawn(&node, &["listen", "--dht"]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = next_event(&mut lines, "listening").await;
    let js_addr: Multiaddr = listening["addrs"][0].as_str().unwrap().parse().unwrap();
    let js_peer: PeerId = listening["peer_id"].as_str().unwrap().parse().unwrap();
    let js_str = js_peer.to_string();
    let mut js = JsPeer {
        stdin: child.stdin.take().unwrap(),
        lines,
        messages: Vec::new(),
        next_id: 0,
    };
    let deadline = || Instant::now() + DHT_TIMEOUT;

    let a = dht_node().await;
    let b = dht_node().await;
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    let (a_str, b_str) = (a_id.to_string(), b_id.to_string());
    b.dial(addr(&a, "tcp").await).await.unwrap();
    until(
        "A and B in each other's routing table",
        DHT_TIMEOUT,
        || async { in_table(&a, b_id).await && in_table(&b, a_id).await },
    )
    .await;

    // A record stored before js joined: only A and B have it.
    let Reply::Stored { stored_at } = dht(
        &a,
        DhtCommand::put("/bh/interop/before-js", "stored by A before js"),
    )
    .await
    else {
        panic!()
    };
    assert!(stored_at >= 1, "stored at {stored_at}");

    // A record only js holds: js puts it while its only DHT peer is D,
    // one of ours (PUT_VALUE js -> ours), and D leaves.
    let d = dht_node().await;
    assert_eq!(d.dial(js_addr.clone()).await.unwrap(), js_peer);
    let d_str = d.peer_id().to_string();
    js_table_has(&mut js, &d_str).await;
    let put = js
        .call(
            serde_json::json!({"cmd": "dht-put", "key": "/bh/interop/js-only", "value": "only js has it"}),
            deadline(),
        )
        .await
        .expect("js puts while D is its only peer");
    assert_eq!(strings(&put["stored_at"]), [d_str], "{put}");
    d.shutdown().await;

    // js joins through A: each side puts the other in its routing table
    // (js after identify shows our protocol and a ping, ours after identify
    // shows js's).
    assert_eq!(a.dial(js_addr.clone()).await.unwrap(), js_peer);
    js_table_has(&mut js, &a_str).await;
    until("js in A's routing table", DHT_TIMEOUT, || {
        in_table(&a, js_peer)
    })
    .await;

    // (1) js gets what A put before: GET_VALUE js -> ours.
    let got = js
        .call(
            serde_json::json!({"cmd": "dht-get", "key": "/bh/interop/before-js"}),
            deadline(),
        )
        .await
        .expect("js gets A's record");
    assert_eq!(got["value"], "stored by A before js", "{got}");
    assert_eq!(got["local"], false, "{got}");
    let answered = strings(&got["record_from"]);
    assert!(
        answered.iter().all(|p| *p == a_str || *p == b_str) && !answered.is_empty(),
        "{got}"
    );
    eprintln!("js got A's record from {answered:?}");

    // (2) A puts now that js is in its table: PUT_VALUE ours -> js; js
    // then has it in its own store. (libp2p-kad ends a put once one peer
    // took it, so js may get the request a moment after A's put returns.)
    let Reply::Stored { .. } = dht(&a, DhtCommand::put("/bh/interop/from-rust", "put by A")).await
    else {
        panic!()
    };
    let got = js
        .poll(
            serde_json::json!({"cmd": "dht-get", "key": "/bh/interop/from-rust"}),
            deadline(),
            |v| v["local"] == true,
        )
        .await;
    assert_eq!(got["value"], "put by A", "{got}");

    // (3) js puts: FIND_NODE js -> ours (it learns B from A), PUT_VALUE
    // js -> ours at A and B.
    let put = js
        .call(
            serde_json::json!({"cmd": "dht-put", "key": "/bh/interop/from-js", "value": "put by js"}),
            deadline(),
        )
        .await
        .expect("js puts");
    let stored_at = strings(&put["stored_at"]);
    assert!(
        stored_at.contains(&a_str) && stored_at.contains(&b_str),
        "{put}"
    );
    eprintln!("js put its record at {stored_at:?}");
    // The record only js has: GET_VALUE ours -> js.
    let Reply::Found { value, from, .. } = dht(&a, DhtCommand::get("/bh/interop/js-only")).await
    else {
        panic!()
    };
    assert_eq!(
        (value.as_slice(), from),
        (&b"only js has it"[..], Some(js_peer))
    );

    // (4) Provider records. A provides: ADD_PROVIDER ours -> js (with A's
    // address), and js finds A.
    let key_a = provider_key("interop/provided-by-A");
    let Reply::Providing { stored_at } = dht(&a, DhtCommand::provide(key_a.clone())).await else {
        panic!()
    };
    assert!(
        stored_at >= 2,
        "A's provider record stored at {stored_at} peers"
    );
    // js finds A, with its address; and once js has handled A's
    // ADD_PROVIDER (the message has no answer, so A's provide may return
    // first), from its own store.
    let d = deadline();
    let mut told_by = Vec::new();
    loop {
        let found = js
            .call(
                serde_json::json!({"cmd": "dht-find-providers", "key_hex": hex(&key_a)}),
                d,
            )
            .await
            .expect("js looks for providers");
        let provider_a = found["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer_id"] == a_str.as_str())
            .unwrap_or_else(|| panic!("js did not find A providing: {found}"))
            .clone();
        assert!(
            !provider_a["addrs"].as_array().unwrap().is_empty(),
            "{found}"
        );
        let from = strings(&provider_a["from"]);
        told_by.push(from.clone());
        if from.contains(&js_str) {
            break;
        }
        assert!(
            Instant::now() < d,
            "js never stored A's provider record: {told_by:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    eprintln!("js found A providing, told by {told_by:?}");
    // js provides: ADD_PROVIDER js -> ours; B finds js.
    let key_js = provider_key("interop/provided-by-js");
    let provided = js
        .call(
            serde_json::json!({"cmd": "dht-provide", "key_hex": hex(&key_js)}),
            deadline(),
        )
        .await
        .expect("js provides");
    let sent_to = strings(&provided["sent_to"]);
    assert!(
        sent_to.contains(&a_str) && sent_to.contains(&b_str),
        "{provided}"
    );
    let Reply::Providers { providers, .. } = dht(&b, DhtCommand::providers(key_js.clone())).await
    else {
        panic!()
    };
    assert!(providers.contains(&js_peer), "B: providers {providers:?}");

    // (5) C knows only js: whatever it finds, js's answers led it there
    // (FIND_NODE, GET_PROVIDERS and GET_VALUE ours -> js).
    let c = dht_node().await;
    assert_eq!(c.dial(js_addr).await.unwrap(), js_peer);
    until("js in C's routing table", DHT_TIMEOUT, || {
        in_table(&c, js_peer)
    })
    .await;
    let Reply::Peer { found, peer, .. } = dht(&c, DhtCommand::find_peer(b_id)).await else {
        panic!()
    };
    assert!(found, "C did not find B through js");
    assert!(!peer.unwrap().addrs.is_empty());
    let Reply::Providers { providers, .. } = dht(&c, DhtCommand::providers(key_a.clone())).await
    else {
        panic!()
    };
    assert!(
        providers.contains(&a_id),
        "C: providers of A's key {providers:?}"
    );
    // (6) Peer lookups the other way: js finds B and C on the network
    // (not from its cache), told by one of ours; our closest peers to a
    // key include js, js's include A and B.
    for target in [&b_str, &c.peer_id().to_string()] {
        let peer = js
            .call(
                serde_json::json!({"cmd": "dht-find-peer", "peer_id": target}),
                deadline(),
            )
            .await
            .unwrap_or_else(|e| panic!("js did not find {target}: {e}"));
        assert!(!peer["addrs"].as_array().unwrap().is_empty(), "{peer}");
        assert_ne!(peer["from"], js_str.as_str(), "{peer}");
    }
    let Reply::Closest { peers, .. } = dht(&b, DhtCommand::closest("/bh/interop/closest")).await
    else {
        panic!()
    };
    assert!(
        peers.iter().any(|p| p.peer_id == js_peer),
        "B: closest {peers:?}"
    );
    let closest = js
        .call(
            serde_json::json!({"cmd": "dht-closest", "key": "/bh/interop/closest"}),
            deadline(),
        )
        .await
        .expect("js closest peers");
    let ids: Vec<String> = closest["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.contains(&a_str) && ids.contains(&b_str), "{closest}");

    drop(js.stdin);
    exits_cleanly(&mut child, "js peer").await;
    for h in [a, b, c] {
        h.shutdown().await;
    }
}
