//! The RPC service: client and server over `libp2p-stream`.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{AsyncWriteExt, FutureExt, StreamExt, future::BoxFuture, stream::BoxStream};
use libp2p_identity::PeerId;
use libp2p_swarm::{Stream, StreamProtocol};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Metrics,
    policy::{Backoff, Breaker, BreakerConfig, BreakerState, Cache, RateLimiter},
    wire::{ErrorBody, Frame, Kind, ReadError, read_frame},
};

/// The protocol of RPC streams.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/blackhole/rpc/1.0.0");
/// Peers whose breaker state is remembered.
const MAX_BREAKERS: usize = 4096;
/// The wait before the second attempt to open a stream to a peer that
/// seemed not connected.
const OPEN_RETRY: Duration = Duration::from_millis(50);
/// The built-in method that forwards a call to another peer.
pub const PROXY_METHOD: &str = "_bh/proxy";

tokio::task_local! {
    /// The deadline of the call being served, for calls it makes.
    static DEADLINE: Instant;
}

/// RPC configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Whether the node serves and makes RPC calls.
    pub enabled: bool,
    /// Largest frame (and decompressed payload), in bytes.
    pub max_frame_size: usize,
    /// Payloads at least this large are compressed (when it helps).
    pub compress_above: usize,
    /// Deadline of calls that name none.
    #[serde(with = "humantime_serde")]
    pub default_deadline: Duration,
    /// Longest deadline a handler is given, whatever the caller asks.
    #[serde(with = "humantime_serde")]
    pub max_deadline: Duration,
    /// Time a caller has to send its request once the stream is open.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Calls served at once for one peer.
    pub max_inbound_per_peer: usize,
    /// Calls served at once for one method.
    pub max_inbound_per_method: usize,
    /// Calls served at once from all peers together (streams waiting
    /// for their request count too), so many peers cannot add up to an
    /// unbounded load.
    pub max_inbound_total: usize,
    /// Longest life of an inbound byte stream (`register_bytes`); the
    /// handler is dropped and the stream reset then.
    #[serde(with = "humantime_serde")]
    pub byte_stream_lifetime: Duration,
    /// New calls accepted per peer per second (sustained).
    pub rate_per_second: f64,
    /// New calls accepted per peer at once.
    pub rate_burst: u32,
    /// Retries of idempotent calls.
    pub retry: Backoff,
    /// Per-peer circuit breakers.
    pub breaker: BreakerConfig,
    /// Response cache entries.
    pub cache_entries: usize,
    /// Response cache bytes.
    pub cache_bytes: usize,
    /// Forward calls for other peers (`_bh/proxy`) to peers they cannot
    /// reach. Off unless the operator consents.
    pub proxy: bool,
    /// Proxied calls in progress at once.
    pub max_proxied: usize,
    /// Proxied calls in progress at once for one caller.
    pub max_proxied_per_peer: usize,
    /// Calls of one group request (multicast, broadcast) in flight at
    /// once; the others start as these finish.
    pub max_group_concurrency: usize,
    /// When calls to a peer come in a run (one within this time of the
    /// last), a stream for the next call is opened ahead and kept this
    /// long, so the next call skips opening and negotiating a stream (a
    /// round trip). Zero turns it off. Keep it well below the callees'
    /// `request_timeout`, which closes a stream that brings no request.
    #[serde(with = "humantime_serde")]
    pub warm_stream_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            max_frame_size: 4 * 1024 * 1024,
            compress_above: 4096,
            default_deadline: Duration::from_secs(10),
            max_deadline: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            max_inbound_per_peer: 64,
            max_inbound_per_method: 256,
            max_inbound_total: 1024,
            byte_stream_lifetime: Duration::from_secs(600),
            rate_per_second: 1000.0,
            rate_burst: 2000,
            retry: Backoff::default(),
            breaker: BreakerConfig::default(),
            cache_entries: 1024,
            cache_bytes: 16 * 1024 * 1024,
            proxy: false,
            max_proxied: 16,
            max_proxied_per_peer: 4,
            max_group_concurrency: 64,
            warm_stream_ttl: Duration::from_secs(2),
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rpc.{key}: {reason}")]
pub struct ConfigError {
    /// The key under `rpc`.
    pub key: &'static str,
    /// What is wrong.
    pub reason: &'static str,
}

impl Config {
    /// Checks values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason| Err(ConfigError { key, reason });
        if self.max_frame_size < 1024 || self.max_frame_size > 64 * 1024 * 1024 {
            return bad("max_frame_size", "must be 1 KiB to 64 MiB");
        }
        if self.default_deadline.is_zero()
            || self.max_deadline.is_zero()
            || self.request_timeout.is_zero()
        {
            return bad(
                "default_deadline",
                "deadlines and timeouts must be positive",
            );
        }
        if self.max_inbound_per_peer == 0
            || self.max_inbound_per_method == 0
            || self.max_inbound_total == 0
        {
            return bad("max_inbound_per_peer", "limits must be positive");
        }
        if self.max_proxied_per_peer == 0 || self.max_group_concurrency == 0 {
            return bad("max_group_concurrency", "limits must be positive");
        }
        if self.byte_stream_lifetime.is_zero() {
            return bad("byte_stream_lifetime", "must be positive");
        }
        if self.rate_per_second.is_nan() || self.rate_per_second <= 0.0 || self.rate_burst == 0 {
            return bad("rate_per_second", "rate and burst must be positive");
        }
        if self.max_proxied == 0 {
            return bad("max_proxied", "must be at least 1");
        }
        if self.retry.max_attempts == 0 {
            return bad("retry.max_attempts", "must be at least 1");
        }
        if self.breaker.failures_to_open == 0 {
            return bad("breaker.failures_to_open", "must be at least 1");
        }
        Ok(())
    }
}

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Code {
    /// The request did not parse.
    BadRequest,
    /// No such method.
    NotFound,
    /// The deadline passed.
    DeadlineExceeded,
    /// Too many calls in progress.
    Overloaded,
    /// Too many calls per second.
    RateLimited,
    /// The handler failed.
    Internal,
    /// The service cannot answer now.
    Unavailable,
    /// An application-defined code (100 and up).
    Application(u16),
}

impl Code {
    /// The number on the wire.
    pub fn number(self) -> u16 {
        match self {
            Code::BadRequest => 1,
            Code::NotFound => 2,
            Code::DeadlineExceeded => 3,
            Code::Overloaded => 4,
            Code::RateLimited => 5,
            Code::Internal => 6,
            Code::Unavailable => 7,
            Code::Application(n) => n,
        }
    }

    /// The code of a number.
    pub fn from_number(n: u16) -> Self {
        match n {
            1 => Code::BadRequest,
            2 => Code::NotFound,
            3 => Code::DeadlineExceeded,
            4 => Code::Overloaded,
            5 => Code::RateLimited,
            6 => Code::Internal,
            7 => Code::Unavailable,
            n => Code::Application(n),
        }
    }
}

/// An error a handler returns (and a caller receives).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct RpcError {
    /// What kind of failure.
    pub code: Code,
    /// For people.
    pub message: String,
    /// Whether the same call may succeed later.
    pub retryable: bool,
}

impl RpcError {
    /// An error with `code`; retryable for overload, rate limits and
    /// unavailability.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            retryable: matches!(
                code,
                Code::Overloaded | Code::RateLimited | Code::Unavailable
            ),
            code,
            message: message.into(),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The peer answered with an error.
    #[error("{peer} answered {0}", peer = .1)]
    Remote(RpcError, PeerId),
    /// The deadline passed.
    #[error("deadline of {0:?} exceeded")]
    Timeout(Duration),
    /// The peer's circuit breaker is open.
    #[error("circuit breaker for {peer} is open (next probe in {retry_in:?})")]
    BreakerOpen { peer: PeerId, retry_in: Duration },
    /// The stream could not be opened or broke.
    #[error("stream to {peer}: {reason}")]
    Stream { peer: PeerId, reason: String },
    /// The peer dropped the stream before taking the call (it was not
    /// handled); calls are retried once on this, idempotent or not.
    #[error("{peer} dropped the call before reading it")]
    Dropped { peer: PeerId },
    /// The answer is not what the method promised.
    #[error("bad answer from {peer}: {reason}")]
    BadAnswer { peer: PeerId, reason: String },
    /// The request could not be encoded.
    #[error("cannot encode the request: {0}")]
    Encode(String),
    /// The request does not fit in one frame (`rpc.max_frame_size`); it
    /// was not sent.
    #[error("request of {size} bytes for {method} exceeds the frame limit of {max} bytes")]
    TooLarge {
        method: String,
        size: usize,
        max: usize,
    },
}

impl CallError {
    fn retryable(&self) -> bool {
        match self {
            CallError::Remote(e, _) => e.retryable,
            CallError::Stream { .. } | CallError::Dropped { .. } => true,
            _ => false,
        }
    }

    /// Whether the failure says something about the peer (for its breaker).
    fn counts_against_peer(&self) -> bool {
        match self {
            CallError::Remote(e, _) => e.code == Code::Unavailable,
            CallError::Timeout(_)
            | CallError::Stream { .. }
            | CallError::Dropped { .. }
            | CallError::BadAnswer { .. } => true,
            _ => false,
        }
    }
}

/// What the handler of a call knows.
#[derive(Debug, Clone)]
pub struct Context {
    /// The caller.
    pub peer: PeerId,
    /// The correlation id.
    pub id: u64,
    /// When the caller stops waiting.
    pub deadline: Instant,
}

/// A handler's answer: one payload, or a stream of them.
pub enum Response {
    /// One answer.
    One(Vec<u8>),
    /// Several, sent as they come (with backpressure).
    Stream(BoxStream<'static, Result<Vec<u8>, RpcError>>),
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Response::One(b) => write!(f, "One({} bytes)", b.len()),
            Response::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// What a handler returns.
pub type Reply = Result<Response, RpcError>;

type CallHandler = Arc<dyn Fn(Context, Vec<u8>) -> BoxFuture<'static, Reply> + Send + Sync>;
type BytesHandler = Arc<dyn Fn(Context, Vec<u8>, Stream) -> BoxFuture<'static, ()> + Send + Sync>;

#[derive(Clone)]
enum Handler {
    Call(CallHandler),
    Bytes(BytesHandler),
}

/// The outcome of [`Rpc::multicast`].
#[derive(Debug, Default)]
pub struct Multicast {
    /// Successful answers, in the order they arrived.
    pub answers: Vec<(PeerId, Vec<u8>)>,
    /// Calls that failed before enough answers arrived.
    pub failures: Vec<(PeerId, CallError)>,
    /// Calls still running when enough answers had arrived (cancelled).
    pub cancelled: usize,
}

/// A typed method: a name and serde request and response types.
pub trait Method: Send + Sync + 'static {
    /// The method name (at most 128 bytes).
    const NAME: &'static str;
    /// Whether calls may be retried (the handler tolerates repeats).
    const IDEMPOTENT: bool = false;
    /// Answers may be cached this long (same peer, same request).
    const CACHE_TTL: Option<Duration> = None;
    /// The request.
    type Request: Serialize + DeserializeOwned + Send + 'static;
    /// The response.
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

/// Options of one call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// The deadline (default: `default_deadline`, never beyond the
    /// deadline of the call being served, if any).
    pub deadline: Option<Duration>,
    /// Retry on retryable failures (default: the method's `IDEMPOTENT`).
    pub idempotent: Option<bool>,
    /// Cache the answer this long (default: the method's `CACHE_TTL`).
    pub cache_ttl: Option<Duration>,
}

struct Inner {
    control: libp2p_stream::Control,
    config: Config,
    handlers: Mutex<HashMap<String, Handler>>,
    breakers: Mutex<HashMap<PeerId, Breaker>>,
    /// Keyed by peer, method and the SHA-256 of the request, so keys do
    /// not hold whole requests outside the byte budget.
    cache: Mutex<Cache<(PeerId, String, [u8; 32])>>,
    limiter: Mutex<RateLimiter<PeerId>>,
    inbound_per_peer: Mutex<HashMap<PeerId, usize>>,
    inbound_per_method: Mutex<HashMap<String, usize>>,
    inbound_total: Mutex<HashMap<(), usize>>,
    /// Our calls and streamed calls in progress, per peer.
    outbound: Arc<Mutex<HashMap<PeerId, usize>>>,
    proxied: Mutex<HashMap<(), usize>>,
    proxied_per_peer: Mutex<HashMap<PeerId, usize>>,
    next_id: AtomicU64,
    metrics: Metrics,
    connector: std::sync::OnceLock<Connector>,
    warm: Mutex<Warm>,
}

/// Streams opened ahead of the next call to a peer (see
/// [`Config::warm_stream_ttl`]).
#[derive(Default)]
struct Warm {
    peers: HashMap<PeerId, WarmPeer>,
    next_gen: u64,
}

struct WarmPeer {
    last_call: Instant,
    stream: WarmStream,
}

enum WarmStream {
    None,
    Opening,
    /// With its generation, so that its expiry leaves a newer one alone.
    Ready(Stream, u64),
}

/// Peers whose last call time is kept for warm streams.
const MAX_WARM_PEERS: usize = 1024;

/// Makes a peer reachable when no stream can be opened to it (the node
/// looks its addresses up in the DHT and dials them); resolves to whether
/// it did. Called at most once per attempt, within the call's deadline.
pub type Connector = Arc<dyn Fn(PeerId) -> futures::future::BoxFuture<'static, bool> + Send + Sync>;

/// The RPC service of one node: register handlers, make calls.
#[derive(Clone)]
pub struct Rpc {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Rpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rpc").finish_non_exhaustive()
    }
}

/// Decrements a counter in a map when dropped.
struct Slot<'a, K: std::hash::Hash + Eq> {
    map: &'a Mutex<HashMap<K, usize>>,
    key: K,
}

impl<K: std::hash::Hash + Eq> Drop for Slot<'_, K> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock()
            && let Some(n) = m.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

fn take_slot<K: std::hash::Hash + Eq + Clone>(
    map: &Mutex<HashMap<K, usize>>,
    key: K,
    max: usize,
) -> Option<Slot<'_, K>> {
    let mut m = map.lock().ok()?;
    let n = m.entry(key.clone()).or_insert(0);
    if *n >= max {
        return None;
    }
    *n += 1;
    Some(Slot { map, key })
}

/// Marks a peer as having one of our calls in progress while it lives.
struct Busy {
    map: Arc<Mutex<HashMap<PeerId, usize>>>,
    peer: PeerId,
}

impl Busy {
    fn new(map: &Arc<Mutex<HashMap<PeerId, usize>>>, peer: PeerId) -> Self {
        if let Ok(mut m) = map.lock() {
            *m.entry(peer).or_insert(0) += 1;
        }
        Self {
            map: map.clone(),
            peer,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock()
            && let Some(n) = m.get_mut(&self.peer)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.peer);
            }
        }
    }
}

/// Leave from a peer's breaker to make one attempt. If the attempt is the
/// half-open probe and ends without an outcome (the call was cancelled,
/// or failed for a local reason), dropping this lets the next call probe.
struct Permit {
    inner: Arc<Inner>,
    peer: PeerId,
    probe: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe
            && let Ok(mut b) = self.inner.breakers.lock()
            && let Some(br) = b.get_mut(&self.peer)
        {
            br.end_probe();
        }
    }
}

/// Where a call attempt is, for the log line of one that timed out.
#[repr(u8)]
enum Stage {
    Open,
    Lookup,
    Write,
    Answer,
}

impl Stage {
    fn name(n: u8) -> &'static str {
        match n {
            0 => "opening a stream",
            1 => "looking the peer up",
            2 => "sending the request",
            _ => "waiting for the answer",
        }
    }
}

fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish()
}

impl Rpc {
    /// The service on `control`; call [`Rpc::serve`] to answer calls.
    pub fn new(
        control: libp2p_stream::Control,
        config: Config,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Self {
        let rpc = Self {
            inner: Arc::new(Inner {
                control,
                handlers: Mutex::new(HashMap::new()),
                breakers: Mutex::new(HashMap::new()),
                cache: Mutex::new(Cache::new(config.cache_entries, config.cache_bytes)),
                limiter: Mutex::new(RateLimiter::new(
                    config.rate_per_second,
                    config.rate_burst,
                    MAX_BREAKERS,
                )),
                inbound_per_peer: Mutex::new(HashMap::new()),
                inbound_per_method: Mutex::new(HashMap::new()),
                inbound_total: Mutex::new(HashMap::new()),
                outbound: Arc::new(Mutex::new(HashMap::new())),
                proxied: Mutex::new(HashMap::new()),
                proxied_per_peer: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(random() >> 16),
                connector: std::sync::OnceLock::new(),
                warm: Mutex::new(Warm::default()),
                metrics: Metrics::register(registry),
                config,
            }),
        };
        rpc.register_proxy();
        rpc
    }

    /// Registers a raw handler for `method` (bytes in, bytes out),
    /// replacing any earlier one.
    pub fn register_raw<F, Fut>(&self, method: &str, handler: F)
    where
        F: Fn(Context, Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let h: CallHandler = Arc::new(move |ctx, payload| handler(ctx, payload).boxed());
        if let Ok(mut m) = self.inner.handlers.lock() {
            m.insert(method.to_owned(), Handler::Call(h));
        }
    }

    /// Registers a byte-stream handler for `method`: after the opening
    /// request (whose payload it receives) is accepted, the handler owns
    /// the stream both ways, for bulk transfer. Flow control is the
    /// stream's own (Yamux or QUIC windows): a side that does not read
    /// stops the other. The call deadline covers only the opening; the
    /// handler holds its inbound slot (per peer and per method) until it
    /// returns.
    pub fn register_bytes<F, Fut>(&self, method: &str, handler: F)
    where
        F: Fn(Context, Vec<u8>, Stream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let h: BytesHandler =
            Arc::new(move |ctx, payload, stream| handler(ctx, payload, stream).boxed());
        if let Ok(mut m) = self.inner.handlers.lock() {
            m.insert(method.to_owned(), Handler::Bytes(h));
        }
    }

    /// Opens a byte stream to `method` at `peer` (registered there with
    /// [`Rpc::register_bytes`]), sending `header` with the opening
    /// request. Returns the stream once the peer accepted it, within the
    /// deadline.
    pub async fn open_bytes(
        &self,
        peer: PeerId,
        method: &str,
        header: Vec<u8>,
        deadline: Option<Duration>,
    ) -> Result<Stream, CallError> {
        check_size(&header, method, self.inner.config.max_frame_size)?;
        let (deadline, budget) = self.deadline_for(deadline);
        let permit = self.check_breaker(peer)?;
        let cfg = self.inner.config.clone();
        let opened = tokio::time::timeout_at(deadline.into(), async {
            let mut stream = self.open(peer, &AtomicU8::new(0)).await?;
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let left = deadline.saturating_duration_since(Instant::now());
            let mut out = Vec::new();
            Frame::request(id, method, Some(left), header).encode(None, &mut out);
            let broken = |e: std::io::Error| CallError::Stream {
                peer,
                reason: e.to_string(),
            };
            stream.write_all(&out).await.map_err(broken)?;
            let flushed = stream.flush().await;
            let frame = match read_frame(&mut stream, cfg.max_frame_size).await {
                Ok(f) => f,
                Err(e) => {
                    return Err(match flushed {
                        Err(f) => broken(f),
                        Ok(()) => answer_error(peer, e),
                    });
                }
            };
            expect_answer(peer, id, frame, Kind::Response)?;
            Ok(stream)
        })
        .await
        .unwrap_or(Err(CallError::Timeout(budget)));
        self.record(permit, &opened.as_ref().map(|_| ()).map_err(clone_kind));
        opened
    }

    /// Registers a typed handler for `M`.
    pub fn register<M, F, Fut>(&self, handler: F)
    where
        M: Method,
        F: Fn(Context, M::Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<M::Response, RpcError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.register_raw(M::NAME, move |ctx, payload| {
            let handler = handler.clone();
            async move {
                let req: M::Request = serde_json::from_slice(&payload)
                    .map_err(|e| RpcError::new(Code::BadRequest, e.to_string()))?;
                let resp = handler(ctx, req).await?;
                serde_json::to_vec(&resp)
                    .map(Response::One)
                    .map_err(|e| RpcError::new(Code::Internal, e.to_string()))
            }
        });
    }

    /// Registers a typed handler for `M` whose answer is a stream of
    /// responses.
    pub fn register_stream<M, F, S>(&self, handler: F)
    where
        M: Method,
        F: Fn(Context, M::Request) -> S + Send + Sync + 'static,
        S: futures::Stream<Item = Result<M::Response, RpcError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.register_raw(M::NAME, move |ctx, payload| {
            let handler = handler.clone();
            async move {
                let req: M::Request = serde_json::from_slice(&payload)
                    .map_err(|e| RpcError::new(Code::BadRequest, e.to_string()))?;
                let items = handler(ctx, req).map(|item| {
                    item.and_then(|r| {
                        serde_json::to_vec(&r)
                            .map_err(|e| RpcError::new(Code::Internal, e.to_string()))
                    })
                });
                Ok(Response::Stream(items.boxed()))
            }
        });
    }

    /// The breaker state of `peer` now.
    pub fn breaker_state(&self, peer: &PeerId) -> BreakerState {
        let now = Instant::now();
        self.inner
            .breakers
            .lock()
            .ok()
            .and_then(|b| b.get(peer).map(|b| b.state(now)))
            .unwrap_or(BreakerState::Closed)
    }

    /// Every peer whose breaker is not closed.
    pub fn breakers(&self) -> Vec<(PeerId, BreakerState)> {
        let now = Instant::now();
        self.inner
            .breakers
            .lock()
            .map(|b| {
                b.iter()
                    .map(|(p, b)| (*p, b.state(now)))
                    .filter(|(_, s)| *s != BreakerState::Closed)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Calls from `peer` being served now, streams still sending their
    /// request included.
    pub fn inbound_from(&self, peer: &PeerId) -> usize {
        self.inner
            .inbound_per_peer
            .lock()
            .map(|m| m.get(peer).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Peers with a call in progress, ours or theirs (connections to
    /// them are in use: the node does not prune them).
    pub fn busy_peers(&self) -> Vec<PeerId> {
        let mut out: Vec<PeerId> = self
            .inner
            .outbound
            .lock()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        if let Ok(m) = self.inner.inbound_per_peer.lock() {
            out.extend(m.keys().copied());
        }
        out.sort();
        out.dedup();
        out
    }

    fn deadline_for(&self, asked: Option<Duration>) -> (Instant, Duration) {
        let now = Instant::now();
        let mut deadline = now + asked.unwrap_or(self.inner.config.default_deadline);
        if let Ok(inherited) = DEADLINE.try_with(|d| *d) {
            deadline = deadline.min(inherited);
        }
        (deadline, deadline.saturating_duration_since(now))
    }

    /// Calls `M` at `peer`.
    pub async fn call<M: Method>(
        &self,
        peer: PeerId,
        request: &M::Request,
        options: CallOptions,
    ) -> Result<M::Response, CallError> {
        let payload = serde_json::to_vec(request).map_err(|e| CallError::Encode(e.to_string()))?;
        let options = CallOptions {
            idempotent: options.idempotent.or(Some(M::IDEMPOTENT)),
            cache_ttl: options.cache_ttl.or(M::CACHE_TTL),
            ..options
        };
        let bytes = self.call_raw(peer, M::NAME, payload, options).await?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::BadAnswer {
            peer,
            reason: e.to_string(),
        })
    }

    /// Calls `method` at `peer` with raw bytes.
    pub async fn call_raw(
        &self,
        peer: PeerId,
        method: &str,
        payload: Vec<u8>,
        options: CallOptions,
    ) -> Result<Vec<u8>, CallError> {
        let m = &self.inner.metrics;
        let cache_key = options.cache_ttl.map(|_| {
            use sha2::Digest as _;
            (
                peer,
                method.to_owned(),
                sha2::Sha256::digest(&payload).into(),
            )
        });
        if let Some(key) = &cache_key
            && let Ok(mut c) = self.inner.cache.lock()
            && let Some(v) = c.get(key, Instant::now())
        {
            m.cache_hits.inc();
            m.call("cache_hit");
            return Ok(v.to_vec());
        }
        check_size(&payload, method, self.inner.config.max_frame_size)?;
        let _busy = Busy::new(&self.inner.outbound, peer);
        let (deadline, budget) = self.deadline_for(options.deadline);
        let started = Instant::now();
        let idempotent = options.idempotent.unwrap_or(false);
        let attempts = if idempotent {
            self.inner.config.retry.max_attempts.max(1)
        } else {
            1
        };
        let mut attempt = 0;
        let mut dropped_retried = false;
        let result = loop {
            attempt += 1;
            let permit = self.check_breaker(peer)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(CallError::Timeout(budget));
            }
            let stage = AtomicU8::new(Stage::Open as u8);
            let r = match tokio::time::timeout(
                left,
                self.attempt(peer, method, &payload, left, &stage),
            )
            .await
            {
                // The callee ran out of our deadline first: the same thing.
                Ok(Err(CallError::Remote(e, _))) if e.code == Code::DeadlineExceeded => {
                    Err(CallError::Timeout(budget))
                }
                Ok(r) => r,
                Err(_) => {
                    let at = Stage::name(stage.load(Ordering::Relaxed));
                    tracing::debug!(%peer, method, attempt, ?budget, stage = at, "call timed out");
                    Err(CallError::Timeout(budget))
                }
            };
            self.record(permit, &r);
            match r {
                // Not handled by the peer: safe to send again, once.
                Err(CallError::Dropped { .. }) if !dropped_retried => {
                    dropped_retried = true;
                    m.retries.inc();
                    tokio::time::sleep(OPEN_RETRY).await;
                }
                Err(e) if e.retryable() && attempt < attempts => {
                    let delay = self.inner.config.retry.delay(attempt, random());
                    if Instant::now() + delay >= deadline {
                        break Err(e);
                    }
                    tracing::debug!(%peer, method, attempt, ?delay, error = %e, "retrying");
                    m.retries.inc();
                    tokio::time::sleep(delay).await;
                }
                r => break r,
            }
        };
        match &result {
            Ok(bytes) => {
                m.call("ok");
                m.call_seconds.observe(started.elapsed().as_secs_f64());
                if let (Some(key), Some(ttl)) = (cache_key, options.cache_ttl)
                    && let Ok(mut c) = self.inner.cache.lock()
                {
                    c.put(key, bytes.clone(), ttl, Instant::now());
                }
            }
            Err(CallError::Timeout(_)) => m.call("timeout"),
            Err(CallError::Remote(..)) => m.call("remote_error"),
            Err(CallError::BreakerOpen { .. }) => m.call("breaker_open"),
            Err(_) => m.call("failed"),
        }
        result
    }

    fn check_breaker(&self, peer: PeerId) -> Result<Permit, CallError> {
        let mut permit = Permit {
            inner: self.inner.clone(),
            peer,
            probe: false,
        };
        let Ok(mut b) = self.inner.breakers.lock() else {
            return Ok(permit);
        };
        let now = Instant::now();
        if !b.contains_key(&peer) && b.len() >= MAX_BREAKERS {
            // Forget closed breakers first; they hold little information.
            b.retain(|_, br| br.state(now) != BreakerState::Closed);
            if b.len() >= MAX_BREAKERS {
                // Every remembered peer is failing: this one goes unguarded
                // rather than growing the map.
                return Ok(permit);
            }
        }
        let entry = b
            .entry(peer)
            .or_insert_with(|| Breaker::new(self.inner.config.breaker));
        permit.probe = entry
            .allow(now)
            .map_err(|retry_in| CallError::BreakerOpen { peer, retry_in })?;
        Ok(permit)
    }

    /// Records an attempt's outcome in the peer's breaker. An outcome that
    /// says nothing about the peer ends a probe without deciding it.
    fn record<T>(&self, permit: Permit, r: &Result<T, CallError>) {
        let peer = permit.peer;
        let Ok(mut b) = self.inner.breakers.lock() else {
            return;
        };
        let now = Instant::now();
        let Some(br) = b.get_mut(&peer) else { return };
        let before = br.state(now);
        match r {
            Ok(_) => br.on_success(),
            Err(e) if e.counts_against_peer() => {
                br.on_failure(now);
                if br.state(now) == BreakerState::Open {
                    tracing::info!(%peer, error = %e, "circuit breaker open");
                }
            }
            // An application error still proves the peer answers.
            Err(CallError::Remote(..)) => br.on_success(),
            Err(_) => br.end_probe(),
        }
        // Decided here (the lock is held, so no other probe started).
        let mut permit = permit;
        permit.probe = false;
        // Recount only when this peer's state changed (not on every call).
        if br.state(now) != before {
            let open = b
                .values()
                .filter(|br| br.state(now) != BreakerState::Closed)
                .count();
            self.inner.metrics.breakers_open.set(open as i64);
        }
    }

    /// Sets how to reach a peer that no stream can be opened to (no
    /// connection, no known address). Only the first call takes effect.
    pub fn set_connector(&self, connector: Connector) {
        let _ = self.inner.connector.set(connector);
    }

    async fn open(&self, peer: PeerId, stage: &AtomicU8) -> Result<Stream, CallError> {
        let mut control = self.inner.control.clone();
        let mut tries = 0;
        let mut reached = false;
        loop {
            tries += 1;
            match control.open_stream(peer, PROTOCOL).await {
                Ok(s) => return Ok(s),
                // libp2p-stream learns of a new inbound connection a moment
                // after the dialer sees it up; a call made in that moment
                // finds "no connection" (and no address to dial). One short
                // wait covers it.
                Err(libp2p_stream::OpenStreamError::Io(e))
                    if e.kind() == std::io::ErrorKind::NotConnected && tries == 1 =>
                {
                    tokio::time::sleep(OPEN_RETRY).await;
                }
                Err(e) => {
                    // A peer we know no address of may still be found.
                    if !reached
                        && let Some(connect) = self.inner.connector.get()
                        && matches!(e, libp2p_stream::OpenStreamError::Io(_))
                    {
                        reached = true;
                        stage.store(Stage::Lookup as u8, Ordering::Relaxed);
                        tracing::debug!(%peer, error = %e, "no stream; looking the peer up");
                        if connect(peer).await {
                            stage.store(Stage::Open as u8, Ordering::Relaxed);
                            continue;
                        }
                    }
                    return Err(CallError::Stream {
                        peer,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    /// Takes the stream opened ahead for `peer`, if one is ready, and
    /// notes this call. When calls to the peer come in a run (this one
    /// within `warm_stream_ttl` of the last, or it found a stream ready),
    /// a stream for the next call is opened in the background.
    fn take_warm(&self, peer: PeerId) -> Option<Stream> {
        let ttl = self.inner.config.warm_stream_ttl;
        if ttl.is_zero() {
            return None;
        }
        let now = Instant::now();
        let mut w = self.inner.warm.lock().ok()?;
        if !w.peers.contains_key(&peer) {
            if w.peers.len() >= MAX_WARM_PEERS {
                w.peers.retain(|_, p| {
                    !matches!(p.stream, WarmStream::None) || now.duration_since(p.last_call) < ttl
                });
            }
            if w.peers.len() < MAX_WARM_PEERS {
                w.peers.insert(
                    peer,
                    WarmPeer {
                        last_call: now,
                        stream: WarmStream::None,
                    },
                );
            }
            return None;
        }
        let p = w.peers.get_mut(&peer)?;
        let in_run = now.duration_since(p.last_call) < ttl;
        p.last_call = now;
        let taken = match std::mem::replace(&mut p.stream, WarmStream::None) {
            WarmStream::Ready(s, _) => {
                self.inner.metrics.warm_streams.dec();
                Some(s)
            }
            other => {
                p.stream = other;
                None
            }
        };
        if (in_run || taken.is_some()) && matches!(p.stream, WarmStream::None) {
            p.stream = WarmStream::Opening;
            drop(w);
            self.open_ahead(peer, ttl);
        }
        taken
    }

    /// Opens a stream to `peer` for its next call and keeps it for `ttl`
    /// (dropping it then: the callee sees it close unused).
    fn open_ahead(&self, peer: PeerId, ttl: Duration) {
        let rpc = self.clone();
        tokio::spawn(async move {
            let mut control = rpc.inner.control.clone();
            let opened = tokio::time::timeout(ttl, control.open_stream(peer, PROTOCOL)).await;
            let generation = {
                let Ok(mut w) = rpc.inner.warm.lock() else {
                    return;
                };
                let generation = w.next_gen;
                w.next_gen += 1;
                let Some(p) = w.peers.get_mut(&peer) else {
                    return;
                };
                match opened {
                    Ok(Ok(s)) => {
                        p.stream = WarmStream::Ready(s, generation);
                        rpc.inner.metrics.warm_streams.inc();
                    }
                    _ => {
                        p.stream = WarmStream::None;
                        return;
                    }
                }
                generation
            };
            tokio::time::sleep(ttl).await;
            if let Ok(mut w) = rpc.inner.warm.lock()
                && let Some(p) = w.peers.get_mut(&peer)
                && matches!(p.stream, WarmStream::Ready(_, g) if g == generation)
            {
                p.stream = WarmStream::None;
                rpc.inner.metrics.warm_streams.dec();
            }
        });
    }

    async fn attempt(
        &self,
        peer: PeerId,
        method: &str,
        payload: &[u8],
        left: Duration,
        stage: &AtomicU8,
    ) -> Result<Vec<u8>, CallError> {
        let (mut stream, warm) = match self.take_warm(peer) {
            Some(s) => {
                self.inner.metrics.warm_streams_used.inc();
                (s, true)
            }
            None => (self.open(peer, stage).await?, false),
        };
        stage.store(Stage::Write as u8, Ordering::Relaxed);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let cfg = &self.inner.config;
        let mut out = Vec::new();
        Frame::request(id, method, Some(left), payload.to_vec())
            .encode(Some(cfg.compress_above), &mut out);
        let broken = |e: std::io::Error| CallError::Stream {
            peer,
            reason: e.to_string(),
        };
        let mut written = stream.write_all(&out).await;
        if written.is_err() && warm {
            // The stream opened ahead went stale (its connection closed):
            // the request did not get through, so a new stream takes it
            // at once.
            tracing::debug!(%peer, "stream opened ahead was closed; opening a new one");
            stream = self.open(peer, stage).await?;
            written = stream.write_all(&out).await;
        }
        if written.is_err() {
            // The peer refused the call before reading it (overloaded, rate
            // limited: its error frame may be waiting), or stopped the
            // stream before taking it: then it was never handled (the
            // node drops inbound streams when their queue is full).
            let wait = left.min(REFUSAL_READ);
            if let Ok(Ok(f)) =
                tokio::time::timeout(wait, read_frame(&mut stream, cfg.max_frame_size)).await
                && f.kind == Kind::Error
            {
                return expect_answer(peer, id, f, Kind::Response);
            }
            return Err(CallError::Dropped { peer });
        }
        // On QUIC, the callee may answer and drop the stream (stopping our
        // sending side) before our flush returns: the answer is still
        // there to read, so a failed flush only counts if reading fails.
        let flushed = stream.flush().await;
        stage.store(Stage::Answer as u8, Ordering::Relaxed);
        let frame = match read_frame(&mut stream, cfg.max_frame_size).await {
            Ok(f) => f,
            Err(ReadError::Closed | ReadError::Io(_)) if flushed.is_err() => {
                return Err(CallError::Dropped { peer });
            }
            Err(e) => {
                return Err(match flushed {
                    Err(f) => broken(f),
                    Ok(()) => answer_error(peer, e),
                });
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.close()).await;
        expect_answer(peer, id, frame, Kind::Response)
    }

    /// Calls `method` at `peer` and returns its streamed answer: items as
    /// they arrive (the stream is read only as fast as the caller takes
    /// items, which is the backpressure), ending with `None` after the
    /// handler's end of stream.
    pub async fn call_stream_raw(
        &self,
        peer: PeerId,
        method: &str,
        payload: Vec<u8>,
        deadline: Option<Duration>,
    ) -> Result<BoxStream<'static, Result<Vec<u8>, CallError>>, CallError> {
        check_size(&payload, method, self.inner.config.max_frame_size)?;
        let busy = Busy::new(&self.inner.outbound, peer);
        let (deadline, budget) = self.deadline_for(deadline);
        let permit = self.check_breaker(peer)?;
        let cfg = self.inner.config.clone();
        let opened = tokio::time::timeout_at(deadline.into(), self.open(peer, &AtomicU8::new(0)))
            .await
            .map_err(|_| CallError::Timeout(budget))
            .and_then(|r| r);
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                self.record(permit, &Err::<(), _>(clone_kind(&e)));
                return Err(e);
            }
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::new();
        let left = deadline.saturating_duration_since(Instant::now());
        Frame::request(id, method, Some(left), payload).encode(Some(cfg.compress_above), &mut out);
        let broken = |e: std::io::Error| CallError::Stream {
            peer,
            reason: e.to_string(),
        };
        let written = tokio::time::timeout_at(deadline.into(), async {
            stream.write_all(&out).await.map_err(broken)?;
            // A failed flush shows up when the answer is read (see `attempt`).
            let _ = stream.flush().await;
            Ok::<(), CallError>(())
        })
        .await
        .map_err(|_| CallError::Timeout(budget))
        .and_then(|r| r);
        if let Err(e) = written {
            self.record(permit, &Err::<(), _>(clone_kind(&e)));
            return Err(e);
        }
        // The first frame (or its absence) decides the breaker; the peer
        // counts as busy until the caller drops the stream of items.
        let rpc = self.clone();
        let state = (stream, Some(permit), busy);
        let items = futures::stream::unfold(Some(state), move |state| {
            let max = cfg.max_frame_size;
            let rpc = rpc.clone();
            async move {
                let (mut s, mut permit, busy) = state?;
                let read = tokio::time::timeout_at(deadline.into(), read_frame(&mut s, max)).await;
                let frame = match read {
                    Err(_) => Err(CallError::Timeout(budget)),
                    Ok(Err(e)) => Err(answer_error(peer, e)),
                    Ok(Ok(f)) if f.kind == Kind::Error => Err(error_of(peer, f)),
                    Ok(Ok(f)) => Ok(f),
                };
                if let Some(p) = permit.take() {
                    rpc.record(p, &frame.as_ref().map(|_| ()).map_err(clone_kind));
                }
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => return Some((Err(e), None)),
                };
                match frame.kind {
                    Kind::Item if frame.id == id => {
                        Some((Ok(frame.payload), Some((s, permit, busy))))
                    }
                    Kind::End if frame.id == id => None,
                    _ => Some((expect_answer(peer, id, frame, Kind::Item), None)),
                }
            }
        });
        Ok(items.boxed())
    }

    /// Calls `method` at every peer of `peers` (at most
    /// `max_group_concurrency` at once) and returns when `k` have answered
    /// successfully (or all have finished); calls still running then are
    /// cancelled, and calls not yet started count as cancelled too.
    pub async fn multicast(
        &self,
        peers: &[PeerId],
        method: &str,
        payload: Vec<u8>,
        k: usize,
        options: CallOptions,
    ) -> Multicast {
        let call = |p: PeerId| {
            let (payload, options) = (payload.clone(), options.clone());
            async move { (p, self.call_raw(p, method, payload, options).await) }
        };
        let mut waiting = peers.iter().copied();
        let mut running = futures::stream::FuturesUnordered::new();
        for p in waiting
            .by_ref()
            .take(self.inner.config.max_group_concurrency)
        {
            running.push(call(p));
        }
        let mut out = Multicast::default();
        while out.answers.len() < k {
            let Some((peer, r)) = running.next().await else {
                break;
            };
            match r {
                Ok(bytes) => out.answers.push((peer, bytes)),
                Err(e) => out.failures.push((peer, e)),
            }
            if out.answers.len() < k
                && let Some(p) = waiting.next()
            {
                running.push(call(p));
            }
        }
        out.cancelled = running.len() + waiting.count();
        out
    }

    /// Calls `method` at `target` through `proxy` (a peer that can reach
    /// `target` and has `rpc.proxy` on). The deadline covers both hops.
    pub async fn call_via(
        &self,
        proxy: PeerId,
        target: PeerId,
        method: &str,
        payload: Vec<u8>,
        options: CallOptions,
    ) -> Result<Vec<u8>, CallError> {
        let target_bytes = target.to_bytes();
        let mut p = Vec::with_capacity(payload.len() + target_bytes.len() + method.len() + 4);
        p.push(target_bytes.len() as u8);
        p.extend_from_slice(&target_bytes);
        p.push(method.len().min(crate::wire::MAX_METHOD_LEN) as u8);
        p.extend_from_slice(&method.as_bytes()[..method.len().min(crate::wire::MAX_METHOD_LEN)]);
        p.extend_from_slice(&payload);
        self.call_raw(proxy, PROXY_METHOD, p, options).await
    }

    fn register_proxy(&self) {
        let rpc = Arc::downgrade(&self.inner);
        self.register_raw(PROXY_METHOD, move |ctx, payload| {
            let rpc = rpc.upgrade().map(|inner| Rpc { inner });
            async move {
                let rpc = rpc.ok_or_else(|| RpcError::new(Code::Unavailable, "shutting down"))?;
                let cfg = &rpc.inner.config;
                if !cfg.proxy {
                    return Err(RpcError::new(
                        Code::NotFound,
                        "this node does not proxy (rpc.proxy = false)",
                    ));
                }
                let bad =
                    |why: &str| RpcError::new(Code::BadRequest, format!("proxy request: {why}"));
                let mut b = payload.as_slice();
                let n = *b.first().ok_or_else(|| bad("empty"))? as usize;
                let target = b.get(1..1 + n).ok_or_else(|| bad("truncated peer id"))?;
                let target = PeerId::from_bytes(target).map_err(|_| bad("bad peer id"))?;
                b = &b[1 + n..];
                let m = *b.first().ok_or_else(|| bad("no method"))? as usize;
                let method = b.get(1..1 + m).ok_or_else(|| bad("truncated method"))?;
                let method = std::str::from_utf8(method)
                    .map_err(|_| bad("method not UTF-8"))?
                    .to_owned();
                if method == PROXY_METHOD {
                    return Err(bad("a proxy does not proxy to another proxy"));
                }
                let inner_payload = b[1 + m..].to_vec();
                let Some(_slot) = take_slot(&rpc.inner.proxied, (), cfg.max_proxied) else {
                    return Err(RpcError::new(
                        Code::Overloaded,
                        format!("{} proxied calls in progress", cfg.max_proxied),
                    ));
                };
                let Some(_caller_slot) = take_slot(
                    &rpc.inner.proxied_per_peer,
                    ctx.peer,
                    cfg.max_proxied_per_peer,
                ) else {
                    return Err(RpcError::new(
                        Code::Overloaded,
                        format!(
                            "{} proxied calls in progress for this peer",
                            cfg.max_proxied_per_peer
                        ),
                    ));
                };
                tracing::debug!(from = %ctx.peer, %target, %method, "proxying a call");
                // The deadline is inherited (task-local) from the caller.
                match rpc
                    .call_raw(target, &method, inner_payload, CallOptions::default())
                    .await
                {
                    Ok(bytes) => Ok(Response::One(bytes)),
                    Err(CallError::Remote(e, _)) => Err(e),
                    Err(CallError::Timeout(d)) => Err(RpcError::new(
                        Code::DeadlineExceeded,
                        format!("target did not answer within {d:?}"),
                    )),
                    Err(e) => Err(RpcError::new(
                        Code::Unavailable,
                        format!("cannot reach {target}: {e}"),
                    )),
                }
            }
        });
    }

    /// Answers calls arriving on `incoming` until it ends.
    pub async fn serve(self, mut incoming: impl futures::Stream<Item = (PeerId, Stream)> + Unpin) {
        while let Some((peer, stream)) = incoming.next().await {
            let allowed = self
                .inner
                .limiter
                .lock()
                .map(|mut l| l.allow(&peer, Instant::now()))
                .unwrap_or(true);
            let rpc = self.clone();
            tokio::spawn(async move { rpc.serve_one(peer, stream, allowed).await });
        }
    }

    /// Refuses a call before its request is read (with id 0: the caller
    /// takes any error frame as its answer), then closes the stream.
    async fn refuse(&self, mut stream: Stream, code: Code, message: String, outcome: &'static str) {
        self.inner.metrics.served(outcome);
        let frame = Frame::error(0, &body(&RpcError::new(code, message)));
        let _ = write(&mut stream, &frame, None, REFUSAL_TIME).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.close()).await;
    }

    async fn serve_one(&self, peer: PeerId, mut stream: Stream, allowed: bool) {
        let cfg = &self.inner.config;
        let m = &self.inner.metrics;
        // Limits that do not need the request are checked before reading
        // it, so a refused caller costs no buffer and holds no slot.
        if !allowed {
            let msg = format!("more than {} calls per second", cfg.rate_per_second);
            return self
                .refuse(stream, Code::RateLimited, msg, "rate_limited")
                .await;
        }
        let Some(_total_slot) = take_slot(&self.inner.inbound_total, (), cfg.max_inbound_total)
        else {
            let msg = format!("{} calls in progress", cfg.max_inbound_total);
            return self
                .refuse(stream, Code::Overloaded, msg, "overloaded")
                .await;
        };
        let Some(_peer_slot) =
            take_slot(&self.inner.inbound_per_peer, peer, cfg.max_inbound_per_peer)
        else {
            let msg = format!(
                "{} calls in progress for this peer",
                cfg.max_inbound_per_peer
            );
            return self
                .refuse(stream, Code::Overloaded, msg, "overloaded")
                .await;
        };
        let frame = match tokio::time::timeout(
            cfg.request_timeout,
            read_frame(&mut stream, cfg.max_frame_size),
        )
        .await
        {
            Ok(Ok(f)) if f.kind == Kind::Request => f,
            Ok(Ok(f)) => {
                tracing::debug!(%peer, kind = ?f.kind, "rpc stream did not start with a request");
                m.served("bad_request");
                return;
            }
            // A stream the caller opened ahead and did not need.
            Ok(Err(ReadError::Closed)) => {
                m.served("unused");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "bad rpc request");
                // A frame too large, or garbage: answer if we can, then close.
                let msg = e.to_string();
                return self
                    .refuse(stream, Code::BadRequest, msg, "bad_request")
                    .await;
            }
            Err(_) => {
                tracing::debug!(%peer, "rpc request not received in time");
                m.served("request_timeout");
                return;
            }
        };
        let id = frame.id;
        let reject = |code, msg: String| Frame::error(id, &body(&RpcError::new(code, msg)));
        let Some(_method_slot) = take_slot(
            &self.inner.inbound_per_method,
            frame.method.clone(),
            cfg.max_inbound_per_method,
        ) else {
            m.served("overloaded");
            let msg = format!(
                "{} calls in progress for {}",
                cfg.max_inbound_per_method, frame.method
            );
            let _ = write(
                &mut stream,
                &reject(Code::Overloaded, msg),
                None,
                REFUSAL_TIME,
            )
            .await;
            return;
        };
        let handler = self
            .inner
            .handlers
            .lock()
            .ok()
            .and_then(|h| h.get(&frame.method).cloned());
        let Some(handler) = handler else {
            m.served("not_found");
            let msg = format!("no method {:?}", frame.method);
            let _ = write(
                &mut stream,
                &reject(Code::NotFound, msg),
                None,
                REFUSAL_TIME,
            )
            .await;
            return;
        };
        let budget = frame
            .deadline
            .unwrap_or(cfg.max_deadline)
            .min(cfg.max_deadline);
        let deadline = Instant::now() + budget;
        let ctx = Context { peer, id, deadline };
        let handler = match handler {
            Handler::Call(h) => h,
            Handler::Bytes(h) => {
                // Accept, then the handler owns the stream, for at most
                // `byte_stream_lifetime`.
                let accept = Frame::answer(Kind::Response, id, Vec::new());
                if write(&mut stream, &accept, None, answer_time(deadline))
                    .await
                    .is_err()
                {
                    m.served("write_failed");
                    return;
                }
                m.inbound_in_flight.inc();
                let ended =
                    tokio::time::timeout(cfg.byte_stream_lifetime, h(ctx, frame.payload, stream))
                        .await;
                m.inbound_in_flight.dec();
                if ended.is_err() {
                    tracing::debug!(%peer, method = %frame.method, "byte stream reached its lifetime");
                    m.served("lifetime_exceeded");
                } else {
                    m.served("bytes");
                }
                return;
            }
        };
        m.inbound_in_flight.inc();
        // The caller sends nothing after its request: anything on the read
        // side (a cancel frame, the end of the stream, a reset) means it
        // gave up, and the handler is dropped with whatever calls it made.
        let run = tokio::time::timeout(
            budget,
            DEADLINE.scope(deadline, handler(ctx, frame.payload)),
        );
        let reply = {
            let mut byte = [0u8; 1];
            let gone = futures::io::AsyncReadExt::read(&mut stream, &mut byte);
            futures::pin_mut!(run);
            match futures::future::select(run, gone).await {
                futures::future::Either::Left((reply, _)) => Some(reply),
                futures::future::Either::Right(_) => None,
            }
        };
        let Some(reply) = reply else {
            m.inbound_in_flight.dec();
            m.served("cancelled");
            tracing::debug!(%peer, id, "caller gave up; handler cancelled");
            return;
        };
        let compress = Some(cfg.compress_above);
        let within = answer_time(deadline);
        let outcome = match reply {
            Err(_) => {
                let msg = format!("no answer within {budget:?}");
                let _ = write(
                    &mut stream,
                    &reject(Code::DeadlineExceeded, msg),
                    None,
                    within,
                )
                .await;
                "deadline_exceeded"
            }
            Ok(Err(e)) => {
                let _ = write(&mut stream, &Frame::error(id, &body(&e)), None, within).await;
                "error"
            }
            Ok(Ok(Response::One(bytes))) => {
                let answer = Frame::answer(Kind::Response, id, bytes);
                if write(&mut stream, &answer, compress, within).await.is_ok() {
                    "ok"
                } else {
                    "write_failed"
                }
            }
            Ok(Ok(Response::Stream(mut items))) => {
                // One item is written (and flushed into the stream's
                // window) before the next is taken: backpressure.
                let mut outcome = "ok";
                loop {
                    let next = tokio::time::timeout_at(deadline.into(), items.next()).await;
                    let frame = match next {
                        Err(_) => {
                            outcome = "deadline_exceeded";
                            reject(
                                Code::DeadlineExceeded,
                                format!("stream not finished within {budget:?}"),
                            )
                        }
                        Ok(None) => Frame::answer(Kind::End, id, Vec::new()),
                        Ok(Some(Ok(item))) => Frame::answer(Kind::Item, id, item),
                        Ok(Some(Err(e))) => {
                            outcome = "error";
                            Frame::error(id, &body(&e))
                        }
                    };
                    let last = frame.kind != Kind::Item;
                    let within = answer_time(deadline);
                    if write(&mut stream, &frame, compress, within).await.is_err() {
                        outcome = "write_failed";
                        break;
                    }
                    if last {
                        break;
                    }
                }
                outcome
            }
        };
        m.inbound_in_flight.dec();
        m.served(outcome);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.close()).await;
    }
}

/// A copy of an error good enough for the breaker's bookkeeping.
fn clone_kind(e: &CallError) -> CallError {
    match e {
        CallError::Remote(r, p) => CallError::Remote(r.clone(), *p),
        CallError::Timeout(d) => CallError::Timeout(*d),
        CallError::BreakerOpen { peer, retry_in } => CallError::BreakerOpen {
            peer: *peer,
            retry_in: *retry_in,
        },
        CallError::Stream { peer, reason } => CallError::Stream {
            peer: *peer,
            reason: reason.clone(),
        },
        CallError::BadAnswer { peer, reason } => CallError::BadAnswer {
            peer: *peer,
            reason: reason.clone(),
        },
        CallError::Encode(s) => CallError::Encode(s.clone()),
        CallError::Dropped { peer } => CallError::Dropped { peer: *peer },
        CallError::TooLarge { method, size, max } => CallError::TooLarge {
            method: method.clone(),
            size: *size,
            max: *max,
        },
    }
}

fn body(e: &RpcError) -> ErrorBody {
    ErrorBody {
        code: e.code.number(),
        retryable: e.retryable,
        message: e.message.clone(),
    }
}

/// Longest wait for a caller to take one answer frame (it reads nothing:
/// its window stays full); then the stream is dropped. Answers are also
/// given up shortly after the caller's deadline ([`answer_time`]).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time to write a refusal (rate limited, overloaded) before the request
/// is read.
const REFUSAL_TIME: Duration = Duration::from_secs(2);
/// How long a caller whose request could not be written looks for the
/// refusal the peer may have sent.
const REFUSAL_READ: Duration = Duration::from_secs(1);
/// Longest wait for a stream to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of a request frame besides its payload, at most (version, kind,
/// flags, two varints, method).
const FRAME_OVERHEAD: usize = 3 + 10 + 10 + 2 + crate::wire::MAX_METHOD_LEN;

/// Refuses a request that cannot fit in one frame before anything is sent.
fn check_size(payload: &[u8], method: &str, max: usize) -> Result<(), CallError> {
    if payload.len() + FRAME_OVERHEAD > max {
        return Err(CallError::TooLarge {
            method: method.to_owned(),
            size: payload.len(),
            max,
        });
    }
    Ok(())
}

/// How long an answer may take to write: until a little after the
/// caller's deadline (it stops reading then), and never beyond
/// [`WRITE_TIMEOUT`].
fn answer_time(deadline: Instant) -> Duration {
    (deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1)).min(WRITE_TIMEOUT)
}

async fn write(
    stream: &mut Stream,
    frame: &Frame,
    compress: Option<usize>,
    within: Duration,
) -> std::io::Result<()> {
    let mut out = Vec::new();
    frame.encode(compress, &mut out);
    tokio::time::timeout(within, async {
        stream.write_all(&out).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the caller does not read"))?
}

fn answer_error(peer: PeerId, e: ReadError) -> CallError {
    match e {
        ReadError::Closed | ReadError::Io(_) => CallError::Stream {
            peer,
            reason: e.to_string(),
        },
        other => CallError::BadAnswer {
            peer,
            reason: other.to_string(),
        },
    }
}

/// The error an error frame carries (whatever its id: a call refused
/// before its request was read is answered with id 0).
fn error_of(peer: PeerId, frame: Frame) -> CallError {
    match frame.error_body() {
        Ok(e) => CallError::Remote(
            RpcError {
                code: Code::from_number(e.code),
                message: e.message,
                retryable: e.retryable,
            },
            peer,
        ),
        Err(e) => CallError::BadAnswer {
            peer,
            reason: e.to_string(),
        },
    }
}

fn expect_answer(peer: PeerId, id: u64, frame: Frame, want: Kind) -> Result<Vec<u8>, CallError> {
    if frame.kind == Kind::Error {
        return Err(error_of(peer, frame));
    }
    if frame.id != id {
        return Err(CallError::BadAnswer {
            peer,
            reason: format!("answer for call {} to call {id}", frame.id),
        });
    }
    if frame.kind != want {
        return Err(CallError::BadAnswer {
            peer,
            reason: format!("expected {want:?}, got {:?}", frame.kind),
        });
    }
    Ok(frame.payload)
}
