//! Transport configuration.

use std::time::Duration;

use libp2p_identity::Keypair;
use serde::{Deserialize, Serialize};

/// Transport configuration: which transports are enabled and their settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// TCP settings.
    pub tcp: TcpConfig,
    /// QUIC v1 settings.
    pub quic: QuicConfig,
    /// WebSocket (over TCP) settings.
    pub websocket: WebSocketConfig,
    /// DNS resolution of `/dns*` addresses.
    pub dns: DnsConfig,
    /// The in-memory transport (`/memory/N`), for tests in one process.
    pub memory: bool,
    /// Secure channels offered on TCP and WebSocket, most preferred first.
    pub security: Vec<blackhole_security::Protocol>,
    /// Time allowed for the security and multiplexer handshakes.
    #[serde(with = "humantime_serde")]
    pub upgrade_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tcp: TcpConfig::default(),
            quic: QuicConfig::default(),
            websocket: WebSocketConfig::default(),
            dns: DnsConfig::default(),
            memory: false,
            security: vec![
                blackhole_security::Protocol::Noise,
                blackhole_security::Protocol::Tls,
            ],
            upgrade_timeout: Duration::from_secs(20),
        }
    }
}

/// TCP settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpConfig {
    /// Whether TCP is enabled.
    pub enabled: bool,
    /// Disable Nagle's algorithm (`TCP_NODELAY`).
    pub nodelay: bool,
    /// The listen backlog.
    pub listen_backlog: u32,
    /// IP TTL of outgoing packets; the system default when absent.
    pub ttl: Option<u32>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            nodelay: true,
            listen_backlog: 1024,
            ttl: None,
        }
    }
}

/// The default bound of QUIC path MTU discovery: quinn's, an Ethernet
/// path's payload. Raise it on networks with jumbo frames (9001-byte MTU
/// inside AWS VPCs, for instance); on loopback, 65527 moved `blackhole-bench
/// perf` over QUIC only from about 4.6-5.1 to 5.2-5.8 Gbit/s, as the
/// receiver's time goes mostly to ChaCha20-Poly1305.
const MTU_UPPER_BOUND: u16 = 1452;

/// QUIC v1 settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuicConfig {
    /// Whether QUIC is enabled.
    pub enabled: bool,
    /// Time allowed for the QUIC handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    #[serde(with = "humantime_serde")]
    pub max_idle_timeout: Duration,
    /// Interval of keep-alive packets.
    #[serde(with = "humantime_serde")]
    pub keep_alive_interval: Duration,
    /// Maximum concurrent inbound streams per connection.
    pub max_concurrent_stream_limit: u32,
    /// Receive window of one stream, in bytes.
    pub max_stream_data: u32,
    /// Receive window of one connection, in bytes.
    pub max_connection_data: u32,
    /// Largest UDP payload that path MTU discovery probes for, in bytes
    /// (1200 to 65527); 0 turns discovery off, leaving packets at 1200
    /// bytes. Packets grow only when probes of the larger size are
    /// acknowledged, so a bound above a path's MTU costs a few lost probes
    /// on that path and nothing else.
    pub mtu_upper_bound: u16,
    /// When a dial to a peer includes QUIC and plain TCP addresses, the TCP
    /// attempts wait this long for QUIC to win (and start at once if QUIC
    /// fails), instead of racing it with a second handshake. 0 (the
    /// default, libp2p-swarm's behaviour) races them; go-libp2p waits
    /// 250 ms. Off by default until measured: in a saturated 200-node test
    /// network, 250 ms cut the aborted inbound handshakes only from ~48 % to
    /// ~40 % (handshakes there take longer than that), and that run's churn
    /// scenario failed to see killed peers go (which passed in three runs
    /// before): QUIC connections notice a killed peer only at their idle
    /// timeout, TCP ones at once.
    #[serde(with = "humantime_serde")]
    pub head_start: Duration,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            handshake_timeout: Duration::from_secs(5),
            max_idle_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(5),
            max_concurrent_stream_limit: 256,
            max_stream_data: 10_000_000,
            max_connection_data: 15_000_000,
            mtu_upper_bound: MTU_UPPER_BOUND,
            head_start: Duration::ZERO,
        }
    }
}

impl QuicConfig {
    pub(crate) fn to_libp2p(&self, key: &Keypair) -> libp2p_quic::Config {
        let mut c = libp2p_quic::Config::new(key);
        c.handshake_timeout = self.handshake_timeout;
        c.max_idle_timeout = u32::try_from(self.max_idle_timeout.as_millis()).unwrap_or(u32::MAX);
        c.keep_alive_interval = self.keep_alive_interval;
        c.max_concurrent_stream_limit = self.max_concurrent_stream_limit;
        c.max_stream_data = self.max_stream_data;
        c.max_connection_data = self.max_connection_data;
        match self.mtu_upper_bound {
            0 => c.disable_path_mtu_discovery(),
            bound => c.mtu_upper_bound(bound),
        }
    }
}

/// WebSocket settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Whether WebSocket is enabled.
    pub enabled: bool,
    /// Largest WebSocket message accepted, in bytes.
    pub max_data_size: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_data_size: 16 * 1024 * 1024,
        }
    }
}

/// DNS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Whether `/dns4`, `/dns6`, `/dns` and `/dnsaddr` addresses are
    /// resolved.
    pub enabled: bool,
    /// Name servers to ask (`"127.0.0.1:53"`); empty means the system's
    /// resolver configuration (`/etc/resolv.conf`).
    pub nameservers: Vec<std::net::SocketAddr>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            nameservers: Vec::new(),
        }
    }
}

/// A configuration value that cannot work, with the key that holds it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The key, relative to the transport section (`quic.max_idle_timeout`).
    pub key: &'static str,
    /// Why the value is refused.
    pub reason: String,
}

impl Config {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason: &str| {
            Err(ConfigError {
                key,
                reason: reason.to_owned(),
            })
        };
        if !(self.tcp.enabled || self.quic.enabled || self.websocket.enabled || self.memory) {
            return err(
                "tcp.enabled",
                "at least one of tcp, quic, websocket or memory must be enabled",
            );
        }
        if self.security.is_empty() {
            return err(
                "security",
                "at least one of \"noise\" and \"tls\" must be listed",
            );
        }
        for (i, p) in self.security.iter().enumerate() {
            if self.security[..i].contains(p) {
                return Err(ConfigError {
                    key: "security",
                    reason: format!("{p} is listed twice"),
                });
            }
        }
        if self.upgrade_timeout.is_zero() {
            return err("upgrade_timeout", "must be greater than zero");
        }
        if self.tcp.listen_backlog == 0 {
            return err("tcp.listen_backlog", "must be at least 1");
        }
        let q = &self.quic;
        if q.handshake_timeout.is_zero() {
            return err("quic.handshake_timeout", "must be greater than zero");
        }
        if q.max_idle_timeout.is_zero() || q.max_idle_timeout.as_millis() > u128::from(u32::MAX) {
            return err("quic.max_idle_timeout", "must be between 1 ms and 49 days");
        }
        if q.keep_alive_interval >= q.max_idle_timeout {
            return err(
                "quic.keep_alive_interval",
                "must be shorter than quic.max_idle_timeout",
            );
        }
        if q.max_concurrent_stream_limit == 0 {
            return err("quic.max_concurrent_stream_limit", "must be at least 1");
        }
        if q.max_stream_data < 16 * 1024 {
            return err("quic.max_stream_data", "must be at least 16 KiB");
        }
        if q.max_connection_data < q.max_stream_data {
            return err(
                "quic.max_connection_data",
                "must be at least quic.max_stream_data",
            );
        }
        if q.mtu_upper_bound != 0 && !(1200..=65527).contains(&q.mtu_upper_bound) {
            return err(
                "quic.mtu_upper_bound",
                "must be 0 (no discovery) or from 1200 to 65527",
            );
        }
        if q.head_start > Duration::from_secs(10) {
            return err("quic.head_start", "must be at most 10s");
        }
        if self.websocket.max_data_size < 1024 {
            return err("websocket.max_data_size", "must be at least 1 KiB");
        }
        Ok(())
    }
}
