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
/// Public for `examples/log_compare.rs`, which measures it against another log.
pub mod segments;
mod state_machine;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

pub use log_store::RedbLogStore;
pub use state_machine::RedbStateMachine;

use super::{check_writable, decode, io_err, DiskFull};

/// Raft log entries by index, JSON-encoded: where the log lived before it moved to
/// segment files. Read once, to move a log from before then.
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

/// Opens (creating if needed) the store under `data_dir`. A write that fails for want
/// of space is marked in `disk_full` and retried until it succeeds.
pub fn open(
    data_dir: &Path,
    sync_writes: bool,
    disk_full: Arc<DiskFull>,
) -> Result<RedbStore, OpenError> {
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
        Ok(())
    })?;
    let db_err = |path: &Path, e: &dyn std::fmt::Display| OpenError::Database {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    if move_legacy_state(&log_db, &state_db).map_err(|e| db_err(&state_path, &e))? {
        tracing::info!(
            "moved the state machine from {DB_FILE} to {STATE_FILE} (the layout before they were split)"
        );
    }
    let log_dir = data_dir.join(segments::LOG_DIR);
    let log_err = |e: &dyn std::fmt::Display| OpenError::Database {
        path: log_dir.clone(),
        reason: e.to_string(),
    };
    if move_legacy_log(&log_db, data_dir).map_err(|e| log_err(&e))? {
        tracing::info!(
            "moved the Raft log from {DB_FILE} to {}/",
            segments::LOG_DIR
        );
    }
    type LogId = openraft::alias::LogIdOf<crate::types::TypeConfig>;
    let (purged, committed) = {
        let read = log_db.begin_read().map_err(|e| log_err(&e))?;
        let meta = read.open_table(LOG_META).map_err(|e| log_err(&e))?;
        let purged = read_meta::<LogId>(&meta, log_store::LAST_PURGED).map_err(|e| log_err(&e))?;
        let committed = read_meta::<Option<LogId>>(&meta, log_store::COMMITTED)
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
    Ok(RedbStore {
        log_store: RedbLogStore::new(
            log_db.clone(),
            log.clone(),
            sync_writes,
            durable_log_end,
            disk_full,
        )
        .map_err(|e| db_err(&data_dir.join(DB_FILE), &e))?,
        handle: RedbHandle {
            log_db,
            log,
            state: state_machine.shared(),
            state_db,
            paths: [data_dir.join(DB_FILE), state_path],
        },
        state_machine,
    })
}

/// Moves the state machine's tables out of the log's file into `state.redb`: before the
/// two were split, `kvstore.redb` held both. The copy is committed durably before the
/// old tables are dropped, so a crash in between only repeats the move (the copy is
/// skipped when `state.redb` already holds state). Returns whether there was anything
/// to move.
fn move_legacy_state(log_db: &Database, state_db: &Database) -> Result<bool, redb::Error> {
    let read = log_db.begin_read()?;
    let (old_kv, old_meta) = match (read.open_table(KV), read.open_table(SM_META)) {
        (Ok(kv), Ok(meta)) => (kv, meta),
        (Err(redb::TableError::TableDoesNotExist(_)), _)
        | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(false),
        (Err(e), _) | (_, Err(e)) => return Err(e.into()),
    };
    let write = state_db.begin_write()?;
    {
        let mut kv = write.open_table(KV)?;
        let mut meta = write.open_table(SM_META)?;
        if kv.is_empty()? && meta.is_empty()? {
            for item in old_kv.iter()? {
                let (key, value) = item?;
                kv.insert(key.value(), value.value())?;
            }
            for item in old_meta.iter()? {
                let (key, value) = item?;
                meta.insert(key.value(), value.value())?;
            }
        }
    }
    write.commit()?;
    drop((old_kv, old_meta, read));
    let write = log_db.begin_write()?;
    write.delete_table(KV)?;
    write.delete_table(SM_META)?;
    write.commit()?;
    Ok(true)
}

/// Moves the Raft log's entries out of `kvstore.redb` into segment files, where they
/// have lived since. The segments are written in a directory of their own, made
/// durable and renamed into place before the table is dropped, so a crash at any point
/// either repeats the move or finds it done. Returns whether there was anything to move.
fn move_legacy_log(log_db: &Database, data_dir: &Path) -> io::Result<bool> {
    let read = log_db.begin_read().map_err(io_err)?;
    let table = match read.open_table(LOG) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(io_err(e)),
    };
    let dir = data_dir.join(segments::LOG_DIR);
    let moved = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
    if !moved {
        let staging = data_dir.join("log.moving");
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        let mut log = segments::Segments::open(&staging, None)?;
        let mut chunk: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut items = table.iter().map_err(io_err)?.peekable();
        while let Some(item) = items.next() {
            let (index, bytes) = item.map_err(io_err)?;
            chunk.push((index.value(), bytes.value().to_vec()));
            if chunk.len() == 1024 || items.peek().is_none() {
                let refs: Vec<(u64, &[u8])> =
                    chunk.iter().map(|(i, b)| (*i, b.as_slice())).collect();
                log.append(&refs)?;
                chunk.clear();
            }
        }
        log.sync()?;
        drop(log);
        if dir.exists() {
            std::fs::remove_dir(&dir)?;
        }
        std::fs::rename(&staging, &dir)?;
        std::fs::File::open(data_dir)?.sync_all()?;
    }
    drop((table, read));
    let write = log_db.begin_write().map_err(io_err)?;
    write.delete_table(LOG).map_err(io_err)?;
    write.commit().map_err(io_err)?;
    Ok(true)
}

/// Opens (creating if needed) the database file at `path` and its tables.
fn open_db(
    path: &Path,
    create_tables: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::TableError>,
) -> Result<Database, OpenError> {
    let db_err = |e: &dyn std::fmt::Display| OpenError::Database {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let existed = path.exists();
    let db = Database::create(path).map_err(|e| db_err(&e))?;
    if !existed {
        // The new file's directory entry must survive a power loss too.
        super::sync_parent(path).map_err(|e| db_err(&e))?;
    }
    let txn = db.begin_write().map_err(|e| db_err(&e))?;
    create_tables(&txn).map_err(|e| db_err(&e))?;
    txn.commit().map_err(|e| db_err(&e))?;
    Ok(db)
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

/// The API's direct view of the store. Reads see the state machine as applied so far;
/// linearizability is the caller's job (a read barrier through Raft before reading).
#[derive(Clone)]
pub struct RedbHandle {
    log_db: Arc<Db>,
    log: Arc<RwLock<segments::Segments>>,
    /// The state machine's data: the database and the applied writes not yet in it.
    state: Arc<state_machine::Shared>,
    state_db: Arc<Db>,
    paths: [PathBuf; 2],
}

impl RedbHandle {
    pub fn get(&self, key: &str) -> io::Result<Option<String>> {
        self.state.get(key)
    }

    /// Number of keys currently stored.
    pub fn len(&self) -> io::Result<u64> {
        self.state.len()
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Size of the database files and the log's segments.
    pub fn size_bytes(&self) -> io::Result<u64> {
        let mut total = self
            .log
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .size_bytes();
        for path in &self.paths {
            total += std::fs::metadata(path)?.len();
        }
        Ok(total)
    }

    /// Ids of nodes that were removed from the cluster and may never rejoin.
    pub fn retired_ids(&self) -> io::Result<std::collections::BTreeSet<u64>> {
        let txn = self.state_db.begin_read()?;
        let table = txn.open_table(SM_META).map_err(redb_err)?;
        Ok(read_meta(&table, state_machine::RETIRED)?.unwrap_or_default())
    }

    /// Tries again to write the applied values that a full disk kept in memory.
    pub async fn retry_failed_writes(&self) {
        let state = self.state.clone();
        let _ = super::blocking(move || {
            state.retry_failed_flush();
            Ok(())
        })
        .await;
    }

    /// Makes every earlier commit durable (state machine applies, and log writes with
    /// `storage.sync_writes` off, are committed without an fsync); called at shutdown.
    pub fn flush(&self) -> io::Result<()> {
        self.log.read().unwrap_or_else(|e| e.into_inner()).sync()?;
        let mut txn = self.log_db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(redb_err)?;
        txn.commit().map_err(redb_err)?;
        // After the log: the state machine is made durable only as far as the log is.
        self.state.flush_all()
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
    use crate::types::TypeConfig;

    /// Each suite case gets a fresh, empty store in its own temp dir; the dir lives as
    /// long as the case (the guard `G`).
    struct Builder;

    impl StoreBuilder<TypeConfig, RedbLogStore, RedbStateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, RedbLogStore, RedbStateMachine), StorageError<TypeConfig>>
        {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = open(dir.path(), true, Default::default()).expect("open store");
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
        let err = open(&file.join("sub"), true, Default::default())
            .err()
            .expect("must fail");
        assert!(err.to_string().contains("storage.data_dir"), "{err}");
    }

    /// Opens the store in `dir` again; the previous one's log writer may still be
    /// letting go of the file.
    fn reopen(dir: &Path) -> RedbStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match open(dir, true, Default::default()) {
                Ok(store) => return store,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(e.to_string().contains("already open"), "{e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("cannot reopen the store: {e}"),
            }
        }
    }

    #[test]
    fn a_store_from_before_the_split_keeps_its_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The old layout: the state machine's tables in the log's file.
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(LOG).unwrap();
            txn.open_table(KV).unwrap().insert("k", "v").unwrap();
            let retired = crate::store::encode(&std::collections::BTreeSet::from([7u64])).unwrap();
            txn.open_table(SM_META)
                .unwrap()
                .insert(state_machine::RETIRED, retired.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        for _ in 0..2 {
            let store = reopen(dir.path());
            assert_eq!(store.handle.get("k").unwrap().as_deref(), Some("v"));
            assert_eq!(store.handle.retired_ids().unwrap(), [7].into());
            assert_eq!(store.handle.len().unwrap(), 1);
        }
        let store = reopen(dir.path());
        let read = store.handle.log_db.begin_read().unwrap();
        assert!(
            matches!(
                read.open_table(KV),
                Err(redb::TableError::TableDoesNotExist(_))
            ),
            "the old tables are gone from {DB_FILE}"
        );
    }

    /// Applies `entries` as openraft would, without waiting for the results.
    async fn apply(sm: &mut RedbStateMachine, entries: Vec<crate::types::typ::Entry>) {
        use openraft::storage::RaftStateMachine;
        let items = entries.into_iter().map(|e| Ok((e, None)));
        sm.apply(futures::stream::iter(items)).await.unwrap();
    }

    #[tokio::test]
    async fn applied_writes_are_read_back_before_and_after_they_reach_the_file() {
        use crate::store::test_entries::{delete, put};
        use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), true, Default::default()).unwrap();
        let sm = &mut store.state_machine;
        // In the file: a, b.
        apply(sm, vec![put(1, "a", "1"), put(2, "b", "2")]).await;
        store.handle.state.flush_all().unwrap();
        // Pending: a overwritten, b deleted, c added, d added then deleted, a missing
        // key deleted.
        apply(
            sm,
            vec![
                put(3, "a", "1b"),
                delete(4, "b"),
                put(5, "c", "3"),
                put(6, "d", "4"),
                delete(7, "d"),
                delete(8, "nope"),
            ],
        )
        .await;
        let check = |h: &RedbHandle| {
            assert_eq!(h.get("a").unwrap().as_deref(), Some("1b"));
            assert_eq!(h.get("b").unwrap(), None);
            assert_eq!(h.get("c").unwrap().as_deref(), Some("3"));
            assert_eq!(h.get("d").unwrap(), None);
            assert_eq!(h.len().unwrap(), 2);
        };
        check(&store.handle);
        assert_eq!(sm.applied_state().await.unwrap().0.unwrap().index, 8);

        // A snapshot holds the pending writes too.
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snapshot.meta.last_log_id.unwrap().index, 8);
        let (_, pairs) = crate::store::SnapshotReader::new(snapshot.snapshot).unwrap();
        let pairs: Vec<(String, String)> = pairs.map(Result::unwrap).collect();
        assert_eq!(pairs, [("a".into(), "1b".into()), ("c".into(), "3".into())]);
        check(&store.handle);

        // What shutdown flushes is there after a restart.
        apply(sm, vec![put(9, "e", "5")]).await;
        store.handle.flush().unwrap();
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(store.handle.get("e").unwrap().as_deref(), Some("5"));
        assert_eq!(store.handle.len().unwrap(), 3);
    }

    #[tokio::test]
    async fn a_delete_reports_whether_the_key_existed_wherever_it_is() {
        use crate::store::test_entries::{delete, put};
        use crate::store::CommandResult;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), true, Default::default()).unwrap();
        let shared = store.state_machine.shared();
        let results = |entries: Vec<_>| RedbStateMachine::apply_pending(&shared, &entries).unwrap();
        results(vec![put(1, "in-file", "x")]);
        shared.flush_all().unwrap();
        assert_eq!(
            results(vec![
                put(2, "pending", "y"),
                delete(3, "in-file"),
                delete(4, "pending"),
                delete(5, "pending"),
                delete(6, "never"),
            ]),
            [
                CommandResult::Stored,
                CommandResult::Deleted { existed: true },
                CommandResult::Deleted { existed: true },
                CommandResult::Deleted { existed: false },
                CommandResult::Deleted { existed: false },
            ]
        );
    }

    #[tokio::test]
    async fn a_log_from_before_the_segment_files_is_moved_into_them() {
        use crate::store::test_entries::put;
        use openraft::storage::{RaftLogReader, RaftLogStorage};
        let dir = tempfile::tempdir().unwrap();
        {
            // The old layout: entries 3..=5 in the log's table (1 and 2 purged).
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            let mut log = txn.open_table(LOG).unwrap();
            for i in 3..=5 {
                let bytes = crate::store::encode(&put(i, "k", &i.to_string())).unwrap();
                log.insert(i, bytes.as_slice()).unwrap();
            }
            drop(log);
            let purged = crate::store::encode(&put(2, "k", "2").log_id).unwrap();
            txn.open_table(LOG_META)
                .unwrap()
                .insert(log_store::LAST_PURGED, purged.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        for _ in 0..2 {
            let mut store = reopen(dir.path());
            let entries = store.log_store.try_get_log_entries(0..10).await.unwrap();
            let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
            assert_eq!(indexes, [3, 4, 5]);
            let state = store.log_store.get_log_state().await.unwrap();
            assert_eq!(state.last_log_id.unwrap().index, 5);
            assert_eq!(state.last_purged_log_id.unwrap().index, 2);
        }
        let store = reopen(dir.path());
        let read = store.handle.log_db.begin_read().unwrap();
        assert!(matches!(
            read.open_table(LOG),
            Err(redb::TableError::TableDoesNotExist(_))
        ));
    }

    #[test]
    fn corrupt_database_file_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let garbage = vec![0xA5u8; 8192];
        std::fs::write(&path, &garbage).unwrap();
        let err = open(dir.path(), true, Default::default())
            .err()
            .expect("must fail");
        assert!(err.to_string().contains(DB_FILE), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            garbage,
            "file must be untouched"
        );
    }

    /// A snapshot file at log index `index` holding `a=<a>` and `filler` more keys.
    fn snapshot_at(
        dir: &Path,
        index: u64,
        a: &str,
        filler: usize,
    ) -> (crate::types::typ::SnapshotMeta, std::fs::File) {
        let mut writer = crate::store::SnapshotWriter::create(
            dir,
            &format!("peer-{index}"),
            Some(&Default::default()),
        )
        .unwrap();
        writer.write_pair("a", a).unwrap();
        for i in 0..filler {
            writer.write_pair(&format!("filler-{i:08}"), "x").unwrap();
        }
        let meta = crate::types::typ::SnapshotMeta {
            last_log_id: Some(crate::store::test_entries::put(index, "a", a).log_id),
            last_membership: Default::default(),
        };
        (meta, writer.finish().unwrap())
    }

    /// While a snapshot is installed, reads see what was applied before it (pending
    /// writes included) or the snapshot, never the file as it was before the pending
    /// writes: reads do not go backwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_during_a_snapshot_install_never_go_backwards() {
        use crate::store::test_entries::put;
        use openraft::storage::RaftStateMachine;
        let dir = tempfile::tempdir().unwrap();
        let peer = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), true, Default::default()).unwrap();
        apply(&mut store.state_machine, vec![put(1, "a", "old")]).await;
        store.handle.state.flush_all().unwrap();
        apply(&mut store.state_machine, vec![put(2, "a", "pending")]).await;
        let (meta, file) = snapshot_at(peer.path(), 3, "snapshot", 200_000);

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (handle, stop) = (store.handle.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    seen.insert(handle.get("a").unwrap().unwrap_or_default());
                }
                seen
            })
        };
        store
            .state_machine
            .install_snapshot(&meta, file)
            .await
            .unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let seen = reader.join().unwrap();
        assert!(!seen.contains("old"), "a read went backwards: {seen:?}");
        assert_eq!(store.handle.get("a").unwrap().as_deref(), Some("snapshot"));
    }

    /// Builds and installs running at the same time both succeed, and the snapshot
    /// recorded last is never older than the one installed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_builds_and_installs_do_not_race() {
        use crate::store::test_entries::put;
        use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
        let dir = tempfile::tempdir().unwrap();
        let peer = tempfile::tempdir().unwrap();
        let store = open(dir.path(), true, Default::default()).unwrap();
        let mut sm = store.state_machine.clone();
        let entries: Vec<_> = (1..=20_000)
            .map(|i| put(i, &format!("k{i:06}"), "v"))
            .collect();
        apply(&mut sm, entries).await;
        for round in 0..10u64 {
            let index = 100_000 + round;
            let (meta, file) = snapshot_at(peer.path(), index, "installed", 20_000);
            let mut builder = sm.get_snapshot_builder().await;
            let mut installer = sm.clone();
            let (built, installed) = tokio::join!(
                tokio::spawn(async move { builder.build_snapshot().await.map(|s| s.meta) }),
                tokio::spawn(async move { installer.install_snapshot(&meta, file).await }),
            );
            built.unwrap().expect("build");
            installed.unwrap().expect("install");
            let current = sm
                .get_current_snapshot()
                .await
                .unwrap()
                .expect("a snapshot");
            assert_eq!(
                current.meta.last_log_id.map(|id| id.index),
                Some(index),
                "round {round}: the recorded snapshot went back"
            );
        }
    }
}
