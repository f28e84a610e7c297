//! The secure-channel upgrade: Noise XX and TLS 1.3, negotiated per connection.

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::{AsyncRead, AsyncWrite, FutureExt, future::BoxFuture};
use futures_rustls::TlsStream;
use libp2p_core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p_identity::{Keypair, PeerId};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};

use crate::{
    noise::{NoiseConfig, NoiseError, NoiseStream},
    tls::{self, TlsError},
};

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
    /// The TLS configuration could not be built from the key.
    #[error("cannot build tls config: {0}")]
    Tls(#[source] TlsError),
}

/// Errors of a secure-channel handshake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The Noise handshake failed.
    #[error("noise handshake failed: {0}")]
    Noise(#[source] NoiseError),
    /// The TLS handshake failed (a rustls error inside an `io::Error` when
    /// the peer's certificate or messages were refused).
    #[error("tls handshake failed: {0}")]
    Tls(#[source] io::Error),
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
    tls: Option<TlsConfigs>,
}

/// Our TLS client and server configurations, shared by every connection.
#[derive(Clone)]
struct TlsConfigs {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl TlsConfigs {
    fn new(key: &Keypair) -> Result<Self, TlsError> {
        let (client, server) = tls::configs(key)?;
        Ok(Self {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }

    async fn handshake<C>(self, io: C, inbound: bool) -> io::Result<(PeerId, TlsStream<C>)>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let stream: TlsStream<C> = if inbound {
            futures_rustls::TlsAcceptor::from(self.server)
                .accept(io)
                .await?
                .into()
        } else {
            // The spec: a client MUST NOT send a server name, so the name is
            // the unspecified address, which rustls leaves out of the hello.
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
            futures_rustls::TlsConnector::from(self.client)
                .connect(name, io)
                .await?
                .into()
        };
        let (_, state) = stream.get_ref();
        // The verifiers admit exactly one certificate.
        let peer = match state.peer_certificates() {
            Some([cert]) => tls::peer_id_of(cert).map_err(io::Error::other)?,
            _ => return Err(io::Error::other("no libp2p certificate from the peer")),
        };
        Ok((peer, stream))
    }
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
            .then(|| TlsConfigs::new(key))
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
            (Protocol::Tls, _, Some(tls)) => tls
                .handshake(io, inbound)
                .map(|r| {
                    r.map(|(peer, s)| (peer, SecureStream::Tls(Box::new(s))))
                        .map_err(UpgradeError::Tls)
                })
                .boxed(),
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
    Tls(Box<TlsStream<C>>),
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
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use futures::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::noise::tests::pair;

    fn suite<C>(s: &SecureStream<C>) -> rustls::CipherSuite {
        let SecureStream::Tls(s) = s else {
            panic!("not tls")
        };
        s.get_ref().1.negotiated_cipher_suite().unwrap().suite()
    }

    fn expected_suite() -> rustls::CipherSuite {
        tls::cipher_suites()[0].suite()
    }

    /// Sends `n` bytes from `a` to `b` and checks they arrive intact.
    async fn carries<A, B>(a: &mut A, b: &mut B, n: usize)
    where
        A: AsyncWrite + Unpin,
        B: AsyncRead + Unpin,
    {
        let data: Vec<u8> = (0..n).map(|i| (i * 7 + i / 251) as u8).collect();
        let write = async {
            a.write_all(&data).await.unwrap();
            a.flush().await.unwrap();
        };
        let mut got = vec![0u8; n];
        let (_, r) = tokio::join!(write, b.read_exact(&mut got));
        r.unwrap();
        assert!(got == data);
    }

    #[tokio::test]
    async fn tls_between_ours_uses_our_cipher_and_carries_data() {
        let (a, b) = pair().await;
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (ua, ub) = (
            Upgrade::new(&ka, &[Protocol::Tls]).unwrap(),
            Upgrade::new(&kb, &[Protocol::Tls]).unwrap(),
        );
        let (ra, rb) = tokio::join!(
            ua.upgrade_outbound(a, Protocol::Tls),
            ub.upgrade_inbound(b, Protocol::Tls)
        );
        let ((pa, mut sa), (pb, mut sb)) = (ra.unwrap(), rb.unwrap());
        assert_eq!(pa, kb.public().to_peer_id());
        assert_eq!(pb, ka.public().to_peer_id());
        assert_eq!(suite(&sa), expected_suite());
        assert_eq!(suite(&sb), expected_suite());
        carries(&mut sa, &mut sb, 1 << 20).await;
        carries(&mut sb, &mut sa, 1 << 20).await;
    }

    /// Against rust-libp2p's `libp2p-tls` in both roles, with a secp256k1
    /// and an ECDSA key on their side. Our order decides the cipher whether
    /// we dial (their server follows the client's order) or listen (ours
    /// ignores the client's order).
    #[tokio::test]
    async fn tls_interoperates_with_libp2p_tls_in_both_roles() {
        for (we_dial, theirs) in [
            (true, Keypair::generate_secp256k1()),
            (false, Keypair::generate_ecdsa()),
            (false, Keypair::generate_ed25519()),
        ] {
            let (a, b) = pair().await;
            let ours = Keypair::generate_ed25519();
            let upstream = libp2p_tls::Config::new(&theirs).unwrap();
            let up = Upgrade::new(&ours, &[Protocol::Tls]).unwrap();
            let ((my_view, mut mine), (their_view, mut their_stream)) = if we_dial {
                let (m, t) = tokio::join!(
                    up.upgrade_outbound(a, Protocol::Tls),
                    upstream.upgrade_inbound(b, "/tls/1.0.0")
                );
                (m.unwrap(), t.unwrap())
            } else {
                let (m, t) = tokio::join!(
                    up.upgrade_inbound(a, Protocol::Tls),
                    upstream.upgrade_outbound(b, "/tls/1.0.0")
                );
                (m.unwrap(), t.unwrap())
            };
            assert_eq!(my_view, theirs.public().to_peer_id());
            assert_eq!(their_view, ours.public().to_peer_id());
            assert_eq!(suite(&mine), expected_suite(), "we dial: {we_dial}");
            carries(&mut mine, &mut their_stream, 300_000).await;
            carries(&mut their_stream, &mut mine, 300_000).await;
        }
    }

    #[tokio::test]
    async fn tls_garbage_is_an_error() {
        let key = Keypair::generate_ed25519();
        for inbound in [true, false] {
            let (a, mut b) = pair().await;
            let up = Upgrade::new(&key, &[Protocol::Tls]).unwrap();
            let handshake = async {
                if inbound {
                    up.upgrade_inbound(a, Protocol::Tls).await
                } else {
                    up.upgrade_outbound(a, Protocol::Tls).await
                }
            };
            // A TLS record header promising a handshake, then nonsense.
            let garbage = async {
                b.write_all(&[0x16, 0x03, 0x03, 0x00, 0x05, 9, 9, 9, 9, 9])
                    .await
                    .unwrap();
                b.flush().await.unwrap();
                let mut sink = Vec::new();
                let _ = b.read_to_end(&mut sink).await;
            };
            let (r, _) = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                futures::future::join(handshake, garbage),
            )
            .await
            .expect("a handshake with garbage must end");
            assert!(
                matches!(r, Err(UpgradeError::Tls(_))),
                "inbound {inbound}: {r:?}"
            );
        }
    }

    #[test]
    fn a_certificate_that_is_not_libp2p_is_refused() {
        let garbage = rustls::pki_types::CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        assert!(tls::peer_id_of(&garbage).is_err());
    }

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
