//! The secure-channel upgrade: Noise XX and TLS 1.3, negotiated per connection.

use std::{
    fmt, io,
    pin::Pin,
    task::{Context, Poll},
};

use futures::{AsyncRead, AsyncWrite, FutureExt, future::BoxFuture};
use libp2p_core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p_identity::{Keypair, PeerId};
use serde::{Deserialize, Serialize};

use crate::noise::{NoiseConfig, NoiseError, NoiseStream};

/// A secure-channel protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Noise XX with X25519, ChaChaPoly and SHA-256 (`/noise`).
    Noise,
    /// TLS 1.3 with libp2p certificates (`/tls/1.0.0`).
    Tls,
}

impl Protocol {
    /// The multistream-select protocol id.
    pub const fn id(self) -> &'static str {
        match self {
            Protocol::Noise => "/noise",
            Protocol::Tls => "/tls/1.0.0",
        }
    }

    /// A short lowercase name, as used in configuration and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Noise => "noise",
            Protocol::Tls => "tls",
        }
    }
}

impl AsRef<str> for Protocol {
    fn as_ref(&self) -> &str {
        self.id()
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors of [`Upgrade::new`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No protocol was given.
    #[error("at least one security protocol must be enabled")]
    Empty,
    /// A protocol was listed twice.
    #[error("security protocol {0} is listed twice")]
    Duplicate(Protocol),
    /// The Noise configuration could not be built from the key.
    #[error("cannot build noise config: {0}")]
    Noise(#[source] NoiseError),
    /// The TLS certificate could not be generated from the key.
    #[error("cannot build tls config: {0}")]
    Tls(#[source] libp2p_tls::certificate::GenError),
}

/// Errors of a secure-channel handshake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The Noise handshake failed.
    #[error("noise handshake failed: {0}")]
    Noise(#[source] NoiseError),
    /// The TLS handshake failed.
    #[error("tls handshake failed: {0}")]
    Tls(#[source] libp2p_tls::UpgradeError),
    /// A protocol was negotiated that this side did not enable (a remote
    /// peer misbehaving in multistream-select).
    #[error("negotiated security protocol {0} is not enabled")]
    NotEnabled(Protocol),
}

/// The secure-channel upgrade offering the configured protocols in order of
/// preference. Cheap to clone: one is used per connection.
#[derive(Clone)]
pub struct Upgrade {
    protocols: Vec<Protocol>,
    noise: Option<NoiseConfig>,
    tls: Option<libp2p_tls::Config>,
}

impl fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgrade")
            .field("protocols", &self.protocols)
            .finish()
    }
}

impl Upgrade {
    /// Builds the upgrade for `key`, offering `protocols` in that order.
    pub fn new(key: &Keypair, protocols: &[Protocol]) -> Result<Self, BuildError> {
        if protocols.is_empty() {
            return Err(BuildError::Empty);
        }
        for (i, p) in protocols.iter().enumerate() {
            if protocols[..i].contains(p) {
                return Err(BuildError::Duplicate(*p));
            }
        }
        let noise = protocols
            .contains(&Protocol::Noise)
            .then(|| NoiseConfig::new(key))
            .transpose()
            .map_err(BuildError::Noise)?;
        let tls = protocols
            .contains(&Protocol::Tls)
            .then(|| libp2p_tls::Config::new(key))
            .transpose()
            .map_err(BuildError::Tls)?;
        Ok(Self {
            protocols: protocols.to_vec(),
            noise,
            tls,
        })
    }

    /// The offered protocols, most preferred first.
    pub fn protocols(&self) -> &[Protocol] {
        &self.protocols
    }
}

impl UpgradeInfo for Upgrade {
    type Info = Protocol;
    type InfoIter = std::vec::IntoIter<Protocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.protocols.clone().into_iter()
    }
}

type Handshake<C> = BoxFuture<'static, Result<(PeerId, SecureStream<C>), UpgradeError>>;

impl Upgrade {
    fn handshake<C>(self, io: C, info: Protocol, inbound: bool) -> Handshake<C>
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match (info, self.noise, self.tls) {
            (Protocol::Noise, Some(noise), _) => noise
                .handshake(io, !inbound)
                .map(|r| {
                    r.map(|(peer, s)| (peer, SecureStream::Noise(Box::new(s))))
                        .map_err(UpgradeError::Noise)
                })
                .boxed(),
            (Protocol::Tls, _, Some(tls)) => {
                let fut = if inbound {
                    tls.upgrade_inbound(io, Protocol::Tls.id()).boxed()
                } else {
                    tls.upgrade_outbound(io, Protocol::Tls.id()).boxed()
                };
                fut.map(|r| {
                    r.map(|(peer, s)| (peer, SecureStream::Tls(Box::new(s))))
                        .map_err(UpgradeError::Tls)
                })
                .boxed()
            }
            (p, _, _) => futures::future::ready(Err(UpgradeError::NotEnabled(p))).boxed(),
        }
    }
}

impl<C> InboundConnectionUpgrade<C> for Upgrade
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, SecureStream<C>);
    type Error = UpgradeError;
    type Future = Handshake<C>;

    fn upgrade_inbound(self, io: C, info: Protocol) -> Self::Future {
        self.handshake(io, info, true)
    }
}

impl<C> OutboundConnectionUpgrade<C> for Upgrade
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, SecureStream<C>);
    type Error = UpgradeError;
    type Future = Handshake<C>;

    fn upgrade_outbound(self, io: C, info: Protocol) -> Self::Future {
        self.handshake(io, info, false)
    }
}

/// An encrypted, authenticated byte stream, with the protocol that secures it.
pub enum SecureStream<C> {
    /// Secured by Noise.
    Noise(Box<NoiseStream<C>>),
    /// Secured by TLS 1.3.
    Tls(Box<libp2p_tls::TlsStream<C>>),
}

impl<C> fmt::Debug for SecureStream<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecureStream({})", self.protocol())
    }
}

impl<C> SecureStream<C> {
    /// The protocol securing this stream.
    pub fn protocol(&self) -> Protocol {
        match self {
            SecureStream::Noise(_) => Protocol::Noise,
            SecureStream::Tls(_) => Protocol::Tls,
        }
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin> AsyncRead for SecureStream<C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SecureStream::Noise(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            SecureStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin> AsyncWrite for SecureStream<C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SecureStream::Noise(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            SecureStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SecureStream::Noise(s) => Pin::new(s.as_mut()).poll_flush(cx),
            SecureStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SecureStream::Noise(s) => Pin::new(s.as_mut()).poll_close(cx),
            SecureStream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_and_duplicate_lists() {
        let key = Keypair::generate_ed25519();
        assert!(matches!(Upgrade::new(&key, &[]), Err(BuildError::Empty)));
        assert!(matches!(
            Upgrade::new(&key, &[Protocol::Tls, Protocol::Tls]),
            Err(BuildError::Duplicate(Protocol::Tls))
        ));
    }

    #[test]
    fn offers_in_preference_order() {
        let key = Keypair::generate_ed25519();
        let up = Upgrade::new(&key, &[Protocol::Tls, Protocol::Noise]).unwrap();
        let ids: Vec<_> = up.protocol_info().map(|p| p.id()).collect();
        assert_eq!(ids, ["/tls/1.0.0", "/noise"]);
    }
}
