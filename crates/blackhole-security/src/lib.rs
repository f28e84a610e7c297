//! Identity and secure channels for Blackhole.
//!
//! Layer 1 of the workspace, above `blackhole-metrics`. It owns:
//!
//! - [`identity`]: the node's Ed25519 keypair and its key file (libp2p
//!   protobuf encoding, mode `0600`), loaded strictly: a missing, corrupt,
//!   truncated or group/world-readable file is an error naming the file,
//!   never a silently generated new identity.
//! - [`Upgrade`]: the secure-channel upgrade offering Noise (XX) and TLS 1.3
//!   in a configured order of preference, negotiated per connection with
//!   multistream-select. Remote peers may use Ed25519, secp256k1 or ECDSA
//!   keys.
//! - [`noise`]: our `/noise` (the libp2p Noise spec, interoperable with every
//!   libp2p), whose buffers exist only while data moves: an idle connection
//!   holds none, where `libp2p-noise` keeps 16 KiB.
//! - [`tls`]: libp2p TLS 1.3 configurations (for `/tls/1.0.0` and QUIC)
//!   that use AES-GCM where the CPU has AES instructions, where
//!   `libp2p-tls` always negotiates the slower ChaCha20-Poly1305.
//!
//! This crate knows nothing of sockets, multiplexers or the swarm.
//!
//! ```
//! use blackhole_security::{identity, Protocol, Upgrade};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("identity.key");
//! let key = identity::generate();
//! identity::save(&path, &key).unwrap();
//! assert_eq!(identity::load(&path).unwrap().public(), key.public());
//! let upgrade = Upgrade::new(&key, &[Protocol::Noise, Protocol::Tls]).unwrap();
//! assert_eq!(upgrade.protocols(), &[Protocol::Noise, Protocol::Tls]);
//! ```

pub mod identity;
pub mod noise;
pub mod tls;
mod upgrade;

pub use libp2p_identity::{Keypair, PeerId, PublicKey};
pub use noise::{NoiseConfig, NoiseError, NoiseStream};
pub use upgrade::{BuildError, Protocol, SecureStream, Upgrade, UpgradeError};
