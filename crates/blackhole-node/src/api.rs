//! The HTTP/JSON control API (`/v1/...`, `/metrics`).
//!
//! Served on loopback by default; any other address requires a bearer
//! token (checked by `Config::validate`). Every route, `/metrics` included,
//! requires `Authorization: Bearer <token>` when a token is configured.

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use libp2p_core::Multiaddr;
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    Handle,
    node::{Error, PeerInfo},
    perf::Report,
};

/// The API version in the paths.
pub const VERSION: u32 = 1;

/// An error response: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error of an [`ErrorBody`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable machine-readable code.
    pub code: String,
    /// A human-readable message.
    pub message: String,
}

struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.1.into(),
                message: self.2,
            },
        };
        (self.0, Json(body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code) = match &e {
            Error::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "stopped"),
            Error::InvalidAddress { .. } => (StatusCode::BAD_REQUEST, "invalid_address"),
            Error::Dial(_) => (StatusCode::BAD_GATEWAY, "dial_failed"),
            Error::TooManyDials => (StatusCode::TOO_MANY_REQUESTS, "too_many_dials"),
            Error::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Error::Stream { .. } => (StatusCode::BAD_GATEWAY, "stream_failed"),
            Error::Dht(_) => (StatusCode::BAD_GATEWAY, "dht_failed"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::Rendezvous(_) => (StatusCode::BAD_GATEWAY, "rendezvous_failed"),
            Error::DhtDisabled => (StatusCode::CONFLICT, "dht_disabled"),
            Error::TooManyQueries => (StatusCode::TOO_MANY_REQUESTS, "too_many_queries"),
            Error::PubsubDisabled => (StatusCode::CONFLICT, "pubsub_disabled"),
            Error::RpcDisabled => (StatusCode::CONFLICT, "rpc_disabled"),
            Error::Pubsub(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::Publish(blackhole_pubsub::PublishError::NoSubscribers { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "no_subscribers")
            }
            Error::Publish(blackhole_pubsub::PublishError::TooLarge { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            }
            Error::Publish(blackhole_pubsub::PublishError::Duplicate { .. }) => {
                (StatusCode::CONFLICT, "duplicate")
            }
            Error::Publish(_) => (StatusCode::BAD_GATEWAY, "publish_failed"),
        };
        ApiError(status, code, e.to_string())
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "bad_request", message.into())
}

/// `GET /v1/id`.
#[derive(Debug, Serialize, Deserialize)]
pub struct IdResponse {
    /// Our peer id.
    pub peer_id: PeerId,
    /// Our agent version.
    pub agent_version: String,
    /// Our listen addresses.
    pub listen_addrs: Vec<Multiaddr>,
    /// The API version.
    pub api_version: u32,
}

/// `POST /v1/dial`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DialRequest {
    /// The address to dial, optionally ending in `/p2p/<peer>`.
    pub addr: String,
}

/// A response naming a peer.
#[derive(Debug, Serialize, Deserialize)]
pub struct PeerResponse {
    /// The peer.
    pub peer_id: PeerId,
}

/// `POST /v1/disconnect`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DisconnectResponse {
    /// Whether there was a connection to close.
    pub disconnected: bool,
}

/// `POST /v1/ping` and `POST /v1/perf` target a peer id or an address.
#[derive(Debug, Serialize, Deserialize)]
pub struct PingRequest {
    /// A peer id (connected or known) or a multiaddr to dial first.
    pub target: String,
}

/// `POST /v1/ping`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PingResponse {
    /// The peer pinged.
    pub peer_id: PeerId,
    /// The round trip, in milliseconds.
    pub rtt_ms: f64,
}

/// `POST /v1/perf`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PerfRequest {
    /// A peer id or a multiaddr.
    pub target: String,
    /// Bytes to send.
    pub upload_bytes: u64,
    /// Bytes to receive.
    pub download_bytes: u64,
}

/// `POST /v1/perf`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PerfResponse {
    /// The peer measured.
    pub peer_id: PeerId,
    /// The measurement.
    #[serde(flatten)]
    pub report: Report,
}

async fn resolve(handle: &Handle, target: &str) -> Result<PeerId, ApiError> {
    let target = target.trim();
    if let Ok(peer) = target.parse::<PeerId>() {
        return Ok(peer);
    }
    match target.parse::<Multiaddr>() {
        Ok(addr) => Ok(handle.dial(addr).await?),
        Err(e) => Err(bad_request(format!(
            "{target:?} is neither a peer id nor a multiaddr ({e})"
        ))),
    }
}

async fn id(State(h): State<Handle>) -> Result<Json<IdResponse>, ApiError> {
    Ok(Json(IdResponse {
        peer_id: h.peer_id(),
        agent_version: h.config().agent_version(),
        listen_addrs: h.listen_addrs().await?,
        api_version: VERSION,
    }))
}

async fn peers(State(h): State<Handle>) -> Result<Json<Vec<PeerInfo>>, ApiError> {
    Ok(Json(h.peers().await?))
}

async fn nat(State(h): State<Handle>) -> Result<Json<blackhole_nat::Status>, ApiError> {
    Ok(Json(h.nat_status().await?))
}

async fn dial(
    State(h): State<Handle>,
    Json(req): Json<DialRequest>,
) -> Result<Json<PeerResponse>, ApiError> {
    let addr: Multiaddr = req
        .addr
        .trim()
        .parse()
        .map_err(|e| bad_request(format!("invalid multiaddr {:?}: {e}", req.addr)))?;
    Ok(Json(PeerResponse {
        peer_id: h.dial(addr).await?,
    }))
}

async fn disconnect(
    State(h): State<Handle>,
    Json(req): Json<PeerResponse>,
) -> Result<Json<DisconnectResponse>, ApiError> {
    Ok(Json(DisconnectResponse {
        disconnected: h.disconnect(req.peer_id).await?,
    }))
}

async fn ping(
    State(h): State<Handle>,
    Json(req): Json<PingRequest>,
) -> Result<Json<PingResponse>, ApiError> {
    let peer = resolve(&h, &req.target).await?;
    let rtt = h.ping(peer).await?;
    Ok(Json(PingResponse {
        peer_id: peer,
        rtt_ms: rtt.as_secs_f64() * 1000.0,
    }))
}

async fn perf(
    State(h): State<Handle>,
    Json(req): Json<PerfRequest>,
) -> Result<Json<PerfResponse>, ApiError> {
    let peer = resolve(&h, &req.target).await?;
    let report = h.perf(peer, req.upload_bytes, req.download_bytes).await?;
    Ok(Json(PerfResponse {
        peer_id: peer,
        report,
    }))
}

/// A DHT key, and for `put` a value: UTF-8 text, or hex with `value_hex`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DhtRequest {
    /// The key (UTF-8); not needed by table, stats and bootstrap.
    #[serde(default)]
    pub key: String,
    /// The value as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value as hex bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_hex: Option<String>,
}

/// `POST /v1/dht/find-peer` and `/v1/peers/protect`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PeerRequest {
    /// The peer.
    pub peer_id: PeerId,
    /// For protect: on (default) or off.
    #[serde(default = "yes")]
    pub protected: bool,
}

fn yes() -> bool {
    true
}

/// Largest DHT key accepted from the API, in bytes.
pub const MAX_DHT_KEY: usize = 1024;

fn dht_key(req: &DhtRequest) -> Result<Vec<u8>, ApiError> {
    if req.key.is_empty() || req.key.len() > MAX_DHT_KEY {
        return Err(bad_request(format!("key must be 1 to {MAX_DHT_KEY} bytes")));
    }
    Ok(req.key.as_bytes().to_vec())
}

async fn dht(
    State(h): State<Handle>,
    axum::extract::Path(op): axum::extract::Path<String>,
    body: Option<Json<DhtRequest>>,
) -> Result<Json<crate::dht::Reply>, ApiError> {
    use crate::DhtCommand as C;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let cmd = match op.as_str() {
        "put" => {
            let value = match (&req.value, &req.value_hex) {
                (Some(v), None) => v.as_bytes().to_vec(),
                (None, Some(hex)) => crate::dht::decode_hex(hex)
                    .ok_or_else(|| bad_request("value_hex is not hex"))?,
                _ => return Err(bad_request("put needs exactly one of value and value_hex")),
            };
            C::put(dht_key(&req)?, value)
        }
        "get" => C::get(dht_key(&req)?),
        "remove" => C::remove(dht_key(&req)?),
        "provide" => C::provide(dht_key(&req)?),
        "stop-providing" => C::stop_providing(dht_key(&req)?),
        "providers" => C::providers(dht_key(&req)?),
        "closest" => C::closest(dht_key(&req)?),
        "table" => C::table(),
        "bootstrap" => C::bootstrap(),
        "stats" => C::stats(),
        other => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no DHT operation {other:?}"),
            ));
        }
    };
    Ok(Json(h.dht(cmd).await?))
}

async fn find_peer(
    State(h): State<Handle>,
    Json(req): Json<PeerRequest>,
) -> Result<Json<crate::dht::Reply>, ApiError> {
    Ok(Json(
        h.dht(crate::DhtCommand::find_peer(req.peer_id)).await?,
    ))
}

async fn protect(
    State(h): State<Handle>,
    Json(req): Json<PeerRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    h.protect(req.peer_id, req.protected).await?;
    Ok(Json(
        serde_json::json!({ "peer_id": req.peer_id, "protected": req.protected }),
    ))
}

/// `POST /v1/rendezvous/register`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The rendezvous point.
    pub point: PeerId,
    /// The namespace.
    pub namespace: String,
    /// Requested lifetime in seconds (the point's default if absent).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// `POST /v1/rendezvous/discover`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DiscoverRequest {
    /// The rendezvous point.
    pub point: PeerId,
    /// The namespace (all if absent).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The cookie of a previous discovery, for the next page.
    #[serde(default)]
    pub cookie: Option<String>,
    /// At most this many registrations.
    #[serde(default)]
    pub limit: Option<u64>,
}

async fn rv_register(
    State(h): State<Handle>,
    Json(r): Json<RegisterRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ttl = h
        .rendezvous_register(r.point, r.namespace.clone(), r.ttl_secs)
        .await?;
    Ok(Json(
        serde_json::json!({ "point": r.point, "namespace": r.namespace, "ttl_secs": ttl }),
    ))
}

async fn rv_discover(
    State(h): State<Handle>,
    Json(r): Json<DiscoverRequest>,
) -> Result<Json<crate::rendezvous::Discovered>, ApiError> {
    Ok(Json(
        h.rendezvous_discover(r.point, r.namespace, r.cookie, r.limit)
            .await?,
    ))
}

async fn px(
    State(h): State<Handle>,
    Json(req): Json<PeerRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let peers = h.peer_exchange(req.peer_id).await?;
    Ok(Json(serde_json::json!({ "peers": peers })))
}

/// `POST /v1/pubsub/publish`: exactly one of `data` (text) and
/// `data_base64`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PublishRequest {
    /// The topic.
    pub topic: String,
    /// The payload as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The payload, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// `normal` (default) or `high`.
    #[serde(default)]
    pub priority: blackhole_pubsub::Priority,
    /// Expiry after publishing (`30s`, `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// One line of `GET /v1/pubsub/subscribe`: a message, with its payload
/// also as text when it is UTF-8.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamedMessage {
    /// The message.
    #[serde(flatten)]
    pub message: crate::pubsub::Delivered,
    /// The payload as text, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Query of the pubsub `GET` routes.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PubsubQuery {
    /// `subscribe`: the pattern; `mesh`: the topic or pattern.
    #[serde(default)]
    pub pattern: Option<String>,
    /// `topics`: only topics under this prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `topics`: at most this many (default 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// How often an idle subscription stream sends an empty line, so clients
/// can tell a quiet topic from a dead connection.
pub const SUBSCRIBE_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

async fn publish(
    State(h): State<Handle>,
    Json(r): Json<PublishRequest>,
) -> Result<Json<blackhole_pubsub::Published>, ApiError> {
    use base64::Engine as _;
    let data = match (r.data, r.data_base64) {
        (Some(t), None) => t.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| bad_request(format!("data_base64: {e}")))?,
        _ => {
            return Err(bad_request(
                "publish needs exactly one of data and data_base64",
            ));
        }
    };
    let ttl = r
        .ttl
        .map(|t| humantime::parse_duration(&t).map_err(|e| bad_request(format!("ttl {t:?}: {e}"))))
        .transpose()?;
    let options = blackhole_pubsub::PublishOptions {
        priority: r.priority,
        ttl,
    };
    Ok(Json(h.publish(&r.topic, data, options).await?))
}

async fn subscribe(
    State(h): State<Handle>,
    axum::extract::Query(q): axum::extract::Query<PubsubQuery>,
) -> Result<Response, ApiError> {
    let pattern = q
        .pattern
        .ok_or_else(|| bad_request("subscribe needs ?pattern="))?;
    let sub = h.subscribe(&pattern).await?;
    let mut keepalive = tokio::time::interval(SUBSCRIBE_KEEPALIVE);
    keepalive.reset();
    let lines = futures::stream::unfold((sub, keepalive), |(mut sub, mut keepalive)| async move {
        let line = tokio::select! {
            m = sub.recv() => {
                let m = m?;
                let text = m.text().map(str::to_owned);
                let mut line = serde_json::to_vec(&StreamedMessage { message: m, text }).ok()?;
                line.push(b'\n');
                line
            }
            _ = keepalive.tick() => b"\n".to_vec(),
        };
        Some((Ok::<_, std::convert::Infallible>(line), (sub, keepalive)))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response())
}

async fn topics(
    State(h): State<Handle>,
    axum::extract::Query(q): axum::extract::Query<PubsubQuery>,
) -> Result<Json<crate::pubsub::Topics>, ApiError> {
    let limit = q.limit.unwrap_or(1000).min(10_000);
    Ok(Json(
        h.topics(q.prefix.as_deref().unwrap_or(""), limit).await?,
    ))
}

async fn mesh(
    State(h): State<Handle>,
    axum::extract::Query(q): axum::extract::Query<PubsubQuery>,
) -> Result<Json<crate::pubsub::Mesh>, ApiError> {
    let pattern = q
        .pattern
        .ok_or_else(|| bad_request("mesh needs ?pattern="))?;
    Ok(Json(h.mesh(&pattern).await?))
}

/// `POST /v1/rpc/call`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RpcCallRequest {
    /// The peer to call.
    pub peer_id: PeerId,
    /// The method.
    pub method: String,
    /// The request, as JSON.
    #[serde(default)]
    pub request: serde_json::Value,
    /// The deadline (`5s`, `500ms`); default `rpc.default_deadline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Retry on retryable failures.
    #[serde(default)]
    pub idempotent: bool,
}

/// The answer of `POST /v1/rpc/call`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RpcCallResponse {
    /// The response, as JSON.
    pub response: serde_json::Value,
    /// How long the call took, in milliseconds.
    pub ms: f64,
}

async fn rpc_call(
    State(h): State<Handle>,
    Json(r): Json<RpcCallRequest>,
) -> Result<Json<RpcCallResponse>, ApiError> {
    let deadline = r
        .deadline
        .as_deref()
        .map(|d| {
            humantime::parse_duration(d).map_err(|e| bad_request(format!("deadline {d:?}: {e}")))
        })
        .transpose()?;
    let payload = serde_json::to_vec(&r.request).map_err(|e| bad_request(e.to_string()))?;
    let options = blackhole_rpc::CallOptions {
        deadline,
        idempotent: Some(r.idempotent),
        cache_ttl: None,
    };
    let t = std::time::Instant::now();
    let bytes = h
        .rpc()?
        .call_raw(r.peer_id, &r.method, payload, options)
        .await
        .map_err(rpc_error)?;
    let response = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        use base64::Engine as _;
        serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(&bytes) })
    });
    Ok(Json(RpcCallResponse {
        response,
        ms: t.elapsed().as_secs_f64() * 1000.0,
    }))
}

fn rpc_error(e: blackhole_rpc::CallError) -> ApiError {
    use blackhole_rpc::{CallError as C, Code};
    let (status, code) = match &e {
        C::Remote(r, _) => match r.code {
            Code::BadRequest => (StatusCode::BAD_GATEWAY, "remote_bad_request"),
            Code::NotFound => (StatusCode::BAD_GATEWAY, "remote_not_found"),
            Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Code::Overloaded | Code::RateLimited => {
                (StatusCode::SERVICE_UNAVAILABLE, "remote_overloaded")
            }
            _ => (StatusCode::BAD_GATEWAY, "remote_error"),
        },
        C::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        C::BreakerOpen { .. } => (StatusCode::SERVICE_UNAVAILABLE, "breaker_open"),
        C::Encode(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        C::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        _ => (StatusCode::BAD_GATEWAY, "rpc_failed"),
    };
    ApiError(status, code, e.to_string())
}

async fn rpc_breakers(State(h): State<Handle>) -> Result<Json<serde_json::Value>, ApiError> {
    let b = h.rpc()?.breakers();
    Ok(Json(serde_json::json!({
        "breakers": b.iter().map(|(p, s)| serde_json::json!({ "peer_id": p, "state": s })).collect::<Vec<_>>()
    })))
}

async fn shutdown(State(h): State<Handle>) -> Json<serde_json::Value> {
    tokio::spawn(async move { h.shutdown().await });
    Json(serde_json::json!({ "status": "shutting down" }))
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics(State(h): State<Handle>) -> Response {
    match h.metrics().encode() {
        Ok(text) => (
            [(header::CONTENT_TYPE, blackhole_metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(e) => {
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, "metrics", e.to_string()).into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see /v1/health, /v1/id, /v1/peers, /metrics".into(),
    )
}

async fn authorize(State(token): State<Option<HeaderValue>>, req: Request, next: Next) -> Response {
    if let Some(expected) = &token {
        let given = req.headers().get(header::AUTHORIZATION);
        if given != Some(expected) {
            return ApiError(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The API's routes for `handle`.
pub fn router(handle: Handle) -> Router {
    let token = handle
        .config()
        .api
        .token
        .as_ref()
        .and_then(|t| HeaderValue::from_str(&format!("Bearer {}", t.trim())).ok());
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/id", get(id))
        .route("/v1/peers", get(peers))
        .route("/v1/nat", get(nat))
        .route("/v1/dial", post(dial))
        .route("/v1/disconnect", post(disconnect))
        .route("/v1/ping", post(ping))
        .route("/v1/perf", post(perf))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/dht/find-peer", post(find_peer))
        .route("/v1/dht/{op}", post(dht))
        .route("/v1/peers/protect", post(protect))
        .route("/v1/px", post(px))
        .route("/v1/rendezvous/register", post(rv_register))
        .route("/v1/rendezvous/discover", post(rv_discover))
        .route("/v1/pubsub/publish", post(publish))
        .route("/v1/pubsub/subscribe", get(subscribe))
        .route("/v1/pubsub/topics", get(topics))
        .route("/v1/pubsub/mesh", get(mesh))
        .route("/v1/rpc/call", post(rpc_call))
        .route("/v1/rpc/breakers", get(rpc_breakers))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(handle)
        .layer(middleware::from_fn_with_state(token, authorize))
}

/// Serves the API on `listener` until `stop` is cancelled.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    handle: Handle,
    stop: CancellationToken,
) {
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "control API listening");
    let app = router(handle);
    let result = axum::serve(listener, app)
        // In-flight requests (the shutdown request itself) still finish.
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "control API failed");
    }
}
