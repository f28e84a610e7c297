//! TLS 1.3 configurations for libp2p (`/tls/1.0.0` over TCP, and QUIC's
//! handshake), with the cipher this machine runs fastest.
//!
//! The wire format is the libp2p TLS spec: a self-signed certificate whose
//! extension carries the host key and its signature over the certificate
//! key, ALPN `libp2p`, no SNI, TLS 1.3 only, both sides authenticated. The
//! certificate itself is made and checked by `libp2p-tls`
//! ([`libp2p_tls::certificate`]); the rustls configurations around it are
//! ours, for one reason: cipher choice.
//!
//! `libp2p-tls` offers ChaCha20-Poly1305 first and its servers follow the
//! client's order, so every rust-libp2p connection runs ChaCha20. On a CPU
//! with AES instructions AES-128-GCM is several times faster (aws-lc on the
//! 2-core EPYC this was measured on: 23.9 GB/s against 2.7 GB/s for
//! ChaCha20-Poly1305, 16 KiB records), and bulk transfers over TLS and QUIC
//! are bound by the cipher. So where the CPU has AES and carry-less
//! multiplication (x86 AES-NI and PCLMULQDQ, Arm AES and PMULL), we offer
//! AES-128-GCM first and, as a server, pick by our order rather than the
//! client's; elsewhere ChaCha20 stays first. Every libp2p TLS implementation
//! supports all three TLS 1.3 suites, so either choice interoperates.
//!
//! ```
//! use blackhole_security::{tls, Keypair};
//!
//! let key = Keypair::generate_ed25519();
//! let (client, server) = tls::configs(&key).unwrap();
//! assert_eq!(client.alpn_protocols, [b"libp2p".to_vec()]);
//! assert_eq!(server.alpn_protocols, [b"libp2p".to_vec()]);
//! ```

use std::sync::Arc;

use libp2p_identity::{Keypair, PeerId};
use libp2p_tls::certificate;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme,
    SupportedCipherSuite,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{
        CryptoProvider,
        aws_lc_rs::{
            self,
            cipher_suite::{
                TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
            },
        },
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};

/// The ALPN protocol id of libp2p's TLS handshake.
pub const ALPN: &[u8] = b"libp2p";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The libp2p certificate could not be generated for the key.
    #[error("cannot generate the libp2p certificate: {0}")]
    Certificate(#[source] certificate::GenError),
    /// rustls refused the configuration.
    #[error("cannot build the rustls configuration: {0}")]
    Rustls(#[source] rustls::Error),
}

/// Whether this CPU has instructions that make AES-GCM faster than
/// ChaCha20-Poly1305.
pub fn aes_is_fast() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The TLS 1.3 cipher suites in our order of preference: AES-GCM first
/// where [`aes_is_fast`], ChaCha20-Poly1305 first elsewhere.
pub fn cipher_suites() -> Vec<SupportedCipherSuite> {
    if aes_is_fast() {
        vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ]
    } else {
        vec![
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
        ]
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: cipher_suites(),
        ..aws_lc_rs::default_provider()
    })
}

fn certified_key(key: &Keypair) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let (cert, private) = certificate::generate(key).map_err(TlsError::Certificate)?;
    let signer = aws_lc_rs::sign::any_supported_type(&private).map_err(TlsError::Rustls)?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert],
        signer,
    )))
}

/// The client and server configurations for libp2p TLS with `key`'s
/// certificate (one certificate, generated once, serves both).
///
/// The client takes the server's peer id from its certificate; the caller
/// checks that it is the peer it meant to reach (libp2p-swarm does). The
/// server requires a client certificate and picks the cipher by our order.
/// Both write session keys only when SSLKEYLOGFILE names a file (debugging
/// with a packet capture), as every rustls program does.
pub fn configs(key: &Keypair) -> Result<(rustls::ClientConfig, rustls::ServerConfig), TlsError> {
    let cert = certified_key(key)?;
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Rustls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier))
        .with_client_cert_resolver(Arc::new(Always(cert.clone())));
    client.alpn_protocols = vec![ALPN.to_vec()];
    client.key_log = Arc::new(rustls::KeyLogFile::new());
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Rustls)?
        .with_client_cert_verifier(Arc::new(Verifier))
        .with_cert_resolver(Arc::new(Always(cert)));
    server.alpn_protocols = vec![ALPN.to_vec()];
    server.ignore_client_order = true;
    server.key_log = client.key_log.clone();
    Ok((client, server))
}

/// The peer id in a certificate the handshake verified.
pub fn peer_id_of(cert: &CertificateDer<'_>) -> Result<PeerId, rustls::Error> {
    Ok(parse(cert)?.peer_id())
}

/// Presents the one certificate whatever the other side asks for: the
/// libp2p spec has no certificate selection.
#[derive(Debug)]
struct Always(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Always {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for Always {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks a libp2p certificate: exactly one, self-signed, with a valid
/// libp2p extension (the host key's signature over the certificate key),
/// and the handshake signed by the certificate key. There is no chain of
/// trust: the peer id is the identity.
#[derive(Debug)]
struct Verifier;

fn parse<'a>(
    cert: &'a CertificateDer<'_>,
) -> Result<certificate::P2pCertificate<'a>, rustls::Error> {
    certificate::parse(cert).map_err(|e| {
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
    })
}

fn only_one(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), rustls::Error> {
    if !intermediates.is_empty() {
        return Err(rustls::Error::General(
            "libp2p TLS requires exactly one certificate".into(),
        ));
    }
    parse(end_entity).map(drop)
}

fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    parse(cert)?
        .verify_signature(dss.scheme, message, dss.signature())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
    Ok(HandshakeSignatureValid::assertion())
}

/// The handshake signatures a libp2p certificate key can make, most
/// preferred first (the schemes `libp2p_tls::certificate` verifies).
fn schemes() -> Vec<SignatureScheme> {
    vec![
        SignatureScheme::ECDSA_NISTP384_SHA384,
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::ED25519,
        SignatureScheme::RSA_PSS_SHA512,
        SignatureScheme::RSA_PSS_SHA384,
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PKCS1_SHA512,
        SignatureScheme::RSA_PKCS1_SHA384,
        SignatureScheme::RSA_PKCS1_SHA256,
    ]
}

fn no_tls12() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic)
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        only_one(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        only_one(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}
