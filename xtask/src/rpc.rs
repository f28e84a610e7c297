//! The `rpc` scenario: calls between random pairs of nodes through their
//! control API (`_bh/echo` with a payload, `_bh/info`): latency and errors.

use std::time::Instant;

use serde_json::{Value, json};

use crate::{
    net::Net,
    rng::Rng,
    stats,
    test_net::{Outcome, WORKERS, parallel},
};

pub(crate) fn scenario(net: &Net, calls: usize, rng: &mut Rng) -> Outcome {
    let n = net.nodes.len();
    let pairs: Vec<(usize, usize, usize)> = (0..calls)
        .map(|k| {
            let a = rng.below(n);
            let b = rng.sample(n, 1, a)[0];
            (k, a, b)
        })
        .collect();
    let t = Instant::now();
    let results = parallel(&pairs, WORKERS, |&(k, a, b)| {
        let (method, request) = if k % 4 == 3 {
            ("_bh/info", Value::Null)
        } else {
            ("_bh/echo", json!({ "seq": k, "pad": "x".repeat(256) }))
        };
        let r = net.nodes[a].call(
            "POST",
            "/v1/rpc/call",
            Some(&json!({
                "peer_id": net.nodes[b].peer_id,
                "method": method,
                "request": request,
                "deadline": "10s",
                // Both built-ins are idempotent: retried on transport errors.
                "idempotent": true,
            })),
        );
        (k, a, b, method, request, r)
    });
    let seconds = t.elapsed().as_secs_f64();
    let mut ms = Vec::new();
    let mut notes = Vec::new();
    let mut errors = 0;
    for (k, a, b, method, request, r) in results {
        match r {
            Ok(v) => {
                let ok = match method {
                    "_bh/echo" => v["response"] == request,
                    _ => v["response"]["peer_id"] == net.nodes[b].peer_id.as_str(),
                };
                if ok {
                    ms.push(v["ms"].as_f64().unwrap_or(f64::NAN));
                } else {
                    errors += 1;
                    notes.push(format!("call {k} {a} -> {b} {method}: wrong answer {v}"));
                }
            }
            Err(e) => {
                errors += 1;
                if notes.len() < 10 {
                    notes.push(format!("call {k} {a} -> {b} {method}: {e:#}"));
                }
            }
        }
    }
    let q = |p| stats::quantile(&ms, p).map_or("-".into(), |v| format!("{v:.2}"));
    Outcome {
        passed: errors == 0 && calls > 0,
        headline: vec![
            ("calls ok".into(), format!("{}/{calls}", ms.len())),
            ("errors".into(), errors.to_string()),
            (
                "latency ms p50/p99".into(),
                format!("{}/{}", q(0.5), q(0.99)),
            ),
            (
                "calls/s".into(),
                format!("{:.0}", calls as f64 / seconds.max(1e-9)),
            ),
        ],
        notes,
        data: json!({
            "calls": calls,
            "errors": errors,
            "latency_ms": stats::summary(&ms),
            "latency_ms_samples": ms,
            "seconds": seconds,
        }),
        ..Outcome::default()
    }
}
