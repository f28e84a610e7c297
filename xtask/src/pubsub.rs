//! The `pubsub` scenario: subscribers on concrete topics and wildcard
//! patterns, publishers at random nodes on random topics (some of which
//! nobody names exactly); every subscriber must get every matching
//! message exactly once.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    http::LineStream,
    net::Net,
    rng::Rng,
    stats,
    test_net::{Outcome, WORKERS, parallel},
};

const REGIONS: &[&str] = &["eu", "us", "asia"];
const SHARDS: usize = 4;
/// How long publishers may take to hear every subscription.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(60);
/// How long after the last publish deliveries may still arrive.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Whether `pattern` (`*` one segment, final `**` one or more) matches.
fn matches(pattern: &str, topic: &str) -> bool {
    let (p, t): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), topic.split('/').collect());
    for (i, seg) in p.iter().enumerate() {
        match *seg {
            "**" => return t.len() > i,
            "*" if i < t.len() => {}
            s if t.get(i) == Some(&s) => {}
            _ => return false,
        }
    }
    p.len() == t.len()
}

fn pick_pattern(rng: &mut Rng) -> String {
    let region = REGIONS[rng.below(REGIONS.len())];
    let shard = rng.below(SHARDS);
    match rng.below(10) {
        0..=5 => format!("net/{region}/shard-{shard}"),
        6 => format!("net/*/shard-{shard}"),
        7 => format!("net/{region}/**"),
        8 => "net/**".into(),
        _ => format!("net/{region}/*"),
    }
}

pub(crate) fn scenario(net: &Net, messages: usize, rng: &mut Rng) -> Outcome {
    let n = net.nodes.len();
    let mut notes = Vec::new();
    // About half the nodes subscribe, one pattern each.
    let mut subscribers: Vec<(usize, String)> = Vec::new();
    for i in 0..n {
        if rng.below(2) == 0 {
            subscribers.push((i, pick_pattern(rng)));
        }
    }
    let mut streams = Vec::new();
    for (i, pattern) in &subscribers {
        let path = format!(
            "/v1/pubsub/subscribe?pattern={}",
            pattern.replace('*', "%2A")
        );
        match LineStream::open(net.nodes[*i].api, &path, Duration::from_secs(10)) {
            Ok(s) => streams.push((*i, pattern.clone(), s)),
            Err(e) => notes.push(format!("subscribe {pattern} at node {i}: {e:#}")),
        }
    }
    let mut want_patterns: Vec<&String> = subscribers
        .iter()
        .map(|(_, p)| p)
        .filter(|p| p.contains('*'))
        .collect();
    want_patterns.sort();
    want_patterns.dedup();
    let mut want_topics: HashMap<&str, usize> = HashMap::new();
    for (_, p) in subscribers.iter().filter(|(_, p)| !p.contains('*')) {
        *want_topics.entry(p.as_str()).or_default() += 1;
    }
    // Publishers: random nodes; wait until each heard every subscription.
    let publishes: Vec<(usize, String)> = (0..messages)
        .map(|_| {
            let topic = format!(
                "net/{}/shard-{}",
                REGIONS[rng.below(REGIONS.len())],
                rng.below(SHARDS)
            );
            (rng.below(n), topic)
        })
        .collect();
    let mut publishers: Vec<usize> = publishes.iter().map(|(i, _)| *i).collect();
    publishers.sort();
    publishers.dedup();
    let t0 = Instant::now();
    let heard = parallel(&publishers, WORKERS, |&i| {
        let deadline = Instant::now() + ANNOUNCE_WAIT;
        loop {
            let ok = net.nodes[i]
                .call("GET", "/v1/pubsub/topics?prefix=net", None)
                .map(|t| {
                    let patterns = t["patterns"].as_array().map_or(0, Vec::len);
                    let topics_ok = want_topics.iter().all(|(topic, count)| {
                        t["topics"].as_array().is_some_and(|a| {
                            a.iter().any(|e| {
                                e["topic"] == *topic
                                    && e["subscribers"].as_u64().unwrap_or(0) as usize >= *count
                            })
                        })
                    });
                    patterns >= want_patterns.len() && topics_ok
                })
                .unwrap_or(false);
            if ok || Instant::now() > deadline {
                return ok;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let announce_s = t0.elapsed().as_secs_f64();
    let unheard = heard.iter().filter(|h| !**h).count();
    if unheard > 0 {
        notes.push(format!(
            "{unheard} publisher(s) had not heard every subscription after {ANNOUNCE_WAIT:?}"
        ));
    }
    // Publish, in order, each message naming itself and its send time.
    let mut publish_errors = 0;
    // (topic, data, publisher node, seq) of every message sent.
    let mut sent: Vec<(String, String, usize, usize)> = Vec::new();
    for (k, (i, topic)) in publishes.iter().enumerate() {
        let data = json!({ "seq": k, "sent_ms": unix_ms() }).to_string();
        match net.nodes[*i].call(
            "POST",
            "/v1/pubsub/publish",
            Some(&json!({ "topic": topic, "data": data })),
        ) {
            Ok(_) => sent.push((topic.clone(), data, *i, k)),
            Err(e) => {
                // Nobody subscribed to that topic: not an error of the network.
                let nobody = !subscribers.iter().any(|(_, p)| matches(p, topic));
                if !nobody {
                    publish_errors += 1;
                    notes.push(format!("publish {topic} at node {i}: {e:#}"));
                }
            }
        }
    }
    // Collect: each stream until it has all it should, or time runs out.
    let expected: Vec<usize> = streams
        .iter()
        .map(|(_, p, _)| sent.iter().filter(|(t, ..)| matches(p, t)).count())
        .collect();
    let deadline = Instant::now() + DELIVERY_WAIT;
    let mut latencies = Vec::new();
    let mut over_time: Vec<(f64, f64)> = Vec::new();
    let (mut delivered, mut duplicates, mut unexpected) = (0usize, 0usize, 0usize);
    let collected: Vec<HashMap<String, usize>> = streams
        .iter()
        .zip(&expected)
        .map(|((_, pattern, s), want)| {
            let mut got: HashMap<String, usize> = HashMap::new();
            let mut total = 0;
            while total < *want {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(line) = s.lines.recv_timeout(left) else {
                    break;
                };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let topic = v["topic"].as_str().unwrap_or_default().to_owned();
                if !matches(pattern, &topic) {
                    unexpected += 1;
                    continue;
                }
                let text = v["text"].as_str().unwrap_or_default().to_owned();
                if let Ok(m) = serde_json::from_str::<Value>(&text)
                    && let (Some(sent_ms), Some(recv_ms)) =
                        (m["sent_ms"].as_f64(), v["received_ms"].as_f64())
                {
                    latencies.push((recv_ms - sent_ms).max(0.0));
                    over_time.push((sent_ms, recv_ms - sent_ms));
                }
                *got.entry(text).or_default() += 1;
                total += 1;
            }
            got
        })
        .collect();
    // Late duplicates: a short quiet period on every stream.
    std::thread::sleep(Duration::from_millis(500));
    // Every (subscriber, message) pair that did not arrive, for the report.
    let mut missed: Vec<Value> = Vec::new();
    for (((node, pattern, s), got), want) in streams.iter().zip(collected).zip(&expected) {
        while let Ok(line) = s.lines.try_recv() {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let text = v["text"].as_str().unwrap_or_default();
                if got.contains_key(text) {
                    duplicates += 1;
                } else {
                    unexpected += 1;
                }
            }
        }
        delivered += got.len().min(*want);
        duplicates += got.values().map(|c| c.saturating_sub(1)).sum::<usize>();
        for (topic, data, publisher, seq) in &sent {
            if matches(pattern, topic) && !got.contains_key(data) {
                missed.push(json!({
                    "subscriber": node, "pattern": pattern, "seq": seq,
                    "topic": topic, "publisher": publisher,
                }));
            }
        }
    }
    // While still subscribed: the mesh of each subscriber that missed some.
    notes.extend(missed_notes(net, &missed));
    for (_, _, s) in &streams {
        s.stop();
    }
    let want_total: usize = expected.iter().sum();
    let rate = if want_total == 0 {
        0.0
    } else {
        delivered as f64 / want_total as f64
    };
    let q = |xs: &[f64], p| stats::quantile(xs, p).map_or("-".into(), |v| format!("{v:.1}"));
    let wildcard_subs = subscribers.iter().filter(|(_, p)| p.contains('*')).count();
    over_time.sort_by(|a, b| a.0.total_cmp(&b.0));
    let start = over_time.first().map_or(0.0, |x| x.0);
    Outcome {
        passed: want_total > 0
            && delivered == want_total
            && duplicates == 0
            && unexpected == 0
            && publish_errors == 0,
        headline: vec![
            (
                "subscribers (wildcard)".into(),
                format!("{} ({wildcard_subs})", streams.len()),
            ),
            ("messages".into(), format!("{}", sent.len())),
            (
                "delivered".into(),
                format!("{delivered}/{want_total} ({:.1}%)", rate * 100.0),
            ),
            ("duplicates".into(), format!("{duplicates}")),
            (
                "latency ms p50/p99".into(),
                format!("{}/{}", q(&latencies, 0.5), q(&latencies, 0.99)),
            ),
            ("announce s".into(), format!("{announce_s:.1}")),
        ],
        notes,
        data: json!({
            "subscribers": subscribers.iter().map(|(i, p)| json!([i, p])).collect::<Vec<_>>(),
            "messages": sent.len(),
            "expected": want_total,
            "delivered": delivered,
            "duplicates": duplicates,
            "unexpected": unexpected,
            "delivery_rate": rate,
            "announce_seconds": announce_s,
            "latency_ms": stats::summary(&latencies),
            "latency_ms_samples": latencies,
            "missed": missed,
            "delivery_over_time": over_time.iter().map(|(t, l)| json!([(t - start) / 1000.0, l])).collect::<Vec<_>>(),
        }),
        ..Outcome::default()
    }
}

/// One note per subscriber that missed messages (at most ten): which
/// messages, from which publishers, and the subscriber's mesh for its
/// pattern now, so a miss can be told from an empty or partitioned mesh.
fn missed_notes(net: &Net, missed: &[Value]) -> Vec<String> {
    let mut by_sub: Vec<(u64, &str, Vec<String>)> = Vec::new();
    for m in missed {
        let (node, pattern) = (
            m["subscriber"].as_u64().unwrap_or(0),
            m["pattern"].as_str().unwrap_or(""),
        );
        let what = format!(
            "#{} {} from node {}",
            m["seq"],
            m["topic"].as_str().unwrap_or(""),
            m["publisher"]
        );
        match by_sub
            .iter_mut()
            .find(|(n, p, _)| *n == node && *p == pattern)
        {
            Some((.., list)) => list.push(what),
            None => by_sub.push((node, pattern, vec![what])),
        }
    }
    let mut notes: Vec<String> = by_sub
        .iter()
        .take(10)
        .map(|(node, pattern, list)| {
            let mesh = net.nodes[*node as usize]
                .call(
                    "GET",
                    &format!("/v1/pubsub/mesh?pattern={}", pattern.replace('*', "%2A")),
                    None,
                )
                .map_or_else(
                    |e| format!("mesh unknown: {e:#}"),
                    |v| {
                        let scores: Vec<f64> = v["scores"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|p| p[1].as_f64()).collect())
                            .unwrap_or_default();
                        let low = scores.iter().copied().fold(f64::INFINITY, f64::min);
                        format!(
                            "its mesh now: {} peers of {} subscribed (lowest score {})",
                            v["mesh"].as_array().map_or(0, Vec::len),
                            v["topic_peers"],
                            if scores.is_empty() {
                                "-".into()
                            } else {
                                format!("{low:.1}")
                            },
                        )
                    },
                );
            let shown: Vec<&str> = list.iter().take(5).map(String::as_str).collect();
            let more = list.len().saturating_sub(shown.len());
            format!(
                "node {node} ({pattern}) missed {}: {}{}; {mesh}",
                list.len(),
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                },
            )
        })
        .collect();
    if by_sub.len() > 10 {
        notes.push(format!(
            "{} more subscribers missed messages",
            by_sub.len() - 10
        ));
    }
    notes
}

/// After churn: `subscribers` (restarted nodes) subscribe to a fresh
/// topic and `publisher` publishes a probe every 200 ms until each has
/// received one. Returns the seconds that took, or `None` after `timeout`.
pub(crate) fn recovery(
    net: &Net,
    subscribers: &[usize],
    publisher: usize,
    topic: &str,
    timeout: Duration,
) -> Option<f64> {
    let t = Instant::now();
    let streams: Vec<LineStream> = subscribers
        .iter()
        .filter_map(|&i| {
            LineStream::open(
                net.nodes[i].api,
                &format!("/v1/pubsub/subscribe?pattern={topic}"),
                Duration::from_secs(10),
            )
            .ok()
        })
        .collect();
    if streams.len() < subscribers.len() {
        return None;
    }
    let mut got = vec![false; streams.len()];
    let mut k = 0u64;
    while t.elapsed() < timeout {
        let _ = net.nodes[publisher].call(
            "POST",
            "/v1/pubsub/publish",
            Some(&json!({ "topic": topic, "data": format!("probe {k}") })),
        );
        k += 1;
        std::thread::sleep(Duration::from_millis(200));
        for (s, g) in streams.iter().zip(got.iter_mut()) {
            while s.lines.try_recv().is_ok() {
                *g = true;
            }
        }
        if got.iter().all(|g| *g) {
            return Some(t.elapsed().as_secs_f64());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn patterns() {
        assert!(matches("net/*/shard-1", "net/eu/shard-1"));
        assert!(!matches("net/*/shard-1", "net/eu/shard-2"));
        assert!(matches("net/**", "net/eu/shard-1"));
        assert!(!matches("net/**", "net"));
        assert!(matches("net/eu/*", "net/eu/shard-3"));
        assert!(matches("net/eu/shard-3", "net/eu/shard-3"));
        assert!(!matches("net/eu/shard-3", "net/eu/shard-3/x"));
    }
}
