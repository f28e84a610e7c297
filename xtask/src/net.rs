//! Real `blackhole-node` processes on loopback, each with its own data
//! directory, driven through their control API.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::http;

/// Time allowed for a node process to start and print its API address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for one API call (dial and ping calls wait for the network).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds `blackhole-node` and returns the binary's path.
pub(crate) fn build_node(release: bool) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "-p", "blackhole-node", "--bin", "blackhole-node"])
        .current_dir(crate::root());
    if release {
        cmd.arg("--release");
    }
    crate::run(&mut cmd)?;
    let bin = target_dir()?
        .join(if release { "release" } else { "debug" })
        .join("blackhole-node");
    anyhow::ensure!(bin.exists(), "built binary not found at {}", bin.display());
    Ok(bin)
}

/// The workspace's target directory (honours CARGO_TARGET_DIR).
pub(crate) fn target_dir() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(crate::root())
        .output()?;
    anyhow::ensure!(out.status.success(), "cargo metadata failed");
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(PathBuf::from(
        v["target_directory"]
            .as_str()
            .context("no target_directory")?,
    ))
}

/// One node process.
#[derive(Debug)]
pub(crate) struct NodeProc {
    pub(crate) dir: PathBuf,
    pub(crate) child: Option<Child>,
    pub(crate) peer_id: String,
    pub(crate) api: SocketAddr,
    /// The TCP listen address with `/p2p/<peer_id>`.
    pub(crate) tcp: String,
}

impl NodeProc {
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        http::call(self.api, method, path, body, CALL_TIMEOUT)
            .with_context(|| format!("node {}", self.dir.display()))
    }

    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The peer ids this node is connected to.
    pub(crate) fn connected(&self) -> anyhow::Result<Vec<String>> {
        let v = self.call("GET", "/v1/peers", None)?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["peer_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// A set of node processes under one directory. Dropping it kills them.
#[derive(Debug)]
pub(crate) struct Net {
    bin: PathBuf,
    pub(crate) nodes: Vec<NodeProc>,
}

impl Net {
    /// Initializes `n` data directories under `root` (emptied first) and
    /// starts a node in each.
    /// `sets` are `key=value` config overrides given to every node.
    pub(crate) fn start(
        bin: &Path,
        root: &Path,
        n: usize,
        sets: &[String],
        mut progress: impl FnMut(usize),
    ) -> anyhow::Result<Net> {
        if root.exists() {
            std::fs::remove_dir_all(root)
                .with_context(|| format!("cannot clean {}", root.display()))?;
        }
        std::fs::create_dir_all(root)?;
        let mut net = Net {
            bin: bin.to_owned(),
            nodes: Vec::with_capacity(n),
        };
        for i in 0..n {
            let dir = root.join(format!("node-{i:03}"));
            // Every node bootstraps from the first one.
            let bootstrap = net.nodes.first().map(|n: &NodeProc| n.tcp.clone());
            init(bin, &dir, bootstrap.as_deref(), sets)?;
            let node = spawn(bin, &dir)?;
            net.nodes.push(node);
            progress(i + 1);
        }
        Ok(net)
    }

    /// Kills node `i` with SIGKILL (no graceful shutdown).
    pub(crate) fn kill9(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts node `i` again from its data directory (same identity).
    pub(crate) fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(!self.nodes[i].is_running(), "node {i} is running");
        let dir = self.nodes[i].dir.clone();
        let before = self.nodes[i].peer_id.clone();
        self.nodes[i] = spawn(&self.bin, &dir)?;
        anyhow::ensure!(
            self.nodes[i].peer_id == before,
            "node {i} came back with another identity"
        );
        Ok(())
    }

    /// Asks every node to shut down, then kills what is left.
    pub(crate) fn stop(&mut self) {
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let _ = http::request(
                node.api,
                "POST",
                "/v1/shutdown",
                Some(&json!({})),
                Duration::from_secs(5),
            );
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::park_timeout(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The lines `out` produces, read on a thread of their own.
pub(crate) fn lines(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn init(bin: &Path, dir: &Path, bootstrap: Option<&str>, sets: &[String]) -> anyhow::Result<()> {
    let mut cmd = Command::new(bin);
    cmd.arg("--data-dir").arg(dir).args([
        "init",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "--api-listen",
        "127.0.0.1:0",
        // The default idle timeout (1m) stays: connections nothing uses
        // close, as in a real network. Keeping every connection (1h) made
        // a 200-node network a full mesh whose keep-alives, pings and
        // heartbeats alone took most of two cores; lower connection
        // watermarks instead made it slower still (every pruned
        // connection is dialed again, with a handshake each time).
        // On loopback nothing confirms external addresses: DHT server mode.
        "--set",
        "overlay.mode=server",
        // Many nodes share the machine's cores: one thread each spares the
        // kernel hundreds of worker threads waking one another.
        "--set",
        "runtime.worker_threads=1",
    ]);
    if let Some(b) = bootstrap {
        cmd.args(["--set", &format!("discovery.bootstrap=[{b:?}]")]);
    }
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "init {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn spawn(bin: &Path, dir: &Path) -> anyhow::Result<NodeProc> {
    // Appended to: a node restarted by the churn scenario keeps what it
    // logged before it was killed (the run starts with fresh directories).
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))?;
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(dir)
        .arg("run")
        .env(
            "RUST_LOG",
            std::env::var("BLACKHOLE_NODE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let rx = lines(child.stdout.take().context("no stdout")?);
    let (mut peer_id, mut tcp) = (String::new(), String::new());
    let deadline = Instant::now() + START_TIMEOUT;
    let api = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
                let tail: Vec<&str> = log
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                let what = match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("did not start within {START_TIMEOUT:?}")
                    }
                    mpsc::RecvTimeoutError::Disconnected => "exited".to_owned(),
                };
                bail!(
                    "node in {} {what}; node.log ends with:\n{}",
                    dir.display(),
                    tail.join("\n")
                );
            }
        };
        if let Some(p) = line.strip_prefix("peer id: ") {
            peer_id = p.to_owned();
        } else if let Some(a) = line.strip_prefix("listening on ") {
            if a.contains("/tcp/") && tcp.is_empty() {
                tcp = a.to_owned();
            }
        } else if let Some(u) = line.strip_prefix("control API on http://") {
            break u.parse::<SocketAddr>()?;
        }
    };
    anyhow::ensure!(
        !peer_id.is_empty() && !tcp.is_empty(),
        "node in {} printed no peer id or address",
        dir.display()
    );
    Ok(NodeProc {
        dir: dir.to_owned(),
        child: Some(child),
        peer_id,
        api,
        tcp,
    })
}
