//! Request/response and streamed responses between peers, with deadlines,
//! compression, limits, retries, circuit breakers and a response cache.
//!
//! Layer 6 of the workspace, beside `blackhole-pubsub` and `blackhole-nat`.
//! One stream per call, protocol `/blackhole/rpc/1.0.0`, frames as
//! described in [`wire`]. Streams are opened through `libp2p-stream`;
//! inbound ones come from any stream of streams given to [`Rpc::serve`]
//! (the node uses `blackhole_mux::accept`, a queue that does not drop
//! bursts). When calls to a peer come in a run, the next call's stream is
//! opened ahead (`Config::warm_stream_ttl`) and the call skips that round
//! trip. It knows nothing of the DHT, pubsub or the control API.
//!
//! ```
//! use blackhole_rpc::policy::Backoff;
//! use std::time::Duration;
//! let b = Backoff::default();
//! assert!(b.delay(1, u64::MAX) <= b.base);
//! ```
//!
//! # Typed methods
//!
//! An application names a method with serde request and response types
//! ([`Method`]), registers an async handler ([`Rpc::register`]) and calls
//! it with [`Rpc::call`]. Payloads are JSON. A handler that calls another
//! peer passes on what is left of its own deadline automatically (the
//! deadline travels in a task-local), so a chain of calls never outlives
//! the first caller's deadline. The task-local does not follow work a
//! handler moves to another task (`tokio::spawn`): pass
//! `CallOptions::deadline` from [`Context::deadline`] there.
//!
//! A caller that gives up (its future is dropped, or its deadline passed)
//! resets the stream; the server watches the read side while the handler
//! runs and drops the handler, with any calls it made in turn, as soon as
//! anything arrives there (a reset, the end of the stream, or a cancel
//! frame). So abandoned work does not pile up along a chain of calls.
//!
//! # Streams
//!
//! A handler registered with [`Rpc::register_stream`] answers with a
//! stream of responses; each item is written before the next is taken, so
//! a caller that reads slowly ([`Rpc::call_stream_raw`]) slows the
//! handler down (the stream's flow-control window is the buffer). For
//! bulk transfer, [`Rpc::register_bytes`] and [`Rpc::open_bytes`] hand
//! both sides the raw stream once the opening request was accepted.
//!
//! # Limits
//!
//! Frames above `max_frame_size` are refused from their length prefix
//! before any allocation and the stream is reset; a request's buffer
//! grows with the bytes that arrive, not with what the prefix promises.
//! A node serves at most `max_inbound_per_peer` calls per peer,
//! `max_inbound_per_method` per method and `max_inbound_total` in all at
//! once, and at most `rate_per_second` (burst `rate_burst`) new calls
//! per peer; beyond that the caller gets an `overloaded` or
//! `rate_limited` error (retryable). The rate, per-peer and total limits
//! are checked when the stream opens, before the request is read, so a
//! stream still sending its request holds a slot (for at most
//! `request_timeout`) and a refused one holds nothing. A handler has the
//! caller's deadline, capped at `max_deadline`; an answer frame is given
//! up a second after the caller's deadline (at most 30 s) if the caller
//! does not read it; an inbound byte stream lives at most
//! `byte_stream_lifetime`. A request larger than the local
//! `max_frame_size` fails with [`CallError::TooLarge`] without being
//! sent.
//!
//! # Failures
//!
//! Calls marked idempotent are retried on retryable failures with
//! exponential backoff and full jitter ([`policy::Backoff`]), within the
//! deadline. Each peer has a circuit breaker ([`policy::Breaker`]): after
//! `failures_to_open` consecutive transport failures or timeouts it opens
//! and calls fail at once; after `open_for` one probe goes through and
//! its outcome closes or reopens it. Application errors do not count. A
//! probe that ends without an outcome (cancelled by its caller, or failed
//! locally) lets the next call probe.
//!
//! # Group requests
//!
//! [`Rpc::multicast`] calls a set of peers at once and returns with the
//! first `k` answers, cancelling the rest; the node's
//! `Handle::rpc_broadcast` does it for every connected peer, and
//! `Handle::rpc_topic_broadcast` for the subscribers of a pubsub topic.
//! [`Rpc::call_via`] reaches a peer through another: the proxy forwards
//! the call (method `_bh/proxy`) only if its operator set `rpc.proxy =
//! true`, at most `max_proxied` at once, never to another proxy, within
//! the caller's deadline.
//!
//! # Compression
//!
//! Payloads of at least `compress_above` bytes are compressed with zstd
//! level 1 when that makes them smaller; the frame's content size is
//! checked against `max_frame_size` before anything is decompressed.
//!
//! Measured side by side (`cargo bench -p blackhole-benches --bench rpc`,
//! 64 KiB payloads, 2 cores, 2026-11-24):
//!
//! | payload | LZ4 size | zstd-1 size | LZ4 compress | zstd-1 compress | LZ4 decompress | zstd-1 decompress |
//! |---|---|---|---|---|---|---|
//! | JSON records | 33.5 % | 15.4 % | 1.66 GiB/s | 0.85 GiB/s | 5.6 GiB/s | 1.9 GiB/s |
//! | log text | 22.6 % | 9.4 % | 2.4 GiB/s | 1.2 GiB/s | 5.3 GiB/s | 2.4 GiB/s |
//! | random | 100.4 % | 100.0 % | 18.7 GiB/s | 4.4 GiB/s | - | - |
//!
//! zstd-1 sends about half the bytes of LZ4 for twice the CPU time; the
//! bytes saved outweigh the extra time on any link slower than about
//! 2.6 Gbit/s (12 KiB saved per 37 µs spent on a 64 KiB JSON payload),
//! which is every link between peers on the internet. Incompressible
//! payloads are sent as they are (the compressed form is not smaller).

mod metrics;
pub mod policy;
mod service;
pub mod wire;

pub use metrics::Metrics;
pub use service::{
    CallError, CallOptions, Code, Config, ConfigError, Connector, Context, Method, Multicast,
    PROTOCOL, PROXY_METHOD, Reply, Response, Rpc, RpcError,
};
