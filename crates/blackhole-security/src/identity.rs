//! The node's identity key file.
//!
//! The file holds the libp2p protobuf encoding of the private key (the same
//! format go-libp2p and js-libp2p write), with mode `0600`. Loading is
//! strict: every problem is an [`Error`] naming the file, and nothing here
//! ever replaces an existing key.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use libp2p_identity::Keypair;

/// The longest key file we accept. An Ed25519 key is 68 bytes encoded, an
/// RSA key a few KiB; anything larger is not a key file.
pub const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;

/// Errors of loading or saving a key file. Each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file does not exist.
    #[error("key file {path} does not exist (create one with `blackhole-node init`)")]
    NotFound { path: PathBuf },
    /// Saving would overwrite an existing key.
    #[error("key file {path} already exists; refusing to overwrite an existing identity")]
    AlreadyExists { path: PathBuf },
    /// Group or other users may read or write the file.
    #[error(
        "key file {path} has mode {mode:04o}: group and other users must have no access (run `chmod 600 {path}`)"
    )]
    Permissions { path: PathBuf, mode: u32 },
    /// The file is empty.
    #[error("key file {path} is empty")]
    Empty { path: PathBuf },
    /// The file is larger than [`MAX_KEY_FILE_BYTES`].
    #[error(
        "key file {path} is {len} bytes, larger than any key ({MAX_KEY_FILE_BYTES} bytes at most)"
    )]
    TooLarge { path: PathBuf, len: u64 },
    /// The file is not a valid protobuf-encoded private key (corrupt or truncated).
    #[error("key file {path} is corrupt or truncated: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// The key could not be encoded (only for key types without an encoding).
    #[error("key for {path} cannot be encoded: {reason}")]
    Encode { path: PathBuf, reason: String },
    /// Any other I/O error.
    #[error("key file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Generates a new Ed25519 identity.
pub fn generate() -> Keypair {
    Keypair::generate_ed25519()
}

/// Writes `key` to a new file at `path` with mode `0600`.
///
/// Fails with [`Error::AlreadyExists`] if the file exists: an identity is
/// never overwritten. The data is flushed to disk before returning.
pub fn save(path: &Path, key: &Keypair) -> Result<(), Error> {
    let bytes = key.to_protobuf_encoding().map_err(|e| Error::Encode {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => Error::AlreadyExists {
            path: path.to_owned(),
        },
        _ => Error::Io {
            path: path.to_owned(),
            source: e,
        },
    })?;
    file.write_all(&bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    Ok(())
}

/// Loads the key at `path`, checking its permissions and encoding.
pub fn load(path: &Path) -> Result<Keypair, Error> {
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::NotFound {
            path: path.to_owned(),
        },
        _ => Error::Io {
            path: path.to_owned(),
            source: e,
        },
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(Error::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
    }
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(Error::TooLarge {
            path: path.to_owned(),
            len: meta.len(),
        });
    }
    let bytes = fs::read(path).map_err(io_err(path))?;
    if bytes.is_empty() {
        return Err(Error::Empty {
            path: path.to_owned(),
        });
    }
    Keypair::from_protobuf_encoding(&bytes).map_err(|e| Error::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Loads the key at `path`, or generates and saves a new one if (and only
/// if) no file exists there. Returns the key and whether it is new.
pub fn load_or_generate(path: &Path) -> Result<(Keypair, bool), Error> {
    match load(path) {
        Ok(key) => Ok((key, false)),
        Err(Error::NotFound { .. }) => {
            let key = generate();
            save(path, &key)?;
            Ok((key, true))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key_path() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        (dir, path)
    }

    #[test]
    fn round_trip_keeps_identity_and_mode() {
        let (_dir, path) = key_path();
        let key = generate();
        save(&path, &key).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.public().to_peer_id(), key.public().to_peer_id());
        // The file is the standard libp2p protobuf encoding.
        assert_eq!(
            fs::read(&path).unwrap(),
            key.to_protobuf_encoding().unwrap()
        );
    }

    #[test]
    fn never_overwrites() {
        let (_dir, path) = key_path();
        let first = generate();
        save(&path, &first).unwrap();
        let err = save(&path, &generate()).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert!(err.to_string().contains(path.to_str().unwrap()));
        let (again, new) = load_or_generate(&path).unwrap();
        assert!(!new);
        assert_eq!(again.public(), first.public());
    }

    #[test]
    fn load_or_generate_creates_once() {
        let (_dir, path) = key_path();
        let (a, new_a) = load_or_generate(&path).unwrap();
        let (b, new_b) = load_or_generate(&path).unwrap();
        assert!(new_a && !new_b);
        assert_eq!(a.public(), b.public());
    }

    #[test]
    fn missing_file_is_not_found() {
        let (_dir, path) = key_path();
        assert!(matches!(load(&path), Err(Error::NotFound { .. })));
    }

    #[test]
    fn corrupt_file_is_an_error_naming_the_file() {
        let (_dir, path) = key_path();
        fs::write(&path, b"this is not a protobuf key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
        // And load_or_generate does not replace it.
        assert!(load_or_generate(&path).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"this is not a protobuf key");
    }

    #[test]
    fn truncated_file_is_corrupt() {
        let (_dir, path) = key_path();
        let bytes = generate().to_protobuf_encoding().unwrap();
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn empty_and_oversized_files_are_refused() {
        let (_dir, path) = key_path();
        fs::write(&path, b"").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load(&path), Err(Error::Empty { .. })));
        fs::write(&path, vec![0u8; MAX_KEY_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(load(&path), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn readable_by_others_is_refused() {
        let (_dir, path) = key_path();
        save(&path, &generate()).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = load(&path).unwrap_err();
            assert!(matches!(err, Error::Permissions { .. }), "{mode:o}: {err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        load(&path).unwrap();
    }
}
