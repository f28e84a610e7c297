//! Stream multiplexing for Blackhole connections.
//!
//! Layer 2 of the workspace, above `blackhole-security` (whose secured
//! streams it multiplexes, though it only sees an `AsyncRead + AsyncWrite`)
//! and below `blackhole-transport`, which applies it. It owns:
//!
//! - Yamux (`/yamux/1.0.0`) through our own [`StreamMuxer`] driver for the
//!   `yamux` crate, so every window and buffer is configurable
//!   ([`YamuxConfig`]), and with a frame splitter on the inbound byte stream
//!   ([`rechunk`]) so that peers sending DATA frames larger than the `yamux`
//!   crate accepts (js-libp2p sends frames as large as its whole send
//!   window) are served instead of disconnected;
//! - Mplex (`/mplex/6.7.0`) as a legacy option, offered after Yamux by
//!   default.
//!
//! It knows nothing of sockets, peers, encryption or protocols above it.
//!
//! ```
//! use blackhole_mux::{Config, Protocol, Upgrade};
//!
//! let config = Config::default();
//! config.validate().unwrap();
//! assert_eq!(config.protocols, [Protocol::Yamux, Protocol::Mplex]);
//! let upgrade = Upgrade::new(&config, &blackhole_mux::Metrics::default()).unwrap();
//! # let _ = upgrade;
//! ```
//!
//! [`StreamMuxer`]: libp2p_core::muxing::StreamMuxer

pub mod accept;
pub mod rechunk;
mod yamux_driver;

use std::{fmt, io};

use futures::{AsyncRead, AsyncWrite, future};
use libp2p_core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use serde::{Deserialize, Serialize};

pub use yamux_driver::YamuxMuxer;

use blackhole_metrics::{Registry, prometheus_client::metrics::counter::Counter};

/// The Yamux default per-stream window (from the Yamux specification).
pub const YAMUX_DEFAULT_STREAM_WINDOW: usize = 256 * 1024;

/// A stream multiplexer protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Yamux, `/yamux/1.0.0`.
    Yamux,
    /// Mplex, `/mplex/6.7.0` (legacy: no flow control).
    Mplex,
}

impl Protocol {
    /// The multistream-select protocol id.
    pub const fn id(self) -> &'static str {
        match self {
            Protocol::Yamux => "/yamux/1.0.0",
            Protocol::Mplex => "/mplex/6.7.0",
        }
    }

    /// A short lowercase name, as used in configuration and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Yamux => "yamux",
            Protocol::Mplex => "mplex",
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

/// Multiplexing configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Multiplexers offered, most preferred first.
    pub protocols: Vec<Protocol>,
    /// Yamux settings.
    pub yamux: YamuxConfig,
    /// Mplex settings.
    pub mplex: MplexConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            protocols: vec![Protocol::Yamux, Protocol::Mplex],
            yamux: YamuxConfig::default(),
            mplex: MplexConfig::default(),
        }
    }
}

/// Yamux settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct YamuxConfig {
    /// Maximum number of concurrent streams per connection.
    pub max_num_streams: usize,
    /// Upper bound of the sum of all stream receive windows of a connection,
    /// in bytes. Stream windows start at 256 KiB and grow towards the
    /// bandwidth-delay product; this caps what one connection can make us
    /// buffer. Must be at least `256 KiB × max_num_streams`.
    pub max_connection_receive_window: usize,
    /// Largest DATA frame payload we send, in bytes; larger writes are split.
    pub split_send_size: usize,
    /// Largest DATA frame payload handed to the Yamux state machine, in
    /// bytes. Larger inbound frames (legal in the Yamux specification, and
    /// sent by js-libp2p) are split into frames of at most this size before
    /// decoding. At most 1 MiB, the limit of the `yamux` crate.
    pub max_inbound_frame: usize,
    /// Inbound streams buffered while the application is not accepting;
    /// beyond this, new inbound streams are reset.
    pub max_buffered_inbound_streams: usize,
}

impl Default for YamuxConfig {
    fn default() -> Self {
        Self {
            max_num_streams: 512,
            // 512 streams × 256 KiB guaranteed, plus room for a few fast
            // streams to grow their window to 16 MiB+.
            max_connection_receive_window: 256 * 1024 * 1024,
            split_send_size: 64 * 1024,
            max_inbound_frame: rechunk::MAX_YAMUX_FRAME_BODY,
            max_buffered_inbound_streams: 256,
        }
    }
}

/// Mplex settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MplexConfig {
    /// Maximum number of concurrent streams per connection.
    pub max_num_streams: usize,
    /// Frames buffered per stream that the application has not read yet.
    pub max_buffer_frames: usize,
    /// What happens when a stream's buffer is full (Mplex has no flow
    /// control): `block` stops reading the whole connection until the
    /// application reads (no data lost, but one slow stream stalls the
    /// others), `reset` resets that stream.
    pub on_buffer_full: MplexBufferFull,
    /// Largest frame payload we send, in bytes.
    pub split_send_size: usize,
}

impl Default for MplexConfig {
    fn default() -> Self {
        Self {
            max_num_streams: 128,
            max_buffer_frames: 32,
            on_buffer_full: MplexBufferFull::Block,
            split_send_size: 8 * 1024,
        }
    }
}

/// See [`MplexConfig::on_buffer_full`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MplexBufferFull {
    /// Stop reading the connection until the application reads.
    Block,
    /// Reset the stream whose buffer is full.
    Reset,
}

/// A configuration value that cannot work, with the key that holds it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The key, relative to the multiplexing section (`yamux.max_num_streams`).
    pub key: &'static str,
    /// Why the value is refused.
    pub reason: String,
}

impl Config {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason: String| Err(ConfigError { key, reason });
        if self.protocols.is_empty() {
            return err(
                "protocols",
                "at least one multiplexer must be enabled".into(),
            );
        }
        for (i, p) in self.protocols.iter().enumerate() {
            if self.protocols[..i].contains(p) {
                return err("protocols", format!("{p} is listed twice"));
            }
        }
        let y = &self.yamux;
        if y.max_num_streams == 0 {
            return err("yamux.max_num_streams", "must be at least 1".into());
        }
        let min_window = y
            .max_num_streams
            .saturating_mul(YAMUX_DEFAULT_STREAM_WINDOW);
        if y.max_connection_receive_window < min_window {
            return err(
                "yamux.max_connection_receive_window",
                format!(
                    "must be at least 256 KiB × yamux.max_num_streams = {min_window} bytes, got {}",
                    y.max_connection_receive_window
                ),
            );
        }
        if y.split_send_size == 0 || y.split_send_size > 16 * 1024 * 1024 {
            return err(
                "yamux.split_send_size",
                "must be between 1 byte and 16 MiB".into(),
            );
        }
        if y.max_inbound_frame < 1024 || y.max_inbound_frame > rechunk::MAX_YAMUX_FRAME_BODY {
            return err(
                "yamux.max_inbound_frame",
                format!(
                    "must be between 1 KiB and {} bytes",
                    rechunk::MAX_YAMUX_FRAME_BODY
                ),
            );
        }
        if y.max_buffered_inbound_streams == 0 {
            return err(
                "yamux.max_buffered_inbound_streams",
                "must be at least 1".into(),
            );
        }
        let m = &self.mplex;
        if m.max_num_streams == 0 {
            return err("mplex.max_num_streams", "must be at least 1".into());
        }
        if m.max_buffer_frames == 0 {
            return err("mplex.max_buffer_frames", "must be at least 1".into());
        }
        // libp2p-mplex caps frames at 1 MiB.
        if m.split_send_size == 0 || m.split_send_size > 1024 * 1024 {
            return err(
                "mplex.split_send_size",
                "must be between 1 byte and 1 MiB".into(),
            );
        }
        Ok(())
    }
}

/// Counters of the multiplexing layer.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Inbound Yamux DATA frames that were larger than `max_inbound_frame`
    /// and were split.
    pub yamux_frames_split: Counter,
    /// Inbound streams reset because the application was not accepting.
    pub inbound_streams_dropped: Counter,
}

impl Metrics {
    /// Creates the counters and registers them under `blackhole_mux_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = blackhole_metrics::layer(registry, "mux");
        r.register(
            "yamux_frames_split",
            "Inbound yamux DATA frames larger than max_inbound_frame that were split",
            m.yamux_frames_split.clone(),
        );
        r.register(
            "inbound_streams_dropped",
            "Inbound streams reset because the application was not accepting them",
            m.inbound_streams_dropped.clone(),
        );
        m
    }
}

/// The multiplexer upgrade offering the configured protocols in order.
#[derive(Debug, Clone)]
pub struct Upgrade {
    protocols: Vec<Protocol>,
    yamux: yamux::Config,
    yamux_settings: YamuxConfig,
    mplex: libp2p_mplex::Config,
    metrics: Metrics,
}

impl Upgrade {
    /// Builds the upgrade; `config` is validated first.
    pub fn new(config: &Config, metrics: &Metrics) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut yamux = yamux::Config::default();
        // The yamux crate asserts window >= streams × 256 KiB on each call:
        // lift the window limit first, then set the pair validate() checked.
        yamux.set_max_connection_receive_window(None);
        yamux.set_max_num_streams(config.yamux.max_num_streams);
        yamux.set_max_connection_receive_window(Some(config.yamux.max_connection_receive_window));
        yamux.set_split_send_size(config.yamux.split_send_size);
        let mut mplex = libp2p_mplex::Config::new();
        mplex
            .set_max_num_streams(config.mplex.max_num_streams)
            .set_max_buffer_size(config.mplex.max_buffer_frames)
            .set_max_buffer_behaviour(match config.mplex.on_buffer_full {
                MplexBufferFull::Block => libp2p_mplex::MaxBufferBehaviour::Block,
                MplexBufferFull::Reset => libp2p_mplex::MaxBufferBehaviour::ResetStream,
            })
            .set_split_send_size(config.mplex.split_send_size);
        Ok(Self {
            protocols: config.protocols.clone(),
            yamux,
            yamux_settings: config.yamux.clone(),
            mplex,
            metrics: metrics.clone(),
        })
    }
}

impl UpgradeInfo for Upgrade {
    type Info = Protocol;
    type InfoIter = std::vec::IntoIter<Protocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.protocols.clone().into_iter()
    }
}

/// A multiplexed connection: Yamux or Mplex.
pub type Muxer<C> = future::Either<YamuxMuxer<rechunk::Rechunk<C>>, libp2p_mplex::Multiplex<C>>;

/// The protocol of a [`Muxer`].
pub fn protocol_of<C>(muxer: &Muxer<C>) -> Protocol {
    match muxer {
        future::Either::Left(_) => Protocol::Yamux,
        future::Either::Right(_) => Protocol::Mplex,
    }
}

impl Upgrade {
    fn start<C>(self, io: C, info: Protocol, mode: yamux::Mode) -> Result<Muxer<C>, io::Error>
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if !self.protocols.contains(&info) {
            return Err(io::Error::other(format!(
                "negotiated multiplexer {info} is not enabled"
            )));
        }
        Ok(match info {
            Protocol::Yamux => {
                let io = rechunk::Rechunk::new(
                    io,
                    self.yamux_settings.max_inbound_frame,
                    self.metrics.yamux_frames_split.clone(),
                );
                future::Either::Left(YamuxMuxer::new(
                    yamux::Connection::new(io, self.yamux, mode),
                    self.yamux_settings.max_buffered_inbound_streams,
                    self.metrics.inbound_streams_dropped.clone(),
                ))
            }
            Protocol::Mplex => {
                use libp2p_core::upgrade::InboundConnectionUpgrade as _;
                use libp2p_core::upgrade::OutboundConnectionUpgrade as _;
                let fut = match mode {
                    yamux::Mode::Server => self.mplex.upgrade_inbound(io, Protocol::Mplex.id()),
                    yamux::Mode::Client => self.mplex.upgrade_outbound(io, Protocol::Mplex.id()),
                };
                // libp2p-mplex's upgrade is a ready future.
                match futures::FutureExt::now_or_never(fut) {
                    Some(result) => future::Either::Right(result?),
                    None => return Err(io::Error::other("mplex upgrade did not complete at once")),
                }
            }
        })
    }
}

impl<C> InboundConnectionUpgrade<C> for Upgrade
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Muxer<C>, io::Error>>;

    fn upgrade_inbound(self, io: C, info: Protocol) -> Self::Future {
        future::ready(self.start(io, info, yamux::Mode::Server))
    }
}

impl<C> OutboundConnectionUpgrade<C> for Upgrade
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Muxer<C>, io::Error>>;

    fn upgrade_outbound(self, io: C, info: Protocol) -> Self::Future {
        future::ready(self.start(io, info, yamux::Mode::Client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = Config::default();
        c.yamux.max_connection_receive_window = 1024;
        assert_eq!(
            c.validate().unwrap_err().key,
            "yamux.max_connection_receive_window"
        );
        let mut c = Config::default();
        c.protocols.clear();
        assert_eq!(c.validate().unwrap_err().key, "protocols");
        let c = Config {
            protocols: vec![Protocol::Mplex, Protocol::Mplex],
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "protocols");
        let mut c = Config::default();
        c.yamux.max_inbound_frame = 2 * 1024 * 1024;
        assert_eq!(c.validate().unwrap_err().key, "yamux.max_inbound_frame");
        let mut c = Config::default();
        c.mplex.split_send_size = 0;
        assert_eq!(c.validate().unwrap_err().key, "mplex.split_send_size");
    }
}
