//! RPC between in-memory nodes: typed round trips, errors, deadlines and
//! their propagation across three nodes, retries, circuit breakers, the
//! response cache, streamed responses with backpressure, and bad input on
//! raw streams.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use blackhole_node::{Config, Handle};
use blackhole_rpc::{CallError, CallOptions, Code, Method, RpcError};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};

use crate::support::mem_addr;

fn mem_config() -> Config {
    let mut c = crate::support::mem_config(&[]);
    c.overlay.enabled = false;
    c.pubsub.announce.interval = Duration::from_secs(2);
    c
}

/// `n` nodes, each connected to the next.
async fn chain(n: usize, tweak: impl Fn(&mut Config)) -> Vec<Handle> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        let mut c = mem_config();
        tweak(&mut c);
        nodes.push(crate::support::start(c).await);
    }
    for i in 1..n {
        nodes[i].dial(mem_addr(&nodes[i - 1]).await).await.unwrap();
        connected_both_ways(&nodes[i - 1], &nodes[i]).await;
    }
    nodes
}

/// Waits until `listener` too lists `dialer` (the dial returns when the
/// dialer sees the connection; the other side may take a moment longer).
async fn connected_both_ways(listener: &Handle, dialer: &Handle) {
    let mut events = listener.events();
    if listener
        .peers()
        .await
        .unwrap()
        .iter()
        .any(|p| p.peer_id == dialer.peer_id())
    {
        return;
    }
    let want = dialer.peer_id();
    crate::support::wait_event(&mut events, Duration::from_secs(10), |e| match e {
        blackhole_node::Event::ConnectionEstablished { peer_id, .. } if *peer_id == want => {
            Some(())
        }
        _ => None,
    })
    .await;
}

struct Add;
impl Method for Add {
    const NAME: &'static str = "test/add";
    type Request = (i64, i64);
    type Response = i64;
}

struct Sleep;
impl Method for Sleep {
    const NAME: &'static str = "test/sleep";
    type Request = u64;
    type Response = u64;
}

struct Relay;
impl Method for Relay {
    const NAME: &'static str = "test/relay";
    type Request = (blackhole_node::PeerId, u64);
    type Response = u64;
}

struct Flaky;
impl Method for Flaky {
    const NAME: &'static str = "test/flaky";
    const IDEMPOTENT: bool = true;
    type Request = ();
    type Response = usize;
}

struct Counted;
impl Method for Counted {
    const NAME: &'static str = "test/counted";
    const CACHE_TTL: Option<Duration> = Some(Duration::from_secs(60));
    type Request = String;
    type Response = usize;
}

struct Numbers;
impl Method for Numbers {
    const NAME: &'static str = "test/numbers";
    type Request = usize;
    type Response = Vec<u8>;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_errors_and_builtins() {
    let nodes = chain(2, |_| {}).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    b.rpc()
        .unwrap()
        .register::<Add, _, _>(|_, (x, y)| async move {
            x.checked_add(y)
                .ok_or_else(|| RpcError::new(Code::Application(100), "overflow"))
        });
    let rpc = a.rpc().unwrap();
    assert_eq!(
        rpc.call::<Add>(b.peer_id(), &(2, 3), CallOptions::default())
            .await
            .unwrap(),
        5
    );
    match rpc
        .call::<Add>(b.peer_id(), &(i64::MAX, 1), CallOptions::default())
        .await
    {
        Err(CallError::Remote(e, _)) => {
            assert_eq!(e.code, Code::Application(100));
            assert_eq!(e.message, "overflow");
            assert!(!e.retryable);
        }
        other => panic!("{other:?}"),
    }
    // Unknown method, and a request that does not parse.
    match rpc
        .call_raw(
            b.peer_id(),
            "test/none",
            b"{}".to_vec(),
            CallOptions::default(),
        )
        .await
    {
        Err(CallError::Remote(e, _)) => assert_eq!(e.code, Code::NotFound),
        other => panic!("{other:?}"),
    }
    match rpc
        .call_raw(
            b.peer_id(),
            Add::NAME,
            b"not json".to_vec(),
            CallOptions::default(),
        )
        .await
    {
        Err(CallError::Remote(e, _)) => assert_eq!(e.code, Code::BadRequest),
        other => panic!("{other:?}"),
    }
    // Built-ins; a large payload goes compressed and comes back whole.
    let big = serde_json::json!({ "blob": "x".repeat(200_000) });
    let echoed = rpc
        .call::<blackhole_node::rpc::Echo>(b.peer_id(), &big, CallOptions::default())
        .await
        .unwrap();
    assert_eq!(echoed, big);
    let info = rpc
        .call::<blackhole_node::rpc::Info>(
            b.peer_id(),
            &serde_json::Value::Null,
            CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(info.peer_id, b.peer_id());
    assert_eq!(info.caller, a.peer_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_expire_and_propagate_across_three_nodes() {
    let nodes = chain(3, |_| {}).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    // a and c are not connected: b relays.
    let seen_budget = Arc::new(std::sync::Mutex::new(None));
    let seen = seen_budget.clone();
    c.rpc().unwrap().register::<Sleep, _, _>(move |ctx, ms| {
        *seen.lock().unwrap() = Some(ctx.deadline.saturating_duration_since(Instant::now()));
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        }
    });
    let b_rpc = b.rpc().unwrap().clone();
    b.rpc()
        .unwrap()
        .register::<Relay, _, _>(move |_, (to, ms)| {
            let rpc = b_rpc.clone();
            // No deadline named: the one inherited from a's call applies.
            async move {
                rpc.call::<Sleep>(to, &ms, CallOptions::default())
                    .await
                    .map_err(|e| RpcError::new(Code::Unavailable, e.to_string()))
            }
        });
    let rpc = a.rpc().unwrap();
    // Fast enough: fine.
    let ok = rpc
        .call::<Relay>(
            b.peer_id(),
            &(c.peer_id(), 10),
            CallOptions {
                deadline: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ok, 10);
    // Too slow: a gives up at its deadline, and c was given no more.
    let t = Instant::now();
    let err = rpc
        .call::<Relay>(
            b.peer_id(),
            &(c.peer_id(), 5_000),
            CallOptions {
                deadline: Some(Duration::from_millis(400)),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        matches!(err, CallError::Timeout(_) | CallError::Remote(..)),
        "{err}"
    );
    let budget = seen_budget.lock().unwrap().expect("c was called");
    assert!(
        budget <= Duration::from_millis(400),
        "c was given {budget:?}"
    );
    // Direct deadline expiry.
    b.rpc()
        .unwrap()
        .register::<Sleep, _, _>(|_, ms| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        });
    let t = Instant::now();
    let e = rpc
        .call::<Sleep>(
            b.peer_id(),
            &10_000,
            CallOptions {
                deadline: Some(Duration::from_millis(200)),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::Timeout(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_breakers_and_cache() {
    let nodes = chain(2, |c| {
        c.rpc.breaker.failures_to_open = 3;
        c.rpc.breaker.open_for = Duration::from_millis(500);
        c.rpc.retry.max_attempts = 4;
        c.rpc.retry.base = Duration::from_millis(10);
    })
    .await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let calls = Arc::new(AtomicUsize::new(0));
    let n = calls.clone();
    // Fails twice (retryable), then answers.
    b.rpc().unwrap().register::<Flaky, _, _>(move |_, ()| {
        let k = n.fetch_add(1, Ordering::SeqCst);
        async move {
            if k % 3 < 2 {
                Err(RpcError::new(Code::Overloaded, "busy"))
            } else {
                Ok(k)
            }
        }
    });
    let rpc = a.rpc().unwrap();
    assert_eq!(
        rpc.call::<Flaky>(b.peer_id(), &(), CallOptions::default())
            .await
            .unwrap(),
        2
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3, "two retries");
    // Not idempotent: no retry.
    let e = rpc
        .call::<Flaky>(
            b.peer_id(),
            &(),
            CallOptions {
                idempotent: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::Remote(..)), "{e}");

    // Cache: the second identical call is not served again.
    let served = Arc::new(AtomicUsize::new(0));
    let s = served.clone();
    b.rpc().unwrap().register::<Counted, _, _>(move |_, _| {
        let k = s.fetch_add(1, Ordering::SeqCst);
        async move { Ok(k) }
    });
    let first = rpc
        .call::<Counted>(b.peer_id(), &"q".into(), CallOptions::default())
        .await
        .unwrap();
    let second = rpc
        .call::<Counted>(b.peer_id(), &"q".into(), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(served.load(Ordering::SeqCst), 1);
    rpc.call::<Counted>(b.peer_id(), &"other".into(), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(served.load(Ordering::SeqCst), 2);

    // Breaker: timeouts count against the peer; three open it.
    let sleeps = Arc::new(AtomicUsize::new(0));
    let started = sleeps.clone();
    b.rpc().unwrap().register::<Sleep, _, _>(move |_, ms| {
        started.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        }
    });
    let quick = || CallOptions {
        deadline: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    for _ in 0..3 {
        let e = rpc
            .call::<Sleep>(b.peer_id(), &1_000, quick())
            .await
            .unwrap_err();
        assert!(matches!(e, CallError::Timeout(_)), "{e}");
    }
    assert_eq!(
        rpc.breaker_state(&b.peer_id()),
        blackhole_rpc::policy::BreakerState::Open
    );
    let before = sleeps.load(Ordering::SeqCst);
    let e = rpc
        .call::<Sleep>(b.peer_id(), &1, quick())
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::BreakerOpen { .. }), "{e}");
    assert_eq!(
        sleeps.load(Ordering::SeqCst),
        before,
        "an open breaker fails without calling the peer"
    );
    // After open_for, one probe; it succeeds and closes the breaker.
    crate::support::until(
        "the breaker half-opens",
        Duration::from_secs(10),
        || async {
            rpc.breaker_state(&b.peer_id()) == blackhole_rpc::policy::BreakerState::HalfOpen
        },
    )
    .await;
    assert_eq!(
        rpc.call::<Sleep>(b.peer_id(), &1, CallOptions::default())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        rpc.breaker_state(&b.peer_id()),
        blackhole_rpc::policy::BreakerState::Closed
    );
    let metrics = a.metrics().encode().unwrap();
    let line = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(
        line("blackhole_rpc_retries_total"),
        "blackhole_rpc_retries_total 2"
    );
    assert!(
        metrics.contains("blackhole_rpc_cache_hits_total 1"),
        "cache hit not counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_responses_with_backpressure() {
    let nodes = chain(2, |_| {}).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let produced = Arc::new(AtomicUsize::new(0));
    let p = produced.clone();
    b.rpc()
        .unwrap()
        .register_stream::<Numbers, _, _>(move |_, count| {
            let p = p.clone();
            futures::stream::iter(0..count).map(move |i| {
                p.fetch_add(1, Ordering::SeqCst);
                // Incompressible (compression would hide the bytes in flight).
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
                let mut item: Vec<u8> = (0..64 * 1024)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                item[0] = (i % 251) as u8;
                Ok(item)
            })
        });
    let rpc = a.rpc().unwrap();
    let payload = serde_json::to_vec(&200usize).unwrap();
    let mut items = rpc
        .call_stream_raw(
            b.peer_id(),
            Numbers::NAME,
            payload,
            Some(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let first = items.next().await.unwrap().unwrap();
    let first: Vec<u8> = serde_json::from_slice(&first).unwrap();
    assert_eq!(first.len(), 64 * 1024);
    // We stop reading: the handler stops well short of 200 items (12.5 MiB)
    // once the stream's window is full. Nothing reports that it blocked, so
    // wait (bounded) until its count has not moved for 300 ms.
    let mut last = (produced.load(Ordering::SeqCst), Instant::now());
    crate::support::until("the handler to block", Duration::from_secs(20), || {
        let now = produced.load(Ordering::SeqCst);
        let still = if now == last.0 {
            last.1.elapsed() >= Duration::from_millis(300)
        } else {
            last = (now, Instant::now());
            false
        };
        async move { still }
    })
    .await;
    let while_paused = produced.load(Ordering::SeqCst);
    assert!(
        while_paused < 100,
        "produced {while_paused} items without a reader"
    );
    let mut got = 1;
    while let Some(item) = items.next().await {
        let v: Vec<u8> = serde_json::from_slice(&item.unwrap()).unwrap();
        assert_eq!(v[0], (got % 251) as u8);
        got += 1;
    }
    assert_eq!(got, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_frames_and_silent_callers_end_cleanly() {
    let nodes = chain(2, |c| c.rpc.request_timeout = Duration::from_millis(300)).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut control = a.stream_control();
    let read_all = |mut s: libp2p_swarm::Stream| async move {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("the server closes the stream")
            .ok();
        buf
    };
    // An oversized length prefix: an error answer, no allocation, closed.
    let mut s = control
        .open_stream(b.peer_id(), blackhole_rpc::PROTOCOL)
        .await
        .unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 0x0f]).await.unwrap();
    s.flush().await.unwrap();
    let answer = read_all(s).await;
    let frame = blackhole_rpc::wire::read_frame(&mut answer.as_slice(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(frame.kind, blackhole_rpc::wire::Kind::Error);
    assert!(frame.error_body().unwrap().message.contains("larger than"));
    // Garbage.
    let mut s = control
        .open_stream(b.peer_id(), blackhole_rpc::PROTOCOL)
        .await
        .unwrap();
    s.write_all(b"\x05hello").await.unwrap();
    s.flush().await.unwrap();
    assert!(
        !read_all(s).await.is_empty(),
        "garbage gets an error answer"
    );
    // A truncated frame, then silence: closed after request_timeout.
    let mut s = control
        .open_stream(b.peer_id(), blackhole_rpc::PROTOCOL)
        .await
        .unwrap();
    s.write_all(&[0x40, 1, 0]).await.unwrap();
    s.flush().await.unwrap();
    let t = Instant::now();
    let _ = read_all(s).await;
    assert!(t.elapsed() < Duration::from_secs(3));
    // The server is fine and holds nothing.
    let v = a
        .rpc()
        .unwrap()
        .call::<blackhole_node::rpc::Echo>(
            b.peer_id(),
            &serde_json::json!(1),
            CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(v, serde_json::json!(1));
    let metrics = b.metrics().encode().unwrap();
    assert!(
        metrics.contains("blackhole_rpc_inbound_in_flight 0"),
        "a call is still held"
    );
    assert!(metrics.contains("outcome=\"bad_request\""));
    assert!(metrics.contains("outcome=\"request_timeout\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicast_broadcast_and_proxy() {
    // a - b - c, with d also connected to b; only b proxies. Group
    // requests run at most two calls at once.
    let nodes = chain(3, |c| c.rpc.max_group_concurrency = 2).await;
    let mut dc = mem_config();
    dc.rpc.max_group_concurrency = 2;
    let d = crate::support::start(dc).await;
    d.dial(mem_addr(&nodes[1]).await).await.unwrap();
    connected_both_ways(&nodes[1], &d).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    for (i, h) in [b, c, &d].iter().enumerate() {
        // c is slow: multicast for 2 answers must not wait for it.
        let delay = if i == 1 { 3_000 } else { 0 };
        h.rpc()
            .unwrap()
            .register::<Sleep, _, _>(move |_, _| async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                Ok(delay)
            });
    }
    // b multicasts to its three neighbours and wants one answer: a has no
    // Sleep (an error), d answers at once, c only after 3 s.
    let rpc = b.rpc().unwrap();
    let payload = serde_json::to_vec(&0u64).unwrap();
    let t = Instant::now();
    let m = rpc
        .multicast(
            &[a.peer_id(), c.peer_id(), d.peer_id()],
            Sleep::NAME,
            payload.clone(),
            1,
            CallOptions::default(),
        )
        .await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "waited for the slow peer"
    );
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].0, d.peer_id());
    assert!(m.failures.iter().all(|(p, _)| *p == a.peer_id()));
    assert_eq!(m.answers.len() + m.failures.len() + m.cancelled, 3);
    // Two at once: d answers before a third call starts, so a (listed
    // last) is never called.
    let not_found = |h: &Handle| {
        h.metrics()
            .encode()
            .unwrap()
            .lines()
            .find(|l| l.contains("outcome=\"not_found\"") && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = not_found(a);
    let m = rpc
        .multicast(
            &[d.peer_id(), c.peer_id(), a.peer_id()],
            Sleep::NAME,
            payload.clone(),
            1,
            CallOptions::default(),
        )
        .await;
    assert_eq!(m.answers.len(), 1);
    assert!(m.failures.is_empty(), "{:?}", m.failures);
    assert_eq!(m.cancelled, 2, "c cancelled, a never started");
    assert_eq!(not_found(a), before, "a was called");
    // Broadcast: every connected peer, every outcome.
    let all = b
        .rpc_broadcast("_bh/echo", b"7".to_vec(), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(all.answers.len(), 3, "{:?}", all.failures);
    assert!(all.answers.iter().all(|(_, v)| v == b"7"));

    // Broadcast to a pubsub topic's subscribers only.
    let mut topics = Vec::new();
    for h in [a, &d] {
        topics.push(h.subscribe("rpc/group").await.unwrap());
    }
    let want = [a.peer_id(), d.peer_id()];
    crate::support::until(
        "b to see both subscriptions",
        Duration::from_secs(10),
        || async {
            b.topics("rpc", 10)
                .await
                .unwrap()
                .topics
                .iter()
                .any(|t| t.topic == "rpc/group" && t.subscribers == 2)
        },
    )
    .await;
    let group = b
        .rpc_topic_broadcast(
            "rpc/group",
            "_bh/echo",
            b"8".to_vec(),
            CallOptions::default(),
        )
        .await
        .unwrap();
    let mut got: Vec<_> = group.answers.iter().map(|(p, _)| *p).collect();
    got.sort();
    let mut want = want.to_vec();
    want.sort();
    assert_eq!(got, want, "exactly the subscribers answered");
    drop(topics);

    // Proxy: a reaches c through b only when b consents.
    let err = a
        .rpc()
        .unwrap()
        .call_via(
            b.peer_id(),
            c.peer_id(),
            "_bh/echo",
            b"1".to_vec(),
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not proxy"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consenting_proxy_forwards_within_the_deadline() {
    let nodes = chain(3, |c| {
        c.rpc.proxy = true;
        c.rpc.max_proxied_per_peer = 1;
    })
    .await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let rpc = a.rpc().unwrap();
    let v = rpc
        .call_via(
            b.peer_id(),
            c.peer_id(),
            "_bh/info",
            b"null".to_vec(),
            CallOptions::default(),
        )
        .await
        .unwrap();
    let info: blackhole_node::rpc::InfoResponse = serde_json::from_slice(&v).unwrap();
    assert_eq!(info.peer_id, c.peer_id());
    assert_eq!(info.caller, b.peer_id(), "c sees the proxy as its caller");
    // The caller's deadline covers both hops.
    c.rpc()
        .unwrap()
        .register::<Sleep, _, _>(|_, ms| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        });
    let t = Instant::now();
    let e = rpc
        .call_via(
            b.peer_id(),
            c.peer_id(),
            Sleep::NAME,
            b"5000".to_vec(),
            CallOptions {
                deadline: Some(Duration::from_millis(300)),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::Timeout(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    // One proxied call at a time for a: while a slow one runs, the next
    // is refused. First, b ends the call a gave up on (it holds a's slot
    // until it sees the reset or its own deadline, a moment after a's).
    crate::support::until("b frees a's proxy slot", Duration::from_secs(5), || async {
        rpc.call_via(
            b.peer_id(),
            c.peer_id(),
            "_bh/echo",
            b"3".to_vec(),
            CallOptions::default(),
        )
        .await
        .is_ok()
    })
    .await;
    // c says when the slow call has reached it (through b's one slot).
    let started = Arc::new(tokio::sync::Notify::new());
    let s2 = started.clone();
    c.rpc().unwrap().register::<Sleep, _, _>(move |_, ms| {
        s2.notify_one();
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        }
    });
    let slow = {
        let (rpc, b, c) = (rpc.clone(), b.peer_id(), c.peer_id());
        tokio::spawn(async move {
            rpc.call_via(b, c, Sleep::NAME, b"3000".to_vec(), CallOptions::default())
                .await
        })
    };
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the slow proxied call reaches c");
    match rpc
        .call_via(
            b.peer_id(),
            c.peer_id(),
            "_bh/echo",
            b"2".to_vec(),
            CallOptions::default(),
        )
        .await
    {
        Err(CallError::Remote(e, _)) => assert!(e.message.contains("for this peer"), "{e}"),
        other => panic!("a's second proxied call: {:?}", other.map(|v| v.len())),
    }
    assert_eq!(slow.await.unwrap().unwrap(), b"3000");
    // Garbage proxy requests are refused, not forwarded.
    match rpc
        .call_raw(
            b.peer_id(),
            blackhole_rpc::PROXY_METHOD,
            vec![200, 1, 2],
            CallOptions::default(),
        )
        .await
    {
        Err(CallError::Remote(e, _)) => assert_eq!(e.code, Code::BadRequest),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_streams_over_real_tcp_and_quic() {
    for (listen, needle) in [
        ("/ip4/127.0.0.1/tcp/0", "/tcp/"),
        ("/ip4/127.0.0.1/udp/0/quic-v1", "quic"),
    ] {
        // a - b - c over the transport; b proxies.
        let a = crate::support::start(crate::support::config(&[listen])).await;
        let mut bc = crate::support::config(&[listen]);
        bc.rpc.proxy = true;
        let b = crate::support::start(bc).await;
        let c = crate::support::start(crate::support::config(&[listen])).await;
        a.dial(crate::support::addr(&b, needle).await)
            .await
            .unwrap();
        connected_both_ways(&b, &a).await;
        c.dial(crate::support::addr(&b, needle).await)
            .await
            .unwrap();
        connected_both_ways(&b, &c).await;
        b.rpc()
            .unwrap()
            .register_stream::<Numbers, _, _>(|_, count| {
                futures::stream::iter(0..count).map(|i| Ok(vec![i as u8; 1024]))
            });
        let rpc = a.rpc().unwrap();
        let big = serde_json::json!("y".repeat(1 << 20));
        let echoed = rpc
            .call::<blackhole_node::rpc::Echo>(b.peer_id(), &big, CallOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{needle}: {e}"));
        assert_eq!(echoed, big, "{needle}");
        let items: Vec<_> = rpc
            .call_stream_raw(b.peer_id(), Numbers::NAME, b"50".to_vec(), None)
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(items.len(), 50, "{needle}");
        assert!(items.iter().all(Result::is_ok), "{needle}");
        // Group requests and a proxied call.
        let all = b
            .rpc_broadcast("_bh/echo", b"5".to_vec(), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(all.answers.len(), 2, "{needle}: {:?}", all.failures);
        let v = rpc
            .call_via(
                b.peer_id(),
                c.peer_id(),
                "_bh/info",
                b"null".to_vec(),
                CallOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{needle}: {e}"));
        let info: blackhole_node::rpc::InfoResponse = serde_json::from_slice(&v).unwrap();
        assert_eq!(info.peer_id, c.peer_id(), "{needle}");
        for h in [&a, &c] {
            let peers = h.peers().await.unwrap();
            assert!(
                peers.iter().all(|p| p
                    .connections
                    .iter()
                    .all(|c| c.remote_addr.to_string().contains(needle))),
                "the calls ran over {needle}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_streams_carry_bulk_data_both_ways() {
    let nodes = chain(2, |_| {}).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    // b echoes every byte back, reading and writing at once.
    b.rpc()
        .unwrap()
        .register_bytes("test/bulk-echo", |_, header, stream| async move {
            assert_eq!(header, b"hello");
            let (mut r, mut w) = stream.split();
            let _ = futures::io::copy(&mut r, &mut w).await;
            let _ = w.close().await;
        });
    let stream = a
        .rpc()
        .unwrap()
        .open_bytes(b.peer_id(), "test/bulk-echo", b"hello".to_vec(), None)
        .await
        .unwrap();
    let (mut r, mut w) = stream.split();
    let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let sent = data.clone();
    let writer = async move {
        w.write_all(&sent).await.unwrap();
        w.close().await.unwrap();
    };
    let reader = async move {
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = tokio::time::timeout(
        Duration::from_secs(30),
        futures::future::join(writer, reader),
    )
    .await
    .expect("bulk echo finishes");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "bytes came back changed");
    // An unknown byte-stream method is refused at the opening.
    match a
        .rpc()
        .unwrap()
        .open_bytes(b.peer_id(), "test/none", Vec::new(), None)
        .await
    {
        Err(CallError::Remote(e, _)) => assert_eq!(e.code, Code::NotFound),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// A call to a peer we have no address of looks it up in the DHT and dials
/// it: A and C know only B (a DHT server); C joins after A has bootstrapped
/// and A is a DHT client, so nothing tells A about C but a lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_an_unknown_peer_finds_it_through_the_dht() {
    let b = crate::support::start(crate::support::mem_config(&[])).await;
    let b_addr = mem_addr(&b).await;
    let mut ca = crate::support::mem_config(std::slice::from_ref(&b_addr));
    ca.overlay.mode = blackhole_overlay::Mode::Client;
    ca.discovery.peer_exchange.enabled = false;
    let a = crate::support::start(ca).await;
    connected_both_ways(&b, &a).await;
    let mut cc = crate::support::mem_config(std::slice::from_ref(&b_addr));
    cc.discovery.peer_exchange.enabled = false;
    let c = crate::support::start(cc).await;
    connected_both_ways(&b, &c).await;
    // B's routing table has C once C's identify reached it.
    crate::support::until("B knows C in the DHT", Duration::from_secs(20), || async {
        matches!(
            b.dht(blackhole_node::DhtCommand::find_peer(c.peer_id()))
                .await,
            Ok(blackhole_node::dht::Reply::Peer { found: true, .. })
        )
    })
    .await;
    assert!(
        !a.peers()
            .await
            .unwrap()
            .iter()
            .any(|p| p.peer_id == c.peer_id()),
        "A must not be connected to C yet"
    );
    let reply = a
        .rpc()
        .unwrap()
        .call_raw(
            c.peer_id(),
            "_bh/echo",
            b"\"through the DHT\"".to_vec(),
            CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(reply, b"\"through the DHT\"".to_vec());
    for h in [a, b, c] {
        h.shutdown().await;
    }
}

/// Opens a raw RPC stream to `to` and sends a length prefix of 1 MiB and
/// nothing else: a request that stalls while it holds the server's slots.
async fn stalled_request(from: &Handle, to: &Handle) -> libp2p_swarm::Stream {
    let mut s = from
        .stream_control()
        .open_stream(to.peer_id(), blackhole_rpc::PROTOCOL)
        .await
        .unwrap();
    s.write_all(&[0x80, 0x80, 0x40]).await.unwrap();
    s.flush().await.unwrap();
    s
}

fn remote_code(e: &CallError) -> Option<Code> {
    match e {
        CallError::Remote(r, _) => Some(r.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_before_reading_and_callers_see_why() {
    // b (in the middle) serves 3 calls per peer and 5 in all.
    let nodes = chain(3, |c| {
        c.rpc.max_inbound_per_peer = 3;
        c.rpc.max_inbound_total = 5;
        c.rpc.request_timeout = Duration::from_secs(30);
    })
    .await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let echo = |from: &Handle, to: &Handle| {
        let (rpc, to) = (from.rpc().unwrap().clone(), to.peer_id());
        async move {
            rpc.call::<blackhole_node::rpc::Echo>(
                to,
                &serde_json::json!("hi"),
                CallOptions {
                    deadline: Some(Duration::from_secs(5)),
                    idempotent: Some(false),
                    ..Default::default()
                },
            )
            .await
        }
    };
    // a's three stalled requests take all of a's slots at b: a's call is
    // refused at once (not after b's 30 s request timeout).
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(stalled_request(a, b).await);
    }
    let b_rpc = b.rpc().unwrap().clone();
    let (a_id, c_id) = (a.peer_id(), c.peer_id());
    crate::support::until(
        "b holds a's three stalled requests",
        Duration::from_secs(5),
        || async { b_rpc.inbound_from(&a_id) == 3 },
    )
    .await;
    let e = echo(a, b).await.unwrap_err();
    assert!(
        e.to_string().contains("3 calls in progress for this peer"),
        "{e}"
    );
    // c still has room of its own, until the total of 5 is reached.
    echo(c, b).await.expect("c is under its own limit");
    held.push(stalled_request(c, b).await);
    held.push(stalled_request(c, b).await);
    crate::support::until(
        "b holds five stalled requests",
        Duration::from_secs(5),
        || async { b_rpc.inbound_from(&c_id) == 2 },
    )
    .await;
    let e = echo(c, b).await.unwrap_err();
    assert!(e.to_string().contains("5 calls in progress"), "{e}");
    // The callers give up their stalled requests: the slots come back.
    drop(held);
    crate::support::until(
        "the slots are released",
        Duration::from_secs(10),
        || async { echo(a, b).await.is_ok() && echo(c, b).await.is_ok() },
    )
    .await;
    let metrics = b.metrics().encode().unwrap();
    assert!(
        metrics.contains("blackhole_rpc_inbound_in_flight 0"),
        "a call is still held"
    );

    // A request larger than a frame is refused before anything is sent.
    let big = vec![b'x'; 5 * 1024 * 1024];
    let e = a
        .rpc()
        .unwrap()
        .call_raw(b.peer_id(), "_bh/echo", big, CallOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("exceeds the frame limit"), "{e}");

    // The rate limit: 2 calls at once, then 1 per second.
    let nodes = chain(2, |c| {
        c.rpc.rate_burst = 2;
        c.rpc.rate_per_second = 1.0;
    })
    .await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(echo(a, b).await.err().and_then(|e| remote_code(&e)));
    }
    assert!(
        codes.contains(&Some(Code::RateLimited)),
        "four calls at once within a burst of 2: {codes:?}"
    );
    assert_eq!(codes[0], None, "the first call is within the burst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_cancels_the_handler_and_a_cancelled_probe_frees_the_breaker() {
    let nodes = chain(2, |c| {
        c.rpc.breaker.failures_to_open = 1;
        c.rpc.breaker.open_for = Duration::from_millis(300);
    })
    .await;
    let (a, b) = (&nodes[0], &nodes[1]);
    // b's handler sleeps; a guard counts handlers dropped before finishing.
    struct Unfinished(Arc<AtomicUsize>, bool);
    impl Drop for Unfinished {
        fn drop(&mut self) {
            if !self.1 {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    b.rpc().unwrap().register::<Sleep, _, _>(move |_, ms| {
        let guard = Unfinished(d.clone(), false);
        async move {
            let mut guard = guard;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            guard.1 = true;
            Ok(ms)
        }
    });
    let rpc = a.rpc().unwrap().clone();
    let long = CallOptions {
        deadline: Some(Duration::from_secs(20)),
        ..Default::default()
    };
    // a drops its call after 200 ms, well inside the call's 20 s deadline:
    // b's handler (10 s of work) is dropped too.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        rpc.call::<Sleep>(b.peer_id(), &10_000, long.clone()),
    )
    .await;
    assert!(gave_up.is_err());
    crate::support::until(
        "b drops the abandoned handler",
        Duration::from_secs(5),
        || async { dropped.load(Ordering::SeqCst) == 1 },
    )
    .await;
    assert!(
        b.metrics()
            .encode()
            .unwrap()
            .contains("outcome=\"cancelled\"")
    );

    // A timeout opens a's breaker for b; after open_for it is half-open.
    let e = rpc
        .call::<Sleep>(
            b.peer_id(),
            &5_000,
            CallOptions {
                deadline: Some(Duration::from_millis(100)),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::Timeout(_)), "{e}");
    assert_eq!(
        rpc.breaker_state(&b.peer_id()),
        blackhole_rpc::policy::BreakerState::Open
    );
    crate::support::until("the breaker half-opens", Duration::from_secs(5), || async {
        rpc.breaker_state(&b.peer_id()) == blackhole_rpc::policy::BreakerState::HalfOpen
    })
    .await;
    // The probe is abandoned by its caller: it decides nothing, and the
    // next call probes (it used to find the breaker stuck half-open).
    let probe = tokio::time::timeout(
        Duration::from_millis(100),
        rpc.call::<Sleep>(b.peer_id(), &10_000, long.clone()),
    )
    .await;
    assert!(probe.is_err(), "the probe was abandoned");
    let v = rpc.call::<Sleep>(b.peer_id(), &1, long).await.unwrap();
    assert_eq!(v, 1);
    assert_eq!(
        rpc.breaker_state(&b.peer_id()),
        blackhole_rpc::policy::BreakerState::Closed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_server_gives_callers_clear_errors_and_leaks_nothing() {
    // b runs no RPC service: a raw handler on the RPC protocol answers
    // each request as the request's payload says (garbage, an oversized
    // prefix, a truncated frame, or nothing at all).
    let a = &crate::support::start(mem_config()).await;
    let bad = crate::support::start({
        let mut c = mem_config();
        c.rpc.enabled = false;
        c
    })
    .await;
    bad.dial(mem_addr(a).await).await.unwrap();
    connected_both_ways(a, &bad).await;
    let mut incoming = bad
        .stream_control()
        .accept(blackhole_rpc::PROTOCOL)
        .unwrap();
    tokio::spawn(async move {
        while let Some((_, mut s)) = incoming.next().await {
            tokio::spawn(async move {
                let Ok(req) = blackhole_rpc::wire::read_frame(&mut s, 1 << 20).await else {
                    return;
                };
                let answer: &[u8] = match req.payload.as_slice() {
                    b"\"garbage\"" => b"\x04\xff\xff\xff\xff",
                    b"\"huge\"" => &[0xff, 0xff, 0xff, 0xff, 0x0f],
                    b"\"truncated\"" => &[0x64, 1, 1, 0],
                    _ => {
                        // Silent: holds the stream until the caller goes.
                        let mut buf = [0u8; 1];
                        let _ = s.read(&mut buf).await;
                        return;
                    }
                };
                let _ = s.write_all(answer).await;
                let _ = s.close().await;
            });
        }
    });
    let rpc = a.rpc().unwrap();
    let call = |what: &'static str| {
        let (rpc, to) = (rpc.clone(), bad.peer_id());
        async move {
            rpc.call::<blackhole_node::rpc::Echo>(
                to,
                &serde_json::json!(what),
                CallOptions {
                    deadline: Some(Duration::from_millis(500)),
                    idempotent: Some(false),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err()
        }
    };
    for (what, needle) in [
        ("garbage", "bad answer"),
        ("huge", "larger than"),
        ("truncated", "bad answer"),
    ] {
        let e = call(what).await;
        assert!(
            matches!(e, CallError::BadAnswer { .. }) && e.to_string().contains(needle),
            "{what}: {e}"
        );
    }
    let t = Instant::now();
    let e = call("silent").await;
    assert!(matches!(e, CallError::Timeout(_)), "silent: {e}");
    assert!(t.elapsed() < Duration::from_secs(3));
    // A streamed call to the same server ends with the error as its item.
    let mut items = rpc
        .call_stream_raw(
            bad.peer_id(),
            Numbers::NAME,
            b"\"garbage\"".to_vec(),
            Some(Duration::from_millis(500)),
        )
        .await
        .unwrap();
    let first = items.next().await.expect("one item: the error");
    assert!(matches!(first, Err(CallError::BadAnswer { .. })));
    assert!(items.next().await.is_none());
    drop(items);
    // Nothing is left: no call counts as in progress, and the silent
    // server's stream was closed by the caller giving up.
    assert!(rpc.busy_peers().is_empty(), "{:?}", rpc.busy_peers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_streams_are_flow_controlled_and_end_at_their_lifetime() {
    let nodes = chain(2, |c| c.rpc.byte_stream_lifetime = Duration::from_secs(20)).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    // b reads nothing until told to, then counts what arrives.
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let go = Arc::new(std::sync::Mutex::new(Some(go_rx)));
    let (total_tx, total_rx) = tokio::sync::oneshot::channel::<usize>();
    let total_tx = Arc::new(std::sync::Mutex::new(Some(total_tx)));
    b.rpc()
        .unwrap()
        .register_bytes("test/late-sink", move |_, _, mut stream| {
            let go = go.lock().unwrap().take();
            let total_tx = total_tx.lock().unwrap().take();
            async move {
                if let Some(go) = go {
                    let _ = go.await;
                }
                // Counted, not kept: `read_to_end` zero-fills each new
                // half of its vector byte by byte in this unoptimised test
                // crate (futures-util's generic code), 16 s of CPU for
                // 64 MiB on a slow machine, past the stream's lifetime.
                let (mut buf, mut total) = (vec![0u8; 64 * 1024], 0);
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    total += n;
                }
                if let Some(t) = total_tx {
                    let _ = t.send(total);
                }
            }
        });
    let mut stream = a
        .rpc()
        .unwrap()
        .open_bytes(b.peer_id(), "test/late-sink", Vec::new(), None)
        .await
        .unwrap();
    const TOTAL: usize = 64 * 1024 * 1024;
    let written = Arc::new(AtomicUsize::new(0));
    let w = written.clone();
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        while w.load(Ordering::SeqCst) < TOTAL {
            stream.write_all(&chunk).await.unwrap();
            w.fetch_add(chunk.len(), Ordering::SeqCst);
        }
        stream.close().await.unwrap();
    });
    // The writer stops once the stream's window is full: its count stays
    // put for a while, far below what it wants to send.
    let mut last = usize::MAX;
    crate::support::until("the writer stalls", Duration::from_secs(20), || {
        let now = written.load(Ordering::SeqCst);
        let stalled = now == last && now > 0;
        last = now;
        async move {
            if !stalled {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            stalled
        }
    })
    .await;
    let stalled_at = written.load(Ordering::SeqCst);
    assert!(
        stalled_at < TOTAL / 4,
        "{stalled_at} bytes written to a reader that reads nothing"
    );
    // The reader starts: everything arrives.
    go_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the writer finishes once the reader reads")
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), total_rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, TOTAL);

    // A byte stream outliving byte_stream_lifetime is reset.
    let nodes = chain(2, |c| {
        c.rpc.byte_stream_lifetime = Duration::from_millis(500)
    })
    .await;
    let (a, b) = (&nodes[0], &nodes[1]);
    b.rpc()
        .unwrap()
        .register_bytes("test/forever", |_, _, stream| async move {
            let _held = stream;
            futures::future::pending::<()>().await;
        });
    let mut stream = a
        .rpc()
        .unwrap()
        .open_bytes(b.peer_id(), "test/forever", Vec::new(), None)
        .await
        .unwrap();
    let mut buf = Vec::new();
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("the stream ends at its lifetime")
        .ok();
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "ended before its lifetime"
    );
    assert!(
        b.metrics()
            .encode()
            .unwrap()
            .contains("outcome=\"lifetime_exceeded\"")
    );
}

/// Calls that arrive together are all served: four callers each send 48
/// calls at once (within every per-peer limit), and every one is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_from_several_callers_is_served_in_full() {
    let server = crate::support::start(mem_config()).await;
    server
        .rpc()
        .unwrap()
        .register::<Add, _, _>(|_, (x, y)| async move { Ok(x + y) });
    let mut callers = Vec::new();
    for _ in 0..4 {
        let c = crate::support::start(mem_config()).await;
        c.dial(mem_addr(&server).await).await.unwrap();
        connected_both_ways(&server, &c).await;
        callers.push(c);
    }
    let calls = callers.iter().flat_map(|c| {
        let rpc = c.rpc().unwrap().clone();
        let to = server.peer_id();
        (0..48i64).map(move |i| {
            let rpc = rpc.clone();
            async move { rpc.call::<Add>(to, &(i, 1), CallOptions::default()).await }
        })
    });
    let results = futures::future::join_all(calls).await;
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed, first: {:?}",
        failed.len(),
        results.len(),
        failed.first()
    );
    for c in callers {
        c.shutdown().await;
    }
    server.shutdown().await;
}

/// `n` sequential `Add` calls from `caller` to `callee`. From the second
/// call on, calls come in a run and the next one's stream is opened ahead:
/// each waits (10 s at most) until it is open. Back to back, a call often
/// came while it was still being negotiated and took a stream of its own
/// (8-9 of 20, or 0 of 5, used one in about one run in ten).
async fn calls_in_a_run(caller: &Handle, callee: &Handle, n: i64) {
    let rpc = caller.rpc().unwrap();
    for i in 0..n {
        assert_eq!(
            rpc.call::<Add>(callee.peer_id(), &(i, 1), CallOptions::default())
                .await
                .unwrap(),
            i + 1
        );
        if i >= 1 {
            crate::support::until("a stream opened ahead", Duration::from_secs(10), || async {
                crate::support::metric(caller, "blackhole_rpc_warm_streams") == Some(1)
            })
            .await;
        }
    }
}

/// Calls that come in a run go out on streams opened ahead
/// (`rpc.warm_stream_ttl`); a stream opened ahead and not needed is closed
/// after the TTL, and the callee counts it as unused, not as a bad request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_a_run_use_streams_opened_ahead_and_unused_ones_expire() {
    let ttl = Duration::from_millis(500);
    let nodes = chain(2, |c| c.rpc.warm_stream_ttl = ttl).await;
    let (caller, callee) = (&nodes[1], &nodes[0]);
    callee
        .rpc()
        .unwrap()
        .register::<Add, _, _>(|_, (x, y)| async move { Ok(x + y) });
    let rpc = caller.rpc().unwrap();
    let counter = |h: &Handle, name: &str| -> u64 { crate::support::metric(h, name).unwrap_or(0) };
    calls_in_a_run(caller, callee, 20).await;
    let used = counter(caller, "blackhole_rpc_warm_streams_used_total");
    // The first two calls open their own streams; every later one finds
    // one ready.
    assert!(used >= 15, "{used} of 20 calls used a stream opened ahead");
    let ok = counter(callee, "blackhole_rpc_served_total{outcome=\"ok\"}");
    assert_eq!(ok, 20);

    // The stream opened for a 21st call expires unused.
    crate::support::until(
        "the unused stream closed",
        Duration::from_secs(10),
        || async { counter(callee, "blackhole_rpc_served_total{outcome=\"unused\"}") == 1 },
    )
    .await;
    assert_eq!(
        counter(
            callee,
            "blackhole_rpc_served_total{outcome=\"bad_request\"}"
        ),
        0
    );
    // A call after the run opens its own stream again.
    assert_eq!(
        rpc.call::<Add>(callee.peer_id(), &(1, 1), CallOptions::default())
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        counter(caller, "blackhole_rpc_warm_streams_used_total"),
        used
    );
    for n in nodes {
        n.shutdown().await;
    }
}

/// A stream opened ahead whose connection has since closed does not cost
/// the call a retry: the request goes out on a new stream at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_stream_opened_ahead_is_replaced_at_once() {
    let nodes = chain(2, |c| c.rpc.warm_stream_ttl = Duration::from_secs(5)).await;
    let (callee, caller) = (&nodes[0], &nodes[1]);
    callee
        .rpc()
        .unwrap()
        .register::<Add, _, _>(|_, (x, y)| async move { Ok(x + y) });
    let rpc = caller.rpc().unwrap();
    let counter = |name: &str| -> u64 { crate::support::metric(caller, name).unwrap_or(0) };
    calls_in_a_run(caller, callee, 5).await;
    let used = counter("blackhole_rpc_warm_streams_used_total");
    assert!(used >= 1, "{used}");
    crate::support::until("a stream opened ahead", Duration::from_secs(10), || async {
        counter("blackhole_rpc_warm_streams") == 1
    })
    .await;

    // The connection goes, and with it the stream opened for the next call.
    assert!(caller.disconnect(callee.peer_id()).await.unwrap());
    crate::support::until("disconnected", Duration::from_secs(10), || async {
        !caller
            .peers()
            .await
            .unwrap()
            .iter()
            .any(|p| p.peer_id == callee.peer_id())
    })
    .await;
    caller.dial(mem_addr(callee).await).await.unwrap();
    connected_both_ways(callee, caller).await;

    assert_eq!(
        rpc.call::<Add>(callee.peer_id(), &(41, 1), CallOptions::default())
            .await
            .unwrap(),
        42
    );
    assert_eq!(
        counter("blackhole_rpc_warm_streams_used_total"),
        used + 1,
        "the call took the stale stream"
    );
    assert_eq!(counter("blackhole_rpc_retries_total"), 0);
    for n in nodes {
        n.shutdown().await;
    }
}
