//! On-demand ping and the libp2p perf protocol (`/perf/1.0.0`).
//!
//! Perf, as specified in libp2p/specs `perf/perf.md`: the client opens a
//! stream, writes the number of bytes it wants back (u64, big-endian),
//! uploads its bytes, closes its write side, then reads until the end. The
//! server reads the count, reads until the end, then sends that many bytes
//! and closes. Our numbers therefore compare directly with other libp2p
//! implementations' perf tools.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p_identity::PeerId;
use libp2p_swarm::{Stream, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{config::PerfConfig, node::Error};

/// The perf protocol.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/perf/1.0.0");
/// Inbound perf streams waiting to be taken (beyond them, new ones are
/// dropped); `perf.max_concurrent` bounds those being served.
pub const INBOUND_QUEUE: usize = 16;
/// The ping protocol.
pub const PING_PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/ping/1.0.0");

const CHUNK: usize = 64 * 1024;
const PING_SIZE: usize = 32;

/// The result of one perf run, as seen by the client.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Bytes sent.
    pub upload_bytes: u64,
    /// Bytes received.
    pub download_bytes: u64,
    /// Seconds from opening the stream to our write side being closed.
    pub upload_seconds: f64,
    /// Seconds from then to the end of the stream.
    pub download_seconds: f64,
}

impl Report {
    /// Upload throughput in bits per second.
    pub fn upload_bps(&self) -> f64 {
        self.upload_bytes as f64 * 8.0 / self.upload_seconds.max(1e-9)
    }

    /// Download throughput in bits per second.
    pub fn download_bps(&self) -> f64 {
        self.download_bytes as f64 * 8.0 / self.download_seconds.max(1e-9)
    }
}

fn stream_err(peer: PeerId, protocol: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Stream {
        peer,
        protocol,
        reason: e.to_string(),
    }
}

async fn open(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    protocol: StreamProtocol,
    name: &'static str,
) -> Result<Stream, Error> {
    control
        .open_stream(peer, protocol)
        .await
        .map_err(|e| Error::Stream {
            peer,
            protocol: name,
            reason: e.to_string(),
        })
}

/// Attempts of [`ping`]: a libp2p-ping peer keeps one inbound ping stream per
/// connection and closes the older one when its own periodic ping (or
/// another client) opens a new one, and a connection may close (pruned,
/// idle) just as the stream opens, so a failed attempt is retried.
const PING_ATTEMPTS: u32 = 4;
/// Pause before the first retry, doubled before each further one: time
/// for the swarm to see a closing connection go (the next attempt then
/// uses another connection or dials).
const PING_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// One ping round trip on a new stream, retried on stream failures.
pub async fn ping(control: &mut libp2p_stream::Control, peer: PeerId) -> Result<Duration, Error> {
    let mut result = ping_once(control, peer).await;
    for attempt in 1..PING_ATTEMPTS {
        match &result {
            Err(Error::Stream { reason, .. }) => {
                tracing::debug!(%peer, attempt, %reason, "ping failed; retrying");
                tokio::time::sleep(PING_RETRY_PAUSE * 2u32.pow(attempt - 1)).await;
                result = ping_once(control, peer).await;
            }
            _ => break,
        }
    }
    result
}

async fn ping_once(control: &mut libp2p_stream::Control, peer: PeerId) -> Result<Duration, Error> {
    let mut stream = open(control, peer, PING_PROTOCOL, "ping").await?;
    let payload: [u8; PING_SIZE] = rand::random();
    let start = Instant::now();
    let err = stream_err(peer, "ping");
    stream.write_all(&payload).await.map_err(err)?;
    stream.flush().await.map_err(stream_err(peer, "ping"))?;
    let mut echo = [0u8; PING_SIZE];
    stream
        .read_exact(&mut echo)
        .await
        .map_err(stream_err(peer, "ping"))?;
    let rtt = start.elapsed();
    let _ = stream.close().await;
    if echo != payload {
        return Err(Error::Stream {
            peer,
            protocol: "ping",
            reason: "the echo differs from what we sent".into(),
        });
    }
    Ok(rtt)
}

/// Writes `n` bytes of zeros in chunks.
async fn send_bytes(stream: &mut Stream, mut n: u64) -> std::io::Result<()> {
    let buf = [0u8; CHUNK];
    while n > 0 {
        let len = n.min(CHUNK as u64) as usize;
        stream.write_all(&buf[..len]).await?;
        n -= len as u64;
    }
    stream.flush().await
}

/// Reads until the end of the stream, returning the byte count.
async fn drain(stream: &mut Stream) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

/// Runs one perf stream as the client over `control` (any libp2p swarm
/// with a `libp2p_stream::Behaviour`).
pub async fn client(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    upload: u64,
    download: u64,
) -> Result<Report, Error> {
    let start = Instant::now();
    let mut stream = open(control, peer, PROTOCOL, "perf").await?;
    let io = |e| Error::Stream {
        peer,
        protocol: "perf",
        reason: format!("{e}"),
    };
    stream
        .write_all(&download.to_be_bytes())
        .await
        .map_err(io)?;
    send_bytes(&mut stream, upload).await.map_err(io)?;
    stream.close().await.map_err(io)?;
    let upload_seconds = start.elapsed().as_secs_f64();
    let received = drain(&mut stream).await.map_err(io)?;
    let download_seconds = start.elapsed().as_secs_f64() - upload_seconds;
    if received != download {
        return Err(Error::Stream {
            peer,
            protocol: "perf",
            reason: format!("asked for {download} bytes, received {received}"),
        });
    }
    Ok(Report {
        upload_bytes: upload,
        download_bytes: received,
        upload_seconds,
        download_seconds,
    })
}

/// Serves inbound perf streams until `stop`, within the configured limits.
pub async fn serve(
    mut incoming: impl futures::Stream<Item = (PeerId, Stream)> + Unpin,
    config: PerfConfig,
    stop: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_concurrent));
    loop {
        let next = tokio::select! {
            next = incoming.next() => next,
            _ = stop.cancelled() => return,
        };
        let Some((peer, stream)) = next else { return };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = config.max_concurrent, "perf stream refused: too many at once");
            continue;
        };
        let config = config.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(config.timeout, serve_one(stream, config.max_bytes)).await {
                Ok(Ok((received, sent))) => {
                    tracing::debug!(%peer, received, sent, "perf stream served")
                }
                Ok(Err(e)) => tracing::info!(%peer, error = %e, "perf stream failed"),
                Err(_) => tracing::info!(%peer, timeout = ?config.timeout, "perf stream timed out"),
            }
        });
    }
}

async fn serve_one(mut stream: Stream, max_bytes: u64) -> std::io::Result<(u64, u64)> {
    let mut len = [0u8; 8];
    stream.read_exact(&mut len).await?;
    let wanted = u64::from_be_bytes(len);
    if wanted > max_bytes {
        let _ = stream.close().await;
        return Err(std::io::Error::other(format!(
            "asked for {wanted} bytes, more than perf.max_bytes = {max_bytes}"
        )));
    }
    let received = drain(&mut stream).await?;
    send_bytes(&mut stream, wanted).await?;
    stream.close().await?;
    Ok((received, wanted))
}
