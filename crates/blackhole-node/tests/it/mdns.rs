//! mDNS between two node processes in two network namespaces joined by a
//! veth pair (so no multicast leaves the test). Needs root and iproute2;
//! otherwise it says why and passes, unless BLACKHOLE_REQUIRE_INTEROP=1.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_blackhole-node");

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Two namespaces with 10.77.0.1 and 10.77.0.2 on a veth pair; removed on drop.
struct Lab {
    a: String,
    b: String,
}

impl Lab {
    fn new() -> Option<Lab> {
        let why = if !Path::new("/proc/self/ns/net").exists()
            || Command::new("ip").arg("-V").output().is_err()
        {
            Some("iproute2 is not installed")
        } else if std::env::var("USER").as_deref() != Ok("root") && !is_root() {
            Some("not running as root")
        } else {
            None
        };
        if let Some(why) = why {
            let msg = format!("mDNS namespace test skipped: {why}");
            if std::env::var("BLACKHOLE_REQUIRE_INTEROP").as_deref() == Ok("1") {
                panic!("{msg} (BLACKHOLE_REQUIRE_INTEROP=1)");
            }
            eprintln!("{msg}");
            return None;
        }
        let id = std::process::id();
        let lab = Lab {
            a: format!("bh-mdns-{id}-a"),
            b: format!("bh-mdns-{id}-b"),
        };
        let (va, vb) = (format!("bhma{id}"), format!("bhmb{id}"));
        let (va, vb) = (&va[..va.len().min(15)], &vb[..vb.len().min(15)]);
        let ok = ip(&["netns", "add", &lab.a])
            && ip(&["netns", "add", &lab.b])
            && ip(&["link", "add", va, "type", "veth", "peer", "name", vb])
            && ip(&["link", "set", va, "netns", &lab.a])
            && ip(&["link", "set", vb, "netns", &lab.b])
            && ip(&["-n", &lab.a, "addr", "add", "10.77.0.1/24", "dev", va])
            && ip(&["-n", &lab.b, "addr", "add", "10.77.0.2/24", "dev", vb])
            && ip(&["-n", &lab.a, "link", "set", va, "up"])
            && ip(&["-n", &lab.b, "link", "set", vb, "up"])
            && ip(&["-n", &lab.a, "link", "set", "lo", "up"])
            && ip(&["-n", &lab.b, "link", "set", "lo", "up"]);
        assert!(ok, "could not build the namespace lab");
        Some(lab)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

impl Drop for Lab {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.a]);
        ip(&["netns", "del", &self.b]);
    }
}

fn in_ns(ns: &str, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, BIN, "--data-dir"])
        .arg(dir)
        .args(args);
    c
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `init` (listening on `addr`, mDNS in its automatic mode) and `run` in `ns`.
fn node(ns: &str, dir: &Path, addr: &str) -> (Running, String) {
    let out = in_ns(
        ns,
        dir,
        &[
            "--json",
            "init",
            "--listen",
            &format!("/ip4/{addr}/tcp/4001"),
            "--api-listen",
            "127.0.0.1:0",
            "--set",
            "discovery.mdns.query_interval=1s",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["peer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut child = in_ns(ns, dir, &["run"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the node starts");
        if line.starts_with("control API on") {
            break;
        }
    }
    (Running(child), id)
}

#[test]
fn two_nodes_on_a_lan_find_each_other_with_mdns() {
    let Some(lab) = Lab::new() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    let (_a, id_a) = node(&lab.a, &da, "10.77.0.1");
    let (_b, id_b) = node(&lab.b, &db, "10.77.0.2");
    // Neither was told about the other: mDNS (on automatically for a
    // private listen address) makes them connect.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = in_ns(&lab.b, &db, &["--json", "peers"]).output().unwrap();
        let peers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let ids: Vec<&str> = peers
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["peer_id"].as_str())
            .collect();
        if ids.contains(&id_a.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{id_b} did not find {id_a} by mDNS; peers: {ids:?}"
        );
        // A new mDNS query goes out every second.
        std::thread::park_timeout(Duration::from_millis(250));
    }
}
