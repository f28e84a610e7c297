//! The upgrade pipeline of stream transports: security, then multiplexing,
//! each negotiated with multistream-select.

use std::io;

use blackhole_metrics::{
    Registry,
    prometheus_client::{
        encoding::EncodeLabelSet,
        metrics::{counter::Counter, family::Family},
    },
};
use futures::{AsyncRead, AsyncWrite};
use libp2p_core::{
    ConnectedPoint, Endpoint,
    muxing::StreamMuxerBox,
    upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo},
};
use libp2p_identity::PeerId;
use multistream_select::{NegotiationError, Version};

use crate::{Negotiated, NegotiatedTable};

/// Why a connection could not be upgraded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// No common security protocol, or the negotiation broke off.
    #[error("security negotiation failed: {0}")]
    SecurityNegotiation(#[source] NegotiationError),
    /// The security handshake failed.
    #[error(transparent)]
    Security(#[from] blackhole_security::UpgradeError),
    /// No common multiplexer, or the negotiation broke off.
    #[error("multiplexer negotiation failed: {0}")]
    MuxerNegotiation(#[source] NegotiationError),
    /// The multiplexer could not start.
    #[error("multiplexer failed: {0}")]
    Muxer(#[source] io::Error),
    /// The handshakes did not finish within `transport.upgrade_timeout`.
    #[error("security and multiplexer handshakes did not finish within {0:?}")]
    Timeout(std::time::Duration),
}

impl UpgradeError {
    fn stage(&self) -> &'static str {
        match self {
            UpgradeError::SecurityNegotiation(_) => "security_negotiation",
            UpgradeError::Security(_) => "security_handshake",
            UpgradeError::MuxerNegotiation(_) => "muxer_negotiation",
            UpgradeError::Muxer(_) => "muxer",
            UpgradeError::Timeout(_) => "timeout",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpgradeLabels {
    security: &'static str,
    muxer: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    stage: &'static str,
}

#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    upgrades: Family<UpgradeLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
}

impl Metrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            upgrades: Family::default(),
            failures: Family::default(),
        };
        let r = blackhole_metrics::layer(registry, "transport");
        r.register(
            "upgrades",
            "Connections secured and multiplexed, by negotiated protocols",
            m.upgrades.clone(),
        );
        r.register(
            "upgrade_failures",
            "Connections that failed the upgrade, by stage",
            m.failures.clone(),
        );
        m
    }
}

/// Whether we act as the dialer in the handshakes (a hole-punched dial may
/// take the listener role).
fn is_dialer(endpoint: &ConnectedPoint) -> bool {
    matches!(
        endpoint,
        ConnectedPoint::Dialer {
            role_override: Endpoint::Dialer,
            ..
        }
    )
}

async fn negotiate<C, U, O, E>(io: C, up: U, dialer: bool) -> Result<Result<O, E>, NegotiationError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: UpgradeInfo
        + InboundConnectionUpgrade<multistream_select::Negotiated<C>, Output = O, Error = E>
        + OutboundConnectionUpgrade<multistream_select::Negotiated<C>, Output = O, Error = E>,
{
    if dialer {
        let (info, io) =
            multistream_select::dialer_select_proto(io, up.protocol_info(), Version::V1Lazy)
                .await?;
        Ok(up.upgrade_outbound(io, info).await)
    } else {
        let (info, io) = multistream_select::listener_select_proto(io, up.protocol_info()).await?;
        Ok(up.upgrade_inbound(io, info).await)
    }
}

pub(crate) async fn upgrade<C>(
    io: C,
    endpoint: ConnectedPoint,
    security: blackhole_security::Upgrade,
    muxer: blackhole_mux::Upgrade,
    table: NegotiatedTable,
    metrics: Metrics,
    timeout: std::time::Duration,
) -> Result<(PeerId, StreamMuxerBox), UpgradeError>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let result = match tokio::time::timeout(timeout, run(io, &endpoint, security, muxer)).await {
        Ok(r) => r,
        Err(_) => Err(UpgradeError::Timeout(timeout)),
    };
    match result {
        Ok((peer, n, m)) => {
            metrics
                .upgrades
                .get_or_create(&UpgradeLabels {
                    security: n.security.name(),
                    muxer: n.muxer.map_or("none", |m| m.name()),
                })
                .inc();
            table.insert(peer, endpoint, n);
            Ok((peer, m))
        }
        Err(e) => {
            metrics
                .failures
                .get_or_create(&FailureLabels { stage: e.stage() })
                .inc();
            Err(e)
        }
    }
}

async fn run<C>(
    io: C,
    endpoint: &ConnectedPoint,
    security: blackhole_security::Upgrade,
    muxer: blackhole_mux::Upgrade,
) -> Result<(PeerId, Negotiated, StreamMuxerBox), UpgradeError>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let dialer = is_dialer(endpoint);
    let (peer, secure) = negotiate(io, security, dialer)
        .await
        .map_err(UpgradeError::SecurityNegotiation)??;
    let security = secure.protocol();
    let muxed = negotiate(secure, muxer, dialer)
        .await
        .map_err(UpgradeError::MuxerNegotiation)?
        .map_err(UpgradeError::Muxer)?;
    let muxer = blackhole_mux::protocol_of(&muxed);
    Ok((
        peer,
        Negotiated {
            security,
            muxer: Some(muxer),
        },
        StreamMuxerBox::new(muxed),
    ))
}
