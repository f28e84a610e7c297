//! Shared parts of the benchmark programs run by `cargo xtask bench`:
//! argument parsing and output. Each program prints one JSON object per
//! line on stdout.

// Benchmark programs: a panic or an error ends the run, reported by xtask.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::HashMap, time::Duration};

use anyhow::Context;

/// Time allowed for one benchmark operation on loopback.
pub const OP_TIMEOUT: Duration = Duration::from_secs(300);

/// `--key value` options after the subcommand.
#[derive(Debug, Default)]
pub struct Args {
    /// The subcommand.
    pub command: String,
    values: HashMap<String, Vec<String>>,
}

impl Args {
    /// Parses `std::env::args()`; prints `usage` and exits on `--help`,
    /// `-h` or `help`.
    pub fn parse(usage: &str) -> anyhow::Result<Self> {
        if std::env::args()
            .skip(1)
            .any(|a| matches!(a.as_str(), "--help" | "-h" | "help"))
        {
            println!("{usage}");
            std::process::exit(0);
        }
        let mut it = std::env::args().skip(1);
        let command = it
            .next()
            .with_context(|| format!("no command given\n{usage}"))?;
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        while let Some(k) = it.next() {
            let key = k
                .strip_prefix("--")
                .with_context(|| format!("expected --option, got {k:?}"))?
                .to_owned();
            let v = it
                .next()
                .with_context(|| format!("--{key} needs a value"))?;
            values.entry(key).or_default().push(v);
        }
        Ok(Self { command, values })
    }

    /// The last value of `--key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// Every value of `--key`.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.values.get(key).cloned().unwrap_or_default()
    }

    /// `--key` parsed, or `default`.
    pub fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            Some(v) => v.parse().map_err(|e| anyhow::anyhow!("--{key} {v}: {e}")),
            None => Ok(default),
        }
    }
}

/// Prints one JSON line.
pub fn emit(v: serde_json::Value) {
    println!("{v}");
}

/// Waits until stdin closes (the harness holds it open while it needs us).
pub async fn wait_stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let mut stdin = tokio::io::stdin();
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// Shared parts of the pubsub fan-out benchmark (ours and the baseline run
/// the same topology and the same messages).
pub mod fanout {
    /// The topic every node subscribes to.
    pub const TOPIC: &str = "bench/fanout";
    /// Time allowed for the mesh to form and for deliveries to arrive.
    pub const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

    /// Who dials whom: `i` dials `i - 1` (so the graph is connected) and
    /// `degree - 1` other random nodes; a seeded generator (xorshift).
    pub fn edges(n: usize, degree: usize, seed: u64) -> Vec<(usize, usize)> {
        let mut rng = super::Rng::new(seed);
        let mut out = Vec::new();
        for i in 1..n {
            out.push((i, i - 1));
            for _ in 1..degree {
                let j = rng.below(n);
                if j != i && !out.contains(&(i, j)) && !out.contains(&(j, i)) {
                    out.push((i, j));
                }
            }
        }
        out
    }

    /// A probe message: its sequence number, a priority byte, padding.
    pub fn probe(seq: u64, high: bool, size: usize) -> Vec<u8> {
        let mut v = seq.to_be_bytes().to_vec();
        v.push(u8::from(high));
        v.resize(size.max(9), 0xab);
        v
    }

    /// The sequence number and priority of a probe (`None` for load).
    pub fn parse(data: &[u8]) -> Option<(u64, bool)> {
        let seq = u64::from_be_bytes(data.get(..8)?.try_into().ok()?);
        match data.get(8)? {
            0 => Some((seq, false)),
            1 => Some((seq, true)),
            _ => None,
        }
    }

    /// A load message (64 KiB, distinct per `k`, never parsed as a probe).
    pub fn load(k: u64) -> Vec<u8> {
        let mut v = k.to_be_bytes().to_vec();
        v.push(0xff);
        v.resize(64 * 1024, 0xcd);
        v
    }

    /// Sums a gossipsub counter over the lines of a Prometheus text
    /// encoding whose name starts with `name` and which mention `topic`.
    pub fn counter(text: &str, name: &str, topic: &str) -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(topic))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The JSON line both programs print.
    pub fn report(
        latencies_normal: &[f64],
        latencies_high: &[f64],
        delivered: usize,
        expected: usize,
        duplicates_per_delivery: Option<f64>,
        mesh_seconds: f64,
    ) -> serde_json::Value {
        serde_json::json!({
            "latency_ms": latencies_normal,
            "latency_high_ms": latencies_high,
            "delivered": delivered,
            "expected": expected,
            "duplicates_per_delivery": duplicates_per_delivery,
            "mesh_seconds": mesh_seconds,
        })
    }
}

/// A small seeded generator (xorshift64) for the benchmark programs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}
