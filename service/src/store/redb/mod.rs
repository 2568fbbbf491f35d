//! The embedded backend, under `storage.data_dir`: the Raft log's entries in segment
//! files under `log/` (see `segments.rs`); the vote, committed index and purge marker in
//! `kvstore.redb`; the state machine (the key-value data, last applied log id,
//! membership) in `state.redb`. Snapshots are files under `snapshots/`.
//!
//! Log appends and votes are fsynced when `storage.sync_writes` is on. Applied writes
//! wait in memory for up to 200 ms (reads see them there) and then reach `state.redb`
//! in one transaction, without an fsync, and about once a second with one, for applies
//! the durable log already covers: redb commits are ordered and every durable commit
//! also persists the ones before it, so after a crash the state machine is at a
//! consistent earlier point and openraft re-applies the rest from the log (the log is
//! only purged up to a snapshot, which is built from the flushed state and whose
//! record is committed durably).
//!
//! A full disk stops nothing for good: a log write group, a state machine commit, a
//! snapshot that fails with `ENOSPC` is retried until it succeeds (the log writer with
//! a pause that doubles up to 2 s; pending applies by the node's space watcher), after
//! undoing what the failed attempt left: a half-written log record is cut off, and a
//! database file that redb refuses to write after the error is opened again.

mod log_store;
mod log_writer;
mod pending;
mod reader;
/// Public for `examples/log_compare.rs`, which measures it against another log.
pub mod segments;
mod state_machine;
mod views;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

pub use log_store::RedbLogStore;
pub use reader::RedbHandle;
pub use state_machine::RedbStateMachine;

use super::contract::{meta, Backend, Open, OpenError, Opened};
use super::{check_writable, decode, io_err, DiskFull};
use crate::config::{Settings, StorageType};

/// Log-store metadata: the vote, the committed log id and the last purged log id.
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// The key-value data of the state machine: each key's record (`Record::encode`: its
/// revisions, lease and value).
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv_records");
/// The data as versions before revisions kept it (values only); moved into `KV`, with
/// revisions 0 and version 1, when the database is opened.
const LEGACY_KV: TableDefinition<&str, &str> = TableDefinition::new("kv");
/// Leases by id (JSON).
const LEASES: TableDefinition<u64, &[u8]> = TableDefinition::new("leases");
/// `(lease, key)` for every key attached to a lease. It may name keys since written
/// without the lease or deleted (points writes do not update it); a revoke checks each
/// key's own record, and removes the lease's rows.
const LEASE_KEYS: TableDefinition<(u64, &str), ()> = TableDefinition::new("lease_keys");
/// State-machine metadata: last applied log id, membership, current snapshot.
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

/// Name of the Raft log's database file inside `storage.data_dir`.
pub const DB_FILE: &str = "kvstore.redb";
/// Name of the state machine's database file inside `storage.data_dir`.
pub const STATE_FILE: &str = "state.redb";

/// The embedded backend (`storage.type: file`).
pub struct Redb;

impl Backend for Redb {
    type Log = RedbLogStore;
    type StateMachine = RedbStateMachine;
    type Reader = RedbHandle;
}

impl Open for Redb {
    async fn open(
        settings: &Settings,
        disk_full: Arc<DiskFull>,
    ) -> Result<Opened<Self>, OpenError> {
        open(
            &settings.storage.data_dir,
            settings.storage.sync_writes,
            disk_full,
        )
    }
}

/// Opens (creating if needed) the store under `data_dir`. A write that fails for want
/// of space is marked in `disk_full` and retried until it succeeds.
pub fn open(
    data_dir: &Path,
    sync_writes: bool,
    disk_full: Arc<DiskFull>,
) -> Result<Opened<Redb>, OpenError> {
    check_writable(data_dir).map_err(|e| OpenError::DataDir {
        path: data_dir.to_owned(),
        reason: e.to_string(),
    })?;
    let log_path = data_dir.join(DB_FILE);
    let log_db = open_db(&log_path, |txn| {
        txn.open_table(LOG_META)?;
        Ok(())
    })?;
    let state_path = data_dir.join(STATE_FILE);
    let state_db = open_db(&state_path, |txn| {
        txn.open_table(KV)?;
        txn.open_table(SM_META)?;
        txn.open_table(LEASES)?;
        txn.open_table(LEASE_KEYS)?;
        Ok(())
    })?;
    migrate_legacy_kv(&state_db).map_err(|e| OpenError::Database {
        path: state_path.clone(),
        reason: format!("cannot move the data to the format with revisions: {e}"),
    })?;
    let db_err = |path: &Path, e: &dyn std::fmt::Display| OpenError::Database {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let log_dir = data_dir.join(segments::LOG_DIR);
    let log_err = |e: &dyn std::fmt::Display| OpenError::Database {
        path: log_dir.clone(),
        reason: e.to_string(),
    };
    type LogId = openraft::alias::LogIdOf<crate::types::TypeConfig>;
    let (purged, committed) = {
        let read = log_db.begin_read().map_err(|e| log_err(&e))?;
        let table = read.open_table(LOG_META).map_err(|e| log_err(&e))?;
        let purged = read_meta::<LogId>(&table, meta::LAST_PURGED).map_err(|e| log_err(&e))?;
        let committed = read_meta::<Option<LogId>>(&table, meta::COMMITTED)
            .map_err(|e| log_err(&e))?
            .flatten();
        (purged.map(|id| id.index), committed.map(|id| id.index))
    };
    let log = Arc::new(RwLock::new(
        segments::Segments::open_committed(&log_dir, purged, committed).map_err(|e| log_err(&e))?,
    ));
    let log_db = Arc::new(Db::new(log_path, log_db));
    let state_db = Arc::new(Db::new(state_path.clone(), state_db));
    let durable_log_end = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let state_machine = RedbStateMachine::new(
        state_db.clone(),
        data_dir.join("snapshots"),
        durable_log_end.clone(),
        disk_full.clone(),
    )
    .map_err(|e| db_err(&state_path, &e))?;
    // The files and directories made above exist after a power loss only once the
    // directory that names them is synced.
    super::sync_dir(data_dir).map_err(|e| OpenError::DataDir {
        path: data_dir.to_owned(),
        reason: format!("cannot sync the directory: {e}"),
    })?;
    Ok(Opened {
        name: StorageType::File.as_str(),
        log: RedbLogStore::new(
            log_db.clone(),
            log.clone(),
            sync_writes,
            durable_log_end,
            disk_full,
        )
        .map_err(|e| db_err(&data_dir.join(DB_FILE), &e))?,
        reader: RedbHandle {
            log_db,
            log,
            state: state_machine.shared(),
            state_db,
            paths: [data_dir.join(DB_FILE), state_path],
        },
        state_machine,
    })
}

/// Opens (creating if needed) the database file at `path` and its tables.
///
/// A new file is made under a temporary name ([`creating_path`]) and renamed into place
/// only once redb has written and synced it: a node stopped or cut off while it makes
/// its first database would otherwise leave a half-written file under the real name,
/// which redb then refuses to open ("not a redb database"), and the node could never
/// start again without an operator deleting it.
fn open_db(
    path: &Path,
    create_tables: impl Fn(&redb::WriteTransaction) -> Result<(), redb::TableError>,
) -> Result<Database, OpenError> {
    let db_err = |e: &dyn std::fmt::Display| OpenError::Database {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    if !path.exists() {
        create_db(path, &create_tables).map_err(|e| db_err(&e))?;
    }
    let db = Database::create(path).map_err(|e| db_err(&e))?;
    let txn = db.begin_write().map_err(|e| db_err(&e))?;
    create_tables(&txn).map_err(|e| db_err(&e))?;
    txn.commit().map_err(|e| db_err(&e))?;
    Ok(db)
}

/// Moves the data of a database written before revisions (table `kv`, values only) into
/// `KV`, each key with revisions 0 and version 1, in one durable transaction.
fn migrate_legacy_kv(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    let legacy = txn
        .list_tables()?
        .any(|table| redb::TableHandle::name(&table) == redb::TableHandle::name(&LEGACY_KV));
    if !legacy {
        return Ok(txn.abort()?);
    }
    {
        let old = txn.open_table(LEGACY_KV)?;
        let mut kv = txn.open_table(KV)?;
        for pair in old.iter()? {
            let (key, value) = pair?;
            let record = crate::types::Record {
                value: value.value().to_owned(),
                meta: crate::types::KeyMeta {
                    version: 1,
                    ..Default::default()
                },
            };
            kv.insert(key.value(), record.encode().as_slice())?;
        }
    }
    txn.delete_table(LEGACY_KV)?;
    txn.commit()?;
    tracing::info!("moved the data to the format with revisions");
    Ok(())
}

/// Where a database file is made before it is renamed to `path`.
fn creating_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".creating");
    path.with_file_name(name)
}

/// Makes the database at [`creating_path`] with its tables (redb syncs the commit),
/// then renames it to `path` and syncs the directory. A file left at the temporary name
/// by an earlier, interrupted start never held data: it is replaced.
fn create_db(
    path: &Path,
    create_tables: &impl Fn(&redb::WriteTransaction) -> Result<(), redb::TableError>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let fresh = creating_path(path);
    match std::fs::remove_file(&fresh) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let db = Database::create(&fresh)?;
    let txn = db.begin_write()?;
    create_tables(&txn)?;
    txn.commit()?;
    drop(db);
    std::fs::rename(&fresh, path)?;
    super::sync_parent(path)?;
    Ok(())
}

/// A redb database that can be closed and opened again in place. After a failed write
/// (a full disk), redb fails every later transaction with `PreviousIo` until the
/// database is closed and opened again (which repairs the file); [`Db::recover`] does
/// that, so the node goes on without a restart.
pub(super) struct Db {
    path: PathBuf,
    /// `None` only while an opening again failed; the next [`Db::recover`] tries again.
    current: RwLock<Option<Arc<Database>>>,
}

/// How long opening the database again waits for the old handle's last users to let go.
const REOPEN_WAIT: Duration = Duration::from_secs(2);

impl Db {
    fn new(path: PathBuf, db: Database) -> Self {
        Self {
            path,
            current: RwLock::new(Some(Arc::new(db))),
        }
    }

    fn get(&self) -> io::Result<Arc<Database>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "{} is closed after a failed write and could not be opened again yet",
                        self.path.display()
                    ),
                )
            })
    }

    pub(super) fn begin_read(&self) -> io::Result<redb::ReadTransaction> {
        self.get()?.begin_read().map_err(redb_err)
    }

    pub(super) fn begin_write(&self) -> io::Result<redb::WriteTransaction> {
        self.get()?.begin_write().map_err(redb_err)
    }

    /// Opens the database again if an earlier write failed (redb then refuses to begin
    /// a write); does nothing otherwise. Returns whether it was opened again: it then
    /// holds what its last fsynced commit holds, without the commits after it.
    pub(super) fn recover(&self) -> io::Result<bool> {
        let failed = match self.get() {
            Err(_) => true,
            Ok(db) => matches!(
                db.begin_write(),
                Err(redb::TransactionError::Storage(
                    redb::StorageError::PreviousIo
                ))
            ),
        };
        if !failed {
            return Ok(false);
        }
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        // Closes the file once the last transaction that still holds it is done.
        drop(current.take());
        let deadline = Instant::now() + REOPEN_WAIT;
        loop {
            match Database::create(&self.path) {
                Ok(db) => {
                    tracing::info!(path = %self.path.display(), "opened the database file again after a failed write");
                    *current = Some(Arc::new(db));
                    return Ok(true);
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(redb_err(e)),
            }
        }
    }
}

/// A redb error as an `io::Error`, keeping an I/O error's kind so that a full disk is
/// recognised. `PreviousIo` (an earlier write failed; the database must be opened
/// again) counts as a full disk too: that is the only failed write the node survives,
/// and the retry that follows opens the database again.
pub(super) fn redb_err(e: impl Into<redb::Error>) -> io::Error {
    match e.into() {
        redb::Error::Io(e) => e,
        redb::Error::PreviousIo => io::Error::new(
            io::ErrorKind::StorageFull,
            "an earlier write to the database failed; it is opened again before the next",
        ),
        e => io_err(e),
    }
}

/// Reads one metadata record from `table`.
fn read_meta<T: serde::de::DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> io::Result<Option<T>> {
    match table.get(key).map_err(io_err)? {
        Some(bytes) => decode(bytes.value()).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests;
