//! Two real node processes: `init`, `run`, then `dial`, `peers`, `ping`
//! through the CLI; bad configuration, bad keys and bad addresses; SIGTERM.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_blackhole-node");
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn cli(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("blackhole-node runs")
}

fn ok(data_dir: &Path, args: &[&str]) -> String {
    let out = cli(data_dir, args);
    assert!(
        out.status.success(),
        "blackhole-node {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(data_dir: &Path, args: &[&str]) -> String {
    let out = cli(data_dir, args);
    assert!(!out.status.success(), "blackhole-node {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn init(dir: &Path) -> String {
    let out = ok(
        dir,
        &[
            "--json",
            "init",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--api-listen",
            "127.0.0.1:0",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["peer_id"].as_str().unwrap().to_owned()
}

/// A running `blackhole-node run`, killed on drop.
struct Running {
    child: Child,
    listen: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a node and waits (with a timeout) until it prints its API line.
fn run(dir: &Path) -> Running {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .arg("run")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut listen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(START_TIMEOUT)
            .expect("the node prints its control API address in time");
        if let Some(addr) = line.strip_prefix("listening on ") {
            listen.push(addr.to_owned());
        }
        if line.starts_with("control API on ") {
            break;
        }
    }
    assert!(dir.join(blackhole_node::API_ADDR_FILE).exists());
    Running { child, listen }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not exit within {timeout:?}"
        );
        // Polling a child's exit status: there is no event to wait for
        // without a second thread per child.
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// Sends `signal` (`-TERM`, `-INT`) to a running node and checks that it
/// exits cleanly within 20 s.
fn stop_with(node: &mut Running, signal: &str) {
    let sent = Command::new("kill")
        .arg(signal)
        .arg(node.child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wait_exit(&mut node.child, Duration::from_secs(20));
    assert!(status.success(), "exit status {status} after kill {signal}");
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn peers(dir: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&ok(dir, &["--json", "peers"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn two_processes_dial_see_and_ping_each_other() {
    let tmp = tempdir();
    let (a_dir, b_dir): (PathBuf, PathBuf) = (tmp.path().join("a"), tmp.path().join("b"));
    let a_id = init(&a_dir);
    let b_id = init(&b_dir);
    assert_eq!(ok(&a_dir, &["id"]).trim(), a_id);

    let mut a = run(&a_dir);
    let _b = run(&b_dir);
    let a_tcp = a
        .listen
        .iter()
        .find(|l| l.contains("/tcp/"))
        .unwrap()
        .clone();

    let out = ok(&b_dir, &["dial", &a_tcp]);
    assert!(out.contains(&a_id), "{out}");

    let from_b = peers(&b_dir);
    assert_eq!(from_b.len(), 1);
    assert_eq!(from_b[0]["peer_id"], a_id);
    assert_eq!(from_b[0]["connections"][0]["transport"], "tcp");
    assert_eq!(from_b[0]["connections"][0]["security"], "noise");
    assert_eq!(from_b[0]["connections"][0]["muxer"], "yamux");
    let from_a = peers(&a_dir);
    assert_eq!(from_a[0]["peer_id"], b_id);
    assert_eq!(from_a[0]["connections"][0]["direction"], "inbound");

    let out = ok(&b_dir, &["ping", &a_id]);
    assert!(out.contains("rtt"), "{out}");
    // Ping by address dials first (here over QUIC: a second connection).
    let a_quic = a
        .listen
        .iter()
        .find(|l| l.contains("quic-v1"))
        .unwrap()
        .clone();
    let v: serde_json::Value =
        serde_json::from_str(&ok(&b_dir, &["--json", "ping", &a_quic])).unwrap();
    assert_eq!(v["peer_id"], a_id);
    assert!(v["rtt_ms"].as_f64().unwrap() >= 0.0);

    // Metrics are served in Prometheus text format.
    let api = std::fs::read_to_string(a_dir.join(blackhole_node::API_ADDR_FILE)).unwrap();
    let metrics = http_get(api.trim(), "/metrics");
    assert!(
        metrics.contains("blackhole_node_connected_peers 1"),
        "{metrics}"
    );
    assert!(metrics.contains("libp2p_bandwidth"), "{metrics}");

    // SIGTERM shuts down cleanly and removes the API address file.
    stop_with(&mut a, "-TERM");
    assert!(!a_dir.join(blackhole_node::API_ADDR_FILE).exists());
    let err = fails(&a_dir, &["peers"]);
    assert!(err.contains("cannot reach the control API"), "{err}");
}

/// A minimal HTTP/1.0 GET, so the test checks the API with no client of ours.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn bad_input_gets_clear_errors() {
    let tmp = tempdir();
    let dir = tmp.path().join("n");
    init(&dir);
    // init --set: values are checked like the config file's.
    let other = tmp.path().join("other");
    let err = fails(&other, &["init", "--set", "overlay.mode=sideways"]);
    assert!(err.contains("sideways"), "{err}");
    let err = fails(&other, &["init", "--set", "overlay.no_such_key=1"]);
    assert!(err.contains("no_such_key"), "{err}");
    ok(
        &other,
        &[
            "init",
            "--set",
            "overlay.mode=server",
            "--set",
            "connections.max_established=10",
        ],
    );
    let text = std::fs::read_to_string(other.join("config.toml")).unwrap();
    assert!(
        text.contains("mode = \"server\"") && text.contains("max_established = 10"),
        "{text}"
    );
    assert!(text.contains("# The Kademlia DHT."), "comments survive");

    // init refuses to replace an identity.
    let err = fails(&dir, &["init"]);
    assert!(err.contains("already exists"), "{err}");

    // A bad config value names the key.
    let config = dir.join("config.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        good.replace("max_established = 1024", "max_established = 0"),
    )
    .unwrap();
    let err = fails(&dir, &["run"]);
    assert!(err.contains("connections.max_established"), "{err}");
    std::fs::write(
        &config,
        good.replace("idle_timeout = \"1m\"", "idle_timeout = \"sometime\""),
    )
    .unwrap();
    let err = fails(&dir, &["run"]);
    assert!(
        err.contains("idle_timeout") && err.contains("config.toml"),
        "{err}"
    );
    std::fs::write(&config, &good).unwrap();
    let out = ok(&dir, &["config", "check"]);
    assert!(out.contains("ok"));

    // A world-readable key is refused, naming the file; nothing replaces it.
    let key = dir.join("identity.key");
    let before = std::fs::read(&key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = fails(&dir, &["run"]);
    assert!(
        err.contains("identity.key") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&key, b"garbage").unwrap();
    let err = fails(&dir, &["run"]);
    assert!(
        err.contains("identity.key") && err.contains("corrupt"),
        "{err}"
    );
    std::fs::write(&key, &before).unwrap();

    // The documented default prints and is what an empty file means.
    let default = ok(&dir, &["config", "default"]);
    assert!(default.contains("[mux.yamux]"));

    // Malformed and unreachable addresses are errors from a running node.
    let _n = run(&dir);
    let err = fails(&dir, &["dial", "not-a-multiaddr"]);
    assert!(err.contains("invalid multiaddr"), "{err}");
    let err = fails(&dir, &["dial", "/ip4/127.0.0.1/tcp/1"]);
    assert!(err.contains("dial failed"), "{err}");
    let err = fails(&dir, &["ping", "nonsense"]);
    assert!(err.contains("neither a peer id nor a multiaddr"), "{err}");
}

#[test]
fn api_on_other_addresses_needs_a_token_and_checks_it() {
    let tmp = tempdir();
    let dir = tmp.path().join("n");
    let out = cli(&dir, &["init", "--api-listen", "0.0.0.0:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("api.token"), "{err}");

    init(&dir);
    let config = dir.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("# token = \"...\"", "token = \"0123456789abcdef-secret\""),
    )
    .unwrap();
    let _n = run(&dir);
    let api = std::fs::read_to_string(dir.join(blackhole_node::API_ADDR_FILE)).unwrap();
    let resp = http_get(api.trim(), "/v1/id");
    assert!(
        resp.starts_with("HTTP/1.0 401") || resp.starts_with("HTTP/1.1 401"),
        "{resp}"
    );
    // The CLI reads the token from the config.
    ok(&dir, &["peers"]);
    let err = fails(&dir, &["--token", "wrong-token-wrong-token", "peers"]);
    assert!(err.contains("401"), "{err}");
}

#[test]
fn sigint_shuts_down_with_a_peer_connected() {
    let tmp = tempdir();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    init(&a_dir);
    init(&b_dir);
    let mut a = run(&a_dir);
    let b = run(&b_dir);
    ok(&b_dir, &["dial", &b_listen_tcp(&a)]);
    stop_with(&mut a, "-INT");
    // The other node sees the connection close.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !peers(&b_dir).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "b still lists a after its shutdown"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    }
    drop(b);
}

fn b_listen_tcp(n: &Running) -> String {
    n.listen
        .iter()
        .find(|l| l.contains("/tcp/"))
        .unwrap()
        .clone()
}

#[test]
fn pubsub_through_the_cli() {
    let tmp = tempdir();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    init(&a_dir);
    init(&b_dir);
    let a = run(&a_dir);
    let _b = run(&b_dir);
    ok(&b_dir, &["dial", &b_listen_tcp(&a)]);

    // a subscribes to everything under demo/ and prints two JSON lines.
    let mut sub = Command::new(BIN)
        .arg("--data-dir")
        .arg(&a_dir)
        .args(["subscribe", "demo/**", "--count", "2"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = sub.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    // b hears about the pattern (announcements), then publishes.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let t: serde_json::Value =
            serde_json::from_str(&ok(&b_dir, &["--json", "topics", "demo"])).unwrap();
        if t["patterns"].as_array().is_some_and(|p| !p.is_empty()) {
            assert_eq!(t["patterns"][0][0], "demo/**");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "b never heard of demo/**: {t}"
        );
        std::thread::park_timeout(Duration::from_millis(200));
    }
    let out = ok(&b_dir, &["publish", "demo/x", "hello"]);
    assert!(out.contains("published"), "{out}");
    let file = tmp.path().join("payload.bin");
    std::fs::write(&file, [0u8, 159, 146, 150]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(
        &b_dir,
        &[
            "--json",
            "publish",
            "demo/y/z",
            &format!("@{}", file.display()),
            "--priority",
            "high",
            "--ttl",
            "30s",
        ],
    ))
    .unwrap();
    assert_eq!(v["sent_on"][0], "_bh/p/demo/**", "{v}");

    let first: serde_json::Value =
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(20)).unwrap()).unwrap();
    let second: serde_json::Value =
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(20)).unwrap()).unwrap();
    assert_eq!(first["topic"], "demo/x");
    assert_eq!(first["text"], "hello");
    assert_eq!(first["priority"], "normal");
    assert_eq!(second["topic"], "demo/y/z");
    assert_eq!(second["data"], "AJ+Slg==");
    assert!(second.get("text").is_none(), "not UTF-8: {second}");
    assert_eq!(second["priority"], "high");
    assert!(second["expires_ms"].as_u64().is_some());
    let status = wait_exit(&mut sub, Duration::from_secs(10));
    assert!(status.success(), "subscribe --count 2 exits 0");

    // Bad input is refused with a reason.
    let err = fails(&b_dir, &["publish", "demo//x", "hi"]);
    assert!(err.contains("empty segment"), "{err}");
    let err = fails(&b_dir, &["publish", "demo/x", "hi", "--priority", "urgent"]);
    assert!(err.contains("normal or high"), "{err}");
    let err = fails(&b_dir, &["publish", "demo/x", "hi", "--ttl", "soon"]);
    assert!(err.contains("ttl"), "{err}");
    let err = fails(&a_dir, &["subscribe", "demo/**/x"]);
    assert!(err.contains("last segment"), "{err}");
}

#[test]
fn rpc_through_the_cli() {
    let tmp = tempdir();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let a_id = init(&a_dir);
    let b_id = init(&b_dir);
    let a = run(&a_dir);
    let _b = run(&b_dir);
    ok(&b_dir, &["dial", &b_listen_tcp(&a)]);

    let v: serde_json::Value = serde_json::from_str(&ok(
        &b_dir,
        &[
            "--json",
            "rpc",
            "call",
            &a_id,
            "_bh/echo",
            r#"{"hello":[1,2,3]}"#,
        ],
    ))
    .unwrap();
    assert_eq!(v["response"], serde_json::json!({"hello": [1, 2, 3]}));
    let v: serde_json::Value = serde_json::from_str(&ok(
        &b_dir,
        &[
            "--json",
            "rpc",
            "call",
            &a_id,
            "_bh/info",
            "--deadline",
            "5s",
            "--idempotent",
        ],
    ))
    .unwrap();
    assert_eq!(v["response"]["peer_id"], a_id);
    assert_eq!(v["response"]["caller"], b_id);

    let err = fails(&b_dir, &["rpc", "call", &a_id, "no/such"]);
    assert!(err.contains("no method"), "{err}");
    let err = fails(&b_dir, &["rpc", "call", &a_id, "_bh/echo", "{not json"]);
    assert!(err.contains("not JSON"), "{err}");
    let err = fails(
        &b_dir,
        &["rpc", "call", &a_id, "_bh/echo", "1", "--deadline", "soon"],
    );
    assert!(err.contains("deadline"), "{err}");
}
