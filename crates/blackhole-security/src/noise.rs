//! Noise XX for libp2p (`/noise`), with buffers that exist only while data
//! moves.
//!
//! The wire format is the libp2p Noise spec
//! (<https://github.com/libp2p/specs/blob/master/noise/README.md>):
//! `Noise_XX_25519_ChaChaPoly_SHA256`, every message preceded by its length
//! as a big-endian `u16`, and handshake payloads that carry the peer's
//! identity key and its signature of the Noise static key. Any libp2p
//! implementation's `/noise` talks to this one.
//!
//! What differs from `libp2p-noise` is memory and copies. That crate keeps
//! two 8 KiB codec buffers and a frame buffer for the whole life of every
//! connection: 16 KiB and more per idle connection. This stream allocates
//! its read buffer when bytes arrive and frees it when the socket has
//! nothing more and no partial frame is pending; it frees its write buffers
//! on every completed flush. Frames are sealed and opened in place in those
//! buffers (ring's ChaCha20-Poly1305, keyed by the handshake's split), so a
//! byte is copied once on each side between the caller and the socket. The
//! snow crate runs the handshake.

use std::{
    fmt, io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p_identity::{Keypair, PeerId, PublicKey};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use snow::{
    Builder, HandshakeState,
    params::NoiseParams,
    resolvers::{DefaultResolver, FallbackResolver, RingResolver},
};

/// The Noise protocol name of libp2p's handshake.
const PARAMS: &str = "Noise_XX_25519_ChaChaPoly_SHA256";
/// What the identity key signs: this prefix and the Noise static key.
const STATIC_KEY_DOMAIN: &[u8] = b"noise-libp2p-static-key:";
/// The largest Noise message (its length travels as a `u16`).
const MAX_MESSAGE: usize = 65535;
/// The AEAD tag at the end of every transport message.
const TAG: usize = 16;
/// The most plaintext one transport message carries.
pub const MAX_PLAINTEXT: usize = MAX_MESSAGE - TAG;
/// The first read buffer of an idle connection; a larger frame grows it.
const FIRST_READ: usize = 16 * 1024;
/// The read buffer while frames larger than [`FIRST_READ`] arrive: room
/// for two whole messages, so most reads need no compaction.
const BULK_READ: usize = 2 * (2 + MAX_MESSAGE);
/// The open frame's first allocation: its length, a page of plaintext and
/// the tag.
const SMALL_FRAME: usize = 2 + 4096 + TAG;
/// Room for the handshake's keys and tags around our payload.
const HANDSHAKE_OVERHEAD: usize = 256;

/// Errors of the Noise handshake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NoiseError {
    /// Reading or writing the connection failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The Noise protocol itself failed: a message did not decrypt or
    /// arrived out of turn.
    #[error("noise protocol: {0}")]
    Protocol(String),
    /// The remote's handshake payload is malformed.
    #[error("invalid handshake payload: {0}")]
    InvalidPayload(&'static str),
    /// The remote's identity key could not be decoded.
    #[error("invalid identity key: {0}")]
    InvalidKey(#[source] libp2p_identity::DecodingError),
    /// The remote's identity key did not sign its Noise static key.
    #[error("the identity key's signature of the noise static key is invalid")]
    BadSignature,
    /// Our identity key could not sign our Noise static key.
    #[error("cannot sign the noise static key: {0}")]
    Signing(#[source] libp2p_identity::SigningError),
}

impl From<snow::Error> for NoiseError {
    fn from(e: snow::Error) -> Self {
        NoiseError::Protocol(e.to_string())
    }
}

/// Our side of the handshake: a static X25519 key signed by the identity
/// key, made once per node. Cheap to clone.
#[derive(Clone)]
pub struct NoiseConfig {
    inner: Arc<Inner>,
}

struct Inner {
    params: NoiseParams,
    static_private: Vec<u8>,
    /// Our encoded handshake payload (identity key and signature).
    payload: Vec<u8>,
}

impl fmt::Debug for NoiseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoiseConfig").finish_non_exhaustive()
    }
}

fn builder(params: NoiseParams) -> Builder<'static> {
    // ring for the cipher, hash and randomness; snow's own X25519 (ring
    // has no static-key Diffie-Hellman).
    Builder::with_resolver(
        params,
        Box::new(FallbackResolver::new(
            Box::new(RingResolver),
            Box::new(DefaultResolver),
        )),
    )
}

impl NoiseConfig {
    /// Makes a fresh static key and signs it with `identity`.
    pub fn new(identity: &Keypair) -> Result<Self, NoiseError> {
        let params: NoiseParams = PARAMS.parse()?;
        let static_key = builder(params.clone()).generate_keypair()?;
        let signature = identity
            .sign(&[STATIC_KEY_DOMAIN, &static_key.public].concat())
            .map_err(NoiseError::Signing)?;
        let payload = encode_payload(&identity.public().encode_protobuf(), &signature);
        Ok(Self {
            inner: Arc::new(Inner {
                params,
                static_private: static_key.private,
                payload,
            }),
        })
    }

    /// Runs the handshake on `io`, as the dialer when `initiator`. Returns
    /// the remote's peer id (proven by its signature) and the encrypted
    /// stream. The caller bounds the time it may take.
    pub async fn handshake<C>(
        self,
        mut io: C,
        initiator: bool,
    ) -> Result<(PeerId, NoiseStream<C>), NoiseError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let builder =
            builder(self.inner.params.clone()).local_private_key(&self.inner.static_private)?;
        let mut state = if initiator {
            builder.build_initiator()?
        } else {
            builder.build_responder()?
        };
        let remote_payload = if initiator {
            send_message(&mut io, &mut state, &[]).await?;
            let payload = recv_message(&mut io, &mut state).await?;
            send_message(&mut io, &mut state, &self.inner.payload).await?;
            payload
        } else {
            if !recv_message(&mut io, &mut state).await?.is_empty() {
                return Err(NoiseError::InvalidPayload(
                    "the first handshake message carries a payload",
                ));
            }
            send_message(&mut io, &mut state, &self.inner.payload).await?;
            recv_message(&mut io, &mut state).await?
        };
        let (key, signature) = decode_payload(&remote_payload)?;
        let key = PublicKey::try_decode_protobuf(key).map_err(NoiseError::InvalidKey)?;
        let remote_static = state
            .get_remote_static()
            .ok_or(NoiseError::Protocol("no remote static key".into()))?;
        let signature = signature.ok_or(NoiseError::BadSignature)?;
        if !key.verify(&[STATIC_KEY_DOMAIN, remote_static].concat(), signature) {
            return Err(NoiseError::BadSignature);
        }
        if !state.is_handshake_finished() {
            return Err(NoiseError::Protocol("the handshake did not finish".into()));
        }
        // The split: the initiator sends with the first key, the responder
        // with the second; both count nonces from zero.
        let (first, second) = state.dangerously_get_raw_split();
        let (first, second) = (Cipher::new(&first)?, Cipher::new(&second)?);
        let (send, recv) = if initiator {
            (first, second)
        } else {
            (second, first)
        };
        Ok((key.to_peer_id(), NoiseStream::new(io, send, recv)))
    }
}

async fn send_message<C: AsyncWrite + Unpin>(
    io: &mut C,
    state: &mut HandshakeState,
    payload: &[u8],
) -> Result<(), NoiseError> {
    let mut message = vec![0u8; 2 + (payload.len() + HANDSHAKE_OVERHEAD).min(MAX_MESSAGE)];
    let n = state.write_message(payload, &mut message[2..])?;
    message[..2].copy_from_slice(&(n as u16).to_be_bytes());
    io.write_all(&message[..2 + n]).await?;
    io.flush().await?;
    Ok(())
}

async fn recv_message<C: AsyncRead + Unpin>(
    io: &mut C,
    state: &mut HandshakeState,
) -> Result<Vec<u8>, NoiseError> {
    let mut len = [0u8; 2];
    io.read_exact(&mut len).await?;
    let mut message = vec![0u8; u16::from_be_bytes(len) as usize];
    io.read_exact(&mut message).await?;
    let mut payload = vec![0u8; message.len()];
    let n = state.read_message(&message, &mut payload)?;
    payload.truncate(n);
    Ok(payload)
}

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Encodes `NoiseHandshakePayload { identity_key = 1, identity_sig = 2 }`.
fn encode_payload(key: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + signature.len() + 8);
    for (tag, bytes) in [(0x0a, key), (0x12, signature)] {
        out.push(tag);
        put_varint(&mut out, bytes.len());
        out.extend_from_slice(bytes);
    }
    out
}

fn get_varint(buf: &mut &[u8]) -> Result<u64, NoiseError> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf
            .split_first()
            .ok_or(NoiseError::InvalidPayload("truncated varint"))?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(NoiseError::InvalidPayload("varint longer than ten bytes"))
}

fn take<'a>(buf: &mut &'a [u8], n: u64) -> Result<&'a [u8], NoiseError> {
    let n = usize::try_from(n)
        .ok()
        .filter(|n| *n <= buf.len())
        .ok_or(NoiseError::InvalidPayload("field longer than the message"))?;
    let (field, rest) = buf.split_at(n);
    *buf = rest;
    Ok(field)
}

/// Decodes the identity key and signature of a `NoiseHandshakePayload`,
/// skipping fields it does not use (the extensions).
fn decode_payload(mut buf: &[u8]) -> Result<(&[u8], Option<&[u8]>), NoiseError> {
    let (mut key, mut signature) = (None, None);
    while !buf.is_empty() {
        let tag = get_varint(&mut buf)?;
        match (tag >> 3, tag & 7) {
            (field @ (1 | 2), 2) => {
                let n = get_varint(&mut buf)?;
                let bytes = take(&mut buf, n)?;
                if field == 1 {
                    key = Some(bytes);
                } else {
                    signature = Some(bytes);
                }
            }
            (1 | 2, _) => return Err(NoiseError::InvalidPayload("wrong wire type")),
            (_, 0) => {
                get_varint(&mut buf)?;
            }
            (_, 1) => {
                take(&mut buf, 8)?;
            }
            (_, 2) => {
                let n = get_varint(&mut buf)?;
                take(&mut buf, n)?;
            }
            (_, 5) => {
                take(&mut buf, 4)?;
            }
            _ => return Err(NoiseError::InvalidPayload("unsupported wire type")),
        }
    }
    let key = key.ok_or(NoiseError::InvalidPayload("no identity key"))?;
    Ok((key, signature.filter(|s| !s.is_empty())))
}

/// One direction's cipher after the handshake: ChaCha20-Poly1305 (ring's)
/// keyed by the handshake's split, with the Noise nonce, a 64-bit message
/// counter (little-endian, after four zero bytes), and no associated data.
///
/// Ours rather than snow's `TransportState` so that frames are sealed and
/// opened in place in our buffers: snow copies every message into its output
/// first, and a frame decrypted for a small read needed two more
/// allocations and copies.
struct Cipher {
    key: LessSafeKey,
    nonce: u64,
}

impl Cipher {
    fn new(key: &[u8; 32]) -> Result<Self, NoiseError> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, key)
            .map_err(|_| NoiseError::Protocol("bad transport key".into()))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            nonce: 0,
        })
    }

    fn next_nonce(&mut self) -> io::Result<Nonce> {
        // Noise reserves the last nonce; a connection must end before it.
        if self.nonce == u64::MAX {
            return Err(io::Error::other("noise nonces exhausted"));
        }
        let mut bytes = [0u8; NONCE_LEN];
        bytes[4..].copy_from_slice(&self.nonce.to_le_bytes());
        self.nonce += 1;
        Ok(Nonce::assume_unique_for_key(bytes))
    }

    /// Encrypts `plaintext` in place and returns its tag.
    fn seal(&mut self, plaintext: &mut [u8]) -> io::Result<[u8; TAG]> {
        let nonce = self.next_nonce()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), plaintext)
            .map_err(|_| io::Error::other("noise encryption failed"))?;
        let mut out = [0u8; TAG];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts a message (ciphertext and tag) in place; returns the length
    /// of the plaintext now at its start.
    fn open(&mut self, message: &mut [u8]) -> io::Result<usize> {
        let nonce = self.next_nonce()?;
        self.key
            .open_in_place(nonce, Aad::empty(), message)
            .map(|plain| plain.len())
            .map_err(|_| invalid_data("noise frame failed to decrypt"))
    }
}

/// An encrypted connection after the Noise handshake.
///
/// Writes gather plaintext in an open frame until it is full or the stream
/// is flushed, then seal it in place; at most one open frame and one sealed
/// frame wait inside, so writes block when the connection does. Reads hold
/// at most two frames and decrypt them in place. In a bulk transfer the two
/// write buffers trade places and nothing is allocated per frame; an idle
/// stream holds no buffers at all.
pub struct NoiseStream<C> {
    io: C,
    send: Cipher,
    recv: Cipher,
    /// Bytes from the connection: `rbuf[pstart..pend]` is decrypted and not
    /// yet handed out; `rbuf[rstart..rend]` is not yet decrypted.
    rbuf: Vec<u8>,
    pstart: usize,
    pend: usize,
    rstart: usize,
    rend: usize,
    /// The open frame: empty, or two bytes for its length and then the
    /// plaintext gathered so far.
    frame: Vec<u8>,
    /// Sealed frames: `wbuf[wstart..]` is not yet written.
    wbuf: Vec<u8>,
    wstart: usize,
    /// Whether the last frame sealed was full.
    last_full: bool,
}

impl<C> fmt::Debug for NoiseStream<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoiseStream")
            .field(
                "buffered_read",
                &(self.pend - self.pstart + self.rend - self.rstart),
            )
            .field(
                "buffered_write",
                &(self.frame.len() + self.wbuf.len() - self.wstart),
            )
            .finish_non_exhaustive()
    }
}

fn invalid_data(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<C> NoiseStream<C> {
    fn new(io: C, send: Cipher, recv: Cipher) -> Self {
        Self {
            io,
            send,
            recv,
            rbuf: Vec::new(),
            pstart: 0,
            pend: 0,
            rstart: 0,
            rend: 0,
            frame: Vec::new(),
            wbuf: Vec::new(),
            wstart: 0,
            last_full: false,
        }
    }

    /// Bytes of buffer memory the stream holds (allocated capacity).
    pub fn buffer_capacity(&self) -> usize {
        self.rbuf.capacity() + self.frame.capacity() + self.wbuf.capacity()
    }

    /// Plaintext in the open frame.
    fn open_len(&self) -> usize {
        self.frame.len().saturating_sub(2)
    }

    /// Seals the open frame in place and makes it the sealed buffer, which
    /// must be written out already; the old sealed buffer's memory becomes
    /// the next open frame's.
    fn seal_frame(&mut self) -> io::Result<()> {
        debug_assert_eq!(self.wstart, self.wbuf.len(), "sealed frames still wait");
        let len = self.open_len();
        if len == 0 {
            return Ok(());
        }
        self.last_full = len == MAX_PLAINTEXT;
        let tag = self.send.seal(&mut self.frame[2..])?;
        self.frame.extend_from_slice(&tag);
        self.frame[..2].copy_from_slice(&((len + TAG) as u16).to_be_bytes());
        std::mem::swap(&mut self.frame, &mut self.wbuf);
        self.frame.clear();
        self.wstart = 0;
        Ok(())
    }
}

impl<C: AsyncWrite + Unpin> NoiseStream<C> {
    /// Writes out every sealed frame.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wstart < self.wbuf.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wstart..]))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.wstart += n,
            }
        }
        self.wbuf.clear();
        self.wstart = 0;
        Poll::Ready(Ok(()))
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for NoiseStream<C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if this.pstart < this.pend {
                let n = buf.len().min(this.pend - this.pstart);
                buf[..n].copy_from_slice(&this.rbuf[this.pstart..this.pstart + n]);
                this.pstart += n;
                return Poll::Ready(Ok(n));
            }
            let pending = &this.rbuf[this.rstart..this.rend];
            let need = if let [a, b, ..] = *pending {
                let len = u16::from_be_bytes([a, b]) as usize;
                if pending.len() >= 2 + len {
                    if len < TAG {
                        return Poll::Ready(Err(invalid_data("noise frame shorter than its tag")));
                    }
                    let start = this.rstart + 2;
                    let n = this.recv.open(&mut this.rbuf[start..start + len])?;
                    (this.pstart, this.pend) = (start, start + n);
                    this.rstart += 2 + len;
                    // An empty frame hands out nothing: the loop reads on.
                    continue;
                }
                2 + len
            } else {
                2
            };
            // Everything decrypted is handed out: only `rstart..rend` counts.
            (this.pstart, this.pend) = (0, 0);
            if this.rstart == this.rend {
                this.rstart = 0;
                this.rend = 0;
            }
            // Room for the rest of this frame, and for more if it is big.
            let want = if need > FIRST_READ {
                BULK_READ
            } else {
                FIRST_READ
            };
            if this.rbuf.len() < want {
                // A fresh zeroed buffer (calloc) with the pending bytes
                // moved to its front: `resize` would zero-fill byte by
                // byte in debug builds, on every read after an idle spell.
                let mut grown = vec![0u8; want];
                grown[..this.rend - this.rstart]
                    .copy_from_slice(&this.rbuf[this.rstart..this.rend]);
                this.rbuf = grown;
                this.rend -= this.rstart;
                this.rstart = 0;
            } else if this.rstart + need > this.rbuf.len() {
                this.rbuf.copy_within(this.rstart..this.rend, 0);
                this.rend -= this.rstart;
                this.rstart = 0;
            }
            match Pin::new(&mut this.io).poll_read(cx, &mut this.rbuf[this.rend..]) {
                Poll::Pending => {
                    if this.rstart == this.rend {
                        // Idle: nothing half-read, nothing to hand out.
                        this.rbuf = Vec::new();
                        this.rstart = 0;
                        this.rend = 0;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(if this.rstart == this.rend {
                        Ok(0)
                    } else {
                        Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed inside a noise frame",
                        ))
                    });
                }
                Poll::Ready(Ok(n)) => this.rend += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for NoiseStream<C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.open_len() == MAX_PLAINTEXT {
            ready!(this.poll_drain(cx))?;
            this.seal_frame()?;
        }
        if this.frame.is_empty() {
            this.frame.extend_from_slice(&[0, 0]);
        }
        let n = buf.len().min(MAX_PLAINTEXT - this.open_len());
        let end = this.frame.len() + n + TAG;
        if end > this.frame.capacity() {
            // Room for the tag too, so sealing never reallocates: a page
            // while writes are small, a whole frame as soon as they are not.
            let size = if end <= SMALL_FRAME {
                SMALL_FRAME
            } else {
                2 + MAX_MESSAGE
            };
            this.frame.reserve_exact(size - this.frame.len());
        }
        this.frame.extend_from_slice(&buf[..n]);
        if this.open_len() == MAX_PLAINTEXT && this.wstart == this.wbuf.len() {
            // A full frame and nothing waiting: send it on its way now.
            this.seal_frame()?;
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if this.open_len() > 0 {
            this.seal_frame()?;
            ready!(this.poll_drain(cx))?;
        }
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        // Everything is out: hold no write memory while idle. But while full
        // frames go out (a bulk transfer; Yamux flushes after every frame)
        // both buffers are kept for the next; the first flush after a
        // partial frame frees them.
        if !this.last_full {
            this.frame = Vec::new();
            this.wbuf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().io).poll_close(cx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use futures::FutureExt;
    use libp2p_core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
    use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

    use super::*;

    pub(crate) type Tcp = Compat<TcpStream>;

    /// Two ends of a loopback TCP connection (the upgrade tests use it too).
    pub(crate) async fn pair() -> (Tcp, Tcp) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap().compat(), b.unwrap().0.compat())
    }

    async fn ours_pair() -> (
        (PeerId, NoiseStream<Tcp>),
        (PeerId, NoiseStream<Tcp>),
        Keypair,
        Keypair,
    ) {
        let (a, b) = pair().await;
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (ra, rb) = tokio::join!(
            NoiseConfig::new(&ka).unwrap().handshake(a, true),
            NoiseConfig::new(&kb).unwrap().handshake(b, false)
        );
        (ra.unwrap(), rb.unwrap(), ka, kb)
    }

    /// Writes `data` in pieces of random size (flushing now and then) while
    /// the other side reads it all; returns what was read.
    async fn transfer<W, R>(w: &mut W, r: &mut R, data: &[u8], seed: u64) -> Vec<u8>
    where
        W: AsyncWrite + Unpin,
        R: AsyncRead + Unpin,
    {
        let mut rng = StdRng::seed_from_u64(seed);
        let pieces: Vec<usize> = {
            let mut left = data.len();
            let mut v = Vec::new();
            while left > 0 {
                let n = match rng.gen_range(0..4) {
                    0 => rng.gen_range(1..64),
                    1 => rng.gen_range(64..8192),
                    2 => MAX_PLAINTEXT + rng.gen_range(0..3),
                    _ => rng.gen_range(8192..200_000),
                }
                .min(left);
                v.push(n);
                left -= n;
            }
            v
        };
        let flushes: Vec<bool> = pieces.iter().map(|_| rng.gen_bool(0.3)).collect();
        let write = async {
            let mut off = 0;
            for (n, flush) in pieces.iter().zip(&flushes) {
                w.write_all(&data[off..off + n]).await.unwrap();
                if *flush {
                    w.flush().await.unwrap();
                }
                off += n;
            }
            w.flush().await.unwrap();
        };
        let read = async {
            let mut got = vec![0u8; data.len()];
            let mut off = 0;
            let mut small = [0u8; 7];
            while off < got.len() {
                // Alternate tiny and large reads: both the copy-out and the
                // decrypt-in-place paths run.
                let n = if off % 3 == 0 {
                    let n = r.read(&mut small).await.unwrap();
                    got[off..off + n].copy_from_slice(&small[..n]);
                    n
                } else {
                    r.read(&mut got[off..]).await.unwrap()
                };
                assert!(n > 0, "early eof at {off}");
                off += n;
            }
            got
        };
        tokio::join!(write, read).1
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; len];
        StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    #[tokio::test]
    async fn ours_both_ways_and_idle_streams_hold_no_buffers() {
        let ((pa, mut a), (pb, mut b), ka, kb) = ours_pair().await;
        assert_eq!(pa, kb.public().to_peer_id());
        assert_eq!(pb, ka.public().to_peer_id());
        let data = random(3 << 20, 1);
        assert!(transfer(&mut a, &mut b, &data, 2).await == data);
        let data = random(1 << 20, 3);
        assert!(transfer(&mut b, &mut a, &data, 4).await == data);
        // Idle: a read finds nothing, and neither side holds buffers.
        let mut byte = [0u8; 1];
        assert!(b.read(&mut byte).now_or_never().is_none());
        assert!(a.read(&mut byte).now_or_never().is_none());
        assert_eq!(a.buffer_capacity(), 0);
        assert_eq!(b.buffer_capacity(), 0);
        // Closing is an orderly end of stream on the other side.
        a.close().await.unwrap();
        assert_eq!(b.read(&mut byte).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn interoperates_with_libp2p_noise_in_both_roles() {
        for we_dial in [true, false] {
            let (a, b) = pair().await;
            let (ours, theirs) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
            let upstream = libp2p_noise::Config::new(&theirs).unwrap();
            let ours_fut = NoiseConfig::new(&ours).unwrap().handshake(a, we_dial);
            let (mine, (their_view, mut their_stream)) = if we_dial {
                let (m, t) = tokio::join!(ours_fut, upstream.upgrade_inbound(b, "/noise"));
                (m.unwrap(), t.unwrap())
            } else {
                let (m, t) = tokio::join!(ours_fut, upstream.upgrade_outbound(b, "/noise"));
                (m.unwrap(), t.unwrap())
            };
            let (my_view, mut my_stream) = mine;
            assert_eq!(my_view, theirs.public().to_peer_id());
            assert_eq!(their_view, ours.public().to_peer_id());
            let data = random(1 << 20, 5);
            assert!(transfer(&mut my_stream, &mut their_stream, &data, 6).await == data);
            let data = random(1 << 20, 7);
            assert!(transfer(&mut their_stream, &mut my_stream, &data, 8).await == data);
        }
    }

    #[tokio::test]
    async fn a_signature_by_another_key_is_rejected() {
        let (a, b) = pair().await;
        let (liar, other) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let honest = NoiseConfig::new(&liar).unwrap();
        // The liar's payload names its key but carries a signature by another.
        let params: NoiseParams = PARAMS.parse().unwrap();
        let static_key = builder(params.clone()).generate_keypair().unwrap();
        let signature = other
            .sign(&[STATIC_KEY_DOMAIN, &static_key.public].concat())
            .unwrap();
        let forged = NoiseConfig {
            inner: Arc::new(Inner {
                params,
                static_private: static_key.private,
                payload: encode_payload(&liar.public().encode_protobuf(), &signature),
            }),
        };
        let verifier = Keypair::generate_ed25519();
        let (r, _) = tokio::join!(
            NoiseConfig::new(&verifier).unwrap().handshake(a, true),
            forged.handshake(b, false)
        );
        assert!(matches!(r, Err(NoiseError::BadSignature)), "{r:?}");
        drop(honest);
    }

    #[tokio::test]
    async fn handshake_garbage_is_an_error() {
        // A length prefix promising more than arrives, then the end.
        let (a, mut b) = pair().await;
        let key = Keypair::generate_ed25519();
        let (r, _) = tokio::join!(NoiseConfig::new(&key).unwrap().handshake(a, false), async {
            b.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
            b.close().await.unwrap();
        });
        assert!(matches!(r, Err(NoiseError::Io(_))), "{r:?}");
        // A first message that is not an ephemeral key.
        let (a, mut b) = pair().await;
        let (r, _) = tokio::join!(NoiseConfig::new(&key).unwrap().handshake(a, false), async {
            b.write_all(&[0x00, 0x03, 1, 2, 3]).await.unwrap();
        });
        assert!(matches!(r, Err(NoiseError::Protocol(_))), "{r:?}");
    }

    /// Sends raw bytes under an established stream and reads the result.
    async fn read_after_raw(raw: &[u8], close: bool) -> io::Result<usize> {
        let ((_, mut a), (_, mut b), _, _) = ours_pair().await;
        a.io.write_all(raw).await.unwrap();
        if close {
            a.io.close().await.unwrap();
        }
        let mut buf = [0u8; 256];
        tokio::time::timeout(std::time::Duration::from_secs(10), b.read(&mut buf))
            .await
            .expect("read must not hang")
    }

    #[tokio::test]
    async fn transport_garbage_is_an_error() {
        let mut forged = vec![0x00, 0x30];
        forged.extend(random(0x30, 9));
        let e = read_after_raw(&forged, false).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let e = read_after_raw(&[0x00, 0x05, 1, 2, 3, 4, 5], false)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let mut truncated = vec![0x01, 0x00];
        truncated.extend(random(10, 10));
        let e = read_after_raw(&truncated, true).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn an_empty_frame_between_data_is_skipped() {
        // Noise allows messages with no plaintext; ours never sends one, but
        // other implementations may, and each uses up a nonce.
        let ((_, mut a), (_, mut b), _, _) = ours_pair().await;
        a.write_all(b"before").await.unwrap();
        a.flush().await.unwrap();
        let tag = a.send.seal(&mut []).unwrap();
        let mut empty = vec![0x00, TAG as u8];
        empty.extend_from_slice(&tag);
        a.io.write_all(&empty).await.unwrap();
        a.write_all(b"after").await.unwrap();
        a.flush().await.unwrap();
        let mut got = [0u8; 11];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"beforeafter");
    }

    #[test]
    fn the_last_nonce_is_never_used() {
        let mut c = Cipher::new(&[7; 32]).unwrap();
        c.nonce = u64::MAX - 1;
        c.seal(&mut [1, 2, 3]).unwrap();
        assert!(c.seal(&mut [1, 2, 3]).is_err());
        let mut message = [0u8; TAG];
        assert!(c.open(&mut message).is_err());
    }

    #[test]
    fn payload_codec() {
        let p = encode_payload(b"key", b"sig");
        assert_eq!(
            decode_payload(&p).unwrap(),
            (&b"key"[..], Some(&b"sig"[..]))
        );
        // Extensions (field 4) and unknown varint fields are skipped.
        let mut q = p.clone();
        q.extend([0x22, 0x03, 0x12, 0x01, b'x', 0x28, 0x96, 0x01]);
        assert_eq!(
            decode_payload(&q).unwrap(),
            (&b"key"[..], Some(&b"sig"[..]))
        );
        // No signature: decoded as none (the handshake then fails).
        assert_eq!(
            decode_payload(&[0x0a, 0x01, b'k']).unwrap(),
            (&b"k"[..], None)
        );
        for bad in [
            &[0x12, 0x01, b's'][..], // no key
            &[0x0a, 0x05, b'k'][..], // longer than the message
            &[0x08, 0x01][..],       // key as a varint
            &[0x0b][..],             // group wire type
            &[0x28, 0xff, 0xff][..], // truncated varint
            &[
                0x28, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ][..],
        ] {
            assert!(decode_payload(bad).is_err(), "{bad:?}");
        }
    }
}
