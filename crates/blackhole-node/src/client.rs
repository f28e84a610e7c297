//! A client of the control API, as used by the `blackhole-node` CLI.

use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    api::{
        DialRequest, DisconnectResponse, ErrorBody, IdResponse, PeerResponse, PerfRequest,
        PerfResponse, PingRequest, PingResponse,
    },
    node::PeerInfo,
};

/// Errors of API calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API could not be reached.
    #[error("cannot reach the control API at {url} (is `blackhole-node run` running?): {source}")]
    Unreachable { url: String, source: reqwest::Error },
    /// The API answered with an error.
    #[error("{message} ({status}, {code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The answer was not what the API documents.
    #[error("unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },
}

/// A control API client.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Longest line accepted from a subscription stream (a message of
/// `pubsub.max_message_size` in base64, with room to spare).
pub const MAX_STREAM_LINE: usize = 96 * 1024 * 1024;

/// The error of a non-2xx answer: the API's error body, or the raw text.
fn api_error(status: u16, body: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => Error::Api {
            status,
            code: e.error.code,
            message: e.error.message,
        },
        Err(_) => Error::Api {
            status,
            code: "http".into(),
            message: String::from_utf8_lossy(body).trim().to_owned(),
        },
    }
}

fn form_urlencoded(pairs: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Client {
    /// A client of the API at `base` (`http://127.0.0.1:5780`); `timeout`
    /// bounds every request.
    pub fn new(
        base: impl Into<String>,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let base = base.into().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|source| Error::Unreachable {
                url: base.clone(),
                source,
            })?;
        Ok(Self { base, token, http })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, Error> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|source| Error::Unreachable {
            url: url.to_owned(),
            source,
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|source| Error::Unreachable {
            url: url.to_owned(),
            source,
        })?;
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &body));
        }
        serde_json::from_slice(&body).map_err(|e| Error::Protocol {
            url: url.to_owned(),
            reason: e.to_string(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url), &url).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.post(&url).json(body), &url).await
    }

    /// `GET /v1/id`.
    pub async fn id(&self) -> Result<IdResponse, Error> {
        self.get("/v1/id").await
    }

    /// `GET /v1/peers`.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        self.get("/v1/peers").await
    }

    /// `GET /v1/nat`: reachability, NAT type, addresses, relays, hole
    /// punching and UPnP.
    pub async fn nat(&self) -> Result<blackhole_nat::Status, Error> {
        self.get("/v1/nat").await
    }

    /// `POST /v1/dial`.
    pub async fn dial(&self, addr: &str) -> Result<PeerResponse, Error> {
        self.post(
            "/v1/dial",
            &DialRequest {
                addr: addr.to_owned(),
            },
        )
        .await
    }

    /// `POST /v1/disconnect`.
    pub async fn disconnect(&self, peer: crate::PeerId) -> Result<DisconnectResponse, Error> {
        self.post("/v1/disconnect", &PeerResponse { peer_id: peer })
            .await
    }

    /// `POST /v1/ping`.
    pub async fn ping(&self, target: &str) -> Result<PingResponse, Error> {
        self.post(
            "/v1/ping",
            &PingRequest {
                target: target.to_owned(),
            },
        )
        .await
    }

    /// `POST /v1/perf`.
    pub async fn perf(
        &self,
        target: &str,
        upload_bytes: u64,
        download_bytes: u64,
    ) -> Result<PerfResponse, Error> {
        self.post(
            "/v1/perf",
            &PerfRequest {
                target: target.to_owned(),
                upload_bytes,
                download_bytes,
            },
        )
        .await
    }

    /// `POST /v1/dht/<op>` with a key (and a value for `put`).
    pub async fn dht(
        &self,
        op: &str,
        req: &crate::api::DhtRequest,
    ) -> Result<crate::dht::Reply, Error> {
        self.post(&format!("/v1/dht/{op}"), req).await
    }

    /// `POST /v1/dht/find-peer`.
    pub async fn find_peer(&self, peer: crate::PeerId) -> Result<crate::dht::Reply, Error> {
        self.post(
            "/v1/dht/find-peer",
            &crate::api::PeerRequest {
                peer_id: peer,
                protected: true,
            },
        )
        .await
    }

    /// `POST /v1/peers/protect`.
    pub async fn protect(
        &self,
        peer: crate::PeerId,
        protected: bool,
    ) -> Result<serde_json::Value, Error> {
        self.post(
            "/v1/peers/protect",
            &crate::api::PeerRequest {
                peer_id: peer,
                protected,
            },
        )
        .await
    }

    /// `POST /v1/rendezvous/register`.
    pub async fn rendezvous_register(
        &self,
        req: &crate::api::RegisterRequest,
    ) -> Result<serde_json::Value, Error> {
        self.post("/v1/rendezvous/register", req).await
    }

    /// `POST /v1/rendezvous/discover`.
    pub async fn rendezvous_discover(
        &self,
        req: &crate::api::DiscoverRequest,
    ) -> Result<crate::rendezvous::Discovered, Error> {
        self.post("/v1/rendezvous/discover", req).await
    }

    /// `POST /v1/px`.
    pub async fn peer_exchange(&self, peer: crate::PeerId) -> Result<serde_json::Value, Error> {
        self.post(
            "/v1/px",
            &crate::api::PeerRequest {
                peer_id: peer,
                protected: true,
            },
        )
        .await
    }

    /// `POST /v1/pubsub/publish`.
    pub async fn publish(
        &self,
        req: &crate::api::PublishRequest,
    ) -> Result<blackhole_pubsub::Published, Error> {
        self.post("/v1/pubsub/publish", req).await
    }

    /// `GET /v1/pubsub/topics`.
    pub async fn topics(&self, prefix: &str, limit: usize) -> Result<crate::pubsub::Topics, Error> {
        let q = form_urlencoded(&[("prefix", prefix), ("limit", &limit.to_string())]);
        self.get(&format!("/v1/pubsub/topics?{q}")).await
    }

    /// `GET /v1/pubsub/mesh`.
    pub async fn mesh(&self, pattern: &str) -> Result<crate::pubsub::Mesh, Error> {
        let q = form_urlencoded(&[("pattern", pattern)]);
        self.get(&format!("/v1/pubsub/mesh?{q}")).await
    }

    /// `GET /v1/pubsub/subscribe`: calls `on_message` for each message
    /// until it returns false or the stream ends. Fails if the node sends
    /// nothing (not even its keep-alive) for `idle`.
    pub async fn subscribe(
        &self,
        pattern: &str,
        idle: Duration,
        mut on_message: impl FnMut(crate::api::StreamedMessage) -> bool,
    ) -> Result<(), Error> {
        let q = form_urlencoded(&[("pattern", pattern)]);
        let url = format!("{}/v1/pubsub/subscribe?{q}", self.base);
        // The stream is long-lived: no whole-request timeout, an idle one.
        let http = reqwest::Client::builder()
            .connect_timeout(idle)
            .build()
            .map_err(|source| Error::Unreachable {
                url: url.clone(),
                source,
            })?;
        let req = http.get(&url);
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let unreachable = |source| Error::Unreachable {
            url: url.clone(),
            source,
        };
        let mut resp = tokio::time::timeout(idle, req.send())
            .await
            .map_err(|_| Error::Protocol {
                url: url.clone(),
                reason: format!("no answer in {idle:?}"),
            })?
            .map_err(unreachable)?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.map_err(unreachable)?;
            return Err(api_error(status.as_u16(), &body));
        }
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = tokio::time::timeout(idle, resp.chunk())
                .await
                .map_err(|_| Error::Protocol {
                    url: url.clone(),
                    reason: format!("nothing received for {idle:?}"),
                })?
                .map_err(unreachable)?;
            let Some(chunk) = chunk else { return Ok(()) };
            buf.extend_from_slice(&chunk);
            if buf.len() > MAX_STREAM_LINE {
                return Err(Error::Protocol {
                    url: url.clone(),
                    reason: format!("a line longer than {MAX_STREAM_LINE} bytes"),
                });
            }
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                if line.len() <= 1 {
                    continue; // keep-alive
                }
                let m = serde_json::from_slice(&line).map_err(|e| Error::Protocol {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
                if !on_message(m) {
                    return Ok(());
                }
            }
        }
    }

    /// `POST /v1/rpc/call`.
    pub async fn rpc_call(
        &self,
        req: &crate::api::RpcCallRequest,
    ) -> Result<crate::api::RpcCallResponse, Error> {
        self.post("/v1/rpc/call", req).await
    }

    /// `POST /v1/shutdown`.
    pub async fn shutdown(&self) -> Result<serde_json::Value, Error> {
        self.post("/v1/shutdown", &serde_json::json!({})).await
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> Result<String, Error> {
        let url = format!("{}/metrics", self.base);
        let req = self.http.get(&url);
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|source| Error::Unreachable {
            url: url.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|source| Error::Unreachable {
            url: url.clone(),
            source,
        })?;
        if status != 200 {
            return Err(Error::Api {
                status,
                code: "http".into(),
                message: text,
            });
        }
        Ok(text)
    }
}
