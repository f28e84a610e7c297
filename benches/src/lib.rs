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
    /// Parses `std::env::args()`.
    pub fn parse() -> anyhow::Result<Self> {
        let mut it = std::env::args().skip(1);
        let command = it
            .next()
            .context("usage: <serve|perf|connect|hold> [--key value]...")?;
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
