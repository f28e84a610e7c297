//! The NAT lab: real `blackhole-node` processes in network namespaces
//! behind real NAT routers (nftables), built by `xtask/lab/nat-lab.sh`.
//!
//! Used by `cargo xtask test-net --lab nat` and by the node's integration
//! test `nat_lab` (which includes this file), so both run the same lab.
//! Needs root, iproute2, nftables and miniupnpd-nftables; [`missing`] says
//! what is not there.
//!
//! Topology (see the script): a public segment with `pub` (bootstrap and
//! relay) and `pub2`; hosts `h1` and `h2` behind endpoint-independent NATs
//! (masquerade), `hs` behind a symmetric NAT (masquerade fully-random), and
//! `hu` behind a NAT with a UPnP IGD (miniupnpd). `h1` and `h2` each run
//! two nodes, one on TCP only and one on QUIC only, so hole punching is
//! proven on each transport.
//!
//! Every namespace node is driven through its CLI run inside its namespace
//! (`ip netns exec <ns> blackhole-node --json …`): the control API listens
//! on the namespace's loopback, which the host cannot reach.

#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Namespace name prefix (the script's default).
const P: &str = "bhl-";
/// How long each node may take to start.
const START: Duration = Duration::from_secs(30);
/// How long nodes may take to learn their reachability, NAT type and relays.
const SETTLE: Duration = Duration::from_secs(90);
/// How long a hole punch may take.
const PUNCH: Duration = Duration::from_secs(45);

/// What the lab needs that this machine lacks (empty: it can run).
pub fn missing() -> Vec<String> {
    let mut out = Vec::new();
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if uid != "0" {
        out.push("root (network namespaces and nftables)".to_owned());
    }
    for (bin, pkg) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("miniupnpd", "miniupnpd-nftables"),
        ("ss", "iproute2"),
    ] {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(bin).exists());
        if !found {
            out.push(format!("{bin} (apt-get install {pkg})"));
        }
    }
    out
}

/// One expectation and what was seen.
#[derive(Debug, Clone)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Whether it held.
    pub pass: bool,
    /// What was seen.
    pub detail: String,
}

/// The lab's outcome.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// Per node: namespace, name, reachability, NAT type, what was expected.
    pub nodes: Vec<Value>,
    /// Hole punching numbers.
    pub punches: Vec<Value>,
}

impl Outcome {
    fn check(&mut self, name: &str, pass: bool, detail: impl Into<String>) {
        let detail = detail.into();
        eprintln!("   {} {name}: {detail}", if pass { "ok  " } else { "FAIL" });
        self.checks.push(Check {
            name: name.to_owned(),
            pass,
            detail,
        });
    }

    /// Whether every check held.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.pass)
    }

    /// The outcome as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "checks": self.checks.iter().map(|c| json!({
                "name": c.name, "pass": c.pass, "detail": c.detail,
            })).collect::<Vec<_>>(),
            "nodes": self.nodes,
            "hole_punches": self.punches,
        })
    }
}

/// The namespaces and processes of one lab run; `Drop` tears it down.
struct Lab {
    script: PathBuf,
    bin: PathBuf,
    dir: PathBuf,
    nodes: Vec<LabNode>,
}

struct LabNode {
    name: String,
    ns: String,
    dir: PathBuf,
    peer_id: String,
    child: Option<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = run_script(&self.script, "down");
    }
}

fn run_script(path: &Path, verb: &str) -> anyhow::Result<()> {
    let out = Command::new("bash")
        .arg(path)
        .arg(verb)
        .output()
        .with_context(|| format!("cannot run {}", path.display()))?;
    if !out.status.success() {
        bail!(
            "{} {verb} failed: {}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Lab {
    /// Runs the node's CLI in `node`'s namespace; returns its JSON output.
    fn cli(&self, node: &LabNode, args: &[&str]) -> anyhow::Result<Value> {
        let out = Command::new("ip")
            .args(["netns", "exec", &node.ns])
            .arg(&self.bin)
            .arg("--data-dir")
            .arg(&node.dir)
            .arg("--json")
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "{} {}: {}",
                node.name,
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim())
            .with_context(|| format!("{} {}: not JSON: {text}", node.name, args.join(" ")))
    }

    fn node(&self, name: &str) -> &LabNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no lab node {name}"))
    }

    fn nat(&self, name: &str) -> anyhow::Result<Value> {
        self.cli(self.node(name), &["nat"])
    }

    /// Starts a node in `ns` listening on `listen`, with `set` config
    /// overrides.
    fn start(
        &mut self,
        name: &str,
        ns: &str,
        listen: &[&str],
        set: &[String],
    ) -> anyhow::Result<()> {
        let dir = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let mut init = Command::new(&self.bin);
        init.arg("--data-dir").arg(&dir).arg("init");
        for l in listen {
            init.args(["--listen", l]);
        }
        init.args(["--api-listen", "127.0.0.1:0"]);
        for s in [
            "connections.idle_timeout=1h",
            "discovery.mdns.mode=\"off\"",
            "nat.autonat.probe_interval=\"2s\"",
            "nat.relay_client.retry_after=\"5s\"",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(set.iter().cloned())
        {
            init.args(["--set", &s]);
        }
        let out = init.output()?;
        if !out.status.success() {
            bail!("init {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let log = std::fs::File::create(dir.join("node.log"))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&self.bin)
            .arg("--data-dir")
            .arg(&dir)
            .arg("run")
            .env("RUST_BACKTRACE", "1")
            .env(
                "RUST_LOG",
                std::env::var("BLACKHOLE_NODE_LOG")
                    .unwrap_or_else(|_| "info,blackhole_nat=debug,libp2p_dcutr=debug".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .stdin(Stdio::null())
            .spawn()
            .context("cannot run ip netns exec")?;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().context("no stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + START;
        let mut peer_id = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                bail!(
                    "{name} in {ns} did not start; its log ends with:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            };
            if let Some(p) = line.strip_prefix("peer id: ") {
                peer_id = p.to_owned();
            }
            if line.starts_with("control API on") {
                break;
            }
        }
        anyhow::ensure!(!peer_id.is_empty(), "{name} printed no peer id");
        self.nodes.push(LabNode {
            name: name.to_owned(),
            ns: ns.to_owned(),
            dir,
            peer_id,
            child: Some(child),
        });
        Ok(())
    }

    /// Polls `name`'s NAT status until `pred` holds or `timeout` passes;
    /// returns the last status and whether it held. (No event reaches the
    /// host from a namespace, so this polls, once a second.)
    fn wait_nat(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> (Value, bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.nat(name).unwrap_or(Value::Null);
            if pred(&s) {
                return (s, true);
            }
            if Instant::now() > deadline {
                return (s, false);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Whether `from` has a direct (not relayed) connection to `to`.
    fn direct(&self, from: &str, to: &str) -> Option<String> {
        let peer = &self.node(to).peer_id;
        let peers = self.cli(self.node(from), &["peers"]).ok()?;
        peers.as_array()?.iter().find_map(|p| {
            if p["peer_id"].as_str()? != peer {
                return None;
            }
            p["connections"].as_array()?.iter().find_map(|c| {
                let addr = c["remote_addr"].as_str()?;
                (addr.starts_with("/ip4/") && !addr.contains("p2p-circuit"))
                    .then(|| addr.to_owned())
            })
        })
    }
}

fn s(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or("?").to_owned()
}

/// One of the node's relayed addresses, through the relay's address of
/// `transport` ("tcp" or "quic") if it has one.
fn relayed_via(v: &Value, transport: &str) -> Option<String> {
    let all: Vec<&str> = v["relayed_addrs"]
        .as_array()?
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let want = if transport == "quic" {
        "/quic-v1/"
    } else {
        "/tcp/"
    };
    all.iter()
        .find(|a| a.contains(want))
        .or(all.first())
        .map(|a| (*a).to_owned())
}

fn relayed(v: &Value) -> Option<String> {
    relayed_via(v, "tcp")
}

/// Builds the lab, runs the NAT scenarios, tears the lab down.
/// `script` is `xtask/lab/nat-lab.sh`, `bin` a built `blackhole-node`,
/// `dir` where the nodes' data directories go.
pub fn run(script: &Path, bin: &Path, dir: &Path) -> anyhow::Result<Outcome> {
    let lacking = missing();
    anyhow::ensure!(
        lacking.is_empty(),
        "the NAT lab needs: {}",
        lacking.join(", ")
    );
    std::fs::create_dir_all(dir)?;
    // A lab left over by a killed run goes first.
    run_script(script, "down")?;
    let t0 = Instant::now();
    run_script(script, "up")?;
    eprintln!("   lab up in {:.1}s", t0.elapsed().as_secs_f64());
    let mut lab = Lab {
        script: script.to_owned(),
        bin: bin.to_owned(),
        dir: dir.to_owned(),
        nodes: Vec::new(),
    };
    let mut out = Outcome::default();

    let both = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"];
    lab.start("pub", &format!("{P}pub"), &both, &[])?;
    let pub_id = lab.node("pub").peer_id.clone();
    let boot_tcp = format!("/ip4/7.1.0.1/tcp/4001/p2p/{pub_id}");
    let boot_quic = format!("/ip4/7.1.0.1/udp/4001/quic-v1/p2p/{pub_id}");
    let boot = |addrs: &[&str]| format!("discovery.bootstrap={addrs:?}");
    lab.start(
        "pub2",
        &format!("{P}pub2"),
        &both,
        &[boot(&[&boot_tcp, &boot_quic])],
    )?;
    let pub2_id = lab.node("pub2").peer_id.clone();
    let boot2_tcp = format!("/ip4/7.2.0.1/tcp/4001/p2p/{pub2_id}");
    let boot2_quic = format!("/ip4/7.2.0.1/udp/4001/quic-v1/p2p/{pub2_id}");
    let tcp_only = [
        boot(&[&boot_tcp, &boot2_tcp]),
        "transport.quic.enabled=false".to_owned(),
    ];
    let quic_only = [
        boot(&[&boot_quic, &boot2_quic]),
        "transport.tcp.enabled=false".to_owned(),
    ];
    let all = [boot(&[&boot_tcp, &boot_quic, &boot2_tcp, &boot2_quic])];
    for h in ["h1", "h2"] {
        lab.start(
            &format!("{h}-tcp"),
            &format!("{P}{h}"),
            &["/ip4/0.0.0.0/tcp/4001"],
            &tcp_only,
        )?;
        lab.start(
            &format!("{h}-quic"),
            &format!("{P}{h}"),
            &["/ip4/0.0.0.0/udp/4002/quic-v1"],
            &quic_only,
        )?;
    }
    lab.start("hs", &format!("{P}hs"), &both, &all)?;
    lab.start("hu", &format!("{P}hu"), &both, &all)?;
    eprintln!(
        "   {} nodes up in {:.1}s",
        lab.nodes.len(),
        t0.elapsed().as_secs_f64()
    );

    // What each node should find out about itself.
    let expect: &[(&str, &str, &str, &str)] = &[
        ("pub", "public segment", "public", "none"),
        ("pub2", "public segment", "public", "none"),
        (
            "h1-tcp",
            "endpoint-independent NAT",
            "private",
            "endpoint_independent",
        ),
        (
            "h1-quic",
            "endpoint-independent NAT",
            "private",
            "endpoint_independent",
        ),
        (
            "h2-tcp",
            "endpoint-independent NAT",
            "private",
            "endpoint_independent",
        ),
        (
            "h2-quic",
            "endpoint-independent NAT",
            "private",
            "endpoint_independent",
        ),
        ("hs", "symmetric NAT", "private", "endpoint_dependent"),
        ("hu", "NAT with UPnP", "public", "endpoint_independent"),
    ];
    for (name, place, reach, nat_type) in expect {
        let private = *reach == "private";
        let (st, ok) = lab.wait_nat(name, SETTLE, |v| {
            v["reachability"] == *reach
                && v["nat_type"] == *nat_type
                && (!private || relayed(v).is_some())
        });
        out.nodes.push(json!({
            "node": name, "where": place,
            "expected": {"reachability": reach, "nat_type": nat_type},
            "reported": {"reachability": st["reachability"], "nat_type": st["nat_type"],
                         "external_addrs": st["external_addrs"], "relayed_addrs": st["relayed_addrs"],
                         "upnp": st["upnp"], "hole_punching": st["hole_punch"]["active"]},
        }));
        let mut detail = format!(
            "reachability {} (want {reach}), NAT type {} (want {nat_type})",
            s(&st, "reachability"),
            s(&st, "nat_type")
        );
        if private {
            detail.push_str(&format!(
                ", relayed {}",
                relayed(&st).unwrap_or("none".into())
            ));
        }
        out.check(&format!("{name} ({place}) knows what it is"), ok, detail);
    }

    // UPnP: the gateway mapped hu's port; pub dials the mapped address.
    let hu = lab.nat("hu").unwrap_or(Value::Null);
    let mapped = hu["upnp"]["external_addrs"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find_map(|x| x.as_str().filter(|a| a.contains("/tcp/")))
        })
        .map(str::to_owned);
    match mapped {
        Some(addr) => {
            let target = format!("{addr}/p2p/{}", lab.node("hu").peer_id);
            let r = lab.cli(lab.node("pub"), &["dial", &target]);
            out.check(
                "hu is dialable at its UPnP mapping",
                r.is_ok(),
                format!(
                    "pub dialed {target}: {}",
                    r.map(|_| "connected".to_owned())
                        .unwrap_or_else(|e| e.to_string())
                ),
            );
        }
        None => out.check(
            "hu is dialable at its UPnP mapping",
            false,
            format!("no TCP mapping: upnp {}", hu["upnp"]),
        ),
    }

    // Hole punching between the two endpoint-independent NATs, per
    // transport: h1 dials h2's relayed address, DCUtR does the rest.
    for t in ["tcp", "quic"] {
        let (a, b) = (format!("h1-{t}"), format!("h2-{t}"));
        let name = format!("hole punch over {t} ({a} -> {b})");
        let Some(via) = relayed_via(&lab.nat(&b).unwrap_or(Value::Null), t) else {
            out.check(&name, false, format!("{b} has no relayed address"));
            continue;
        };
        let start = Instant::now();
        if let Err(e) = lab.cli(lab.node(&a), &["dial", &via]) {
            out.check(&name, false, format!("dial through the relay failed: {e}"));
            continue;
        }
        let relayed_ms = start.elapsed().as_millis();
        let mut direct = None;
        while start.elapsed() < PUNCH {
            if let Some(addr) = lab.direct(&a, &b) {
                direct = Some(addr);
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let secs = start.elapsed().as_secs_f64();
        let (sa, sb) = (
            lab.nat(&a).unwrap_or(Value::Null),
            lab.nat(&b).unwrap_or(Value::Null),
        );
        // Each side's outcomes with the other (the network's other NATed
        // nodes punch too, so the totals are not this pair's).
        let with = |st: &Value, peer: &str| -> Vec<Value> {
            st["hole_punch"]["recent"]
                .as_array()
                .map(|r| r.iter().filter(|o| o["peer"] == peer).cloned().collect())
                .unwrap_or_default()
        };
        let outcomes: Vec<Value> = with(&sa, &lab.node(&b).peer_id)
            .into_iter()
            .chain(with(&sb, &lab.node(&a).peer_id))
            .collect();
        let attempts: u64 = outcomes.iter().filter_map(|o| o["attempts"].as_u64()).sum();
        let successes = outcomes.iter().filter(|o| o["success"] == true).count();
        let right_transport = direct
            .as_deref()
            .is_some_and(|d| d.contains(if t == "tcp" { "/tcp/" } else { "/quic-v1" }));
        out.punches.push(json!({
            "transport": t, "from": a, "to": b, "direct": direct,
            "relayed_connect_ms": relayed_ms, "seconds_to_direct": secs,
            "attempts": attempts, "successes": successes, "outcomes": outcomes,
        }));
        out.check(
            &name,
            direct.is_some() && right_transport,
            format!(
                "relayed in {relayed_ms} ms, direct {} after {secs:.1}s, {attempts} dial attempt(s) on both sides, {successes} success(es)",
                direct.clone().unwrap_or_else(|| "never".into())
            ),
        );
    }

    // Symmetric NAT: reached through the relay; no hole punching from its
    // side; the relayed connection keeps working.
    let name = "symmetric NAT: relayed connection works, no hole punch";
    match relayed(&lab.nat("hs").unwrap_or(Value::Null)) {
        None => out.check(name, false, "hs has no relayed address"),
        Some(via) => {
            let dialed = lab.cli(lab.node("h1-tcp"), &["dial", &via]);
            std::thread::sleep(Duration::from_secs(10));
            let hs_id = lab.node("hs").peer_id.clone();
            let ping = lab.cli(lab.node("h1-tcp"), &["ping", &hs_id]);
            let direct = lab.direct("h1-tcp", "hs");
            let hs = lab.nat("hs").unwrap_or(Value::Null);
            let hs_attempts = hs["hole_punch"]["attempts"].as_u64().unwrap_or(0);
            let ok = dialed.is_ok() && ping.is_ok() && direct.is_none() && hs_attempts == 0;
            out.check(
                name,
                ok,
                format!(
                    "dial {}, ping after 10 s {}, direct {}, hs hole punching {} with {hs_attempts} attempt(s)",
                    if dialed.is_ok() { "ok" } else { "failed" },
                    ping.map(|p| format!("{} ms", p["rtt_ms"])).unwrap_or_else(|e| e.to_string()),
                    direct.unwrap_or_else(|| "none".into()),
                    if hs["hole_punch"]["active"] == true { "on" } else { "off" },
                ),
            );
        }
    }
    drop(lab);
    Ok(out)
}
