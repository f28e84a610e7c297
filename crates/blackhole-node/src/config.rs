//! The node's configuration: one TOML file, every limit in it.
//!
//! [`DEFAULT_TOML`] is the documented default (what `blackhole-node config
//! default` prints); a test checks that it parses to [`Config::default`].
//! Every section and key is optional: a missing key takes its default, an
//! unknown key is an error.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use libp2p_core::Multiaddr;
use serde::{Deserialize, Serialize};

/// The node configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The node's identity.
    pub identity: IdentityConfig,
    /// Addresses.
    pub network: NetworkConfig,
    /// Connection limits and timeouts.
    pub connections: ConnectionsConfig,
    /// Transports and secure channels.
    pub transport: blackhole_transport::Config,
    /// Stream multiplexers.
    pub mux: blackhole_mux::Config,
    /// The identify protocol.
    pub identify: IdentifyConfig,
    /// The ping protocol.
    pub ping: PingConfig,
    /// The perf protocol (`/perf/1.0.0`), for throughput measurements.
    pub perf: PerfConfig,
    /// The HTTP control API.
    pub api: ApiConfig,
    /// Peer discovery: bootstrap peers and the peer store.
    pub discovery: blackhole_discovery::Config,
    /// The Kademlia DHT and connection pruning.
    pub overlay: blackhole_overlay::Config,
    /// Publish/subscribe.
    pub pubsub: blackhole_pubsub::Config,
    /// Request/response and streams.
    pub rpc: blackhole_rpc::Config,
    /// NAT traversal: AutoNAT, relay, hole punching, UPnP.
    pub nat: blackhole_nat::Config,
    /// The async runtime of the `blackhole-node` binary (a program using
    /// the library runs the node on its own runtime).
    pub runtime: RuntimeConfig,
}

/// The node's identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// The key file, relative to the data directory unless absolute.
    pub key_file: PathBuf,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            key_file: PathBuf::from("identity.key"),
        }
    }
}

/// Addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Addresses to announce to other peers in addition to the listen
    /// addresses (for example a public address in front of a port forward).
    pub external_addresses: Vec<Multiaddr>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        let parse = |s: &str| s.parse().unwrap_or_else(|_| Multiaddr::empty());
        Self {
            listen: vec![
                parse("/ip4/0.0.0.0/tcp/4001"),
                parse("/ip4/0.0.0.0/udp/4001/quic-v1"),
                parse("/ip4/0.0.0.0/tcp/4002/ws"),
            ],
            external_addresses: Vec::new(),
        }
    }
}

/// Connection limits and timeouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// A connection with no stream open for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time allowed for a dial (transport, security and multiplexer).
    #[serde(with = "humantime_serde")]
    pub dial_timeout: Duration,
    /// Established connections, in total.
    pub max_established: u32,
    /// Established inbound connections.
    pub max_established_incoming: u32,
    /// Established outbound connections.
    pub max_established_outgoing: u32,
    /// Established connections to one peer.
    pub max_established_per_peer: u32,
    /// Inbound connections still in their handshake.
    pub max_pending_incoming: u32,
    /// Outbound connections still in their handshake.
    pub max_pending_outgoing: u32,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            dial_timeout: Duration::from_secs(20),
            max_established: 1024,
            max_established_incoming: 768,
            max_established_outgoing: 512,
            max_established_per_peer: 4,
            max_pending_incoming: 128,
            max_pending_outgoing: 128,
        }
    }
}

/// The identify protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentifyConfig {
    /// Interval of periodic identify exchanges on each connection.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The agent version we announce; empty means `blackhole-node/<version>`.
    pub agent_version: String,
}

impl Default for IdentifyConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            agent_version: String::new(),
        }
    }
}

/// The ping protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PingConfig {
    /// Interval of pings on each connection.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A ping not answered within this time is a failure.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Inbound ping streams answered at once on one connection; one more
    /// closes the oldest. The ping spec lets a listener take two, and
    /// js-libp2p's connection monitor pings beside explicit pings.
    pub max_inbound_streams: usize,
    /// An inbound ping stream with no ping for this long is closed.
    #[serde(with = "humantime_serde")]
    pub inbound_idle_timeout: Duration,
}

impl Default for PingConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(20),
            max_inbound_streams: 2,
            inbound_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The perf protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerfConfig {
    /// Whether we serve `/perf/1.0.0` to other peers.
    pub enabled: bool,
    /// The most bytes one perf stream may ask us to send; larger requests
    /// are refused (the stream is closed).
    pub max_bytes: u64,
    /// Perf streams served at once; more are refused.
    pub max_concurrent: usize,
    /// Time allowed for one perf stream, in both directions.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for PerfConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: 1 << 30,
            max_concurrent: 4,
            timeout: Duration::from_secs(120),
        }
    }
}

/// The HTTP control API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Whether the API is served.
    pub enabled: bool,
    /// The address to serve on. Binding to anything but loopback requires
    /// a token.
    pub listen: SocketAddr,
    /// A bearer token every request must carry (`Authorization: Bearer …`).
    pub token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 5780)),
            token: None,
        }
    }
}

/// Most worker threads `runtime.worker_threads` may ask for.
pub const MAX_WORKER_THREADS: usize = 1024;

/// The async runtime of the `blackhole-node` binary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads; 0 means one per CPU core. 1 runs the whole node on
    /// one thread (no work stealing, no cross-thread wakeups): the
    /// cheapest choice when many nodes share a machine, as in
    /// `cargo xtask test-net`.
    pub worker_threads: usize,
}

/// The documented default configuration.
pub const DEFAULT_TOML: &str = include_str!("default-config.toml");

/// A configuration that cannot be used, naming the key and the reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML is malformed or has a bad value; the message names the key.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is out of range or inconsistent with another.
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Parses TOML text (`origin` names it in errors) and validates it.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// The configuration as TOML (without comments).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.transport
            .validate()
            .map_err(|e| invalid(format!("transport.{}", e.key), e.reason))?;
        self.mux
            .validate()
            .map_err(|e| invalid(format!("mux.{}", e.key), e.reason))?;
        self.discovery
            .validate()
            .map_err(|e| invalid(format!("discovery.{}", e.key), e.reason))?;
        self.overlay
            .validate()
            .map_err(|e| invalid(format!("overlay.{}", e.key), e.reason))?;
        self.pubsub
            .validate()
            .map_err(|e| invalid(format!("pubsub.{}", e.key), e.reason))?;
        self.rpc
            .validate()
            .map_err(|e| invalid(format!("rpc.{}", e.key), e.reason.to_owned()))?;
        self.nat
            .validate()
            .map_err(|e| invalid(format!("nat.{}", e.key), e.reason))?;
        if self.identity.key_file.as_os_str().is_empty() {
            return Err(invalid("identity.key_file", "must not be empty"));
        }
        for addr in &self.network.listen {
            self.check_listen_addr(addr)?;
        }
        if self.runtime.worker_threads > MAX_WORKER_THREADS {
            return Err(invalid(
                "runtime.worker_threads",
                format!("at most {MAX_WORKER_THREADS} (0: one per core)"),
            ));
        }
        let c = &self.connections;
        if c.idle_timeout.is_zero() {
            return Err(invalid(
                "connections.idle_timeout",
                "must be greater than zero",
            ));
        }
        if c.dial_timeout.is_zero() {
            return Err(invalid(
                "connections.dial_timeout",
                "must be greater than zero",
            ));
        }
        for (key, v) in [
            ("connections.max_established", c.max_established),
            (
                "connections.max_established_incoming",
                c.max_established_incoming,
            ),
            (
                "connections.max_established_outgoing",
                c.max_established_outgoing,
            ),
            (
                "connections.max_established_per_peer",
                c.max_established_per_peer,
            ),
            ("connections.max_pending_incoming", c.max_pending_incoming),
            ("connections.max_pending_outgoing", c.max_pending_outgoing),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.identify.interval.is_zero() {
            return Err(invalid("identify.interval", "must be greater than zero"));
        }
        if self.ping.interval.is_zero() || self.ping.timeout.is_zero() {
            let key = if self.ping.interval.is_zero() {
                "ping.interval"
            } else {
                "ping.timeout"
            };
            return Err(invalid(key, "must be greater than zero"));
        }
        if self.ping.max_inbound_streams == 0 {
            return Err(invalid("ping.max_inbound_streams", "must be at least 1"));
        }
        if self.ping.inbound_idle_timeout.is_zero() {
            return Err(invalid(
                "ping.inbound_idle_timeout",
                "must be greater than zero",
            ));
        }
        if self.perf.max_concurrent == 0 {
            return Err(invalid("perf.max_concurrent", "must be at least 1"));
        }
        if self.perf.timeout.is_zero() {
            return Err(invalid("perf.timeout", "must be greater than zero"));
        }
        match &self.api.token {
            Some(t) if t.trim().len() < 16 => {
                return Err(invalid("api.token", "must be at least 16 characters"));
            }
            None if self.api.enabled && !self.api.listen.ip().is_loopback() => {
                return Err(invalid(
                    "api.token",
                    format!(
                        "api.listen = {} is not a loopback address; set api.token to protect the control API",
                        self.api.listen
                    ),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn check_listen_addr(&self, addr: &Multiaddr) -> Result<(), ConfigError> {
        use blackhole_transport::Kind;
        let t = &self.transport;
        let (enabled, key) = match Kind::of(addr) {
            Kind::Tcp => (t.tcp.enabled, "transport.tcp.enabled"),
            Kind::WebSocket => (t.websocket.enabled, "transport.websocket.enabled"),
            Kind::Quic => (t.quic.enabled, "transport.quic.enabled"),
            Kind::Memory => (t.memory, "transport.memory"),
            Kind::Relay | Kind::Other => {
                return Err(invalid(
                    "network.listen",
                    format!("{addr} is not a TCP, WebSocket, QUIC or memory address"),
                ));
            }
        };
        if !enabled {
            return Err(invalid(
                "network.listen",
                format!("{addr} needs {key} = true"),
            ));
        }
        Ok(())
    }

    /// The agent version announced by identify.
    pub fn agent_version(&self) -> String {
        if self.identify.agent_version.is_empty() {
            format!("blackhole-node/{}", env!("CARGO_PKG_VERSION"))
        } else {
            self.identify.agent_version.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"))
    }

    #[test]
    fn documented_default_is_the_default() {
        assert_eq!(parse(DEFAULT_TOML).unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn serialized_config_round_trips() {
        let c = Config::default();
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
    }

    fn invalid_key(text: &str) -> String {
        match parse(text).unwrap_err() {
            ConfigError::Invalid { key, .. } => key,
            e => panic!("expected an invalid value, got {e}"),
        }
    }

    fn parse_error(text: &str) -> String {
        match parse(text).unwrap_err() {
            ConfigError::Parse { message, .. } => message,
            e => panic!("expected a parse error, got {e}"),
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        assert_eq!(
            invalid_key("[connections]\nmax_established = 0"),
            "connections.max_established"
        );
        assert_eq!(
            invalid_key("[connections]\nidle_timeout = \"0s\""),
            "connections.idle_timeout"
        );
        assert_eq!(invalid_key("[mux]\nprotocols = []"), "mux.protocols");
        assert_eq!(
            invalid_key("[ping]\nmax_inbound_streams = 0"),
            "ping.max_inbound_streams"
        );
        assert_eq!(
            invalid_key("[ping]\ninbound_idle_timeout = \"0s\""),
            "ping.inbound_idle_timeout"
        );
        assert_eq!(
            invalid_key("[runtime]\nworker_threads = 5000"),
            "runtime.worker_threads"
        );
        assert_eq!(
            invalid_key("[mux.yamux]\nmax_num_streams = 100000"),
            "mux.yamux.max_connection_receive_window"
        );
        assert_eq!(
            invalid_key("[transport]\nsecurity = []"),
            "transport.security"
        );
        assert_eq!(
            invalid_key("[transport.quic]\nkeep_alive_interval = \"1m\""),
            "transport.quic.keep_alive_interval"
        );
        assert_eq!(
            invalid_key("[transport.quic]\nmtu_upper_bound = 1000"),
            "transport.quic.mtu_upper_bound"
        );
        assert_eq!(
            invalid_key("[transport.quic]\nhead_start = \"1m\""),
            "transport.quic.head_start"
        );
        assert_eq!(invalid_key("[api]\nlisten = \"0.0.0.0:5780\""), "api.token");
        assert_eq!(invalid_key("[api]\ntoken = \"short\""), "api.token");
        assert_eq!(
            invalid_key(
                "[network]\nlisten = [\"/ip4/0.0.0.0/udp/1/quic-v1\"]\n[transport.quic]\nenabled = false"
            ),
            "network.listen"
        );
        assert_eq!(
            invalid_key("[network]\nlisten = [\"/dns4/example.com\"]"),
            "network.listen"
        );
    }

    #[test]
    fn non_loopback_api_with_token_is_fine() {
        parse("[api]\nlisten = \"0.0.0.0:5780\"\ntoken = \"0123456789abcdef0123\"").unwrap();
    }

    #[test]
    fn malformed_values_name_the_key() {
        let m = parse_error("[network]\nlisten = [\"not a multiaddr\"]");
        assert!(m.contains("listen"), "{m}");
        let m = parse_error("[connections]\nmax_established = \"many\"");
        assert!(m.contains("max_established"), "{m}");
        let m = parse_error("[connections]\nidle_timeout = \"soon\"");
        assert!(m.contains("idle_timeout"), "{m}");
        let m = parse_error("[connections]\nmax_establised = 3");
        assert!(m.contains("max_establised"), "{m}");
        let m = parse_error("[transport]\nsecurity = [\"secio\"]");
        assert!(m.contains("secio"), "{m}");
    }

    #[test]
    fn load_names_the_file() {
        let err = Config::load(Path::new("/nonexistent/blackhole.toml")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/blackhole.toml"),
            "{err}"
        );
    }
}
