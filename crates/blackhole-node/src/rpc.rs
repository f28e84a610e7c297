//! Built-in RPC methods, so RPC can be tried without writing code:
//! `_bh/echo` answers with its request, `_bh/info` describes the node.

use std::time::Instant;

use blackhole_rpc::{Method, Rpc};
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

/// `_bh/echo`: any JSON value, answered unchanged. Idempotent.
#[derive(Debug)]
pub struct Echo;

impl Method for Echo {
    const NAME: &'static str = "_bh/echo";
    const IDEMPOTENT: bool = true;
    type Request = serde_json::Value;
    type Response = serde_json::Value;
}

/// `_bh/info`: who the node is. Idempotent, cacheable for 5 s.
#[derive(Debug)]
pub struct Info;

/// The answer of `_bh/info`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InfoResponse {
    /// The node.
    pub peer_id: PeerId,
    /// Its agent version.
    pub agent_version: String,
    /// Seconds since it started.
    pub uptime_secs: f64,
    /// The caller, as the node sees it.
    pub caller: PeerId,
}

impl Method for Info {
    const NAME: &'static str = "_bh/info";
    const IDEMPOTENT: bool = true;
    const CACHE_TTL: Option<std::time::Duration> = Some(std::time::Duration::from_secs(5));
    type Request = serde_json::Value;
    type Response = InfoResponse;
}

pub(crate) fn register_builtins(rpc: &Rpc, peer_id: PeerId, agent_version: String) {
    rpc.register::<Echo, _, _>(|_, req| async move { Ok(req) });
    let started = Instant::now();
    rpc.register::<Info, _, _>(move |ctx, _| {
        let agent_version = agent_version.clone();
        async move {
            Ok(InfoResponse {
                peer_id,
                agent_version,
                uptime_secs: started.elapsed().as_secs_f64(),
                caller: ctx.peer,
            })
        }
    });
}
