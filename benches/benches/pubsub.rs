//! Pubsub hot paths: matching a topic against many subscriptions (our
//! trie `Matcher` next to checking every pattern in turn), and the
//! envelope and announcement codecs.

// Benchmark code: a panic is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use blackhole_pubsub::{
    Matcher, Pattern, Topic,
    wire::{Announcement, AnnouncementLimits, Envelope},
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// `n` subscriptions shaped like an application's: mostly concrete
/// `app/<region>/<shard>/<kind>`, some one-level and some multi-level
/// wildcards.
fn patterns(n: usize) -> Vec<Pattern> {
    (0..n)
        .map(|i| {
            let (r, s, k) = (i % 17, (i / 17) % 61, i % 5);
            let text = match i % 10 {
                0 => format!("app/*/shard-{s}/kind-{k}"),
                1 => format!("app/region-{r}/**"),
                2 => format!("app/region-{r}/*/kind-{k}"),
                _ => format!("app/region-{r}/shard-{s}/kind-{k}-{i}"),
            };
            Pattern::new(text).unwrap()
        })
        .collect()
}

fn matching(c: &mut Criterion) {
    let mut g = c.benchmark_group("topic_match");
    let topic = Topic::new("app/region-3/shard-20/kind-3").unwrap();
    for n in [100usize, 1_000, 10_000, 100_000] {
        let pats = patterns(n);
        let mut m = Matcher::new();
        for (i, p) in pats.iter().enumerate() {
            m.insert(p, i);
        }
        let want = pats.iter().filter(|p| p.matches(&topic)).count();
        assert_eq!(m.matches(&topic).len(), want);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("trie", n), &topic, |b, t| {
            b.iter(|| {
                let mut k = 0;
                m.for_each_match(t, |_| k += 1);
                k
            })
        });
        g.bench_with_input(BenchmarkId::new("linear", n), &topic, |b, t| {
            b.iter(|| pats.iter().filter(|p| p.matches(t)).count())
        });
    }
    g.finish();
}

fn codecs(c: &mut Criterion) {
    let mut g = c.benchmark_group("pubsub_codec");
    for size in [64usize, 4096, 65536] {
        let env = Envelope {
            high_priority: true,
            expires_ms: Some(1_800_000_000_000),
            topic: Topic::new("app/region-3/shard-20/kind-3").unwrap(),
            data: vec![0xab; size],
        };
        let bytes = env.encode();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("envelope_encode", size), &env, |b, e| {
            b.iter(|| e.encode())
        });
        g.bench_with_input(BenchmarkId::new("envelope_decode", size), &bytes, |b, x| {
            b.iter(|| Envelope::decode(x).unwrap())
        });
    }
    let ann = Announcement {
        seq: 1,
        subscribed: (0..200)
            .map(|i| Topic::new(format!("app/region-{}/shard-{i}", i % 7)).unwrap())
            .collect(),
        patterns: (0..50)
            .map(|i| Pattern::new(format!("app/region-{i}/**")).unwrap())
            .collect(),
        published: Vec::new(),
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
    };
    let bytes = ann.encode();
    let limits = AnnouncementLimits {
        max_topics: 256,
        max_patterns: 64,
        max_addrs: 4,
    };
    g.throughput(Throughput::Elements(1));
    g.bench_function("announcement_decode_250_items", |b| {
        b.iter(|| Announcement::decode(&bytes, limits).unwrap())
    });
    g.finish();
}

criterion_group!(benches, matching, codecs);
criterion_main!(benches);
