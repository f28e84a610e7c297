//! Pubsub on in-memory networks: exactly-once delivery to topic and
//! wildcard subscribers across 30 nodes (including topics created after
//! the subscriptions), a node joining later reaching wildcard
//! subscribers, validation and scoring, expiry (also of a message that
//! expires while a relay validates it), size limits, payloads that look
//! like our envelope, unsubscribing (withdrawn from other nodes'
//! listings; also when an API client closes its stream).

use std::{collections::HashMap, time::Duration};

use blackhole_node::{
    Config, DhtCommand, Error, Handle, Multiaddr, Priority, PublishOptions, Verdict,
    pubsub::Subscription,
};
use futures::future::join_all;

use crate::support::{mem_addr, until};

fn mem_config(bootstrap: &[Multiaddr]) -> Config {
    let mut c = crate::support::mem_config(bootstrap);
    // Quick announcements, so the test does not wait for the 30 s default.
    c.pubsub.announce.interval = Duration::from_secs(2);
    c.pubsub.announce.min_interval = Duration::from_millis(200);
    c
}

async fn network(n: usize) -> Vec<Handle> {
    let first = crate::support::start(mem_config(&[])).await;
    let boot = vec![mem_addr(&first).await];
    let mut nodes = vec![first];
    for _ in 1..n {
        nodes.push(crate::support::start(mem_config(&boot)).await);
    }
    // A bootstrap query that times out somewhere still fills the table;
    // pubsub needs connections, not a complete table.
    let results = join_all(nodes.iter().skip(1).map(|h| h.dht(DhtCommand::bootstrap()))).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.len() < n / 4 + 1, "bootstrap failed: {failed:?}");
    nodes
}

/// Reads from `sub` until `want` messages arrived, then for `quiet` more
/// to catch duplicates; returns how often each (topic, data) arrived.
async fn collect(
    sub: &mut Subscription,
    want: usize,
    timeout: Duration,
    quiet: Duration,
) -> HashMap<(String, String), usize> {
    let mut got: HashMap<(String, String), usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut total = 0;
    while total < want {
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(m)) => {
                *got.entry((m.topic.clone(), m.text().unwrap().to_owned()))
                    .or_default() += 1;
                total += 1;
            }
            Ok(None) => panic!("node stopped"),
            Err(_) => break,
        }
    }
    while let Ok(Some(m)) = tokio::time::timeout(quiet, sub.recv()).await {
        *got.entry((m.topic.clone(), m.text().unwrap().to_owned()))
            .or_default() += 1;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_deliver_exactly_once_to_topic_and_wildcard_subscribers() {
    let nodes = network(30).await;
    // 1..=9: the concrete topic; 10..=14: one-level wildcard; 15..=19:
    // everything under blocks/; 20: both the topic and blocks/** (still
    // once per message).
    let mut subs: Vec<(usize, &str, Subscription)> = Vec::new();
    let plan: Vec<(usize, &str)> = (1..=9)
        .map(|i| (i, "blocks/eu/shard-3"))
        .chain((10..=14).map(|i| (i, "blocks/*/shard-3")))
        .chain((15..=19).map(|i| (i, "blocks/**")))
        .chain([(20, "blocks/eu/shard-3"), (20, "blocks/**")])
        .collect();
    for (i, pattern) in &plan {
        subs.push((*i, pattern, nodes[*i].subscribe(pattern).await.unwrap()));
    }
    // The publishers have heard every subscription.
    for p in [25, 26, 27] {
        let h = nodes[p].clone();
        until(
            "announcements to reach the publishers",
            Duration::from_secs(30),
            || {
                let h = h.clone();
                async move {
                    let t = h.topics("blocks", 100).await.unwrap();
                    let subs = t
                        .topics
                        .iter()
                        .find(|i| i.topic == "blocks/eu/shard-3")
                        .map_or(0, |i| i.subscribers);
                    subs >= 10 && t.patterns.len() == 2
                }
            },
        )
        .await;
    }

    // Topic blocks/us/shard-3 and blocks/asia/x/y exist only from now on.
    let per_topic = 10;
    let mut published = Vec::new();
    for (p, topic) in [
        (25, "blocks/eu/shard-3"),
        (26, "blocks/us/shard-3"),
        (27, "blocks/asia/x/y"),
    ] {
        for k in 0..per_topic {
            let data = format!("{topic} #{k}");
            let r = nodes[p]
                .publish(topic, data.clone().into_bytes(), PublishOptions::default())
                .await
                .unwrap_or_else(|e| panic!("publish on {topic}: {e}"));
            assert!(!r.sent_on.is_empty(), "{r:?}");
            published.push((topic, data));
        }
    }
    let expected = |pattern: &str| -> Vec<(String, String)> {
        let pat = blackhole_pubsub::Pattern::new(pattern).unwrap();
        published
            .iter()
            .filter(|(t, _)| pat.matches(&blackhole_pubsub::Topic::new(*t).unwrap()))
            .map(|(t, d)| (t.to_string(), d.clone()))
            .collect()
    };
    let results = join_all(subs.iter_mut().map(|(i, pattern, sub)| {
        let want = expected(pattern);
        async move {
            let got = collect(
                sub,
                want.len(),
                Duration::from_secs(30),
                Duration::from_millis(500),
            )
            .await;
            (*i, pattern.to_string(), want, got)
        }
    }))
    .await;
    let mut problems = Vec::new();
    for (i, pattern, want, got) in results {
        for key in &want {
            match got.get(key).copied().unwrap_or(0) {
                1 => {}
                n => problems.push(format!("node {i} ({pattern}): {key:?} arrived {n} times")),
            }
        }
        for key in got.keys() {
            if !want.contains(key) {
                problems.push(format!("node {i} ({pattern}): unexpected {key:?}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems: {:#?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );

    // Topic discovery lists what was published, from any node, once the
    // publishers' next announcements went round.
    let h = nodes[3].clone();
    until(
        "published topics to be announced",
        Duration::from_secs(20),
        || {
            let h = h.clone();
            async move {
                let t = h.topics("blocks", 100).await.unwrap();
                let names: Vec<&str> = t.topics.iter().map(|i| i.topic.as_str()).collect();
                ["blocks/eu/shard-3", "blocks/us/shard-3", "blocks/asia/x/y"]
                    .iter()
                    .all(|want| names.contains(want))
            }
        },
    )
    .await;
    assert!(
        nodes[3]
            .topics("nothing", 100)
            .await
            .unwrap()
            .topics
            .is_empty()
    );
}

/// Two connected in-memory nodes, b subscribed to `topic`, a knowing it.
async fn pair(topic: &str) -> (Handle, Handle, Subscription) {
    let nodes = network(2).await;
    let (a, b) = (nodes[0].clone(), nodes[1].clone());
    let sub = b.subscribe(topic).await.unwrap();
    let a2 = a.clone();
    until(
        "b's subscription to reach a",
        Duration::from_secs(20),
        || {
            let a = a2.clone();
            async move {
                a.topics("", 10)
                    .await
                    .unwrap()
                    .topics
                    .iter()
                    .any(|t| t.subscribers > 0)
            }
        },
    )
    .await;
    (a, b, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_graylist_the_sender() {
    let (a, b, mut sub) = pair("checked").await;
    b.set_validator("checked", |m: &blackhole_pubsub::Message| {
        let ok = !m.data.starts_with(b"bad");
        async move { if ok { Verdict::Accept } else { Verdict::Reject } }
    })
    .await
    .unwrap();
    let graylist = b.config().pubsub.score.graylist_threshold;
    a.publish("checked", b"good-1".to_vec(), PublishOptions::default())
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.data, b"good-1");
    for k in 0..4 {
        a.publish(
            "checked",
            format!("bad-{k}").into_bytes(),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    }
    let (a_id, b2) = (a.peer_id(), b.clone());
    until(
        "a's score to fall below the graylist threshold",
        Duration::from_secs(10),
        || {
            let b = b2.clone();
            async move {
                b.pubsub_score(a_id)
                    .await
                    .unwrap()
                    .is_some_and(|s| s < graylist)
            }
        },
    )
    .await;
    // Graylisted: b ignores what a sends, valid or not.
    a.publish("checked", b"good-2".to_vec(), PublishOptions::default())
        .await
        .unwrap();
    let late = tokio::time::timeout(Duration::from_secs(2), sub.recv()).await;
    assert!(
        late.is_err(),
        "b still delivered {late:?} from a graylisted peer"
    );
    // Rejected until graylisted (then ignored before validation).
    let rejected =
        crate::support::metric(&b, "blackhole_pubsub_rejected_total{reason=\"validator\"}")
            .unwrap_or(0);
    assert!((3..=4).contains(&rejected), "rejected {rejected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_dropped_and_limits_hold() {
    let (a, b, mut sub) = pair("ttl").await;
    // Expires the moment it is published: b must drop it.
    let expired = PublishOptions {
        ttl: Some(Duration::ZERO),
        ..Default::default()
    };
    a.publish("ttl", b"stale".to_vec(), expired).await.unwrap();
    let fresh = PublishOptions {
        ttl: Some(Duration::from_secs(60)),
        priority: Priority::High,
    };
    a.publish("ttl", b"fresh".to_vec(), fresh).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.data, b"fresh", "the expired message was delivered");
    assert_eq!(m.priority, Priority::High);
    assert!(m.expires_ms.is_some());
    let metrics = b.metrics().encode().unwrap();
    assert!(
        metrics.contains("blackhole_pubsub_expired_total 1"),
        "expired not counted"
    );

    // Size limit: refused before anything is sent, with the numbers.
    let max = a.config().pubsub.max_message_size;
    let err = a
        .publish("ttl", vec![0u8; max + 1], PublishOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Publish(blackhole_pubsub::PublishError::TooLarge { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&max.to_string()), "{err}");
    // Exactly at the limit goes through.
    a.publish("ttl", vec![7u8; max], PublishOptions::default())
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.data.len(), max);
    // The same bytes again are a duplicate; bad topics are refused.
    let dup = a
        .publish("ttl", vec![7u8; max], PublishOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            dup,
            Error::Publish(blackhole_pubsub::PublishError::Duplicate { .. })
        ),
        "{dup}"
    );
    assert!(matches!(
        a.publish("a//b", vec![], PublishOptions::default()).await,
        Err(Error::Pubsub(_))
    ));
    assert!(matches!(a.subscribe("a/**/b").await, Err(Error::Pubsub(_))));
    // Nobody subscribes to this topic: a clear error, after no wait
    // (nobody announced it).
    let none = a
        .publish("nobody/here", b"x".to_vec(), PublishOptions::default())
        .await
        .unwrap_err();
    assert!(none.to_string().contains("no subscribers"), "{none}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_reached_nobody_can_be_repeated() {
    let nodes = network(2).await;
    let a = &nodes[0];
    let err = a
        .publish("lonely", b"x".to_vec(), PublishOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Publish(blackhole_pubsub::PublishError::NoSubscribers { .. })
        ),
        "{err}"
    );
    // Not a duplicate: nothing went out the first time.
    let again = a
        .publish("lonely", b"x".to_vec(), PublishOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            again,
            Error::Publish(blackhole_pubsub::PublishError::NoSubscribers { .. })
        ),
        "{again}"
    );
}

/// Whether `h` has heard an announcement of `pattern`.
async fn knows_pattern(h: &Handle, pattern: &str) -> bool {
    h.topics("", 10)
        .await
        .unwrap()
        .patterns
        .iter()
        .any(|(p, _)| p == pattern)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_later_hears_patterns_at_once_and_reaches_wildcard_subscribers() {
    // The default announcement interval (30 s): a joining node must not
    // have to wait for it. NAT traversal off: an address AutoNAT confirms
    // would make w announce again by chance, as a long-running node with
    // settled addresses does not.
    let config = |bootstrap: &[Multiaddr]| {
        let mut c = crate::support::mem_config(bootstrap);
        c.nat.enabled = false;
        c
    };
    let x = crate::support::start(config(&[])).await;
    let w = crate::support::start(config(&[mem_addr(&x).await])).await;
    assert_eq!(w.config().pubsub.announce.interval, Duration::from_secs(30));
    let mut sub = w.subscribe("news/**").await.unwrap();
    // w's announcement went out (x heard it): from now on w announces
    // again only after 30 s.
    let x2 = x.clone();
    until("x to hear w's pattern", Duration::from_secs(10), || {
        let x = x2.clone();
        async move { knows_pattern(&x, "news/**").await }
    })
    .await;

    // n joins through x and publishes as soon as it has heard the
    // pattern: from x's registry (hearsay about w), or from w's own if it
    // meets w first.
    let n = crate::support::start(config(&[mem_addr(&x).await])).await;
    let n2 = n.clone();
    until(
        "the newcomer to hear w's pattern (well within the 30 s interval)",
        Duration::from_secs(5),
        || {
            let n = n2.clone();
            async move { knows_pattern(&n, "news/**").await }
        },
    )
    .await;
    let r = n
        .publish("news/today", b"hello".to_vec(), PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(r.sent_on, vec!["_bh/p/news/**".to_owned()], "{r:?}");
    let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("w receives n's message")
        .unwrap();
    assert_eq!(
        (m.topic.as_str(), &m.data[..]),
        ("news/today", &b"hello"[..])
    );
    assert_eq!(m.source, Some(n.peer_id()));
}

/// The value of a counter without labels in `h`'s metrics.
fn counter(h: &Handle, name: &str) -> u64 {
    crate::support::metric(h, name).unwrap_or_else(|| panic!("no {name} in the metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_expires_during_validation_is_neither_delivered_nor_forwarded() {
    // a - b - c in a line: no DHT, no peer exchange, no NAT traversal, so
    // a and c only know b.
    let config = |bootstrap: &[Multiaddr]| {
        let mut c = crate::support::mem_config(bootstrap);
        c.overlay.enabled = false;
        c.discovery.peer_exchange.enabled = false;
        c.nat.enabled = false;
        c
    };
    let b = crate::support::start(config(&[])).await;
    let b_addr = mem_addr(&b).await;
    let a = crate::support::start(config(std::slice::from_ref(&b_addr))).await;
    let c = crate::support::start(config(&[b_addr])).await;
    let mut sub_b = b.subscribe("line").await.unwrap();
    let mut sub_c = c.subscribe("line").await.unwrap();
    // b holds messages starting with "slow" longer than their TTL (and
    // shorter than validation_timeout), and says when it let one go.
    let ttl = Duration::from_millis(500);
    let hold = Duration::from_millis(1500);
    assert!(hold < b.config().pubsub.validation_timeout);
    let (held_tx, mut held) = tokio::sync::mpsc::channel(4);
    b.set_validator("line", move |m: &blackhole_pubsub::Message| {
        let slow = m.data.starts_with(b"slow");
        let held_tx = held_tx.clone();
        async move {
            if slow {
                tokio::time::sleep(hold).await;
                let _ = held_tx.send(()).await;
            }
            Verdict::Accept
        }
    })
    .await
    .unwrap();
    // c is in b's mesh (b forwards to it), and a has heard both
    // subscriptions (so its publish goes to b, its only peer).
    let (b2, c_id) = (b.clone(), c.peer_id());
    until("c in b's mesh for line", Duration::from_secs(20), || {
        let b = b2.clone();
        async move { b.mesh("line").await.unwrap().mesh.contains(&c_id) }
    })
    .await;
    let a2 = a.clone();
    until(
        "a to hear of line's subscribers",
        Duration::from_secs(20),
        || {
            let a = a2.clone();
            async move {
                a.topics("line", 10)
                    .await
                    .unwrap()
                    .topics
                    .iter()
                    .any(|t| t.topic == "line" && t.subscribers == 2)
            }
        },
    )
    .await;

    let short = PublishOptions {
        ttl: Some(ttl),
        ..Default::default()
    };
    let r = a.publish("line", b"slow".to_vec(), short).await.unwrap();
    assert_eq!(r.sent_on, vec!["line".to_owned()]);
    tokio::time::timeout(Duration::from_secs(10), held.recv())
        .await
        .expect("b's validator ran")
        .unwrap();
    // b saw it expire after validation (not on arrival: it was fresh then).
    let b3 = b.clone();
    until(
        "b to drop the message that expired while it was validated",
        Duration::from_secs(5),
        || {
            let b = b3.clone();
            async move { counter(&b, "blackhole_pubsub_expired_total") == 1 }
        },
    )
    .await;

    // The control: a message with a long TTL goes a - b - c. Had b
    // forwarded the expired one, it would have reached c first, on the
    // same stream.
    let long = PublishOptions {
        ttl: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    a.publish("line", b"fresh".to_vec(), long).await.unwrap();
    for (name, sub) in [("b", &mut sub_b), ("c", &mut sub_c)] {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .unwrap_or_else(|_| panic!("{name} receives the fresh message"))
            .unwrap();
        assert_eq!(m.data, b"fresh", "{name} got {:?} first", m.text());
    }
    assert_eq!(
        counter(&c, "blackhole_pubsub_expired_total"),
        0,
        "b forwarded the expired message to c"
    );
    // It was a line: c heard a's messages only through b.
    let a_peers = a.peers().await.unwrap();
    assert!(a_peers.iter().all(|p| p.peer_id != c_id), "a dialed c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_that_looks_like_an_envelope_arrives_as_published() {
    let (a, _b, mut sub) = pair("raw").await;
    // Envelope bytes: magic 0xB7 'B' 'H', version 1, flags, 8 bytes of
    // expiry, the topic (length, bytes), then the data.
    let envelope = |topic: &str, data: &[u8]| {
        let mut e = vec![0xB7, b'B', b'H', 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        e.push(topic.len() as u8);
        e.extend_from_slice(topic.as_bytes());
        e.extend_from_slice(data);
        e
    };
    let payloads = [
        // An envelope for this topic (was unwrapped to "inner").
        envelope("raw", b"inner"),
        // An envelope for another topic (was rejected, the sender
        // penalised).
        envelope("other", b"x"),
        // The magic and then garbage.
        vec![0xB7, b'B', b'H', 9, 9, 9],
        b"plain".to_vec(),
    ];
    for p in &payloads {
        let r = a
            .publish("raw", p.clone(), PublishOptions::default())
            .await
            .unwrap();
        assert_eq!(r.sent_on, vec!["raw".to_owned()]);
    }
    for want in &payloads {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .expect("the subscriber receives every payload")
            .unwrap();
        assert_eq!(&m.data, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_withdraws_from_other_nodes_listings() {
    // The default announcement interval (30 s), so announcements expire
    // only after 90 s: what disappears sooner was withdrawn.
    let a = crate::support::start(crate::support::mem_config(&[])).await;
    let b = crate::support::start(crate::support::mem_config(&[mem_addr(&a).await])).await;
    let ttl = b.config().pubsub.announce.interval * 3;
    assert!(ttl >= Duration::from_secs(90));
    let topic = b.subscribe("gone/topic").await.unwrap();
    let pattern = b.subscribe("gone/**").await.unwrap();
    // What a lists under gone/: (topics with subscribers, patterns).
    let listing = |a: Handle| async move {
        let t = a.topics("gone", 10).await.unwrap();
        let topics: Vec<String> = t
            .topics
            .into_iter()
            .filter(|i| i.subscribers > 0)
            .map(|i| i.topic)
            .collect();
        let patterns: Vec<String> = t.patterns.into_iter().map(|(p, _)| p).collect();
        (topics, patterns)
    };
    let want = |topics: &[&str], patterns: &[&str]| {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        (owned(topics), owned(patterns))
    };
    let wait = |what: &'static str, expected: (Vec<String>, Vec<String>)| {
        let a = a.clone();
        async move {
            until(what, Duration::from_secs(10), || {
                let (a, expected) = (a.clone(), expected.clone());
                async move { listing(a).await == expected }
            })
            .await
        }
    };
    wait(
        "a to list b's topic and pattern",
        want(&["gone/topic"], &["gone/**"]),
    )
    .await;
    // Dropping a subscription unsubscribes; the next announcement (on
    // change) no longer names the pattern.
    drop(pattern);
    wait("a to drop b's pattern", want(&["gone/topic"], &[])).await;
    // The last one: b sends one empty announcement, which withdraws all.
    drop(topic);
    wait("a to drop b's topic", want(&[], &[])).await;
    assert!(b.topics("", 10).await.unwrap().subscriptions.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_whose_http_client_went_away_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = crate::support::mem_config(&[]);
    config.api.enabled = true;
    config.api.listen = "127.0.0.1:0".parse().unwrap();
    let h = crate::support::start(config).await;
    let api = h.api_addr().expect("the API listens");
    let subscriptions = |h: Handle| async move { h.topics("", 1).await.unwrap().subscriptions };

    let mut stream = tokio::net::TcpStream::connect(api).await.unwrap();
    stream
        .write_all(b"GET /v1/pubsub/subscribe?pattern=api/** HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    // The response head: the subscription exists once it is sent.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    assert_eq!(subscriptions(h.clone()).await, ["api/**"]);

    // The client goes away. Within well under the stream's 15 s
    // keep-alive (whose write would also notice), the node unsubscribes.
    assert!(Duration::from_secs(5) < blackhole_node::api::SUBSCRIBE_KEEPALIVE);
    drop(stream);
    let h2 = h.clone();
    until(
        "the node to drop the subscription",
        Duration::from_secs(5),
        || {
            let h = h2.clone();
            async move { subscriptions(h).await.is_empty() }
        },
    )
    .await;
}
