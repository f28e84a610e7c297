//! `cargo xtask test-net`: a real network of `blackhole-node` processes on
//! loopback, driven through their control API, with scenarios that pass or
//! fail, numbers, and JSON and HTML reports under `target/test-net/`.
//!
//! Scenarios: `connectivity`, `dht`, `pubsub`, `rpc`, `churn`, `interop`.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io::Write,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{
    net::{self, Net},
    report,
    rng::Rng,
    stats,
};

const HELP: &str = "\
cargo xtask test-net [options]

Starts N blackhole-node processes on loopback and runs scenarios against them.

options:
  --nodes N          number of nodes (default 20)
  --scenario NAME    run only this scenario (repeatable): connectivity, dht, pubsub, rpc, churn, interop
  --records R        records put in the dht scenario (default 10)
  --messages M       messages published in the pubsub scenario (default 100)
  --calls C          calls in the rpc scenario (default 200)
  --seed S           seed of every random choice (default: from the clock, printed)
  --degree D         random dials per node besides the ring (default 3)
  --churn F          fraction of nodes killed with SIGKILL and restarted (default 0.2)
  --js N             js-libp2p peers in the interop scenario (default 2)
  --debug            use a debug build of blackhole-node (default: release)
  --set KEY=VALUE    a config value for every node (repeatable), e.g.
                     --set overlay.connections.high_watermark=300
  --keep-running     leave the network up at the end and print each node's control URL
  --lab nat          instead of the loopback network: the NAT lab (root; network
                     namespaces behind nftables NAT routers, one with a UPnP
                     gateway): reachability, NAT type, relay, hole punching
                     over TCP and QUIC, UPnP (xtask/lab/nat-lab.sh)
";

const ALL: &[&str] = &["connectivity", "dht", "pubsub", "rpc", "churn", "interop"];

#[derive(Debug)]
struct Options {
    nodes: usize,
    scenarios: Vec<String>,
    seed: u64,
    degree: usize,
    records: usize,
    messages: usize,
    calls: usize,
    churn: f64,
    js: usize,
    release: bool,
    keep_running: bool,
    lab: Option<String>,
    sets: Vec<String>,
}

fn parse(args: &[String]) -> anyhow::Result<Option<Options>> {
    let mut o = Options {
        nodes: 20,
        scenarios: Vec::new(),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        degree: 3,
        records: 10,
        messages: 100,
        calls: 200,
        churn: 0.2,
        js: 2,
        release: true,
        keep_running: false,
        lab: None,
        sets: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--nodes" => o.nodes = value("--nodes")?.parse().context("--nodes: a number")?,
            "--scenario" => {
                let s = value("--scenario")?.clone();
                anyhow::ensure!(
                    ALL.contains(&s.as_str()),
                    "unknown scenario {s:?}; known: {}",
                    ALL.join(", ")
                );
                o.scenarios.push(s);
            }
            "--seed" => o.seed = value("--seed")?.parse().context("--seed: a number")?,
            "--degree" => o.degree = value("--degree")?.parse().context("--degree: a number")?,
            "--records" => {
                o.records = value("--records")?.parse().context("--records: a number")?
            }
            "--messages" => {
                o.messages = value("--messages")?
                    .parse()
                    .context("--messages: a number")?
            }
            "--calls" => o.calls = value("--calls")?.parse().context("--calls: a number")?,
            "--churn" => o.churn = value("--churn")?.parse().context("--churn: a fraction")?,
            "--js" => o.js = value("--js")?.parse().context("--js: a number")?,
            "--debug" => o.release = false,
            "--set" => {
                let s = value("--set")?.clone();
                anyhow::ensure!(
                    s.contains('='),
                    "--set {s:?}: KEY=VALUE (a node config key)"
                );
                o.sets.push(s);
            }
            "--keep-running" => o.keep_running = true,
            "--lab" => {
                let lab = value("--lab")?;
                anyhow::ensure!(lab == "nat", "--lab {lab}: the only lab is \"nat\"");
                o.lab = Some(lab.clone());
            }
            "--help" | "-h" => {
                print!("{HELP}");
                return Ok(None);
            }
            other => bail!("unknown option {other:?}\n\n{HELP}"),
        }
    }
    anyhow::ensure!(o.nodes >= 2, "--nodes must be at least 2");
    anyhow::ensure!((0.0..1.0).contains(&o.churn), "--churn must be in [0, 1)");
    if o.scenarios.is_empty() {
        o.scenarios = ALL.iter().map(|s| s.to_string()).collect();
    }
    Ok(Some(o))
}

/// One scenario's outcome.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) name: String,
    pub(crate) passed: bool,
    pub(crate) seconds: f64,
    /// Headline numbers for the summary table.
    pub(crate) headline: Vec<(String, String)>,
    /// Why it failed, or what was skipped.
    pub(crate) notes: Vec<String>,
    /// Everything measured, for the JSON report.
    pub(crate) data: Value,
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(o) = parse(args)? else { return Ok(()) };
    if o.lab.is_some() {
        return nat_lab(o.release);
    }
    eprintln!(
        "test-net: {} nodes, seed {}, scenarios {}",
        o.nodes,
        o.seed,
        o.scenarios.join(", ")
    );
    let bin = net::build_node(o.release)?;
    let out_dir = net::target_dir()?.join("test-net");
    let started = Instant::now();
    let mut net = Net::start(&bin, &out_dir.join("nodes"), o.nodes, &o.sets, |k| {
        progress("starting nodes", k, o.nodes)
    })?;
    eprintln!();
    let mut rng = Rng::new(o.seed);
    let plan = dial_plan(o.nodes, o.degree, &mut rng);
    let mut outcomes = Vec::new();
    // Every scenario needs the network connected: connectivity runs first.
    outcomes.push(timed("connectivity", || {
        connectivity(&net, &plan, &mut rng)
    }));
    let mut keys = Vec::new();
    for s in o.scenarios.iter().filter(|s| s.as_str() != "connectivity") {
        let outcome = match s.as_str() {
            "dht" => timed("dht", || dht(&net, o.records, o.seed, &mut rng, &mut keys)),
            "pubsub" => timed("pubsub", || {
                crate::pubsub::scenario(&net, o.messages, &mut rng)
            }),
            "rpc" => timed("rpc", || crate::rpc::scenario(&net, o.calls, &mut rng)),
            "churn" => timed("churn", || churn(&mut net, &keys, o.churn, &mut rng)),
            "interop" => timed("interop", || interop(&net, o.js, &mut rng)),
            _ => continue,
        };
        outcomes.push(outcome);
    }
    if !o.scenarios.iter().any(|s| s == "connectivity") {
        outcomes[0]
            .notes
            .push("run as set-up for the other scenarios".into());
    }
    let topology = topology(&net);

    print_summary(&outcomes);
    let report = json!({
        "seed": o.seed,
        "nodes": o.nodes,
        "degree": o.degree,
        "release": o.release,
        "seconds": started.elapsed().as_secs_f64(),
        "scenarios": outcomes.iter().map(|s| json!({
            "name": s.name, "passed": s.passed, "seconds": s.seconds,
            "headline": s.headline.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "notes": s.notes, "data": s.data,
        })).collect::<Vec<_>>(),
        "topology": topology,
    });
    std::fs::create_dir_all(&out_dir)?;
    let json_path = out_dir.join("report.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    let html_path = out_dir.join("report.html");
    std::fs::write(&html_path, report::html(&report))?;
    eprintln!(
        "reports: {} and {}",
        json_path.display(),
        html_path.display()
    );
    eprintln!(
        "replay with: cargo xtask test-net --nodes {} --seed {} --degree {} --records {} --messages {} --calls {} --churn {}{}{}",
        o.nodes,
        o.seed,
        o.degree,
        o.records,
        o.messages,
        o.calls,
        o.churn,
        if o.release { "" } else { " --debug" },
        o.sets
            .iter()
            .map(|s| format!(" --set '{s}'"))
            .collect::<String>()
    );

    if o.keep_running {
        eprintln!("network left running; press Ctrl-C to stop it:");
        for (i, n) in net.nodes.iter().enumerate() {
            println!("node {i:3}  {}  http://{}  {}", n.peer_id, n.api, n.tcp);
        }
        wait_for_ctrl_c();
    }
    net.stop();
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|s| !s.passed)
        .map(|s| s.name.clone())
        .collect();
    anyhow::ensure!(failed.is_empty(), "failed scenarios: {}", failed.join(", "));
    Ok(())
}

fn wait_for_ctrl_c() {
    // The process is killed by Ctrl-C; Net's Drop does not run then, so
    // the nodes are told to stop by their own SIGINT (same process group).
    let (_tx, rx) = mpsc::channel::<()>();
    let _ = rx.recv();
}

fn timed(name: &str, f: impl FnOnce() -> Outcome) -> Outcome {
    eprintln!("== scenario {name}");
    let t = Instant::now();
    let mut o = f();
    o.name = name.to_owned();
    o.seconds = t.elapsed().as_secs_f64();
    eprintln!(
        "   {} in {:.1}s",
        if o.passed { "passed" } else { "FAILED" },
        o.seconds
    );
    for n in &o.notes {
        eprintln!("   note: {n}");
    }
    o
}

fn progress(what: &str, done: usize, total: usize) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprint!("\r   {what}: {done}/{total}");
        let _ = std::io::stderr().flush();
    } else if done == total || done.is_multiple_of((total / 10).max(1)) {
        eprintln!("   {what}: {done}/{total}");
    }
}

/// Who dials whom: a ring (so the graph is connected) plus `degree` random
/// peers per node.
fn dial_plan(n: usize, degree: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    (0..n)
        .map(|i| {
            let mut targets = vec![(i + 1) % n];
            for j in rng.sample(n, degree, i) {
                if !targets.contains(&j) {
                    targets.push(j);
                }
            }
            targets
        })
        .collect()
}

/// Runs `jobs` on `workers` threads, returning results in job order.
pub(crate) fn parallel<J: Sync, R: Send>(
    jobs: &[J],
    workers: usize,
    f: impl Fn(&J) -> R + Sync,
) -> Vec<R> {
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| {
                loop {
                    let i = {
                        let Ok(mut n) = next.lock() else { return };
                        let i = *n;
                        *n += 1;
                        i
                    };
                    if i >= jobs.len() {
                        return;
                    }
                    let r = f(&jobs[i]);
                    if let Ok(mut res) = results.lock() {
                        res[i] = Some(r);
                    }
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

pub(crate) const WORKERS: usize = 16;

/// Dials every planned edge (from running nodes); returns latencies in ms
/// and failures.
fn dial_edges(net: &Net, edges: &[(usize, usize)]) -> (Vec<f64>, Vec<String>) {
    let results = parallel(edges, WORKERS, |&(a, b)| {
        let t = Instant::now();
        let r = net.nodes[a].call(
            "POST",
            "/v1/dial",
            Some(&json!({ "addr": net.nodes[b].tcp })),
        );
        (
            t.elapsed().as_secs_f64() * 1000.0,
            r.map_err(|e| format!("{a} -> {b}: {e:#}")),
        )
    });
    let mut lat = Vec::new();
    let mut failures = Vec::new();
    for (ms, r) in results {
        match r {
            Ok(_) => lat.push(ms),
            Err(e) => failures.push(e),
        }
    }
    (lat, failures)
}

/// Each running node's connected peers, as node indices.
fn adjacency(net: &Net) -> Vec<HashSet<usize>> {
    let index: HashMap<&str, usize> = net
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.peer_id.as_str(), i))
        .collect();
    let idx: Vec<usize> = (0..net.nodes.len()).collect();
    parallel(&idx, WORKERS, |&i| {
        if !net.nodes[i].is_running() {
            return HashSet::new();
        }
        net.nodes[i]
            .connected()
            .unwrap_or_default()
            .iter()
            .filter_map(|p| index.get(p.as_str()).copied())
            .collect()
    })
}

/// Number of running nodes reachable from the first running node.
fn reachable(net: &Net, adj: &[HashSet<usize>]) -> usize {
    let Some(start) = (0..net.nodes.len()).find(|&i| net.nodes[i].is_running()) else {
        return 0;
    };
    let mut seen = HashSet::from([start]);
    let mut queue = VecDeque::from([start]);
    while let Some(i) = queue.pop_front() {
        for &j in &adj[i] {
            if net.nodes[j].is_running() && seen.insert(j) {
                queue.push_back(j);
            }
        }
    }
    seen.len()
}

fn connectivity(net: &Net, plan: &[Vec<usize>], rng: &mut Rng) -> Outcome {
    let n = net.nodes.len();
    let edges: Vec<(usize, usize)> = plan
        .iter()
        .enumerate()
        .flat_map(|(i, t)| t.iter().map(move |&j| (i, j)))
        .collect();
    eprintln!("   dialing {} planned connections", edges.len());
    let (dial_ms, failures) = dial_edges(net, &edges);
    let adj = adjacency(net);
    let degrees: Vec<f64> = adj.iter().map(|a| a.len() as f64).collect();
    let reached = reachable(net, &adj);
    let isolated = degrees.iter().filter(|&&d| d == 0.0).count();

    // Ping random connected pairs, as measured by the nodes themselves.
    let pairs: Vec<(usize, usize)> = (0..2 * n)
        .filter_map(|_| {
            let a = rng.below(n);
            let peers: Vec<usize> = adj[a].iter().copied().collect();
            (!peers.is_empty()).then(|| (a, peers[rng.below(peers.len())]))
        })
        .collect();
    let pings = parallel(&pairs, WORKERS, |&(a, b)| {
        net.nodes[a].call(
            "POST",
            "/v1/ping",
            Some(&json!({ "target": net.nodes[b].peer_id })),
        )
    });
    let mut rtt = Vec::new();
    let mut ping_failures = Vec::new();
    for (p, r) in pairs.iter().zip(pings) {
        match r {
            Ok(v) => rtt.push(v["rtt_ms"].as_f64().unwrap_or(f64::NAN)),
            Err(e) => ping_failures.push(format!("{} -> {}: {e:#}", p.0, p.1)),
        }
    }

    let mut notes: Vec<String> = failures
        .iter()
        .chain(&ping_failures)
        .take(10)
        .cloned()
        .collect();
    let passed = failures.is_empty() && ping_failures.is_empty() && reached == n && isolated == 0;
    if reached != n {
        notes.insert(0, format!("only {reached} of {n} nodes reachable"));
    }
    let q = |xs: &[f64], p| stats::quantile(xs, p).map_or("-".into(), |v| format!("{v:.2}"));
    Outcome {
        passed,
        headline: vec![
            (
                "dials ok".into(),
                format!("{}/{}", dial_ms.len(), edges.len()),
            ),
            ("reachable".into(), format!("{reached}/{n}")),
            (
                "degree min/mean".into(),
                format!(
                    "{}/{:.1}",
                    q(&degrees, 0.0),
                    degrees.iter().sum::<f64>() / n as f64
                ),
            ),
            (
                "dial ms p50/p99".into(),
                format!("{}/{}", q(&dial_ms, 0.5), q(&dial_ms, 0.99)),
            ),
            (
                "ping rtt ms p50/p99".into(),
                format!("{}/{}", q(&rtt, 0.5), q(&rtt, 0.99)),
            ),
        ],
        notes,
        data: json!({
            "planned_dials": edges.len(),
            "dial_failures": failures,
            "dial_ms": stats::summary(&dial_ms),
            "dial_ms_samples": dial_ms,
            "degree": stats::summary(&degrees),
            "reachable": reached,
            "isolated": isolated,
            "ping_rtt_ms": stats::summary(&rtt),
            "ping_rtt_ms_samples": rtt,
            "ping_failures": ping_failures,
        }),
        ..Outcome::default()
    }
}

/// Polls `check` every 100 ms until it holds or `timeout` passes; returns
/// the seconds it took.
fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> Option<f64> {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if check() {
            return Some(t.elapsed().as_secs_f64());
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
    None
}

fn churn(net: &mut Net, keys: &[String], fraction: f64, rng: &mut Rng) -> Outcome {
    let n = net.nodes.len();
    let count = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    let victims = rng.sample(n, count, 0);
    eprintln!("   kill -9 {count} node(s): {victims:?}");
    let victim_ids: HashSet<String> = victims
        .iter()
        .map(|&v| net.nodes[v].peer_id.clone())
        .collect();
    let mut notes = Vec::new();
    for &v in &victims {
        if let Err(e) = net.kill9(v) {
            notes.push(format!("kill node {v}: {e:#}"));
        }
    }
    // Survivors notice the dead connections.
    let detect = wait_until(Duration::from_secs(60), || {
        let survivors: Vec<usize> = (0..n).filter(|&i| net.nodes[i].is_running()).collect();
        parallel(&survivors, WORKERS, |&i| {
            net.nodes[i].connected().unwrap_or_default()
        })
        .iter()
        .all(|peers| !peers.iter().any(|p| victim_ids.contains(p)))
    });
    let alive = reachable(net, &adjacency(net));
    // The records of the dht scenario, from every survivor.
    let survivors: Vec<usize> = (0..n).filter(|&i| net.nodes[i].is_running()).collect();
    let (found_down, tried_down, _, _) = get_everywhere(net, keys, &survivors);

    // Restart with the same data directories: same identity; the nodes
    // reconnect by themselves (peer store, bootstrap list).
    let t = Instant::now();
    let mut restart_failures = Vec::new();
    for &v in &victims {
        if let Err(e) = net.restart(v) {
            restart_failures.push(format!("restart node {v}: {e:#}"));
        }
    }
    let recovered = wait_until(Duration::from_secs(60), || {
        reachable(net, &adjacency(net)) == n
    });
    let recovery_s = recovered.map(|_| t.elapsed().as_secs_f64());

    notes.extend(restart_failures.iter().cloned());
    let all: Vec<usize> = (0..n).collect();
    let (found_after, tried_after, _, _) = get_everywhere(net, keys, &all);
    // Pubsub delivery to the restarted nodes, from a survivor.
    let publisher = (0..n).find(|i| !victims.contains(i)).unwrap_or(0);
    let delivery_s = crate::pubsub::recovery(
        net,
        &victims,
        publisher,
        &format!("churn/{}", rng.next_u64()),
        Duration::from_secs(60),
    );
    if delivery_s.is_none() {
        notes.push("pubsub delivery to the restarted nodes did not recover within 60 s".into());
    }
    if detect.is_none() {
        notes.push("survivors still listed killed peers after 60 s".into());
    }
    if recovered.is_none() {
        notes.push("network not connected again within 60 s of the restarts".into());
    }
    if found_down < tried_down || found_after < tried_after {
        notes.push(format!("records retrieved: {found_down}/{tried_down} while down, {found_after}/{tried_after} after"));
    }
    let passed = detect.is_some()
        && recovered.is_some()
        && restart_failures.is_empty()
        && found_down == tried_down
        && found_after == tried_after
        && delivery_s.is_some();
    Outcome {
        passed,
        headline: vec![
            ("killed".into(), count.to_string()),
            (
                "detected in s".into(),
                detect.map_or("-".into(), |s| format!("{s:.2}")),
            ),
            (
                "reachable while down".into(),
                format!("{alive}/{}", n - count),
            ),
            (
                "records while down".into(),
                format!("{found_down}/{tried_down}"),
            ),
            (
                "records after".into(),
                format!("{found_after}/{tried_after}"),
            ),
            (
                "recovered in s".into(),
                recovery_s.map_or("-".into(), |s| format!("{s:.2}")),
            ),
            (
                "pubsub delivery in s".into(),
                delivery_s.map_or("-".into(), |s| format!("{s:.2}")),
            ),
            (
                "same identity".into(),
                if restart_failures.is_empty() {
                    "yes".into()
                } else {
                    "no".into()
                },
            ),
        ],
        notes,
        data: json!({
            "victims": victims,
            "detect_seconds": detect,
            "reachable_while_down": alive,
            "recovery_seconds": recovery_s,
            "restart_failures": restart_failures,
            "records_found_while_down": found_down,
            "records_tried_while_down": tried_down,
            "records_found_after": found_after,
            "records_tried_after": tried_after,
            "pubsub_delivery_seconds": delivery_s,
        }),
        ..Outcome::default()
    }
}

/// Gets every key from every node in `nodes`: (found, tried, latencies
/// in ms, requests per lookup).
fn get_everywhere(
    net: &Net,
    keys: &[String],
    nodes: &[usize],
) -> (usize, usize, Vec<f64>, Vec<f64>) {
    let jobs: Vec<(usize, &String)> = nodes
        .iter()
        .flat_map(|&i| keys.iter().map(move |k| (i, k)))
        .collect();
    let results = parallel(&jobs, WORKERS, |&(i, k)| {
        net.nodes[i].call("POST", "/v1/dht/get", Some(&json!({ "key": k })))
    });
    let (mut found, mut ms, mut requests) = (0, Vec::new(), Vec::new());
    for r in results.into_iter().flatten() {
        if r["result"] == "found" {
            found += 1;
            ms.push(r["duration_ms"].as_f64().unwrap_or(0.0));
            requests.push(r["requests"].as_f64().unwrap_or(0.0));
        }
    }
    (found, jobs.len(), ms, requests)
}

fn dht(net: &Net, records: usize, seed: u64, rng: &mut Rng, keys: &mut Vec<String>) -> Outcome {
    let n = net.nodes.len();
    let idx: Vec<usize> = (0..n).collect();
    let stats = parallel(&idx, WORKERS, |&i| {
        net.nodes[i].call("POST", "/v1/dht/stats", Some(&json!({})))
    });
    let table: Vec<f64> = stats
        .iter()
        .filter_map(|r| r.as_ref().ok()?["routing_table_peers"].as_f64())
        .collect();
    let mut notes = Vec::new();
    // Put records at random nodes.
    let puts: Vec<(usize, String)> = (0..records)
        .map(|i| (rng.below(n), format!("test-net/{seed}/{i}")))
        .collect();
    let put_results = parallel(&puts, WORKERS, |(i, key)| {
        let t = Instant::now();
        let r = net.nodes[*i].call(
            "POST",
            "/v1/dht/put",
            Some(&json!({ "key": key, "value": format!("value of {key}") })),
        );
        (t.elapsed().as_secs_f64() * 1000.0, r)
    });
    let mut put_ms = Vec::new();
    for ((i, key), (ms, r)) in puts.iter().zip(put_results) {
        match r {
            Ok(_) => {
                put_ms.push(ms);
                keys.push(key.clone());
            }
            Err(e) => notes.push(format!("put {key} at node {i}: {e:#}")),
        }
    }
    // Every node gets every record.
    let (found, tried, get_ms, requests) = get_everywhere(net, keys, &idx);
    let q = |xs: &[f64], p| stats::quantile(xs, p).map_or("-".into(), |v| format!("{v:.1}"));
    if found < tried {
        notes.push(format!(
            "{} of {tried} lookups found nothing",
            tried - found
        ));
    }
    notes.push(
        "\"requests\" counts the DHT requests of a lookup (libp2p-kad reports no hop count)".into(),
    );
    Outcome {
        passed: keys.len() == records && found == tried && records > 0,
        headline: vec![
            (
                "routing table min/mean".into(),
                format!(
                    "{}/{:.1}",
                    q(&table, 0.0),
                    table.iter().sum::<f64>() / table.len().max(1) as f64
                ),
            ),
            ("puts ok".into(), format!("{}/{records}", keys.len())),
            ("gets found".into(), format!("{found}/{tried}")),
            (
                "get ms p50/p99".into(),
                format!("{}/{}", q(&get_ms, 0.5), q(&get_ms, 0.99)),
            ),
            (
                "requests p50/p99".into(),
                format!("{}/{}", q(&requests, 0.5), q(&requests, 0.99)),
            ),
        ],
        notes,
        data: json!({
            "routing_table_peers": stats::summary(&table),
            "put_ms": stats::summary(&put_ms),
            "found": found, "tried": tried,
            "get_ms": stats::summary(&get_ms),
            "get_ms_samples": get_ms,
            "requests": stats::summary(&requests),
        }),
        ..Outcome::default()
    }
}

/// The gossipsub topic of the interop scenario.
const INTEROP_TOPIC: &str = "interop/test-net";
/// Longest wait for a js peer to start listening.
const JS_START: Duration = Duration::from_secs(120);
/// Messages sent each way per js peer in the interop scenario.
const INTEROP_MESSAGES: usize = 3;

/// Gossipsub both ways between our node `a` and a js peer it is connected
/// to: `a` subscribes, js sees the subscription, each side publishes
/// INTEROP_MESSAGES and the other must get each exactly once.
fn gossip_with_js(net: &Net, a: usize, js: &mut JsPeer, k: usize) -> anyhow::Result<()> {
    let node = &net.nodes[a];
    let stream = crate::http::LineStream::open(
        node.api,
        &format!("/v1/pubsub/subscribe?pattern={INTEROP_TOPIC}"),
        Duration::from_secs(10),
    )?;
    // js tells us when our node's subscription reached it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = js.next("subscription-change", left)?;
        if v["peer_id"] == node.peer_id.as_str()
            && v["topic"] == INTEROP_TOPIC
            && v["subscribed"] == true
        {
            break;
        }
    }
    // And our node sees js subscribed (a direct peer on the topic).
    let ready = wait_until(Duration::from_secs(20), || {
        node.call(
            "GET",
            &format!("/v1/pubsub/mesh?pattern={INTEROP_TOPIC}"),
            None,
        )
        .ok()
        .and_then(|m| m["topic_peers"].as_u64())
        .is_some_and(|p| p > 0)
    });
    anyhow::ensure!(ready.is_some(), "our node never saw js subscribe");
    // Ours -> js.
    let mut want: Vec<String> = (0..INTEROP_MESSAGES)
        .map(|i| format!("ours-{k}-{i}"))
        .collect();
    for data in &want {
        node.call(
            "POST",
            "/v1/pubsub/publish",
            Some(&json!({ "topic": INTEROP_TOPIC, "data": data })),
        )?;
    }
    while !want.is_empty() {
        let v = js.next("message", Duration::from_secs(20))?;
        let data = v["data"].as_str().unwrap_or_default();
        if let Some(i) = want.iter().position(|w| w == data) {
            want.remove(i);
        } else if data.starts_with("ours-") {
            bail!("js got {data:?} twice or unexpectedly");
        }
    }
    // js -> ours (our own publishes come back on our stream too: skip them).
    let mut want: Vec<String> = (0..INTEROP_MESSAGES)
        .map(|i| format!("js-{k}-{i}"))
        .collect();
    for (i, data) in want.iter().enumerate() {
        js.command(&json!({ "cmd": "publish", "id": i, "topic": INTEROP_TOPIC, "data": data }))?;
        js.next("published", Duration::from_secs(20))?;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !want.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = stream
            .lines
            .recv_timeout(left)
            .map_err(|_| anyhow::anyhow!("our node did not get {want:?}"))?;
        let v: Value = serde_json::from_str(&line)?;
        let text = v["text"].as_str().unwrap_or_default();
        if let Some(i) = want.iter().position(|w| w == text) {
            anyhow::ensure!(
                v["source"] == js.peer_id.as_str(),
                "{text} not from js: {v}"
            );
            want.remove(i);
        } else if text.starts_with("js-") {
            bail!("our node got {text:?} twice or unexpectedly");
        }
    }
    stream.stop();
    Ok(())
}

/// A js-libp2p peer process (tests/interop/js/peer.mjs in listen mode).
struct JsPeer {
    child: Child,
    lines: mpsc::Receiver<String>,
    peer_id: String,
    addr: String,
}

impl Drop for JsPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl JsPeer {
    fn start(node: &PathBuf, stderr_log: &std::path::Path) -> anyhow::Result<JsPeer> {
        let dir = crate::root().join("tests/interop/js");
        let log = std::fs::File::create(stderr_log)
            .with_context(|| format!("cannot create {}", stderr_log.display()))?;
        let mut child = Command::new(node)
            .arg(dir.join("peer.mjs"))
            .args(["listen", "--topic", INTEROP_TOPIC, "--dht"])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()?;
        let lines = net::lines(child.stdout.take().context("no stdout")?);
        let mut peer = JsPeer {
            child,
            lines,
            peer_id: String::new(),
            addr: String::new(),
        };
        // Node loads a few thousand modules first: on two cores busy with
        // 200 of our nodes that took over 30 s.
        let v = peer
            .next("listening", JS_START)
            .with_context(|| format!("its stderr: {}", stderr_log.display()))?;
        peer.peer_id = v["peer_id"].as_str().unwrap_or_default().to_owned();
        peer.addr = v["addrs"][0].as_str().unwrap_or_default().to_owned();
        Ok(peer)
    }

    fn next(&mut self, event: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .map_err(|_| anyhow::anyhow!("js peer: no {event} in {timeout:?}"))?;
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["event"] == "error" {
                bail!("js peer error: {line}");
            }
            if v["event"] == event {
                return Ok(v);
            }
        }
    }

    fn command(&mut self, cmd: &Value) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().context("no stdin")?;
        writeln!(stdin, "{cmd}")?;
        Ok(stdin.flush()?)
    }

    /// Sends a command with id `id` and returns the event answering it
    /// (an error answer is an error; events answering nothing are skipped).
    fn call(&mut self, id: u64, mut cmd: Value, timeout: Duration) -> anyhow::Result<Value> {
        cmd["id"] = id.into();
        self.command(&cmd)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .map_err(|_| anyhow::anyhow!("js peer: no answer to {cmd} in {timeout:?}"))?;
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["id"] != id {
                continue;
            }
            if v["event"] == "error" {
                bail!("js peer: {}: {}", cmd["cmd"], v["message"]);
            }
            return Ok(v);
        }
    }
}

/// DHT successes and attempts with the js peers, per direction.
#[derive(Debug, Default)]
struct DhtTally {
    /// js gets of records our nodes put.
    ours_to_js: (usize, usize),
    /// Of those, how many one of our nodes answered with the record (the
    /// others js had in its own store, put there by our node: PUT_VALUE
    /// rather than GET_VALUE across implementations).
    answered_by_ours: usize,
    /// our nodes' gets of records js peers put.
    js_to_ours: (usize, usize),
    /// js puts that reached at least one of our nodes.
    js_puts: (usize, usize),
    /// js network lookups (FIND_NODE) of our nodes.
    js_find_peer: (usize, usize),
}

/// Kademlia with js peer `k`, which three of our nodes are connected to:
/// two random nodes of ours put a record each and js gets them (from our
/// nodes' answers or, when it was among the closest peers, from the copy
/// our node put at it); js puts one and every node of ours gets it; js
/// looks one of our nodes up on the network. Record keys are under /bh/,
/// the namespace the js peer accepts.
fn dht_with_js(
    net: &Net,
    js: &mut JsPeer,
    k: usize,
    rng: &mut Rng,
    tally: &mut DhtTally,
    notes: &mut Vec<String>,
) {
    let n = net.nodes.len();
    let mut id = 1000;
    let mut next_id = || {
        id += 1;
        id
    };
    let t = Duration::from_secs(70);
    // js must have DHT peers before it can put or get (it waits for them).
    let ready = wait_until(Duration::from_secs(20), || {
        js.call(next_id(), json!({ "cmd": "dht-table" }), t)
            .ok()
            .and_then(|v| Some(!v["peers"].as_array()?.is_empty()))
            .unwrap_or(false)
    });
    if ready.is_none() {
        notes.push(format!(
            "js {k}: none of our nodes entered its DHT routing table"
        ));
    }
    let ours: HashSet<&str> = net.nodes.iter().map(|n| n.peer_id.as_str()).collect();
    // Ours -> js.
    for a in rng.sample(n, 2.min(n), usize::MAX) {
        tally.ours_to_js.1 += 1;
        let key = format!("/bh/test-net/ours-{k}-{a}");
        let value = format!("put by node {a}");
        let r = net.nodes[a]
            .call(
                "POST",
                "/v1/dht/put",
                Some(&json!({ "key": key, "value": value })),
            )
            .and_then(|_| js.call(next_id(), json!({ "cmd": "dht-get", "key": key }), t))
            .and_then(|v| {
                let from_ours = v["record_from"].as_array().is_some_and(|f| {
                    f.iter()
                        .any(|p| p.as_str().is_some_and(|p| ours.contains(p)))
                });
                anyhow::ensure!(v["value"] == value.as_str(), "js got {v}");
                anyhow::ensure!(
                    from_ours || v["local"] == true,
                    "js got it from none of ours: {v}"
                );
                Ok(from_ours)
            });
        match r {
            Ok(from_ours) => {
                tally.ours_to_js.0 += 1;
                tally.answered_by_ours += usize::from(from_ours);
            }
            Err(e) => notes.push(format!("dht node {a} -> js {k}: {e:#}")),
        }
    }
    // js -> ours.
    let key = format!("/bh/test-net/js-{k}");
    let value = format!("put by js {k}");
    tally.js_puts.1 += 1;
    let put = js.call(
        next_id(),
        json!({ "cmd": "dht-put", "key": key, "value": value }),
        t,
    );
    match put {
        Ok(v) => {
            let stored_at = v["stored_at"].as_array().map_or(0, |s| {
                s.iter()
                    .filter(|p| p.as_str().is_some_and(|p| ours.contains(p)))
                    .count()
            });
            if stored_at > 0 {
                tally.js_puts.0 += 1;
            } else {
                notes.push(format!("dht js {k} put: stored at none of ours: {v}"));
            }
        }
        Err(e) => notes.push(format!("dht js {k} put: {e:#}")),
    }
    // Every node of ours gets it, with js's value.
    let idx: Vec<usize> = (0..n).collect();
    let gets = parallel(&idx, WORKERS, |&i| {
        net.nodes[i].call("POST", "/v1/dht/get", Some(&json!({ "key": key })))
    });
    for (i, r) in gets.into_iter().enumerate() {
        tally.js_to_ours.1 += 1;
        match r {
            Ok(v)
                if v["value"].as_str().and_then(decode_hex) == Some(value.clone().into_bytes()) =>
            {
                tally.js_to_ours.0 += 1
            }
            Ok(v) => notes.push(format!("dht js {k} -> node {i}: not js's value: {v}")),
            Err(e) => notes.push(format!("dht js {k} -> node {i}: {e:#}")),
        }
    }
    // js finds one of our nodes through the network (not its cache).
    let b = rng.below(n);
    tally.js_find_peer.1 += 1;
    let r = js
        .call(
            next_id(),
            json!({ "cmd": "dht-find-peer", "peer_id": net.nodes[b].peer_id }),
            t,
        )
        .and_then(|v| {
            anyhow::ensure!(
                v["addrs"].as_array().is_some_and(|a| !a.is_empty()),
                "no addresses: {v}"
            );
            Ok(())
        });
    match r {
        Ok(()) => tally.js_find_peer.0 += 1,
        Err(e) => notes.push(format!("dht js {k} find-peer node {b}: {e:#}")),
    }
}

/// Our API sends DHT values as hex.
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn interop(net: &Net, count: usize, rng: &mut Rng) -> Outcome {
    let node = crate::root().join("tests/interop/js/node_modules/.bin/node");
    if !node.exists() {
        return Outcome {
            passed: false,
            notes: vec!["js-libp2p peer not installed: run `cargo xtask setup`".into()],
            ..Outcome::default()
        };
    }
    let n = net.nodes.len();
    let mut notes = Vec::new();
    let (mut ok_ours, mut ok_theirs, mut attempts_ours, mut attempts_theirs) = (0, 0, 0, 0);
    let (mut ok_gossip, mut attempts_gossip) = (0, 0);
    let mut rtt = Vec::new();
    let mut agents = HashSet::new();
    let mut dht = DhtTally::default();
    for k in 0..count {
        let log = net::target_dir()
            .map(|t| t.join("test-net").join(format!("js-peer-{k}.log")))
            .unwrap_or_else(|_| std::env::temp_dir().join(format!("js-peer-{k}.log")));
        let mut js = match JsPeer::start(&node, &log) {
            Ok(j) => j,
            Err(e) => {
                notes.push(format!("js peer {k}: {e:#}"));
                continue;
            }
        };
        // Three of our nodes dial it, ping it and identify it.
        let dialers = rng.sample(n, 3.min(n), usize::MAX);
        for &a in &dialers {
            attempts_ours += 1;
            let node = &net.nodes[a];
            let r = node
                .call("POST", "/v1/ping", Some(&json!({ "target": js.addr })))
                .and_then(|v| {
                    rtt.push(v["rtt_ms"].as_f64().unwrap_or(f64::NAN));
                    // identify runs right after the connection is up.
                    let agent = wait_until(Duration::from_secs(20), || {
                        node.call("GET", "/v1/peers", None)
                            .ok()
                            .and_then(|p| {
                                p.as_array()?
                                    .iter()
                                    .find(|p| p["peer_id"] == js.peer_id.as_str())
                                    .and_then(|p| p["agent_version"].as_str().map(str::to_owned))
                            })
                            .map(|a| agents.insert(a))
                            .is_some()
                    });
                    agent.context("identify of the js peer did not complete")
                });
            match r {
                Ok(_) => ok_ours += 1,
                Err(e) => notes.push(format!("node {a} -> js {k}: {e:#}")),
            }
        }
        // Gossipsub both ways with the first of them.
        attempts_gossip += 1;
        match gossip_with_js(net, dialers[0], &mut js, k) {
            Ok(()) => ok_gossip += 1,
            Err(e) => notes.push(format!("gossipsub node {} <-> js {k}: {e:#}", dialers[0])),
        }
        // Kademlia with our nodes, both ways.
        dht_with_js(net, &mut js, k, rng, &mut dht, &mut notes);
        // It dials two of ours: ping, identify and 1 MiB each way with perf.
        for b in rng.sample(n, 2.min(n), usize::MAX) {
            attempts_theirs += 1;
            let cmd = json!({ "cmd": "dial_ping_perf", "addr": net.nodes[b].tcp, "upload": 1 << 20, "download": 1 << 20 });
            let r = js
                .command(&cmd)
                .and_then(|_| js.next("perf", Duration::from_secs(120)));
            match r {
                Ok(_) => ok_theirs += 1,
                Err(e) => notes.push(format!("js {k} -> node {b}: {e:#}")),
            }
        }
    }
    let js_agents: Vec<String> = agents.into_iter().collect();
    let all = |(ok, tried): (usize, usize)| ok == tried && tried > 0;
    let ratio = |(ok, tried): (usize, usize)| format!("{ok}/{tried}");
    Outcome {
        passed: ok_ours == attempts_ours
            && ok_theirs == attempts_theirs
            && ok_gossip == attempts_gossip
            && attempts_ours > 0
            && all(dht.ours_to_js)
            && all(dht.js_puts)
            && all(dht.js_to_ours)
            && all(dht.js_find_peer),
        headline: vec![
            (
                "ours -> js (dial, ping, identify)".into(),
                format!("{ok_ours}/{attempts_ours}"),
            ),
            (
                "js -> ours (dial, ping, identify, perf)".into(),
                format!("{ok_theirs}/{attempts_theirs}"),
            ),
            (
                "gossipsub both ways".into(),
                format!("{ok_gossip}/{attempts_gossip}"),
            ),
            (
                "dht: js gets ours' records (answered by ours)".into(),
                format!("{} ({})", ratio(dht.ours_to_js), dht.answered_by_ours),
            ),
            (
                "dht: js puts / our gets of them".into(),
                format!("{} / {}", ratio(dht.js_puts), ratio(dht.js_to_ours)),
            ),
            ("dht: js finds our nodes".into(), ratio(dht.js_find_peer)),
            (
                "rtt ms p50".into(),
                stats::quantile(&rtt, 0.5).map_or("-".into(), |v| format!("{v:.2}")),
            ),
        ],
        notes,
        data: json!({
            "js_peers": count, "ok_ours": ok_ours, "ok_theirs": ok_theirs, "ok_gossip": ok_gossip,
            "rtt_ms": stats::summary(&rtt), "agents": js_agents,
            "dht": {
                "ours_to_js": [dht.ours_to_js.0, dht.ours_to_js.1],
                "ours_to_js_answered_by_ours": dht.answered_by_ours,
                "js_puts": [dht.js_puts.0, dht.js_puts.1],
                "js_to_ours": [dht.js_to_ours.0, dht.js_to_ours.1],
                "js_find_peer": [dht.js_find_peer.0, dht.js_find_peer.1],
            },
        }),
        ..Outcome::default()
    }
}

/// Who is connected to whom at the end, for the report's plot.
fn topology(net: &Net) -> Value {
    let adj = adjacency(net);
    let edges: Vec<[usize; 2]> = adj
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.iter().filter(move |&&j| j > i).map(move |&j| [i, j]))
        .collect();
    json!({ "nodes": net.nodes.len(), "edges": edges })
}

fn print_summary(outcomes: &[Outcome]) {
    println!();
    println!(
        "{:<14} {:<7} {:>8}  numbers",
        "scenario", "result", "seconds"
    );
    for o in outcomes {
        let numbers: Vec<String> = o
            .headline
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!(
            "{:<14} {:<7} {:>8.1}  {}",
            o.name,
            if o.passed { "pass" } else { "FAIL" },
            o.seconds,
            numbers.join("; ")
        );
    }
    println!();
}

/// `--lab nat`: the NAT lab (see `lab.rs`), with a summary table and a JSON
/// report under `target/test-net/lab-nat.json`.
fn nat_lab(release: bool) -> anyhow::Result<()> {
    let lacking = crate::lab::missing();
    anyhow::ensure!(
        lacking.is_empty(),
        "the NAT lab cannot run here; it needs: {}",
        lacking.join(", ")
    );
    let bin = net::build_node(release)?;
    let out_dir = net::target_dir()?.join("test-net");
    let script = crate::root().join("xtask/lab/nat-lab.sh");
    eprintln!("== lab nat");
    let started = Instant::now();
    let outcome = crate::lab::run(&script, &bin, &out_dir.join("lab-nat"))?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!();
    eprintln!(
        "{:<10} {:<26} {:<14} {:<22}",
        "node", "where", "reachability", "NAT type"
    );
    for n in &outcome.nodes {
        let s = |v: &Value| v.as_str().unwrap_or("?").to_owned();
        eprintln!(
            "{:<10} {:<26} {:<14} {:<22}",
            s(&n["node"]),
            s(&n["where"]),
            s(&n["reported"]["reachability"]),
            s(&n["reported"]["nat_type"]),
        );
    }
    for p in &outcome.punches {
        eprintln!(
            "hole punch {}: {} -> {}: direct after {:.1}s, {} attempt(s)",
            p["transport"].as_str().unwrap_or("?"),
            p["from"].as_str().unwrap_or("?"),
            p["to"].as_str().unwrap_or("?"),
            p["seconds_to_direct"].as_f64().unwrap_or(f64::NAN),
            p["attempts"],
        );
    }
    let mut report = outcome.to_json();
    report["seconds"] = json!(secs);
    report["release"] = json!(release);
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join("lab-nat.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    eprintln!("report: {}", path.display());
    let failed: Vec<&str> = outcome
        .checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| c.name.as_str())
        .collect();
    anyhow::ensure!(outcome.passed(), "NAT lab failed: {}", failed.join("; "));
    eprintln!("NAT lab passed in {secs:.1}s");
    Ok(())
}
