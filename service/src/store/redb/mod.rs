//! The embedded backend, in two redb files under `storage.data_dir`: `kvstore.redb`
//! holds the Raft log, vote, committed index and purge marker; `state.redb` holds the
//! state machine (the key-value data, last applied log id, membership). Snapshots are
//! files under `snapshots/`.
//!
//! Log appends and votes are committed with `Durability::Immediate` (an fsync) when
//! `storage.sync_writes` is on. State machine applies are committed without an fsync,
//! and at least once a second with one: redb commits are ordered and every durable
//! commit also persists the ones before it, so after a crash the state machine is at a
//! consistent earlier point and openraft re-applies the rest from the log (the log is
//! only purged up to a snapshot, whose record is committed durably). Two files keep the
//! applies from queueing behind the log's fsyncs for redb's one writer.

mod log_store;
mod state_machine;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

pub use log_store::RedbLogStore;
pub use state_machine::RedbStateMachine;

use super::{check_writable, decode, io_err};

/// Raft log entries by index, JSON-encoded.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Log-store metadata: the vote, the committed log id and the last purged log id.
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// The key-value data of the state machine.
const KV: TableDefinition<&str, &str> = TableDefinition::new("kv");
/// State-machine metadata: last applied log id, membership, current snapshot.
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

/// Name of the Raft log's database file inside `storage.data_dir`.
pub const DB_FILE: &str = "kvstore.redb";
/// Name of the state machine's database file inside `storage.data_dir`.
pub const STATE_FILE: &str = "state.redb";

/// Why the redb store could not be opened, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("invalid setting `storage.data_dir`: {path} is not writable: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error("cannot open database file {path}: {reason}")]
    Database { path: PathBuf, reason: String },
}

/// An opened redb store: the three views openraft and the API need.
pub struct RedbStore {
    pub log_store: RedbLogStore,
    pub state_machine: RedbStateMachine,
    pub handle: RedbHandle,
}

/// Opens (creating if needed) the store under `data_dir`.
pub fn open(data_dir: &Path, sync_writes: bool) -> Result<RedbStore, OpenError> {
    check_writable(data_dir).map_err(|e| OpenError::DataDir {
        path: data_dir.to_owned(),
        reason: e.to_string(),
    })?;
    let log_db = open_db(&data_dir.join(DB_FILE), |txn| {
        txn.open_table(LOG)?;
        txn.open_table(LOG_META)?;
        Ok(())
    })?;
    let state_path = data_dir.join(STATE_FILE);
    let state_db = open_db(&state_path, |txn| {
        txn.open_table(KV)?;
        txn.open_table(SM_META)?;
        Ok(())
    })?;
    let db_err = |e: &dyn std::fmt::Display| OpenError::Database {
        path: state_path.clone(),
        reason: e.to_string(),
    };
    let state_machine = RedbStateMachine::new(state_db.clone(), data_dir.join("snapshots"))
        .map_err(|e| db_err(&e))?;
    Ok(RedbStore {
        log_store: RedbLogStore::new(log_db.clone(), sync_writes).map_err(|e| db_err(&e))?,
        state_machine,
        handle: RedbHandle {
            log_db,
            state_db,
            paths: [data_dir.join(DB_FILE), state_path],
        },
    })
}

/// Opens (creating if needed) the database file at `path` and its tables.
fn open_db(
    path: &Path,
    create_tables: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::TableError>,
) -> Result<Arc<Database>, OpenError> {
    let db_err = |e: &dyn std::fmt::Display| OpenError::Database {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let db = Database::create(path).map_err(|e| db_err(&e))?;
    let txn = db.begin_write().map_err(|e| db_err(&e))?;
    create_tables(&txn).map_err(|e| db_err(&e))?;
    txn.commit().map_err(|e| db_err(&e))?;
    Ok(Arc::new(db))
}

/// The API's direct view of the store. Reads see the state machine as applied so far;
/// linearizability is the caller's job (a read barrier through Raft before reading).
#[derive(Clone)]
pub struct RedbHandle {
    log_db: Arc<Database>,
    state_db: Arc<Database>,
    paths: [PathBuf; 2],
}

impl RedbHandle {
    pub fn get(&self, key: &str) -> io::Result<Option<String>> {
        let txn = self.state_db.begin_read().map_err(io_err)?;
        let table = txn.open_table(KV).map_err(io_err)?;
        let value = table.get(key).map_err(io_err)?;
        Ok(value.map(|v| v.value().to_string()))
    }

    /// Number of keys currently stored.
    pub fn len(&self) -> io::Result<u64> {
        let txn = self.state_db.begin_read().map_err(io_err)?;
        let table = txn.open_table(KV).map_err(io_err)?;
        table.len().map_err(io_err)
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Size of the database files.
    pub fn size_bytes(&self) -> io::Result<u64> {
        let mut total = 0;
        for path in &self.paths {
            total += std::fs::metadata(path)?.len();
        }
        Ok(total)
    }

    /// Ids of nodes that were removed from the cluster and may never rejoin.
    pub fn retired_ids(&self) -> io::Result<std::collections::BTreeSet<u64>> {
        let txn = self.state_db.begin_read().map_err(io_err)?;
        let table = txn.open_table(SM_META).map_err(io_err)?;
        Ok(read_meta(&table, state_machine::RETIRED)?.unwrap_or_default())
    }

    /// Makes every earlier commit durable (state machine applies, and log writes with
    /// `storage.sync_writes` off, are committed without an fsync); called at shutdown.
    pub fn flush(&self) -> io::Result<()> {
        for db in [&self.log_db, &self.state_db] {
            let mut txn = db.begin_write().map_err(io_err)?;
            txn.set_durability(redb::Durability::Immediate)
                .map_err(io_err)?;
            txn.commit().map_err(io_err)?;
        }
        Ok(())
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
mod tests {
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::StorageError;

    use super::*;
    use crate::raft::TypeConfig;

    /// Each suite case gets a fresh, empty store in its own temp dir; the dir lives as
    /// long as the case (the guard `G`).
    struct Builder;

    impl StoreBuilder<TypeConfig, RedbLogStore, RedbStateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, RedbLogStore, RedbStateMachine), StorageError<TypeConfig>>
        {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = open(dir.path(), true).expect("open store");
            Ok((dir, store.log_store, store.state_machine))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite() {
        Suite::test_all(Builder).await.expect("storage suite");
    }

    #[test]
    fn unwritable_data_dir_names_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let err = open(&file.join("sub"), true).err().expect("must fail");
        assert!(err.to_string().contains("storage.data_dir"), "{err}");
    }

    #[test]
    fn corrupt_database_file_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let garbage = vec![0xA5u8; 8192];
        std::fs::write(&path, &garbage).unwrap();
        let err = open(dir.path(), true).err().expect("must fail");
        assert!(err.to_string().contains(DB_FILE), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            garbage,
            "file must be untouched"
        );
    }
}
