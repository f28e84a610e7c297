//! The frame format.
//!
//! Every message on an RPC stream is one frame:
//!
//! ```text
//! frame    = length body              length: unsigned varint, at most max_frame_size
//! body     = version kind flags id deadline [method] payload
//! version  = 1 byte  (1)
//! kind     = 1 byte  0 request, 1 response, 2 stream item, 3 end of stream, 4 error,
//!                    5 cancel (the caller gives up; so does closing or resetting the stream)
//! flags    = 1 byte  bit 0: payload compressed (one zstd frame with its content size); others 0
//! id       = varint  the correlation id, chosen by the caller, echoed by every answer
//! deadline = varint  milliseconds the caller will still wait (requests; 0 = none)
//! method   = varint length + UTF-8 (requests only, at most 128 bytes)
//! payload  = the rest (JSON for typed methods; for errors: code u16 BE,
//!            retryable u8, UTF-8 message of at most 1024 bytes)
//! ```
//!
//! A length prefix above the limit is refused before anything is
//! allocated; so is a varint longer than 10 bytes. Below the limit, the
//! body's buffer grows as bytes arrive. A caller sends nothing after its
//! request: the server takes anything more as the caller giving up.
//! Answers to a call refused before its request was read (rate limit,
//! load) carry id 0; a caller takes any error frame as its answer.

use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt};

/// Protocol version in every frame.
pub const VERSION: u8 = 1;
/// Longest method name.
pub const MAX_METHOD_LEN: usize = 128;
/// Longest error message.
pub const MAX_ERROR_MESSAGE: usize = 1024;
const FLAG_COMPRESSED: u8 = 1;
/// zstd level 1: see the crate docs for the measurement behind it.
const ZSTD_LEVEL: i32 = 1;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A call.
    Request,
    /// The single answer.
    Response,
    /// One item of a streamed answer.
    Item,
    /// The end of a streamed answer.
    End,
    /// A structured error answer.
    Error,
    /// The caller gave up.
    Cancel,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Request => 0,
            Kind::Response => 1,
            Kind::Item => 2,
            Kind::End => 3,
            Kind::Error => 4,
            Kind::Cancel => 5,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Kind::Request,
            1 => Kind::Response,
            2 => Kind::Item,
            3 => Kind::End,
            4 => Kind::Error,
            5 => Kind::Cancel,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it is.
    pub kind: Kind,
    /// Whether `payload` is compressed on the wire (set by the codec).
    pub compressed: bool,
    /// The correlation id.
    pub id: u64,
    /// Time the caller still waits (requests only).
    pub deadline: Option<Duration>,
    /// The method (requests only).
    pub method: String,
    /// The payload, uncompressed.
    pub payload: Vec<u8>,
}

/// A structured error as it travels.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// A stable code ([`crate::Code`]).
    pub code: u16,
    /// Whether the same call may succeed if retried.
    pub retryable: bool,
    /// What went wrong, for people.
    pub message: String,
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A length prefix above the limit.
    #[error("frame of {len} bytes is larger than the limit of {max}")]
    TooLarge { len: u64, max: usize },
    /// Ends early.
    #[error("truncated frame")]
    Truncated,
    /// A version, kind or flag we do not know.
    #[error("unknown {what} {value}")]
    Unknown { what: &'static str, value: u64 },
    /// A method name or message that is not UTF-8 or too long.
    #[error("bad {0}")]
    Bad(&'static str),
    /// The payload does not decompress within the limit.
    #[error("payload does not decompress: {0}")]
    Compression(String),
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The stream ended cleanly before a frame started.
    #[error("stream closed")]
    Closed,
    /// I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Nothing arrived in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    let mut buf = unsigned_varint::encode::u64_buffer();
    out.extend_from_slice(unsigned_varint::encode::u64(v, &mut buf));
}

fn take_varint(buf: &mut &[u8]) -> Result<u64, DecodeError> {
    let (v, rest) = unsigned_varint::decode::u64(buf).map_err(|_| DecodeError::Truncated)?;
    *buf = rest;
    Ok(v)
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if buf.len() < n {
        return Err(DecodeError::Truncated);
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

impl Frame {
    /// A request frame.
    pub fn request(id: u64, method: &str, deadline: Option<Duration>, payload: Vec<u8>) -> Self {
        Self {
            kind: Kind::Request,
            compressed: false,
            id,
            deadline,
            method: method.into(),
            payload,
        }
    }

    /// An answer frame of `kind`.
    pub fn answer(kind: Kind, id: u64, payload: Vec<u8>) -> Self {
        Self {
            kind,
            compressed: false,
            id,
            deadline: None,
            method: String::new(),
            payload,
        }
    }

    /// An error frame.
    pub fn error(id: u64, e: &ErrorBody) -> Self {
        let mut p = Vec::with_capacity(3 + e.message.len());
        p.extend_from_slice(&e.code.to_be_bytes());
        p.push(u8::from(e.retryable));
        let mut msg = e.message.as_str();
        if msg.len() > MAX_ERROR_MESSAGE {
            let mut cut = MAX_ERROR_MESSAGE;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg = &msg[..cut];
        }
        p.extend_from_slice(msg.as_bytes());
        Self::answer(Kind::Error, id, p)
    }

    /// The error this frame carries, if it is an error frame.
    pub fn error_body(&self) -> Result<ErrorBody, DecodeError> {
        let mut b = self.payload.as_slice();
        let code = take(&mut b, 2)?;
        let retryable = take(&mut b, 1)?[0] != 0;
        if b.len() > MAX_ERROR_MESSAGE {
            return Err(DecodeError::Bad("error message"));
        }
        let message = std::str::from_utf8(b).map_err(|_| DecodeError::Bad("error message"))?;
        Ok(ErrorBody {
            code: u16::from_be_bytes([code[0], code[1]]),
            retryable,
            message: message.into(),
        })
    }

    /// Appends the frame (length prefix included) to `out`, compressing
    /// the payload when it is at least `compress_above` bytes and that
    /// makes it smaller.
    pub fn encode(&self, compress_above: Option<usize>, out: &mut Vec<u8>) {
        let compressed = compress_above
            .filter(|min| self.payload.len() >= *min)
            .and_then(|_| zstd::bulk::compress(&self.payload, ZSTD_LEVEL).ok())
            .filter(|c| c.len() < self.payload.len());
        let payload = compressed.as_deref().unwrap_or(&self.payload);
        let mut body = Vec::with_capacity(16 + self.method.len() + payload.len());
        body.push(VERSION);
        body.push(self.kind.byte());
        body.push(if compressed.is_some() {
            FLAG_COMPRESSED
        } else {
            0
        });
        put_varint(&mut body, self.id);
        put_varint(
            &mut body,
            self.deadline.map_or(0, |d| (d.as_millis() as u64).max(1)),
        );
        if self.kind == Kind::Request {
            put_varint(&mut body, self.method.len() as u64);
            body.extend_from_slice(self.method.as_bytes());
        }
        body.extend_from_slice(payload);
        put_varint(out, body.len() as u64);
        out.extend_from_slice(&body);
    }

    /// Parses a frame body (without its length prefix); a compressed
    /// payload may not grow beyond `max`.
    pub fn decode(mut b: &[u8], max: usize) -> Result<Self, DecodeError> {
        let head = take(&mut b, 3)?;
        if head[0] != VERSION {
            return Err(DecodeError::Unknown {
                what: "version",
                value: head[0].into(),
            });
        }
        let kind = Kind::from_byte(head[1]).ok_or(DecodeError::Unknown {
            what: "kind",
            value: head[1].into(),
        })?;
        let flags = head[2];
        if flags & !FLAG_COMPRESSED != 0 {
            return Err(DecodeError::Unknown {
                what: "flags",
                value: flags.into(),
            });
        }
        let id = take_varint(&mut b)?;
        let deadline_ms = take_varint(&mut b)?;
        let method = if kind == Kind::Request {
            let len = take_varint(&mut b)?;
            if len > MAX_METHOD_LEN as u64 {
                return Err(DecodeError::Bad("method name"));
            }
            std::str::from_utf8(take(&mut b, len as usize)?)
                .map_err(|_| DecodeError::Bad("method name"))?
                .to_owned()
        } else {
            String::new()
        };
        let compressed = flags & FLAG_COMPRESSED != 0;
        let payload = if compressed {
            // The frame's content size is checked before decompressing, and
            // the output buffer is exactly that large.
            let size = match zstd::zstd_safe::get_frame_content_size(b) {
                Ok(Some(size)) => size,
                Ok(None) => return Err(DecodeError::Compression("no content size".into())),
                Err(_) => return Err(DecodeError::Compression("not a zstd frame".into())),
            };
            if size > max as u64 {
                return Err(DecodeError::TooLarge { len: size, max });
            }
            zstd::bulk::decompress(b, size as usize)
                .map_err(|e| DecodeError::Compression(e.to_string()))?
        } else {
            b.to_vec()
        };
        Ok(Self {
            kind,
            compressed,
            id,
            deadline: (deadline_ms > 0).then(|| Duration::from_millis(deadline_ms)),
            method,
            payload,
        })
    }
}

/// The buffer first reserved for a frame's body.
const INITIAL_BODY: usize = 16 * 1024;

/// Reads one frame: the length prefix is checked against `max` before
/// the body is allocated.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Frame, ReadError> {
    let mut len: u64 = 0;
    for i in 0..10 {
        let mut byte = [0u8; 1];
        match r.read(&mut byte).await? {
            0 if i == 0 => return Err(ReadError::Closed),
            0 => return Err(DecodeError::Truncated.into()),
            _ => {}
        }
        len |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            if len > max as u64 {
                return Err(DecodeError::TooLarge { len, max }.into());
            }
            // Grows with what arrives: a prefix alone reserves little.
            let mut body = Vec::with_capacity((len as usize).min(INITIAL_BODY));
            (&mut *r).take(len).read_to_end(&mut body).await?;
            if body.len() as u64 != len {
                return Err(DecodeError::Truncated.into());
            }
            return Ok(Frame::decode(&body, max)?);
        }
    }
    Err(DecodeError::Bad("length prefix").into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    fn roundtrip(f: &Frame, compress: Option<usize>) -> Frame {
        let mut out = Vec::new();
        f.encode(compress, &mut out);
        block_on(read_frame(&mut out.as_slice(), 1 << 20)).unwrap()
    }

    #[test]
    fn frames_round_trip() {
        let req = Frame::request(7, "echo", Some(Duration::from_millis(1500)), b"hi".to_vec());
        assert_eq!(roundtrip(&req, None), req);
        let big = Frame::answer(Kind::Response, u64::MAX, vec![b'a'; 100_000]);
        let back = roundtrip(&big, Some(1024));
        assert!(back.compressed, "repetitive payload compresses");
        assert_eq!(back.payload, big.payload);
        let err = ErrorBody {
            code: 3,
            retryable: true,
            message: "é".repeat(600),
        };
        let back = roundtrip(&Frame::error(1, &err), None)
            .error_body()
            .unwrap();
        assert_eq!(back.code, 3);
        assert!(back.retryable);
        assert!(back.message.len() <= MAX_ERROR_MESSAGE);
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        // Oversized length prefix: refused before allocation.
        let mut huge = Vec::new();
        put_varint(&mut huge, u64::MAX >> 1);
        assert!(matches!(
            block_on(read_frame(&mut huge.as_slice(), 1024)),
            Err(ReadError::Decode(DecodeError::TooLarge { .. }))
        ));
        // An endless varint.
        let endless = [0xffu8; 16];
        assert!(block_on(read_frame(&mut endless.as_slice(), 1024)).is_err());
        // Every truncation of a valid frame.
        let mut out = Vec::new();
        Frame::request(1, "m", None, b"payload".to_vec()).encode(None, &mut out);
        for cut in 1..out.len() {
            assert!(
                block_on(read_frame(&mut &out[..cut], 1024)).is_err(),
                "cut {cut}"
            );
        }
        assert!(matches!(
            block_on(read_frame(&mut &out[..0], 1024)),
            Err(ReadError::Closed)
        ));
        // Pseudo-random bytes.
        let mut x = 0x9e3779b97f4a7c15u64;
        for _ in 0..2000 {
            let len = (x % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = block_on(read_frame(&mut bytes.as_slice(), 1024));
        }
        // A compressed payload that would grow past the limit, and one
        // that is not zstd at all.
        let mut body = vec![VERSION, 1, FLAG_COMPRESSED, 1, 0];
        body.extend_from_slice(&zstd::bulk::compress(&vec![0u8; 2 << 20], 1).unwrap());
        assert!(matches!(
            Frame::decode(&body, 1 << 20),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut body = vec![VERSION, 1, FLAG_COMPRESSED, 1, 0];
        body.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
        assert!(matches!(
            Frame::decode(&body, 1 << 20),
            Err(DecodeError::Compression(_))
        ));
    }
}
