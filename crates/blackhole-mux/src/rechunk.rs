//! Splitting oversized inbound Yamux DATA frames.
//!
//! The Yamux specification puts no limit on a DATA frame's length other than
//! the receiver's window, and js-libp2p sends frames as large as its whole
//! send window. The `yamux` crate refuses frames above 1 MiB and closes the
//! connection, so a rust-libp2p node that lets its receive window grow past
//! 1 MiB loses bulk transfers from js-libp2p peers.
//!
//! [`Rechunk`] sits between the secured connection and the Yamux state
//! machine and rewrites the inbound byte stream: a DATA frame with a body
//! longer than `max_body` becomes several DATA frames for the same stream,
//! each at most `max_body` long. The first carries the original SYN/ACK
//! flags, the last the FIN/RST flags. Flow control is unaffected (the same
//! bytes arrive for the same stream), body bytes are never copied twice
//! (they are read straight into the caller's buffer) and the only state is
//! one 12-byte header. Writes pass through untouched.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use blackhole_metrics::prometheus_client::metrics::counter::Counter;
use futures::{AsyncRead, AsyncWrite};

/// The largest DATA frame body the `yamux` crate decodes.
pub const MAX_YAMUX_FRAME_BODY: usize = 1024 * 1024;

const HEADER_LEN: usize = 12;
const TYPE_DATA: u8 = 0;
const FLAG_SYN: u16 = 0x1;
const FLAG_ACK: u16 = 0x2;
const FLAG_FIN: u16 = 0x4;
const FLAG_RST: u16 = 0x8;

/// A frame header as it is on the wire (big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    version: u8,
    typ: u8,
    flags: u16,
    stream_id: u32,
    length: u32,
}

impl Header {
    fn decode(b: &[u8; HEADER_LEN]) -> Self {
        Header {
            version: b[0],
            typ: b[1],
            flags: u16::from_be_bytes([b[2], b[3]]),
            stream_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            length: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        }
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.version;
        b[1] = self.typ;
        b[2..4].copy_from_slice(&self.flags.to_be_bytes());
        b[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        b[8..12].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// What remains of a DATA frame being split.
#[derive(Debug, Clone, Copy)]
struct Rest {
    template: Header,
    remaining: u32,
    final_flags: u16,
}

#[derive(Debug)]
enum State {
    /// Reading a header from the inner stream.
    ReadHeader {
        buf: [u8; HEADER_LEN],
        filled: usize,
    },
    /// Handing a header (original or synthesized) to the reader.
    EmitHeader {
        buf: [u8; HEADER_LEN],
        len: usize,
        pos: usize,
        body: u32,
        rest: Option<Rest>,
    },
    /// Passing `left` body bytes through.
    Body { left: u32, rest: Option<Rest> },
    /// The inner stream ended.
    Eof,
}

/// The frame-splitting wrapper. See the module documentation.
#[derive(Debug)]
pub struct Rechunk<C> {
    inner: C,
    state: State,
    max_body: u32,
    split: Counter,
}

impl<C> Rechunk<C> {
    /// Wraps `inner`, splitting DATA frames longer than `max_body` (clamped
    /// to 1 KiB..=1 MiB); `split` counts the frames that were split.
    pub fn new(inner: C, max_body: usize, split: Counter) -> Self {
        let max_body = max_body.clamp(1024, MAX_YAMUX_FRAME_BODY) as u32;
        Self {
            inner,
            state: State::ReadHeader {
                buf: [0; HEADER_LEN],
                filled: 0,
            },
            max_body,
            split,
        }
    }

    /// The next state after a complete header `h` was read.
    fn on_header(&self, raw: [u8; HEADER_LEN]) -> State {
        let h = Header::decode(&raw);
        if h.version != 0 || h.typ != TYPE_DATA {
            // Window updates, pings and go-aways carry no body; unknown
            // versions pass through for the yamux crate to refuse.
            let body = if h.version == 0 && h.typ == TYPE_DATA {
                h.length
            } else {
                0
            };
            return State::EmitHeader {
                buf: raw,
                len: HEADER_LEN,
                pos: 0,
                body,
                rest: None,
            };
        }
        if h.length <= self.max_body {
            return State::EmitHeader {
                buf: raw,
                len: HEADER_LEN,
                pos: 0,
                body: h.length,
                rest: None,
            };
        }
        self.split.inc();
        let first = Header {
            flags: h.flags & (FLAG_SYN | FLAG_ACK),
            length: self.max_body,
            ..h
        };
        let rest = Rest {
            template: Header {
                flags: 0,
                length: 0,
                ..h
            },
            remaining: h.length - self.max_body,
            final_flags: h.flags & (FLAG_FIN | FLAG_RST),
        };
        State::EmitHeader {
            buf: first.encode(),
            len: HEADER_LEN,
            pos: 0,
            body: self.max_body,
            rest: Some(rest),
        }
    }

    /// The header of the next piece of a split frame.
    fn next_piece(&self, rest: Rest) -> State {
        let length = rest.remaining.min(self.max_body);
        let remaining = rest.remaining - length;
        let (flags, next) = if remaining == 0 {
            (rest.final_flags, None)
        } else {
            (0, Some(Rest { remaining, ..rest }))
        };
        let h = Header {
            flags,
            length,
            ..rest.template
        };
        State::EmitHeader {
            buf: h.encode(),
            len: HEADER_LEN,
            pos: 0,
            body: length,
            rest: next,
        }
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Rechunk<C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut written = 0;
        // Produce as much as fits without blocking; once something is
        // written, a pending inner read returns what we have.
        while written < out.len() {
            match &mut this.state {
                State::Eof => break,
                State::ReadHeader { buf, filled } => {
                    let n = match Pin::new(&mut this.inner).poll_read(cx, &mut buf[*filled..]) {
                        Poll::Ready(Ok(n)) => n,
                        Poll::Ready(Err(e)) if written == 0 => return Poll::Ready(Err(e)),
                        Poll::Pending if written == 0 => return Poll::Pending,
                        Poll::Ready(Err(_)) | Poll::Pending => break,
                    };
                    if n == 0 {
                        // EOF: hand over a partial header as-is so the yamux
                        // crate reports the truncation itself.
                        let (raw, len) = (*buf, *filled);
                        this.state = if len == 0 {
                            State::Eof
                        } else {
                            State::EmitHeader {
                                buf: raw,
                                len,
                                pos: 0,
                                body: 0,
                                rest: None,
                            }
                        };
                        if len == 0 {
                            break;
                        }
                        continue;
                    }
                    *filled += n;
                    if *filled == HEADER_LEN {
                        let raw = *buf;
                        this.state = this.on_header(raw);
                    }
                }
                State::EmitHeader {
                    buf,
                    len,
                    pos,
                    body,
                    rest,
                } => {
                    let n = (*len - *pos).min(out.len() - written);
                    out[written..written + n].copy_from_slice(&buf[*pos..*pos + n]);
                    written += n;
                    *pos += n;
                    if *pos == *len {
                        this.state = if *len < HEADER_LEN {
                            State::Eof
                        } else {
                            State::Body {
                                left: *body,
                                rest: *rest,
                            }
                        };
                    }
                }
                State::Body { left, rest } => {
                    if *left == 0 {
                        this.state = match *rest {
                            Some(r) => this.next_piece(r),
                            None => State::ReadHeader {
                                buf: [0; HEADER_LEN],
                                filled: 0,
                            },
                        };
                        continue;
                    }
                    let want = (*left as usize).min(out.len() - written);
                    let n = match Pin::new(&mut this.inner)
                        .poll_read(cx, &mut out[written..written + want])
                    {
                        Poll::Ready(Ok(n)) => n,
                        Poll::Ready(Err(e)) if written == 0 => return Poll::Ready(Err(e)),
                        Poll::Pending if written == 0 => return Poll::Pending,
                        Poll::Ready(Err(_)) | Poll::Pending => break,
                    };
                    if n == 0 {
                        this.state = State::Eof;
                        break;
                    }
                    written += n;
                    *left -= n as u32;
                }
            }
        }
        Poll::Ready(Ok(written))
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Rechunk<C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt, executor::block_on, io::Cursor};

    fn frame(typ: u8, flags: u16, sid: u32, body: &[u8]) -> Vec<u8> {
        let h = Header {
            version: 0,
            typ,
            flags,
            stream_id: sid,
            length: body.len() as u32,
        };
        let mut v = h.encode().to_vec();
        v.extend_from_slice(body);
        v
    }

    /// Parses a byte stream back into (header, body) frames.
    fn parse(mut b: &[u8]) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let raw: [u8; HEADER_LEN] = b[..HEADER_LEN].try_into().unwrap();
            let h = Header::decode(&raw);
            let body_len = if h.typ == TYPE_DATA {
                h.length as usize
            } else {
                0
            };
            out.push((h, b[HEADER_LEN..HEADER_LEN + body_len].to_vec()));
            b = &b[HEADER_LEN + body_len..];
        }
        out
    }

    /// Reads everything through the wrapper using reads of `chunk` bytes.
    fn pass(input: Vec<u8>, max: usize, chunk: usize) -> (Vec<u8>, u64) {
        let counter = Counter::default();
        let mut r = Rechunk::new(Cursor::new(input), max, counter.clone());
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = block_on(r.read(&mut buf)).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        (out, counter.get())
    }

    #[test]
    fn small_frames_pass_unchanged() {
        let mut input = frame(TYPE_DATA, FLAG_SYN, 1, &[7; 100]);
        input.extend(frame(1, FLAG_ACK, 1, &[])); // window update
        input.extend(frame(2, FLAG_SYN, 0, &[])); // ping
        input.extend(frame(TYPE_DATA, FLAG_FIN, 1, &[]));
        for chunk in [1, 5, 12, 13, 4096] {
            let (out, split) = pass(input.clone(), 1024, chunk);
            assert_eq!(out, input, "chunk {chunk}");
            assert_eq!(split, 0);
        }
    }

    #[test]
    fn large_frame_is_split_with_flags_on_the_ends() {
        let body: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut input = frame(TYPE_DATA, FLAG_SYN | FLAG_FIN, 3, &body);
        input.extend(frame(TYPE_DATA, 0, 5, &[1, 2, 3]));
        for chunk in [1, 7, 1024, 100_000] {
            let (out, split) = pass(input.clone(), 1024, chunk);
            assert_eq!(split, 1);
            let frames = parse(&out);
            assert_eq!(frames.len(), 6, "5 pieces + 1 small frame");
            let pieces = &frames[..5];
            assert!(
                pieces
                    .iter()
                    .all(|(h, b)| h.stream_id == 3 && h.typ == TYPE_DATA && b.len() <= 1024)
            );
            assert_eq!(pieces[0].0.flags, FLAG_SYN);
            assert!(pieces[1..4].iter().all(|(h, _)| h.flags == 0));
            assert_eq!(pieces[4].0.flags, FLAG_FIN);
            let joined: Vec<u8> = pieces.iter().flat_map(|(_, b)| b.clone()).collect();
            assert_eq!(joined, body);
            assert_eq!(frames[5].0.stream_id, 5);
            assert_eq!(frames[5].1, [1, 2, 3]);
        }
    }

    #[test]
    fn exact_multiple_has_no_empty_tail() {
        let body = vec![9u8; 2048];
        let (out, split) = pass(frame(TYPE_DATA, FLAG_RST, 1, &body), 1024, 4096);
        assert_eq!(split, 1);
        let frames = parse(&out);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].0.flags, 0);
        assert_eq!(frames[1].0.flags, FLAG_RST);
    }

    #[test]
    fn truncated_input_ends_without_panic() {
        let mut input = frame(TYPE_DATA, 0, 1, &[1; 3000]);
        input.truncate(1500);
        let (out, _) = pass(input.clone(), 1024, 64);
        // The bytes that arrived are passed on; the yamux crate sees EOF
        // in the middle of a frame and reports it.
        assert_eq!(out.len(), 1500 + HEADER_LEN);
        let (out, _) = pass(input[..5].to_vec(), 1024, 64);
        assert_eq!(out, input[..5]);
    }
}
