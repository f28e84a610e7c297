//! `cargo xtask bench`: network benchmarks with real processes on
//! loopback, each next to baselines measured in the same run, then the
//! criterion micro-benchmarks of our own hot code.
//!
//! - throughput of one perf stream (`/perf/1.0.0`), upload and download,
//!   over TCP+Noise+Yamux, TCP+TLS+Yamux and QUIC: ours (blackhole-bench,
//!   the blackhole-node library with default config) against plain
//!   rust-libp2p with library defaults (libp2p-baseline) and iperf3 (the
//!   physical reference of loopback TCP);
//! - a new connection plus a 1-byte perf round trip (median, p95) and
//!   sequential new connections per second;
//! - server memory per idle connection (N connections held to one node);
//! - DHT gets at N in-process nodes (ours, server mode, against plain
//!   libp2p-kad with its memory store): latency and requests per lookup;
//! - RPC: sequential 1 KiB echo calls between two in-process nodes (ours)
//!   against libp2p-request-response with its JSON codec;
//! - pubsub fan-out at N in-process nodes on loopback TCP (same topology,
//!   same probes): delivery latency p50/p99 and duplicates per delivery,
//!   ours against plain rust-libp2p gossipsub with library defaults; and
//!   ours under load (64 KiB messages flooding the same topic), normal
//!   against high priority.
//!
//! Output: a table, `target/bench/bench.json`, `target/bench/report.html`.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{net, stats};

const HELP: &str = "\
cargo xtask bench [options]

options:
  --bytes N        bytes per perf direction (default 1 GiB)
  --runs N         perf runs per stack, the median is kept (default 3)
  --conns N        connections for the establishment benchmark (default 200)
  --hold N         idle connections for the memory benchmark (default 1000)
  --nodes N        nodes in the pubsub fan-out benchmark (default 20)
  --messages N     probes published in the pubsub benchmark (default 200)
  --quick          small sizes, for a smoke test (64 MiB, 1 run, 50 conns, 200 held,
                   10 pubsub nodes, 50 probes)
  --no-micro       skip the criterion micro-benchmarks
  --no-network     skip the network benchmarks
";

#[derive(Debug)]
struct Options {
    bytes: u64,
    runs: usize,
    conns: usize,
    hold: usize,
    nodes: usize,
    messages: usize,
    micro: bool,
    network: bool,
}

fn parse(args: &[String]) -> anyhow::Result<Option<Options>> {
    let mut o = Options {
        bytes: 1 << 30,
        runs: 3,
        conns: 200,
        hold: 1000,
        nodes: 20,
        messages: 200,
        micro: true,
        network: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> anyhow::Result<u64> {
            it.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name}: a number"))
        };
        match a.as_str() {
            "--bytes" => o.bytes = num("--bytes")?,
            "--runs" => o.runs = num("--runs")?.max(1) as usize,
            "--conns" => o.conns = num("--conns")?.max(1) as usize,
            "--hold" => o.hold = num("--hold")?.max(1) as usize,
            "--nodes" => o.nodes = num("--nodes")?.max(2) as usize,
            "--messages" => o.messages = num("--messages")?.max(2) as usize,
            "--quick" => {
                o.bytes = 64 << 20;
                o.runs = 1;
                o.conns = 50;
                o.hold = 200;
                o.nodes = 10;
                o.messages = 50;
            }
            "--no-micro" => o.micro = false,
            "--no-network" => o.network = false,
            "--help" | "-h" => {
                print!("{HELP}");
                return Ok(None);
            }
            other => bail!("unknown option {other:?}\n\n{HELP}"),
        }
    }
    Ok(Some(o))
}

/// One row of the results table.
#[derive(Debug)]
struct Row {
    metric: String,
    unit: &'static str,
    ours: Option<f64>,
    baseline: Option<f64>,
    iperf3: Option<f64>,
    /// Whether a larger value is better (for the ratio's reading).
    higher_is_better: bool,
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(o) = parse(args)? else { return Ok(()) };
    let out_dir = net::target_dir()?.join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    if o.network {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        crate::run(
            Command::new(cargo)
                .args(["build", "--release", "-p", "blackhole-benches", "--bins"])
                .current_dir(crate::root()),
        )?;
        let bin_dir = net::target_dir()?.join("release");
        let ours = bin_dir.join("blackhole-bench");
        let base = bin_dir.join("libp2p-baseline");
        network(&o, &ours, &base, &mut rows, &mut notes)?;
    }
    print_table(&rows, &notes);
    let report = json!({
        "options": { "bytes": o.bytes, "runs": o.runs, "conns": o.conns, "hold": o.hold, "nodes": o.nodes, "messages": o.messages },
        "rows": rows.iter().map(|r| json!({
            "metric": r.metric, "unit": r.unit, "ours": r.ours, "baseline_libp2p": r.baseline,
            "iperf3": r.iperf3, "ratio": ratio(r),
        })).collect::<Vec<_>>(),
        "notes": notes,
    });
    std::fs::write(
        out_dir.join("bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out_dir.join("report.html"), html(&rows, &notes))?;
    eprintln!("results: {}", out_dir.join("bench.json").display());
    if o.micro {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        crate::run(
            Command::new(cargo)
                .args([
                    "bench",
                    "-p",
                    "blackhole-benches",
                    "--bench",
                    "mux",
                    "--bench",
                    "pubsub",
                    "--bench",
                    "rpc",
                ])
                .current_dir(crate::root()),
        )?;
        eprintln!(
            "criterion reports: {}",
            net::target_dir()?
                .join("criterion/report/index.html")
                .display()
        );
    }
    Ok(())
}

fn ratio(r: &Row) -> Option<f64> {
    match (r.ours, r.baseline) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// A server process that prints `{"addrs": [...], "pid": N}` and runs until
/// its stdin closes. Killed on drop.
struct Server {
    child: Child,
    addrs: Vec<String>,
    pid: u32,
}

impl Server {
    fn start(bin: &Path, args: &[&str]) -> anyhow::Result<Server> {
        let mut child = Command::new(bin)
            .arg("serve")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env("RUST_LOG", "warn")
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let lines = net::lines(child.stdout.take().context("stdout")?);
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .context("server did not print its addresses")?;
        let v: Value = serde_json::from_str(&line)?;
        let addrs = v["addrs"]
            .as_array()
            .context("addrs")?
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        Ok(Server {
            child,
            addrs,
            pid: v["pid"].as_u64().context("pid")? as u32,
        })
    }

    fn addr(&self, needle: &str) -> anyhow::Result<String> {
        self.addrs
            .iter()
            .find(|a| a.contains(needle))
            .cloned()
            .with_context(|| format!("no {needle} address"))
    }

    /// Resident memory of the server process, in bytes.
    fn rss(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS")?;
        Ok(kb * 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client command with a timeout and returns its last JSON line.
fn client(bin: &Path, args: &[&str], timeout: Duration) -> anyhow::Result<Value> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "warn")
        .spawn()?;
    let out = net::lines(child.stdout.take().context("stdout")?);
    let err = net::lines(child.stderr.take().context("stderr")?);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{} {args:?} timed out after {timeout:?}", bin.display());
        }
        std::thread::park_timeout(Duration::from_millis(20));
    };
    let stderr: Vec<String> = err.try_iter().collect();
    anyhow::ensure!(
        status.success(),
        "{} {args:?} failed: {}",
        bin.display(),
        stderr.join("\n")
    );
    let last = out.try_iter().last().context("no output")?;
    Ok(serde_json::from_str(&last)?)
}

const TIMEOUT: Duration = Duration::from_secs(300);
/// The baseline's flag for running our default protocol set.
const FULL: &[&str] = &["--protocols", "full"];

/// Median upload and download Gbit/s over `runs` perf runs.
fn perf(
    bin: &Path,
    addr: &str,
    security: &str,
    bytes: u64,
    runs: usize,
) -> anyhow::Result<(f64, f64)> {
    let b = bytes.to_string();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let v = client(
            bin,
            &[
                "perf",
                "--addr",
                addr,
                "--upload",
                &b,
                "--download",
                &b,
                "--security",
                security,
            ],
            TIMEOUT,
        )?;
        up.push(
            v["upload_bytes"].as_f64().unwrap_or(0.0) * 8.0
                / v["upload_seconds"].as_f64().unwrap_or(1.0)
                / 1e9,
        );
        down.push(
            v["download_bytes"].as_f64().unwrap_or(0.0) * 8.0
                / v["download_seconds"].as_f64().unwrap_or(1.0)
                / 1e9,
        );
    }
    Ok((
        stats::quantile(&up, 0.5).unwrap_or(0.0),
        stats::quantile(&down, 0.5).unwrap_or(0.0),
    ))
}

/// iperf3 upload and download Gbit/s on loopback, or why not.
fn iperf3(bytes: u64) -> anyhow::Result<(f64, f64)> {
    let measure = |reverse: bool| -> anyhow::Result<f64> {
        let port = free_port()?;
        let mut server = Command::new("iperf3")
            .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("iperf3 is not installed (apt-get install iperf3)")?;
        let mut out = None;
        for _ in 0..50 {
            let mut cmd = Command::new("iperf3");
            cmd.args([
                "-c",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-n",
                &bytes.to_string(),
                "-J",
            ]);
            if reverse {
                cmd.arg("-R");
            }
            let o = cmd.output()?;
            // iperf3 -J may exit 0 with {"error": ...} while the server starts.
            let refused = String::from_utf8_lossy(&o.stdout).contains("\"error\"");
            if o.status.success() && !refused {
                out = Some(o.stdout);
                break;
            }
            // The server is not listening yet.
            std::thread::park_timeout(Duration::from_millis(100));
        }
        let _ = server.kill();
        let _ = server.wait();
        let v: Value = serde_json::from_slice(&out.context("iperf3 client failed")?)?;
        let bps = v["end"]["sum_received"]["bits_per_second"].as_f64();
        Ok(bps.with_context(|| format!("no iperf3 result: {}", v["error"]))? / 1e9)
    };
    Ok((measure(false)?, measure(true)?))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn network(
    o: &Options,
    ours: &Path,
    base: &Path,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let ip = match iperf3(o.bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            notes.push(format!("iperf3 baseline missing: {e:#}"));
            None
        }
    };
    for (name, needle, security) in [
        ("tcp+noise+yamux", "/tcp/", "noise"),
        ("tcp+tls+yamux", "/tcp/", "tls"),
        ("quic", "quic-v1", "noise"),
    ] {
        eprintln!("== perf {name}");
        let measure = |bin: &Path| -> anyhow::Result<(f64, f64)> {
            let server = Server::start(bin, &["--security", security])?;
            perf(bin, &server.addr(needle)?, security, o.bytes, o.runs)
        };
        let a = measure(ours)
            .map_err(|e| notes.push(format!("ours {name}: {e:#}")))
            .ok();
        let b = measure(base)
            .map_err(|e| notes.push(format!("baseline {name}: {e:#}")))
            .ok();
        let tcp = needle == "/tcp/";
        rows.push(Row {
            metric: format!("{name} upload"),
            unit: "Gbit/s",
            ours: a.map(|v| v.0),
            baseline: b.map(|v| v.0),
            iperf3: ip.filter(|_| tcp).map(|v| v.0),
            higher_is_better: true,
        });
        rows.push(Row {
            metric: format!("{name} download"),
            unit: "Gbit/s",
            ours: a.map(|v| v.1),
            baseline: b.map(|v| v.1),
            iperf3: ip.filter(|_| tcp).map(|v| v.1),
            higher_is_better: true,
        });
    }

    eprintln!("== connection establishment");
    let conns = o.conns.to_string();
    // `extra` goes to both the server and the client.
    let establish = |bin: &Path, extra: &[&str]| -> anyhow::Result<(f64, f64, f64, f64)> {
        let server = Server::start(bin, extra)?;
        let addr = server.addr("/tcp/")?;
        let mut args = vec!["connect", "--addr", &addr, "--count", &conns];
        args.extend_from_slice(extra);
        let v = client(bin, &args, TIMEOUT)?;
        let list = |key: &str| -> anyhow::Result<Vec<f64>> {
            Ok(v[key]
                .as_array()
                .with_context(|| key.to_owned())?
                .iter()
                .filter_map(Value::as_f64)
                .collect())
        };
        let ms = list("latency_ms")?;
        let dial = list("dial_ms")?;
        Ok((
            stats::quantile(&ms, 0.5).unwrap_or(0.0),
            stats::quantile(&ms, 0.95).unwrap_or(0.0),
            ms.len() as f64 / v["seconds"].as_f64().unwrap_or(1.0),
            stats::quantile(&dial, 0.5).unwrap_or(0.0),
        ))
    };
    let a = establish(ours, &[])
        .map_err(|e| notes.push(format!("ours establishment: {e:#}")))
        .ok();
    let b = establish(base, &[])
        .map_err(|e| notes.push(format!("baseline establishment: {e:#}")))
        .ok();
    let full = establish(base, FULL)
        .map_err(|e| notes.push(format!("baseline (our protocols) establishment: {e:#}")))
        .ok();
    for (baseline, suffix) in [(b, ""), (full, ", baseline with our protocols")] {
        for (metric, unit, f, hib) in [
            ("connect (established), median", "ms", 3, false),
            ("connect + 1-byte round trip, median", "ms", 0, false),
            ("connect + 1-byte round trip, p95", "ms", 1, false),
            ("new connections per second (sequential)", "conn/s", 2, true),
        ] {
            let pick = |v: (f64, f64, f64, f64)| [v.0, v.1, v.2, v.3][f];
            rows.push(Row {
                metric: format!("{metric}{suffix}"),
                unit,
                ours: a.map(pick),
                baseline: baseline.map(pick),
                iperf3: None,
                higher_is_better: hib,
            });
        }
    }

    eprintln!("== connection through a relay (circuit relay v2)");
    // Ours only: the baseline column holds our direct connections, measured
    // in the same process, so the row shows what a relay hop costs.
    let count = o.conns.min(100).to_string();
    match client(ours, &["relay", "--count", &count], TIMEOUT) {
        Ok(v) => {
            let median = |key: &str| -> Option<f64> {
                let ms: Vec<f64> = v[key]
                    .as_array()?
                    .iter()
                    .filter_map(Value::as_f64)
                    .collect();
                stats::quantile(&ms, 0.5)
            };
            rows.push(Row {
                metric: "relayed connect + 1-byte round trip, median (baseline: ours direct)"
                    .into(),
                unit: "ms",
                ours: median("relayed_ms"),
                baseline: median("direct_ms"),
                iperf3: None,
                higher_is_better: false,
            });
        }
        Err(e) => notes.push(format!("ours relay: {e:#}")),
    }

    eprintln!("== memory per idle connection ({} connections)", o.hold);
    let hold = o.hold.to_string();
    let memory = |server_bin: &Path, extra: &[&str]| -> anyhow::Result<f64> {
        let server = Server::start(server_bin, extra)?;
        let addr = server.addr("/tcp/")?;
        // Warm up: one connection and a perf round trip, so lazily
        // allocated state is in the "before" figure.
        client(
            base,
            &["perf", "--addr", &addr, "--upload", "1", "--download", "1"],
            TIMEOUT,
        )?;
        let before = server.rss()?;
        let mut holder = Command::new(base)
            .args(["hold", "--addr", &addr, "--count", &hold])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let lines = net::lines(holder.stdout.take().context("stdout")?);
        let line = lines
            .recv_timeout(TIMEOUT)
            .context("holder did not report")?;
        anyhow::ensure!(line.contains("holding"), "holder: {line}");
        // Let both sides finish the identify/ping exchanges of new connections.
        std::thread::park_timeout(Duration::from_secs(2));
        let after = server.rss()?;
        drop(holder.stdin.take());
        let _ = holder.kill();
        let _ = holder.wait();
        Ok((after - before) / o.hold as f64 / 1024.0)
    };
    let a = memory(ours, &[])
        .map_err(|e| notes.push(format!("ours memory: {e:#}")))
        .ok();
    let b = memory(base, &[])
        .map_err(|e| notes.push(format!("baseline memory: {e:#}")))
        .ok();
    let full = memory(base, FULL)
        .map_err(|e| notes.push(format!("baseline (our protocols) memory: {e:#}")))
        .ok();
    for (baseline, suffix) in [(b, ""), (full, ", baseline with our protocols")] {
        rows.push(Row {
            metric: format!("server memory per idle connection{suffix}"),
            unit: "KiB",
            ours: a,
            baseline,
            iperf3: None,
            higher_is_better: false,
        });
    }
    notes.push("memory: server RSS growth while a plain libp2p client holds the connections open, divided by their number".into());
    notes.push("baseline with our protocols: the plain rust-libp2p node also runs what ours runs on every connection by default (identify, ping, Kademlia, gossipsub, rendezvous client, relay client, DCUtR, AutoNAT v2 client and server), each with library defaults; the other baseline rows run only the perf protocol".into());

    eprintln!("== rpc round trips");
    let calls = (o.conns * 5).to_string();
    let rpc = |bin: &Path| -> anyhow::Result<(f64, f64, f64)> {
        let v = client(bin, &["rpc", "--calls", &calls, "--size", "1024"], TIMEOUT)?;
        let ms: Vec<f64> = v["latency_ms"]
            .as_array()
            .context("latency_ms")?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        Ok((
            stats::quantile(&ms, 0.5).unwrap_or(0.0),
            stats::quantile(&ms, 0.99).unwrap_or(0.0),
            ms.len() as f64 / v["seconds"].as_f64().unwrap_or(1.0),
        ))
    };
    let a = rpc(ours)
        .map_err(|e| notes.push(format!("ours rpc: {e:#}")))
        .ok();
    let b = rpc(base)
        .map_err(|e| notes.push(format!("baseline rpc: {e:#}")))
        .ok();
    for (metric, unit, f, hib) in [
        ("rpc echo round trip (1 KiB), median", "ms", 0, false),
        ("rpc echo round trip (1 KiB), p99", "ms", 1, false),
        ("rpc calls per second (sequential)", "calls/s", 2, true),
    ] {
        let pick = |v: (f64, f64, f64)| [v.0, v.1, v.2][f];
        rows.push(Row {
            metric: metric.into(),
            unit,
            ours: a.map(pick),
            baseline: b.map(pick),
            iperf3: None,
            higher_is_better: hib,
        });
    }
    notes.push("rpc: ours is blackhole-rpc (a stream per call, framed, deadline and limits checked); the baseline is libp2p-request-response with its JSON codec and defaults".into());

    let dht_nodes = (o.nodes * 5 / 2).max(30).to_string();
    eprintln!("== dht lookups ({dht_nodes} nodes)");
    let lookups = (o.messages * 2).to_string();
    let dht = |bin: &Path| -> anyhow::Result<Value> {
        let v = client(
            bin,
            &[
                "dht",
                "--nodes",
                &dht_nodes,
                "--records",
                "20",
                "--lookups",
                &lookups,
            ],
            TIMEOUT,
        )?;
        anyhow::ensure!(
            v["found"] == v["lookups"],
            "found {} of {} records",
            v["found"],
            v["lookups"]
        );
        Ok(v)
    };
    let a = dht(ours)
        .map_err(|e| notes.push(format!("ours dht: {e:#}")))
        .ok();
    let b = dht(base)
        .map_err(|e| notes.push(format!("baseline dht: {e:#}")))
        .ok();
    for (metric, key, q, unit) in [
        ("median", "latency_ms", 0.5, "ms"),
        ("p99", "latency_ms", 0.99, "ms"),
        ("requests, median", "requests", 0.5, "requests"),
        ("requests, p99", "requests", 0.99, "requests"),
    ] {
        let pick = |v: &Value| {
            let xs: Vec<f64> = v[key]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            stats::quantile(&xs, q)
        };
        rows.push(Row {
            metric: format!("dht get ({dht_nodes} nodes), {metric}"),
            unit,
            ours: a.as_ref().and_then(pick),
            baseline: b.as_ref().and_then(pick),
            iperf3: None,
            higher_is_better: false,
        });
    }
    notes.push("dht: 20 records put at random nodes, then gets of random keys from random nodes; both sides k = 20, so a node that holds the record answers from its own store (0 requests)".into());

    eprintln!(
        "== pubsub fan-out ({} nodes, {} probes)",
        o.nodes, o.messages
    );
    let (nodes, messages) = (o.nodes.to_string(), o.messages.to_string());
    let fanout = |bin: &Path, extra: &[&str]| -> anyhow::Result<Value> {
        let mut args = vec!["pubsub", "--nodes", &nodes, "--messages", &messages];
        args.extend_from_slice(extra);
        let v = client(bin, &args, TIMEOUT)?;
        let (got, want) = (v["delivered"].as_u64(), v["expected"].as_u64());
        anyhow::ensure!(got == want, "delivered {got:?} of {want:?}");
        Ok(v)
    };
    let samples = |v: &Value, key: &str| -> Vec<f64> {
        v[key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    // Same dialed graph for both (ours makes no connections of its own).
    let a = fanout(ours, &["--same-topology", "1"])
        .map_err(|e| notes.push(format!("ours pubsub: {e:#}")))
        .ok();
    let b = fanout(base, &[])
        .map_err(|e| notes.push(format!("baseline pubsub: {e:#}")))
        .ok();
    for (metric, q) in [("median", 0.5), ("p99", 0.99)] {
        let pick = |v: &Value| stats::quantile(&samples(v, "latency_ms"), q);
        rows.push(Row {
            metric: format!("pubsub delivery latency, {metric} ({} nodes)", o.nodes),
            unit: "ms",
            ours: a.as_ref().and_then(pick),
            baseline: b.as_ref().and_then(pick),
            iperf3: None,
            higher_is_better: false,
        });
    }
    rows.push(Row {
        metric: "pubsub duplicates per delivery".into(),
        unit: "copies",
        ours: a
            .as_ref()
            .and_then(|v| v["duplicates_per_delivery"].as_f64()),
        baseline: b
            .as_ref()
            .and_then(|v| v["duplicates_per_delivery"].as_f64()),
        iperf3: None,
        higher_is_better: false,
    });
    // With its discovery on (DHT, peer exchange, topic announcements), ours
    // connects the nodes more densely: a fuller mesh, more copies.
    let dense = fanout(ours, &[])
        .map_err(|e| notes.push(format!("ours pubsub, default config: {e:#}")))
        .ok();
    rows.push(Row {
        metric: "pubsub duplicates per delivery, our discovery on".into(),
        unit: "copies",
        ours: dense
            .as_ref()
            .and_then(|v| v["duplicates_per_delivery"].as_f64()),
        baseline: None,
        iperf3: None,
        higher_is_better: false,
    });
    notes.push("pubsub: the first rows run both stacks on the same dialed graph (ours with its DHT, peer exchange and topic dials off); with them on, our nodes connect more densely, so meshes are fuller (more paths, more duplicate copies)".into());
    // Priority under load: ours only (the baseline has no priorities).
    let load = (o.messages * 5).to_string();
    match fanout(ours, &["--load", &load]) {
        Ok(v) => {
            for (metric, key) in [("normal", "latency_ms"), ("high", "latency_high_ms")] {
                for (q_name, q) in [("median", 0.5), ("p99", 0.99)] {
                    rows.push(Row {
                        metric: format!("pubsub latency under load, {metric} priority, {q_name}"),
                        unit: "ms",
                        ours: stats::quantile(&samples(&v, key), q),
                        baseline: None,
                        iperf3: None,
                        higher_is_better: false,
                    });
                }
            }
            notes.push(format!("pubsub under load: node 1 publishes {load} messages of 64 KiB on the topic while node 0 publishes the probes, alternately normal and high priority"));
        }
        Err(e) => notes.push(format!("ours pubsub under load: {e:#}")),
    }
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    })
}

fn print_table(rows: &[Row], notes: &[String]) {
    println!();
    let w = rows
        .iter()
        .map(|r| r.metric.len())
        .max()
        .unwrap_or(0)
        .max(44);
    println!(
        "{:<w$} {:>9} {:>12} {:>10} {:>14}  unit",
        "metric", "ours", "libp2p", "iperf3", "ratio"
    );
    for r in rows {
        let ratio = ratio(r).map_or("-".into(), |x| {
            format!(
                "{x:.2}x{}",
                // Within 1 % is a tie, not a loss.
                if (x - 1.0).abs() < 0.01 || (x >= 1.0) == r.higher_is_better {
                    ""
                } else {
                    " (worse)"
                }
            )
        });
        println!(
            "{:<w$} {:>9} {:>12} {:>10} {:>14}  {}",
            r.metric,
            fmt(r.ours),
            fmt(r.baseline),
            fmt(r.iperf3),
            ratio,
            r.unit
        );
    }
    for n in notes {
        println!("note: {n}");
    }
    println!();
}

fn html(rows: &[Row], notes: &[String]) -> String {
    use std::fmt::Write;
    let mut page = String::from(
        "<!doctype html><meta charset=utf-8><title>Blackhole bench</title><style>body{font-family:sans-serif;max-width:60em;margin:2em auto}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style><h1>Blackhole bench</h1>\
         <table><tr><th>metric</th><th>ours</th><th>plain rust-libp2p</th><th>iperf3</th><th>unit</th></tr>",
    );
    for r in rows {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.metric,
            fmt(r.ours),
            fmt(r.baseline),
            fmt(r.iperf3),
            r.unit
        );
    }
    page.push_str("</table>");
    // One bar chart per unit.
    for unit in ["Gbit/s", "ms", "conn/s", "KiB"] {
        let rs: Vec<&Row> = rows.iter().filter(|r| r.unit == unit).collect();
        let max = rs
            .iter()
            .flat_map(|r| [r.ours, r.baseline, r.iperf3])
            .flatten()
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let _ = write!(
            page,
            "<h3>{unit}</h3><svg width=720 height={} xmlns='http://www.w3.org/2000/svg'>",
            rs.len() * 60 + 10
        );
        for (i, r) in rs.iter().enumerate() {
            let y = i * 60;
            let _ = write!(
                page,
                "<text x=0 y={} font-size=12>{}</text>",
                y + 12,
                r.metric
            );
            for (k, (v, color, label)) in [
                (r.ours, "#d04a4a", "ours"),
                (r.baseline, "#4a7bd0", "libp2p"),
                (r.iperf3, "#888", "iperf3"),
            ]
            .iter()
            .enumerate()
            {
                if let Some(v) = v {
                    let w = v / max * 500.0;
                    let yy = y + 16 + k * 14;
                    let _ = write!(
                        page,
                        "<rect x=80 y={yy} width={w:.1} height=12 fill='{color}'/><text x={:.1} y={} font-size=11>{label} {}</text>",
                        84.0 + w,
                        yy + 10,
                        fmt(Some(*v))
                    );
                }
            }
        }
        page.push_str("</svg>");
    }
    for n in notes {
        let _ = write!(page, "<p>note: {}</p>", n.replace('<', "&lt;"));
    }
    page
}
