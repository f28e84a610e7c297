//! A persistent, bounded Kademlia record store.
//!
//! [`PersistentStore`] implements libp2p-kad's [`RecordStore`] for the DHT
//! of the overlay. It keeps the DHT's (value) records and provider records
//! across restarts, in an embedded [`redb`] database, and bounds what it
//! holds so that peers on the network cannot grow it without limit.
//!
//! # Design
//!
//! * **An in-memory index serves every read.** All records and provider
//!   records live in hash maps; `get`, `records`, `providers` and `provided`
//!   never touch the disk (the trait's reads take `&self` and are on the hot
//!   path of every DHT query).
//! * **Every mutation is written through to redb**, one write transaction
//!   per mutation (`put`, `remove`, `add_provider`, `remove_provider`, and
//!   one transaction per [`PersistentStore::remove_expired`] sweep), committed
//!   with [`Durability::Immediate`]: when a trait method returns, its change
//!   is on disk. The database is only read at [`PersistentStore::open`].
//! * **Disk failures do not fail the DHT.** The trait's methods cannot
//!   return an I/O error, so a failed write is logged (`tracing::warn!`) and
//!   the in-memory view, which stays self-consistent, remains authoritative
//!   for the running node. The disk then lags behind memory until the key is
//!   written again; after a restart the node sees the last state that did
//!   reach the disk.
//!
//! # What survives a restart
//!
//! Records and provider records (those of other peers and our own, which
//! [`RecordStore::provided`] yields for republishing) survive, each with its
//! remaining lifetime. A [`Instant`] means nothing to another process, so an
//! expiry is stored as wall-clock time (milliseconds since the Unix epoch)
//! computed as `SystemTime::now() + (expires - Instant::now())` and turned
//! back into an `Instant` the same way when the store is opened. A jump of
//! the wall clock while the node is down shortens or lengthens the
//! remaining lifetimes accordingly. Entries without an expiry are kept until
//! they are removed.
//!
//! At open, entries that have expired are not loaded and are deleted from
//! disk, and so are entries that cannot be decoded (with a warning: the store
//! is a cache of DHT state, which the network republishes, so dropping a
//! damaged entry loses little) and entries beyond the current bounds (when
//! the configuration was lowered since they were written).
//!
//! # Bounds and the policy when full
//!
//! See [`Config`] for the limits and their defaults.
//!
//! * **Records.** A record whose value is larger than
//!   [`Config::max_value_bytes`] is refused with
//!   [`store::Error::ValueTooLarge`]. A record for a new key is refused with
//!   [`store::Error::MaxRecords`] when the store already holds
//!   [`Config::max_records`] records. A record (new key or replacement) that
//!   would take the sum of the key and value bytes of all records above
//!   [`Config::max_total_bytes`] is also refused with
//!   [`store::Error::MaxRecords`], the trait having no better error for it.
//!   When full the store refuses new records rather than evicting old ones:
//!   evicting would let anyone flush the store by flooding it, and expired
//!   records make room again as [`PersistentStore::remove_expired`] (or the
//!   Kademlia behaviour's own expiry checks) removes them.
//! * **Provider records.** At most [`Config::max_providers_per_key`]
//!   providers are kept per key. When a key's list is full, the providers
//!   closest to the key by the XOR metric of the DHT (of the SHA-256 hashes,
//!   as in [`KBucketKey`]) are kept: a new provider replaces the farthest one
//!   if it is closer, and is otherwise ignored (`add_provider` still returns
//!   `Ok`, as Kademlia expects). Our own provider record is never evicted and
//!   is always accepted. A provider record for a new key is refused with
//!   [`store::Error::MaxProvidedKeys`] when [`Config::max_provider_keys`] keys
//!   already have providers.
//!
//! # Expiry
//!
//! `get` and `providers` never return expired entries. `records` and
//! `provided` do yield them: the Kademlia behaviour's republishing jobs use
//! them to find expired entries and remove them.
//! [`PersistentStore::remove_expired`] deletes expired entries from memory
//! and disk and should be called periodically.
//!
//! # On-disk format
//!
//! Two tables of byte strings. `kad_records` maps a record's key to:
//!
//! ```text
//! u8  version (1)
//! u8  flags: bit 0 = has publisher, bit 1 = has expiry
//! [u32 length, bytes]  publisher peer id        (if bit 0)
//! [u64]                expiry, Unix millis      (if bit 1)
//! u32 length, bytes    value
//! ```
//!
//! `kad_providers` maps `u32 key length, key bytes, provider peer id bytes`
//! to:
//!
//! ```text
//! u8  version (1)
//! u8  flags: bit 0 = has expiry
//! [u64]                expiry, Unix millis      (if bit 0)
//! u32 address count, then per address: u32 length, multiaddr bytes
//! ```
//!
//! Integers are big-endian. Unknown versions or flags, truncated data and
//! trailing bytes are decoding errors.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet, hash_map, hash_set},
    fmt,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use libp2p_core::Multiaddr;
use libp2p_identity::PeerId;
use libp2p_kad::{
    KBucketKey, ProviderRecord, Record, RecordKey,
    store::{self, RecordStore},
};
use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};

/// Records: record key -> encoded record (see the module docs).
const RECORDS: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("kad_records");
/// Provider records: (key, provider) -> encoded provider record.
const PROVIDERS: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("kad_providers");

/// The version byte of the encodings written by this code.
const FORMAT_VERSION: u8 = 1;
const RECORD_HAS_PUBLISHER: u8 = 0b01;
const RECORD_HAS_EXPIRY: u8 = 0b10;
const PROVIDER_HAS_EXPIRY: u8 = 0b01;

/// Remaining lifetimes loaded from disk are capped at this (about a
/// century), so that converting them to an [`Instant`] cannot overflow.
const MAX_REMAINING: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Addresses kept per provider record; the rest of a longer list is dropped.
pub const MAX_PROVIDER_ADDRS: usize = 16;

/// The bounds of a [`PersistentStore`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The largest number of (value) records. Default 65 536.
    pub max_records: usize,
    /// The largest record value, in bytes. Default 64 KiB.
    pub max_value_bytes: usize,
    /// The largest sum, over all records, of key and value bytes. Default
    /// 256 MiB.
    pub max_total_bytes: usize,
    /// The largest number of providers kept per key (the `k` of Kademlia).
    /// Default 20.
    pub max_providers_per_key: usize,
    /// The largest number of keys with provider records. Default 65 536.
    pub max_provider_keys: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_records: 65_536,
            max_value_bytes: 64 * 1024,
            max_total_bytes: 256 * 1024 * 1024,
            max_providers_per_key: 20,
            max_provider_keys: 65_536,
        }
    }
}

/// Counts of what a [`PersistentStore`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// The number of (value) records.
    pub records: usize,
    /// The sum of the key and value bytes of all records.
    pub record_bytes: usize,
    /// The number of keys with at least one provider record.
    pub provider_keys: usize,
    /// The number of provider records, over all keys.
    pub provider_records: usize,
    /// The number of keys that this node provides.
    pub provided: usize,
}

/// An error of a [`PersistentStore`] outside the [`RecordStore`] trait.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database failed.
    #[error("record store database failed to {operation}")]
    Database {
        /// What the store was doing, e.g. `load the records`.
        operation: &'static str,
        /// The database's error.
        #[source]
        source: redb::Error,
    },
}

/// Wraps a redb error with what the store was doing.
fn db_err<E: Into<redb::Error>>(operation: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Database {
        operation,
        source: e.into(),
    }
}

/// A [`RecordStore`] that is bounded and persists to a redb database.
///
/// See the [module documentation](self) for the design.
pub struct PersistentStore {
    /// `None` for a store that keeps nothing on disk.
    db: Option<Arc<Database>>,
    local: PeerId,
    config: Config,
    records: HashMap<RecordKey, Record>,
    /// Sum of key and value bytes over `records`.
    record_bytes: usize,
    /// Never holds an empty list.
    providers: HashMap<RecordKey, Vec<ProviderRecord>>,
    /// Sum of the list lengths of `providers`.
    provider_records: usize,
    /// The keys whose list in `providers` holds our own provider record.
    provided: HashSet<RecordKey>,
}

impl fmt::Debug for PersistentStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistentStore")
            .field("persistent", &self.db.is_some())
            .field("local", &self.local)
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What [`PersistentStore::add_provider_in_memory`] did with a record.
#[derive(Debug, PartialEq, Eq)]
enum ProviderOutcome {
    /// Stored, possibly evicting the provider record of the given peer.
    Stored { evicted: Option<PeerId> },
    /// Not stored: the key's list is full of providers closer to the key.
    Ignored,
}

impl PersistentStore {
    /// Opens the store in the given redb database (tables created if
    /// missing), loading every record and provider record that has not
    /// expired; expired ones are deleted from disk.
    ///
    /// Entries that cannot be decoded, and entries beyond the bounds of
    /// `config`, are also skipped and deleted, with a warning.
    pub fn open(db: Arc<Database>, local: PeerId, config: Config) -> Result<Self, Error> {
        Self::open_at(db, local, config, Clock::now())
    }

    /// A store that keeps nothing on disk (same bounds), for nodes without a
    /// data directory and for tests.
    pub fn in_memory(local: PeerId, config: Config) -> Self {
        Self {
            db: None,
            local,
            config,
            records: HashMap::new(),
            record_bytes: 0,
            providers: HashMap::new(),
            provider_records: 0,
            provided: HashSet::new(),
        }
    }

    /// [`Self::open`], with the current time given (for tests).
    fn open_at(
        db: Arc<Database>,
        local: PeerId,
        config: Config,
        now: Clock,
    ) -> Result<Self, Error> {
        let mut store = Self::in_memory(local, config);
        let mut txn = db
            .begin_write()
            .map_err(db_err("begin loading the store"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(db_err("begin loading the store"))?;
        store.load_records(&txn, now)?;
        store.load_providers(&txn, now)?;
        txn.commit().map_err(db_err("commit loading the store"))?;
        tracing::debug!(stats = ?store.stats(), "record store loaded");
        store.db = Some(db);
        Ok(store)
    }

    /// Loads the records table into memory, deleting what is not loaded.
    fn load_records(&mut self, txn: &WriteTransaction, now: Clock) -> Result<(), Error> {
        const OP: &str = "load the records";
        let mut table = txn.open_table(RECORDS).map_err(db_err(OP))?;
        let mut doomed: Vec<Vec<u8>> = Vec::new();
        let (mut expired, mut corrupt, mut refused) = (0_usize, 0_usize, 0_usize);
        for entry in table.iter().map_err(db_err(OP))? {
            let (key, value) = entry.map_err(db_err(OP))?;
            let (key, value) = (key.value(), value.value());
            match decode_record(key, value, now) {
                Ok(Some(record)) => {
                    if let Err(e) = self.put_in_memory(record) {
                        tracing::debug!(error = %e, "record beyond the store's bounds dropped at load");
                        refused += 1;
                        doomed.push(key.to_vec());
                    }
                }
                Ok(None) => {
                    expired += 1;
                    doomed.push(key.to_vec());
                }
                Err(e) => {
                    tracing::warn!(error = %e, key_len = key.len(), "undecodable record deleted from the record store");
                    corrupt += 1;
                    doomed.push(key.to_vec());
                }
            }
        }
        for key in &doomed {
            table.remove(key.as_slice()).map_err(db_err(OP))?;
        }
        if refused > 0 {
            tracing::warn!(
                refused,
                "records beyond the record store's bounds were dropped at load"
            );
        }
        tracing::debug!(
            loaded = self.records.len(),
            expired,
            corrupt,
            refused,
            "records loaded"
        );
        Ok(())
    }

    /// Loads the provider records table into memory, deleting what is not
    /// loaded.
    fn load_providers(&mut self, txn: &WriteTransaction, now: Clock) -> Result<(), Error> {
        const OP: &str = "load the provider records";
        let mut table = txn.open_table(PROVIDERS).map_err(db_err(OP))?;
        let mut doomed: Vec<Vec<u8>> = Vec::new();
        let (mut expired, mut corrupt, mut refused) = (0_usize, 0_usize, 0_usize);
        for entry in table.iter().map_err(db_err(OP))? {
            let (key, value) = entry.map_err(db_err(OP))?;
            let (key, value) = (key.value(), value.value());
            match decode_provider(key, value, now) {
                Ok(Some(record)) => {
                    let record_key = record.key.clone();
                    match self.add_provider_in_memory(record) {
                        Ok(ProviderOutcome::Stored { evicted: None }) => {}
                        Ok(ProviderOutcome::Stored {
                            evicted: Some(peer),
                        }) => {
                            refused += 1;
                            doomed.push(provider_db_key(&record_key, &peer));
                        }
                        Ok(ProviderOutcome::Ignored) | Err(_) => {
                            refused += 1;
                            doomed.push(key.to_vec());
                        }
                    }
                }
                Ok(None) => {
                    expired += 1;
                    doomed.push(key.to_vec());
                }
                Err(e) => {
                    tracing::warn!(error = %e, key_len = key.len(), "undecodable provider record deleted from the record store");
                    corrupt += 1;
                    doomed.push(key.to_vec());
                }
            }
        }
        for key in &doomed {
            table.remove(key.as_slice()).map_err(db_err(OP))?;
        }
        if refused > 0 {
            tracing::warn!(
                refused,
                "provider records beyond the record store's bounds were dropped at load"
            );
        }
        tracing::debug!(
            loaded = self.provider_records,
            expired,
            corrupt,
            refused,
            "provider records loaded"
        );
        Ok(())
    }

    /// Deletes expired records and provider records (memory and disk);
    /// returns how many.
    ///
    /// An entry is expired when its expiry is at or before `now`.
    pub fn remove_expired(&mut self, now: Instant) -> usize {
        let records: Vec<RecordKey> = self
            .records
            .values()
            .filter(|r| r.is_expired(now))
            .map(|r| r.key.clone())
            .collect();
        for key in &records {
            self.remove_in_memory(key);
        }
        let providers: Vec<(RecordKey, PeerId)> = self
            .providers
            .values()
            .flatten()
            .filter(|p| p.is_expired(now))
            .map(|p| (p.key.clone(), p.provider))
            .collect();
        for (key, provider) in &providers {
            self.remove_provider_in_memory(key, provider);
        }
        let removed = records.len() + providers.len();
        if removed > 0 {
            self.write_through("delete expired entries", |txn| {
                let mut table = txn.open_table(RECORDS)?;
                for key in &records {
                    table.remove(key.as_ref())?;
                }
                let mut table = txn.open_table(PROVIDERS)?;
                for (key, provider) in &providers {
                    table.remove(provider_db_key(key, provider).as_slice())?;
                }
                Ok(())
            });
            tracing::debug!(
                records = records.len(),
                providers = providers.len(),
                "expired entries removed from the record store"
            );
        }
        removed
    }

    /// Counts what the store holds.
    pub fn stats(&self) -> Stats {
        Stats {
            records: self.records.len(),
            record_bytes: self.record_bytes,
            provider_keys: self.providers.len(),
            provider_records: self.provider_records,
            provided: self.provided.len(),
        }
    }

    /// The store's bounds.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Checks the bounds for `record`, then stores it in memory.
    fn put_in_memory(&mut self, record: Record) -> Result<(), store::Error> {
        self.check_put(&record)?;
        let size = record_size(&record);
        if let Some(old) = self.records.insert(record.key.clone(), record) {
            self.record_bytes -= record_size(&old);
        }
        self.record_bytes += size;
        Ok(())
    }

    /// Whether `record` fits within the bounds (replacing a record with the
    /// same key, if any).
    fn check_put(&self, record: &Record) -> Result<(), store::Error> {
        if record.value.len() > self.config.max_value_bytes {
            return Err(store::Error::ValueTooLarge);
        }
        let old_size = match self.records.get(&record.key) {
            Some(old) => record_size(old),
            None if self.records.len() >= self.config.max_records => {
                return Err(store::Error::MaxRecords);
            }
            None => 0,
        };
        let total = (self.record_bytes - old_size).saturating_add(record_size(record));
        if total > self.config.max_total_bytes {
            return Err(store::Error::MaxRecords);
        }
        Ok(())
    }

    /// Removes a record from memory; returns whether there was one.
    fn remove_in_memory(&mut self, key: &RecordKey) -> bool {
        match self.records.remove(key) {
            Some(old) => {
                self.record_bytes -= record_size(&old);
                true
            }
            None => false,
        }
    }

    /// Adds a provider record in memory, within the bounds.
    fn add_provider_in_memory(
        &mut self,
        record: ProviderRecord,
    ) -> Result<ProviderOutcome, store::Error> {
        if !self.providers.contains_key(&record.key)
            && self.providers.len() >= self.config.max_provider_keys
        {
            return Err(store::Error::MaxProvidedKeys);
        }
        let local = self.local;
        let is_local = record.provider == local;
        let key = record.key.clone();
        let list = self.providers.entry(key.clone()).or_default();

        if let Some(existing) = list.iter_mut().find(|p| p.provider == record.provider) {
            *existing = record;
            return Ok(ProviderOutcome::Stored { evicted: None });
        }
        if list.len() < self.config.max_providers_per_key {
            list.push(record);
            self.provider_records += 1;
            if is_local {
                self.provided.insert(key);
            }
            return Ok(ProviderOutcome::Stored { evicted: None });
        }

        // Full: keep the providers closest to the key, and always our own.
        let target = KBucketKey::new(key.clone());
        let distance = |peer: &PeerId| KBucketKey::from(*peer).distance(&target);
        let farthest = list
            .iter()
            .enumerate()
            .filter(|(_, p)| p.provider != local)
            .max_by_key(|(_, p)| distance(&p.provider))
            .map(|(i, p)| (i, distance(&p.provider)));
        let outcome = match farthest {
            Some((i, far)) if is_local || distance(&record.provider) < far => {
                let evicted = std::mem::replace(&mut list[i], record);
                ProviderOutcome::Stored {
                    evicted: Some(evicted.provider),
                }
            }
            // Only when the limit is zero: ours is kept all the same.
            None if is_local => {
                list.push(record);
                self.provider_records += 1;
                ProviderOutcome::Stored { evicted: None }
            }
            _ => ProviderOutcome::Ignored,
        };
        if list.is_empty() {
            self.providers.remove(&key);
        } else if is_local && outcome != ProviderOutcome::Ignored {
            self.provided.insert(key);
        }
        Ok(outcome)
    }

    /// Removes a provider record from memory; returns whether there was one.
    fn remove_provider_in_memory(&mut self, key: &RecordKey, provider: &PeerId) -> bool {
        let hash_map::Entry::Occupied(mut entry) = self.providers.entry(key.clone()) else {
            return false;
        };
        let list = entry.get_mut();
        let Some(i) = list.iter().position(|p| &p.provider == provider) else {
            return false;
        };
        list.swap_remove(i);
        self.provider_records -= 1;
        if list.is_empty() {
            entry.remove();
        }
        if *provider == self.local {
            self.provided.remove(key);
        }
        true
    }

    /// Runs `write` in a write transaction committed with
    /// [`Durability::Immediate`]; logs a failure. Does nothing for a store
    /// without a database.
    fn write_through(
        &self,
        operation: &'static str,
        write: impl FnOnce(&WriteTransaction) -> Result<(), redb::Error>,
    ) {
        let Some(db) = &self.db else {
            return;
        };
        let result = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            write(&txn)?;
            txn.commit()?;
            Ok(())
        };
        if let Err(source) = result() {
            tracing::warn!(
                operation,
                error = %source,
                "record store failed to write to its database; the change is kept in memory only"
            );
        }
    }
}

impl RecordStore for PersistentStore {
    type RecordsIter<'a> = RecordsIter<'a>;
    type ProvidedIter<'a> = ProvidedIter<'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.records
            .get(k)
            .filter(|r| !r.is_expired(Instant::now()))
            .map(Cow::Borrowed)
    }

    fn put(&mut self, r: Record) -> store::Result<()> {
        self.check_put(&r)?;
        let encoded = match &self.db {
            Some(_) => match encode_record(&r, Clock::now()) {
                Ok(encoded) => Some(encoded),
                Err(e) => {
                    tracing::warn!(error = %e, "record kept in memory only");
                    None
                }
            },
            None => None,
        };
        let key = r.key.clone();
        self.put_in_memory(r)?;
        if let Some(encoded) = encoded {
            self.write_through("store a record", |txn| {
                txn.open_table(RECORDS)?
                    .insert(key.as_ref(), encoded.as_slice())?;
                Ok(())
            });
        }
        Ok(())
    }

    fn remove(&mut self, k: &RecordKey) {
        if self.remove_in_memory(k) {
            self.write_through("delete a record", |txn| {
                txn.open_table(RECORDS)?.remove(k.as_ref())?;
                Ok(())
            });
        }
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        RecordsIter {
            inner: self.records.values(),
        }
    }

    fn add_provider(&mut self, mut record: ProviderRecord) -> store::Result<()> {
        // A remote provider record may list any number of addresses; keep a few.
        record.addresses.truncate(MAX_PROVIDER_ADDRS);
        let encoded = match &self.db {
            Some(_) => match encode_provider(&record, Clock::now()) {
                Ok(encoded) => Some(encoded),
                Err(e) => {
                    tracing::warn!(error = %e, "provider record kept in memory only");
                    None
                }
            },
            None => None,
        };
        let (key, provider) = (record.key.clone(), record.provider);
        match self.add_provider_in_memory(record)? {
            ProviderOutcome::Ignored => {
                tracing::trace!(%provider, "provider farther than the stored ones ignored");
            }
            ProviderOutcome::Stored { evicted } => {
                self.write_through("store a provider record", |txn| {
                    let mut table = txn.open_table(PROVIDERS)?;
                    if let Some(encoded) = &encoded {
                        table.insert(
                            provider_db_key(&key, &provider).as_slice(),
                            encoded.as_slice(),
                        )?;
                    }
                    if let Some(evicted) = evicted {
                        table.remove(provider_db_key(&key, &evicted).as_slice())?;
                    }
                    Ok(())
                });
            }
        }
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        let now = Instant::now();
        self.providers
            .get(key)
            .map(|list| {
                list.iter()
                    .filter(|p| !p.is_expired(now))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        ProvidedIter {
            keys: self.provided.iter(),
            providers: &self.providers,
            local: self.local,
        }
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        if self.remove_provider_in_memory(k, p) {
            self.write_through("delete a provider record", |txn| {
                txn.open_table(PROVIDERS)?
                    .remove(provider_db_key(k, p).as_slice())?;
                Ok(())
            });
        }
    }
}

/// The iterator of [`PersistentStore`]'s [`RecordStore::records`]: every
/// record, including expired ones not yet removed.
pub struct RecordsIter<'a> {
    inner: hash_map::Values<'a, RecordKey, Record>,
}

impl fmt::Debug for RecordsIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordsIter")
            .field("remaining", &self.inner.len())
            .finish()
    }
}

impl<'a> Iterator for RecordsIter<'a> {
    type Item = Cow<'a, Record>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(Cow::Borrowed)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

/// The iterator of [`PersistentStore`]'s [`RecordStore::provided`]: our own
/// provider records, including expired ones not yet removed.
pub struct ProvidedIter<'a> {
    keys: hash_set::Iter<'a, RecordKey>,
    providers: &'a HashMap<RecordKey, Vec<ProviderRecord>>,
    local: PeerId,
}

impl fmt::Debug for ProvidedIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvidedIter")
            .field("remaining", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Iterator for ProvidedIter<'a> {
    type Item = Cow<'a, ProviderRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        let (providers, local) = (self.providers, self.local);
        self.keys.find_map(|key| {
            providers
                .get(key)?
                .iter()
                .find(|p| p.provider == local)
                .map(Cow::Borrowed)
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.keys.len()))
    }
}

/// The bytes a record counts against [`Config::max_total_bytes`].
fn record_size(record: &Record) -> usize {
    record.key.as_ref().len().saturating_add(record.value.len())
}

/// A pair of readings of the monotonic and the wall clock, to convert
/// expiries between them.
#[derive(Debug, Clone, Copy)]
struct Clock {
    instant: Instant,
    system: SystemTime,
}

impl Clock {
    fn now() -> Self {
        Self {
            instant: Instant::now(),
            system: SystemTime::now(),
        }
    }

    /// `at` as wall-clock milliseconds since the Unix epoch (saturating).
    fn unix_millis_of(self, at: Instant) -> u64 {
        let system = if at >= self.instant {
            self.system.checked_add(at - self.instant)
        } else {
            self.system.checked_sub(self.instant - at)
        };
        match system.map(|t| t.duration_since(UNIX_EPOCH)) {
            Some(Ok(since_epoch)) => u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX),
            // Before the epoch: long expired.
            Some(Err(_)) => 0,
            // Beyond what the wall clock can represent.
            None => u64::MAX,
        }
    }

    /// The [`Instant`] of wall-clock `millis` since the Unix epoch, or `None`
    /// if that time is not after now (the entry has expired).
    fn instant_of_unix_millis(self, millis: u64) -> Option<Instant> {
        let remaining = match UNIX_EPOCH.checked_add(Duration::from_millis(millis)) {
            Some(t) => t.duration_since(self.system).ok()?,
            None => MAX_REMAINING,
        };
        if remaining.is_zero() {
            return None;
        }
        self.instant.checked_add(remaining.min(MAX_REMAINING))
    }
}

/// Why an entry read from disk could not be decoded.
#[derive(Debug, thiserror::Error)]
enum DecodeError {
    #[error("unsupported format version {0}")]
    Version(u8),
    #[error("unknown flags {0:#04x}")]
    Flags(u8),
    #[error("truncated entry")]
    Truncated,
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("invalid peer id")]
    PeerId(#[from] libp2p_identity::ParseError),
    #[error("invalid multiaddr")]
    Multiaddr(#[from] libp2p_core::multiaddr::Error),
}

/// A field too large for the encoding's 32-bit lengths.
#[derive(Debug, thiserror::Error)]
#[error("a field of {0} bytes is too large to store")]
struct EncodeError(usize);

/// Appends a 32-bit big-endian length.
fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), EncodeError> {
    let len32 = u32::try_from(len).map_err(|_| EncodeError(len))?;
    out.extend_from_slice(&len32.to_be_bytes());
    Ok(())
}

/// Appends a 32-bit length, then `bytes`.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), EncodeError> {
    put_len(out, bytes.len())?;
    out.extend_from_slice(bytes);
    Ok(())
}

fn encode_record(record: &Record, now: Clock) -> Result<Vec<u8>, EncodeError> {
    let publisher = record.publisher.map(PeerId::to_bytes);
    let mut flags = 0;
    if publisher.is_some() {
        flags |= RECORD_HAS_PUBLISHER;
    }
    if record.expires.is_some() {
        flags |= RECORD_HAS_EXPIRY;
    }
    let mut out = Vec::with_capacity(64 + record.value.len());
    out.extend_from_slice(&[FORMAT_VERSION, flags]);
    if let Some(publisher) = &publisher {
        put_bytes(&mut out, publisher)?;
    }
    if let Some(expires) = record.expires {
        out.extend_from_slice(&now.unix_millis_of(expires).to_be_bytes());
    }
    put_bytes(&mut out, &record.value)?;
    Ok(out)
}

/// Decodes a record stored under `key`; `None` if it has expired.
fn decode_record(key: &[u8], value: &[u8], now: Clock) -> Result<Option<Record>, DecodeError> {
    let mut r = Reader(value);
    let version = r.u8()?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::Version(version));
    }
    let flags = r.u8()?;
    if flags & !(RECORD_HAS_PUBLISHER | RECORD_HAS_EXPIRY) != 0 {
        return Err(DecodeError::Flags(flags));
    }
    let publisher = match flags & RECORD_HAS_PUBLISHER {
        0 => None,
        _ => Some(PeerId::from_bytes(r.bytes()?)?),
    };
    let expiry = match flags & RECORD_HAS_EXPIRY {
        0 => None,
        _ => Some(r.u64()?),
    };
    let record_value = r.bytes()?.to_vec();
    r.finish()?;
    let expires = match expiry {
        None => None,
        Some(millis) => match now.instant_of_unix_millis(millis) {
            Some(at) => Some(at),
            None => return Ok(None),
        },
    };
    Ok(Some(Record {
        key: RecordKey::new(&key),
        value: record_value,
        publisher,
        expires,
    }))
}

/// The database key of a provider record: the record key, length-prefixed,
/// then the provider's peer id.
fn provider_db_key(key: &RecordKey, provider: &PeerId) -> Vec<u8> {
    let key = key.as_ref();
    let provider = provider.to_bytes();
    let mut out = Vec::with_capacity(4 + key.len() + provider.len());
    // Record keys come from DHT messages, far below 4 GiB; a longer one
    // would saturate the prefix and simply never decode (nor be stored,
    // redb refusing such keys).
    out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&provider);
    out
}

fn encode_provider(record: &ProviderRecord, now: Clock) -> Result<Vec<u8>, EncodeError> {
    let flags = if record.expires.is_some() {
        PROVIDER_HAS_EXPIRY
    } else {
        0
    };
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[FORMAT_VERSION, flags]);
    if let Some(expires) = record.expires {
        out.extend_from_slice(&now.unix_millis_of(expires).to_be_bytes());
    }
    put_len(&mut out, record.addresses.len())?;
    for address in &record.addresses {
        put_bytes(&mut out, &address.to_vec())?;
    }
    Ok(out)
}

/// Decodes a provider record; `None` if it has expired.
fn decode_provider(
    db_key: &[u8],
    value: &[u8],
    now: Clock,
) -> Result<Option<ProviderRecord>, DecodeError> {
    let mut k = Reader(db_key);
    let key = RecordKey::new(&k.bytes()?);
    let provider = PeerId::from_bytes(k.0)?;

    let mut r = Reader(value);
    let version = r.u8()?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::Version(version));
    }
    let flags = r.u8()?;
    if flags & !PROVIDER_HAS_EXPIRY != 0 {
        return Err(DecodeError::Flags(flags));
    }
    let expiry = match flags & PROVIDER_HAS_EXPIRY {
        0 => None,
        _ => Some(r.u64()?),
    };
    let count = r.u32()?;
    let mut addresses = Vec::new();
    for _ in 0..count {
        addresses.push(Multiaddr::try_from(r.bytes()?.to_vec())?);
    }
    r.finish()?;
    let expires = match expiry {
        None => None,
        Some(millis) => match now.instant_of_unix_millis(millis) {
            Some(at) => Some(at),
            None => return Ok(None),
        },
    };
    Ok(Some(ProviderRecord {
        key,
        provider,
        expires,
        addresses,
    }))
}

/// Reads the fields of an encoded entry, front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(DecodeError::Truncated)?;
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A 32-bit length, then that many bytes.
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.u32()?).map_err(|_| DecodeError::Truncated)?;
        self.take(len)
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use redb::{ReadableDatabase, ReadableTableMetadata};

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn db_at(path: &Path) -> Arc<Database> {
        Arc::new(Database::create(path).unwrap())
    }

    fn record(key: &str, value: &[u8]) -> Record {
        Record::new(key.as_bytes().to_vec(), value.to_vec())
    }

    fn provider(key: &RecordKey, peer: PeerId) -> ProviderRecord {
        ProviderRecord::new(
            key.clone(),
            peer,
            vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
        )
    }

    /// Entries in (records, providers) tables.
    fn disk_counts(db: &Database) -> (u64, u64) {
        let txn = db.begin_read().unwrap();
        let records = txn.open_table(RECORDS).unwrap().len().unwrap();
        let providers = txn.open_table(PROVIDERS).unwrap().len().unwrap();
        (records, providers)
    }

    fn close_enough(a: Option<Instant>, b: Option<Instant>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                let d = if a > b { a - b } else { b - a };
                d < Duration::from_secs(1)
            }
            _ => false,
        }
    }

    #[test]
    fn put_get_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_at(&dir.path().join("kad.redb"));
        let mut store =
            PersistentStore::open(db.clone(), PeerId::random(), Config::default()).unwrap();

        let mut a = record("a", b"alpha");
        a.publisher = Some(PeerId::random());
        a.expires = Some(Instant::now() + HOUR);
        let b = record("b", b"beta");
        store.put(a.clone()).unwrap();
        store.put(b.clone()).unwrap();
        assert_eq!(store.get(&a.key).as_deref(), Some(&a));
        assert_eq!(store.get(&b.key).as_deref(), Some(&b));
        assert_eq!(store.stats().records, 2);
        assert_eq!(store.stats().record_bytes, 1 + 5 + 1 + 4);

        let mut all: Vec<Record> = store.records().map(Cow::into_owned).collect();
        all.sort_by(|x, y| x.key.as_ref().cmp(y.key.as_ref()));
        assert_eq!(all, vec![a.clone(), b.clone()]);

        // Replacing a record updates the byte count.
        let b2 = record("b", b"beta, longer");
        store.put(b2.clone()).unwrap();
        assert_eq!(store.get(&b.key).as_deref(), Some(&b2));
        assert_eq!(store.stats().record_bytes, 1 + 5 + 1 + 12);

        store.remove(&a.key);
        assert!(store.get(&a.key).is_none());
        assert_eq!(store.records().count(), 1);
        assert_eq!(store.stats().record_bytes, 1 + 12);
        assert_eq!(disk_counts(&db), (1, 0));

        // An expired record is not returned by get.
        let mut c = record("c", b"gamma");
        c.expires = Some(Instant::now());
        store.put(c.clone()).unwrap();
        assert!(store.get(&c.key).is_none());

        // Provider round trip.
        let key = RecordKey::new(&"p");
        let p = provider(&key, PeerId::random());
        store.add_provider(p.clone()).unwrap();
        assert_eq!(store.providers(&key), vec![p.clone()]);
        store.remove_provider(&key, &p.provider);
        assert!(store.providers(&key).is_empty());
        assert_eq!(store.stats().provider_keys, 0);
        assert_eq!(disk_counts(&db).1, 0);
    }

    #[test]
    fn in_memory_store_works_without_disk() {
        let local = PeerId::random();
        let mut store = PersistentStore::in_memory(local, Config::default());
        let r = record("k", b"v");
        store.put(r.clone()).unwrap();
        assert_eq!(store.get(&r.key).as_deref(), Some(&r));
        store.add_provider(provider(&r.key, local)).unwrap();
        assert_eq!(store.provided().count(), 1);
        store.remove(&r.key);
        store.remove_provider(&r.key, &local);
        assert_eq!(store.stats(), Stats::default());
    }

    #[test]
    fn persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kad.redb");
        let local = PeerId::random();
        let other = PeerId::random();

        let mut a = record("a", b"alpha");
        a.publisher = Some(other);
        a.expires = Some(Instant::now() + HOUR);
        let b = record("b", &[7; 1000]);
        let key = RecordKey::new(&"provided");
        let mut ours = provider(&key, local);
        ours.expires = Some(Instant::now() + 2 * HOUR);
        let mut theirs = provider(&key, other);
        theirs
            .addresses
            .push("/ip6/::1/udp/4001/quic-v1".parse().unwrap());
        let key2 = RecordKey::new(&"theirs only");
        let mut theirs2 = provider(&key2, other);
        theirs2.expires = Some(Instant::now() + HOUR);
        theirs2.addresses.clear();

        {
            let mut store = PersistentStore::open(db_at(&path), local, Config::default()).unwrap();
            store.put(a.clone()).unwrap();
            store.put(b.clone()).unwrap();
            store.add_provider(ours.clone()).unwrap();
            store.add_provider(theirs.clone()).unwrap();
            store.add_provider(theirs2.clone()).unwrap();
        }

        let store = PersistentStore::open(db_at(&path), local, Config::default()).unwrap();
        let got_a = store.get(&a.key).unwrap().into_owned();
        assert_eq!(
            (&got_a.key, &got_a.value, got_a.publisher),
            (&a.key, &a.value, a.publisher)
        );
        assert!(close_enough(got_a.expires, a.expires), "{got_a:?} vs {a:?}");
        assert_eq!(store.get(&b.key).as_deref(), Some(&b));

        let providers = store.providers(&key);
        assert_eq!(providers.len(), 2);
        for expected in [&ours, &theirs] {
            let got = providers
                .iter()
                .find(|p| p.provider == expected.provider)
                .unwrap();
            assert_eq!(got.key, expected.key);
            assert_eq!(got.addresses, expected.addresses);
            assert!(close_enough(got.expires, expected.expires));
        }
        let got2 = store.providers(&key2);
        assert_eq!(got2.len(), 1);
        assert_eq!(got2[0].addresses, theirs2.addresses);
        assert!(close_enough(got2[0].expires, theirs2.expires));

        let provided: Vec<_> = store.provided().map(Cow::into_owned).collect();
        assert_eq!(provided.len(), 1);
        assert_eq!(provided[0].provider, local);
        assert_eq!(provided[0].key, key);
        assert_eq!(
            store.stats(),
            Stats {
                records: 2,
                record_bytes: 1 + 5 + 1 + 1000,
                provider_keys: 2,
                provider_records: 3,
                provided: 1,
            }
        );
    }

    #[test]
    fn expired_entries_are_not_loaded_and_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kad.redb");
        let local = PeerId::random();
        let soon = Instant::now() + Duration::from_millis(50);

        let mut short = record("short", b"x");
        short.expires = Some(soon);
        let mut long = record("long", b"y");
        long.expires = Some(Instant::now() + HOUR);
        let forever = record("forever", b"z");
        let key = RecordKey::new(&"k");
        let mut short_p = provider(&key, local);
        short_p.expires = Some(soon);
        let mut long_p = provider(&key, PeerId::random());
        long_p.expires = Some(Instant::now() + HOUR);
        {
            let mut store = PersistentStore::open(db_at(&path), local, Config::default()).unwrap();
            for r in [&short, &long, &forever] {
                store.put(r.clone()).unwrap();
            }
            store.add_provider(short_p.clone()).unwrap();
            store.add_provider(long_p.clone()).unwrap();
        }

        // Reopen "a second later" by the wall clock: the short ones have
        // expired.
        let db = db_at(&path);
        let later = Clock {
            instant: Instant::now(),
            system: SystemTime::now() + Duration::from_secs(1),
        };
        let store = PersistentStore::open_at(db.clone(), local, Config::default(), later).unwrap();
        assert!(store.get(&short.key).is_none());
        assert!(store.get(&long.key).is_some());
        assert!(store.get(&forever.key).is_some());
        let providers = store.providers(&key);
        assert_eq!(providers.len(), 1);
        assert_eq!(providers[0].provider, long_p.provider);
        assert_eq!(store.provided().count(), 0);
        // ... and are gone from disk.
        assert_eq!(disk_counts(&db), (2, 1));
        drop(store);
        drop(db);

        // remove_expired, with a `now` in the future instead of sleeping.
        let mut store = PersistentStore::open(db_at(&path), local, Config::default()).unwrap();
        let mut soon_record = record("soon", b"w");
        soon_record.expires = Some(Instant::now() + Duration::from_millis(50));
        store.put(soon_record.clone()).unwrap();
        let mut soon_p = provider(&RecordKey::new(&"k2"), local);
        soon_p.expires = Some(Instant::now() + Duration::from_millis(50));
        store.add_provider(soon_p.clone()).unwrap();
        assert_eq!(store.remove_expired(Instant::now()), 0);
        assert_eq!(
            store.remove_expired(Instant::now() + Duration::from_millis(100)),
            2
        );
        assert!(store.get(&soon_record.key).is_none());
        assert!(store.providers(&soon_p.key).is_empty());
        assert_eq!(store.provided().count(), 0);
        assert_eq!(store.stats().records, 2);
        assert_eq!(store.stats().provider_records, 1);
        drop(store);
        let db = db_at(&path);
        assert_eq!(disk_counts(&db), (2, 1));
        let store = PersistentStore::open(db, local, Config::default()).unwrap();
        assert!(store.get(&soon_record.key).is_none());
        assert_eq!(store.stats().records, 2);
    }

    #[test]
    fn record_bounds_refuse_and_nothing_grows() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_at(&dir.path().join("kad.redb"));
        let config = Config {
            max_records: 3,
            max_value_bytes: 10,
            max_total_bytes: 20,
            ..Config::default()
        };
        let mut store = PersistentStore::open(db.clone(), PeerId::random(), config).unwrap();

        // Value size: 10 bytes fit, 11 do not.
        store.put(record("a", &[0; 10])).unwrap();
        let before = store.stats();
        assert!(matches!(
            store.put(record("b", &[0; 11])),
            Err(store::Error::ValueTooLarge)
        ));
        assert_eq!(store.stats(), before);

        // Total bytes: 11 used; 1 + 9 more would make 21 > 20.
        assert!(matches!(
            store.put(record("b", &[0; 9])),
            Err(store::Error::MaxRecords)
        ));
        assert_eq!(store.stats(), before);
        assert_eq!(disk_counts(&db), (1, 0));
        // A replacement that still fits is fine, one that does not is refused.
        store.put(record("a", &[1; 5])).unwrap();
        assert_eq!(store.stats().record_bytes, 6);
        store.put(record("b", &[0; 9])).unwrap();
        // 6 + 10 used; "a" with 10 bytes would make 11 + 10 = 21 > 20.
        assert!(matches!(
            store.put(record("a", &[2; 10])),
            Err(store::Error::MaxRecords)
        ));
        assert_eq!(store.get(&RecordKey::new(&"a")).unwrap().value, vec![1; 5]);

        // Record count: a third fits, a fourth key does not, a replacement
        // does.
        store.put(record("c", b"")).unwrap();
        let before = store.stats();
        assert_eq!(before.records, 3);
        assert!(matches!(
            store.put(record("d", b"")),
            Err(store::Error::MaxRecords)
        ));
        assert_eq!(store.stats(), before);
        store.put(record("c", b"c")).unwrap();
        assert_eq!(store.stats().records, 3);
        assert_eq!(disk_counts(&db), (3, 0));
        assert!(store.get(&RecordKey::new(&"d")).is_none());
    }

    #[test]
    fn providers_per_key_keep_the_closest_and_ours() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_at(&dir.path().join("kad.redb"));
        let local = PeerId::random();
        let config = Config {
            max_providers_per_key: 4,
            ..Config::default()
        };
        let mut store = PersistentStore::open(db.clone(), local, config).unwrap();
        let key = RecordKey::new(&"content");
        let target = KBucketKey::new(key.clone());

        let peers: Vec<PeerId> = (0..12).map(|_| PeerId::random()).collect();
        for peer in &peers {
            store.add_provider(provider(&key, *peer)).unwrap();
        }
        let mut by_distance = peers.clone();
        by_distance.sort_by_key(|p| KBucketKey::from(*p).distance(&target));
        let mut kept: Vec<PeerId> = store.providers(&key).iter().map(|p| p.provider).collect();
        kept.sort_by_key(|p| KBucketKey::from(*p).distance(&target));
        assert_eq!(kept, by_distance[..4]);
        assert_eq!(disk_counts(&db), (0, 4));

        // Ours is kept even if it is the farthest, evicting the farthest
        // other provider.
        store.add_provider(provider(&key, local)).unwrap();
        let kept: Vec<PeerId> = store.providers(&key).iter().map(|p| p.provider).collect();
        assert_eq!(kept.len(), 4);
        assert!(kept.contains(&local));
        for peer in &by_distance[..3] {
            assert!(kept.contains(peer));
        }
        assert_eq!(store.provided().count(), 1);

        // Closer providers never evict ours.
        for _ in 0..50 {
            store
                .add_provider(provider(&key, PeerId::random()))
                .unwrap();
        }
        assert!(store.providers(&key).iter().any(|p| p.provider == local));
        assert_eq!(store.stats().provider_records, 4);
        assert_eq!(disk_counts(&db), (0, 4));

        // Updating an existing provider replaces it in place.
        let mut updated = provider(&key, local);
        updated.addresses.clear();
        store.add_provider(updated).unwrap();
        assert_eq!(store.stats().provider_records, 4);
        let ours = store.provided().next().unwrap().into_owned();
        assert!(ours.addresses.is_empty());

        // What is on disk matches memory after a reopen.
        let in_memory: HashSet<PeerId> = store.providers(&key).iter().map(|p| p.provider).collect();
        drop(store);
        let store = PersistentStore::open(db, local, Config::default()).unwrap();
        let reloaded: HashSet<PeerId> = store.providers(&key).iter().map(|p| p.provider).collect();
        assert_eq!(reloaded, in_memory);
    }

    #[test]
    fn provider_addresses_are_capped() {
        let local = PeerId::random();
        let mut store = PersistentStore::in_memory(local, Config::default());
        let key = RecordKey::new(&b"capped");
        let addresses: Vec<Multiaddr> = (0..50u16)
            .map(|i| format!("/ip4/10.0.0.1/tcp/{}", 1000 + i).parse().unwrap())
            .collect();
        let record = ProviderRecord {
            key: key.clone(),
            provider: PeerId::random(),
            expires: None,
            addresses,
        };
        store.add_provider(record).unwrap();
        assert_eq!(store.providers(&key)[0].addresses.len(), MAX_PROVIDER_ADDRS);
    }

    #[test]
    fn max_provider_keys_refuses_new_keys() {
        let local = PeerId::random();
        let config = Config {
            max_provider_keys: 2,
            ..Config::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let db = db_at(&dir.path().join("kad.redb"));
        let mut store = PersistentStore::open(db.clone(), local, config).unwrap();
        let (k1, k2, k3) = (
            RecordKey::new(&"1"),
            RecordKey::new(&"2"),
            RecordKey::new(&"3"),
        );
        store.add_provider(provider(&k1, PeerId::random())).unwrap();
        store.add_provider(provider(&k2, local)).unwrap();
        let before = store.stats();
        assert!(matches!(
            store.add_provider(provider(&k3, local)),
            Err(store::Error::MaxProvidedKeys)
        ));
        assert_eq!(store.stats(), before);
        assert_eq!(disk_counts(&db), (0, 2));
        // Existing keys still take more providers.
        store.add_provider(provider(&k1, local)).unwrap();
        assert_eq!(store.stats().provider_records, 3);
        assert_eq!(store.stats().provided, 2);
        // Freeing a key makes room.
        store.remove_provider(&k2, &local);
        assert_eq!(store.stats().provided, 1);
        store.add_provider(provider(&k3, local)).unwrap();
        assert_eq!(store.stats().provider_keys, 2);
    }

    #[test]
    fn lowered_bounds_drop_the_excess_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kad.redb");
        let local = PeerId::random();
        let key = RecordKey::new(&"k");
        {
            let mut store = PersistentStore::open(db_at(&path), local, Config::default()).unwrap();
            for i in 0..5 {
                store.put(record(&i.to_string(), b"v")).unwrap();
                store
                    .add_provider(provider(&key, PeerId::random()))
                    .unwrap();
            }
            store.add_provider(provider(&key, local)).unwrap();
        }
        let config = Config {
            max_records: 3,
            max_providers_per_key: 2,
            ..Config::default()
        };
        let db = db_at(&path);
        let store = PersistentStore::open(db.clone(), local, config).unwrap();
        assert_eq!(store.stats().records, 3);
        assert_eq!(store.stats().provider_records, 2);
        assert_eq!(store.provided().count(), 1);
        assert_eq!(disk_counts(&db), (3, 2));
    }

    #[test]
    fn garbage_on_disk_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kad.redb");
        let local = PeerId::random();
        let good = record("good", b"value");
        let key = RecordKey::new(&"k");
        let good_p = provider(&key, PeerId::random());
        {
            let mut store = PersistentStore::open(db_at(&path), local, Config::default()).unwrap();
            store.put(good.clone()).unwrap();
            store.add_provider(good_p.clone()).unwrap();
        }
        {
            let db = db_at(&path);
            let txn = db.begin_write().unwrap();
            {
                let mut records = txn.open_table(RECORDS).unwrap();
                let garbage: [&[u8]; 6] = [
                    b"",
                    &[0xff, 0, 0, 0],
                    &[FORMAT_VERSION],
                    &[FORMAT_VERSION, 0xf0],
                    &[
                        FORMAT_VERSION,
                        RECORD_HAS_PUBLISHER,
                        0,
                        0,
                        0,
                        2,
                        1,
                        2,
                        0,
                        0,
                        0,
                        0,
                    ],
                    &[FORMAT_VERSION, 0, 0xff, 0xff, 0xff, 0xff, 1],
                ];
                for (i, value) in garbage.iter().enumerate() {
                    records
                        .insert(format!("garbage{i}").as_bytes(), *value)
                        .unwrap();
                }
                let mut providers = txn.open_table(PROVIDERS).unwrap();
                providers
                    .insert(
                        b"not a provider key".as_slice(),
                        b"\x01\x00\x00\x00\x00\x00".as_slice(),
                    )
                    .unwrap();
                providers
                    .insert(
                        provider_db_key(&key, &PeerId::random()).as_slice(),
                        b"\x01\x00\x00\x00\x00\x01\x00\x00\x00\x03abc".as_slice(),
                    )
                    .unwrap();
            }
            txn.commit().unwrap();
            assert_eq!(disk_counts(&db), (7, 3));
        }
        let db = db_at(&path);
        let store = PersistentStore::open(db.clone(), local, Config::default()).unwrap();
        assert_eq!(store.get(&good.key).as_deref(), Some(&good));
        assert_eq!(store.stats().records, 1);
        assert_eq!(store.providers(&key), vec![good_p]);
        assert_eq!(store.stats().provider_records, 1);
        // The garbage was deleted.
        assert_eq!(disk_counts(&db), (1, 1));
    }

    #[test]
    fn truncated_encodings_never_decode() {
        let now = Clock::now();
        let mut r = record("k", b"some value");
        r.publisher = Some(PeerId::random());
        r.expires = Some(Instant::now() + HOUR);
        let encoded = encode_record(&r, now).unwrap();
        assert!(decode_record(b"k", &encoded, now).unwrap().is_some());
        for len in 0..encoded.len() {
            assert!(decode_record(b"k", &encoded[..len], now).is_err());
        }
        let mut longer = encoded.clone();
        longer.push(0);
        assert!(decode_record(b"k", &longer, now).is_err());

        let mut p = provider(&r.key, PeerId::random());
        p.expires = Some(Instant::now() + HOUR);
        let db_key = provider_db_key(&p.key, &p.provider);
        let encoded = encode_provider(&p, now).unwrap();
        assert!(decode_provider(&db_key, &encoded, now).unwrap().is_some());
        for len in 0..encoded.len() {
            assert!(decode_provider(&db_key, &encoded[..len], now).is_err());
        }
        for len in 0..db_key.len() {
            assert!(decode_provider(&db_key[..len], &encoded, now).is_err());
        }
    }

    #[test]
    fn clock_conversion_round_trips() {
        let now = Clock::now();
        let at = now.instant + HOUR;
        let back = now.instant_of_unix_millis(now.unix_millis_of(at)).unwrap();
        assert!(close_enough(Some(back), Some(at)));
        assert!(
            now.instant_of_unix_millis(now.unix_millis_of(now.instant))
                .is_none()
        );
        assert!(now.instant_of_unix_millis(0).is_none());
        assert!(now.instant_of_unix_millis(u64::MAX).is_some());
    }

    #[test]
    fn time_per_put() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_at(&dir.path().join("kad.redb"));
        let mut store = PersistentStore::open(db, PeerId::random(), Config::default()).unwrap();
        let n = 1000;
        let start = Instant::now();
        for i in 0..n {
            let mut r = record(&format!("key{i}"), &[i as u8; 256]);
            r.expires = Some(Instant::now() + HOUR);
            store.put(r).unwrap();
        }
        let elapsed = start.elapsed();
        println!(
            "{n} puts (256-byte values, one Immediate commit each): {elapsed:?}, {:?} per put",
            elapsed / n
        );
    }

    #[test]
    fn types_are_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<PersistentStore>();
        check::<Error>();
        check::<Config>();
    }
}
