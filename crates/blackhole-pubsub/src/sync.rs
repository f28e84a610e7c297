//! Registry snapshots for starting nodes: the request-response codec of
//! `/blackhole/pubsub/registry/1.0.0` (see [`crate::wire`] for the bytes).
//! The request is one byte, the version; the response is the snapshot's
//! bytes until the stream closes, at most `max_bytes` (a longer answer
//! is an error, not a truncated snapshot).

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p_request_response as rr;
use libp2p_swarm::StreamProtocol;

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/blackhole/pubsub/registry/1.0.0");
/// The only request: the snapshot format version we read.
const REQUEST: u8 = 1;

/// A request for a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request;

/// Reads and writes snapshots of at most `max_bytes`.
#[derive(Debug, Clone)]
pub struct Codec {
    pub(crate) max_bytes: usize,
}

impl rr::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut b = [0u8; 1];
        io.read_exact(&mut b).await?;
        if b[0] != REQUEST {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("registry request version {} (we answer {REQUEST})", b[0]),
            ));
        }
        Ok(Request)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut out = Vec::new();
        // One byte more than allowed tells a too long answer from one
        // that fits exactly.
        io.take(self.max_bytes as u64 + 1)
            .read_to_end(&mut out)
            .await?;
        if out.len() > self.max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("registry snapshot over {} bytes", self.max_bytes),
            ));
        }
        Ok(out)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        _: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&[REQUEST]).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        bytes: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&bytes).await?;
        io.close().await
    }
}
