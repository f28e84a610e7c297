//! The node's data directory: identity key, configuration, and the address
//! of the running node's control API.

use std::{
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use libp2p_identity::{Keypair, PeerId};

use crate::config::{Config, ConfigError};

/// The configuration file in a data directory.
pub const CONFIG_FILE: &str = "config.toml";
/// Where a running node writes its control API address.
pub const API_ADDR_FILE: &str = "api.addr";

/// The embedded database (DHT records, peer store) in a data directory.
pub const DATABASE_FILE: &str = "node.redb";

/// Opens (or creates) the database at `path`. A file that cannot be opened
/// is moved aside to `<path>.corrupt-<unix seconds>` with a warning, and a
/// new database is created: the old data is kept for inspection, never
/// silently deleted.
pub fn open_database(path: &Path) -> Result<std::sync::Arc<redb::Database>, crate::StartError> {
    match redb::Database::create(path) {
        Ok(db) => Ok(std::sync::Arc::new(db)),
        Err(e) if path.exists() => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let aside = path.with_extension(format!("redb.corrupt-{secs}"));
            tracing::warn!(path = %path.display(), aside = %aside.display(), error = %e, "database unreadable: moved aside, starting a new one");
            fs::rename(path, &aside).map_err(|r| {
                crate::StartError::Storage(format!(
                    "{}: {e}; and moving it aside failed: {r}",
                    path.display()
                ))
            })?;
            redb::Database::create(path)
                .map(std::sync::Arc::new)
                .map_err(|e| crate::StartError::Storage(format!("{}: {e}", path.display())))
        }
        Err(e) => Err(crate::StartError::Storage(format!(
            "{}: {e}",
            path.display()
        ))),
    }
}

/// Errors of data directory operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The directory or a file in it could not be used.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// `init` found an existing node.
    #[error(
        "{path} already exists: this data directory is initialized (refusing to replace an identity)"
    )]
    AlreadyInitialized { path: PathBuf },
    /// The key file is unusable.
    #[error(transparent)]
    Key(#[from] blackhole_security::identity::Error),
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    /// The data directory at `path` (nothing is checked yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The default location: `$BLACKHOLE_DATA_DIR`, else
    /// `$XDG_DATA_HOME/blackhole`, else `~/.local/share/blackhole`.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("BLACKHOLE_DATA_DIR") {
            return p.into();
        }
        if let Some(p) = std::env::var_os("XDG_DATA_HOME") {
            return Path::new(&p).join("blackhole");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
        Path::new(&home).join(".local/share/blackhole")
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.path.join(CONFIG_FILE)
    }

    /// The file holding the running node's API address.
    pub fn api_addr_path(&self) -> PathBuf {
        self.path.join(API_ADDR_FILE)
    }

    /// The key file named by `config`, relative to this directory.
    pub fn key_path(&self, config: &Config) -> PathBuf {
        self.path.join(&config.identity.key_file)
    }

    /// Creates the directory (mode 0700), a new identity and `config`
    /// written as `config_text`. Refuses if a key or config already exists.
    pub fn init(&self, config: &Config, config_text: &str) -> Result<PeerId, Error> {
        config.validate()?;
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        fs::create_dir_all(&self.path).map_err(io_err(&self.path))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&self.path, fs::Permissions::from_mode(0o700))
                .map_err(io_err(&self.path))?;
        }
        let key_path = self.key_path(config);
        let config_path = self.config_path();
        for p in [&key_path, &config_path] {
            if p.exists() {
                return Err(Error::AlreadyInitialized { path: p.clone() });
            }
        }
        let key = blackhole_security::identity::generate();
        blackhole_security::identity::save(&key_path, &key)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&config_path)
            .map_err(io_err(&config_path))?;
        io::Write::write_all(&mut file, config_text.as_bytes()).map_err(io_err(&config_path))?;
        Ok(key.public().to_peer_id())
    }

    /// Loads the configuration (or `override_path`) and the identity.
    pub fn load(&self, override_path: Option<&Path>) -> Result<(Config, Keypair), Error> {
        let config = Config::load(override_path.unwrap_or(&self.config_path()))?;
        let key = blackhole_security::identity::load(&self.key_path(&config))?;
        Ok((config, key))
    }

    /// Records the running node's API address.
    pub fn write_api_addr(&self, addr: SocketAddr) -> Result<(), Error> {
        let p = self.api_addr_path();
        fs::write(&p, format!("{addr}\n")).map_err(|source| Error::Io { path: p, source })
    }

    /// Removes the API address file (on shutdown).
    pub fn remove_api_addr(&self) {
        let _ = fs::remove_file(self.api_addr_path());
    }

    /// The running node's API address, if it recorded one.
    pub fn read_api_addr(&self) -> Option<SocketAddr> {
        fs::read_to_string(self.api_addr_path())
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_refuses_to_run_twice_and_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let dd = DataDir::new(dir.path().join("node"));
        let config = Config::default();
        let peer = dd.init(&config, crate::config::DEFAULT_TOML).unwrap();
        let err = dd.init(&config, crate::config::DEFAULT_TOML).unwrap_err();
        assert!(matches!(err, Error::AlreadyInitialized { .. }), "{err}");
        let (loaded, key) = dd.load(None).unwrap();
        assert_eq!(loaded, config);
        assert_eq!(key.public().to_peer_id(), peer);
    }

    #[test]
    fn load_reports_bad_config_with_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let dd = DataDir::new(dir.path());
        dd.init(&Config::default(), "").unwrap();
        fs::write(dd.config_path(), "[connections]\nmax_established = -1\n").unwrap();
        let err = dd.load(None).unwrap_err().to_string();
        assert!(
            err.contains("config.toml") && err.contains("max_established"),
            "{err}"
        );
    }
}
