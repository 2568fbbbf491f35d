//! The replicated state machine on redb: applies committed commands to the `kv` table and
//! builds and installs snapshots.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use futures::Stream;
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::{Durability, ReadableTableMetadata};

use super::{read_meta, redb_err, Db, KV, SM_META};
use crate::store::snapshot::{
    remove_other_snapshots, remove_unfinished_snapshots, snapshot_file_id, SnapshotReader,
    SnapshotRecord, SnapshotWriter,
};
use crate::store::space::Writer as DiskWriter;
use crate::store::{
    blocking, encode, is_out_of_space, retry_while_full, Command, CommandResult, DiskFull,
    Preamble, Proposal, SnapshotFile, RETRY_FIRST, RETRY_MAX,
};
use crate::types::typ::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership};
use crate::types::TypeConfig;

const LAST_APPLIED: &str = "last_applied";
const MEMBERSHIP: &str = "membership";
pub(super) const RETIRED: &str = "retired_node_ids";
const SNAPSHOT: &str = "snapshot";

/// How often at most the state machine is committed with an fsync. In between, its
/// commits skip the fsync; after a crash, openraft re-applies the rest from the log.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Applied writes wait in memory (see [`Pending`]) until this many keys have piled up
/// or the oldest of them is this old, then reach `state.redb` in one transaction.
const FLUSH_KEYS: usize = 16 * 1024;
const FLUSH_AGE: Duration = Duration::from_millis(200);

/// A key's latest applied value, or `None` for a delete.
type Writes = HashMap<String, Option<String>>;

/// Applied writes not yet committed to `state.redb`. Committing every apply batch on
/// its own costs a redb transaction each (copy-on-write pages, checksums, the page
/// allocator); waiting lets one transaction carry thousands, and rewrites of the same
/// key collapse into one. Readers consult these maps before the database.
#[derive(Default)]
struct Pending {
    /// Writes applied since the last flush began.
    active: Writes,
    /// The writes a flush is committing right now: still read from here until the
    /// commit is done.
    flushing: Option<Arc<Writes>>,
    /// The last log id applied, when it is newer than the one in the database.
    last_applied: Option<LogId>,
    /// When the oldest entry in `active` was applied.
    since: Option<Instant>,
    /// The writes committed without an fsync since the last commit with one, and the
    /// last applied id they carry. The database is opened again after a failed write
    /// (a full disk), and comes back as of its last fsynced commit: these are put back
    /// in `active` then, under anything newer.
    unsynced: Writes,
    unsynced_applied: Option<LogId>,
}

impl Pending {
    /// The pending value of `key`: `Some(None)` when it was deleted, `None` when there
    /// is nothing pending for it.
    fn lookup(&self, key: &str) -> Option<Option<&str>> {
        self.active
            .get(key)
            .or_else(|| self.flushing.as_ref().and_then(|f| f.get(key)))
            .map(Option::as_deref)
    }

    fn is_due(&self) -> bool {
        self.active.len() >= FLUSH_KEYS || self.since.is_some_and(|t| t.elapsed() >= FLUSH_AGE)
    }
}

/// What the state machine, its snapshot builder and the API's reads share.
pub(super) struct Shared {
    db: Arc<Db>,
    /// Marked while a commit failed for want of space; the pending writes wait in
    /// memory meanwhile, and [`Shared::retry_failed_flush`] tries them again.
    disk_full: Arc<DiskFull>,
    /// When the next such retry is due, and the pause after it: each failed attempt
    /// opens the database again, which is not free on a large file.
    next_retry: Mutex<(Instant, Duration)>,
    pending: RwLock<Pending>,
    /// Held by whoever commits pending writes, so flushes happen one at a time; holds
    /// when the state machine was last committed durably.
    flush: Mutex<Instant>,
    /// Held while a snapshot is built or installed: the two run on different tasks, and
    /// interleaved, a build that read the state before an install could record its
    /// older snapshot over the installed one.
    snapshots: Mutex<()>,
    /// One past the last log index durable in the log (see `RedbLogStore::new`): a
    /// commit is fsynced only if the durable log covers it, so that after a crash the
    /// state machine is never ahead of the log and the current snapshot.
    durable_log_end: Arc<AtomicU64>,
}

impl Shared {
    fn pending(&self) -> RwLockReadGuard<'_, Pending> {
        self.pending.read().unwrap_or_else(|e| e.into_inner())
    }

    fn pending_mut(&self) -> RwLockWriteGuard<'_, Pending> {
        self.pending.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The value of `key` as applied so far.
    pub(super) fn get(&self, key: &str) -> io::Result<Option<String>> {
        if let Some(value) = self.pending().lookup(key) {
            return Ok(value.map(str::to_owned));
        }
        // Not pending: a flush only ever adds newer values to the database, and any
        // value applied after the check above is newer than this read.
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KV).map_err(redb_err)?;
        let value = table.get(key).map_err(redb_err)?;
        Ok(value.map(|v| v.value().to_string()))
    }

    /// The number of keys as applied so far.
    pub(super) fn len(&self) -> io::Result<u64> {
        let pending = self.pending();
        // Under the lock: the pending maps and the database's view agree for every key
        // they hold, whether or not a running flush has committed yet.
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KV).map_err(redb_err)?;
        let mut len = table.len().map_err(redb_err)? as i64;
        let flushing = pending
            .flushing
            .as_deref()
            .into_iter()
            .flat_map(|f| f.keys());
        let keys = pending.active.keys().chain(
            // A key in both maps counts once, with the newer value.
            flushing.filter(|key| !pending.active.contains_key(*key)),
        );
        for key in keys {
            let now = matches!(pending.lookup(key), Some(Some(_)));
            let stored = table.get(key.as_str()).map_err(redb_err)?.is_some();
            len += i64::from(now) - i64::from(stored);
        }
        Ok(len.max(0) as u64)
    }

    /// Commits every pending write to the database, durably if `force_sync` or a second
    /// has passed (and the durable log covers them). `more`, when given, writes further
    /// changes in the same transaction, after the pending ones.
    fn flush<T>(
        &self,
        force_sync: bool,
        more: impl FnOnce(&redb::WriteTransaction) -> io::Result<(T, Option<LogId>)>,
    ) -> io::Result<T> {
        let mut last_sync = self.flush.lock().unwrap_or_else(|e| e.into_inner());
        let (writes, last_applied) = {
            let mut pending = self.pending_mut();
            let writes = Arc::new(std::mem::take(&mut pending.active));
            pending.flushing = Some(writes.clone());
            pending.since = None;
            (writes, pending.last_applied.take())
        };
        let result = (|| {
            let mut txn = self.db.begin_write()?;
            {
                let mut kv = txn.open_table(KV).map_err(redb_err)?;
                for (key, value) in writes.iter() {
                    match value {
                        Some(value) => kv.insert(key.as_str(), value.as_str()).map(drop),
                        None => kv.remove(key.as_str()).map(drop),
                    }
                    .map_err(redb_err)?;
                }
            }
            let (value, more_applied) = more(&txn)?;
            let applied = more_applied.or(last_applied);
            if let Some(last) = applied {
                let mut meta = txn.open_table(SM_META).map_err(redb_err)?;
                meta.insert(LAST_APPLIED, encode(&Some(last))?.as_slice())
                    .map_err(redb_err)?;
            }
            let covered =
                applied.is_none_or(|id| id.index() < self.durable_log_end.load(Ordering::SeqCst));
            let durable = covered && (force_sync || last_sync.elapsed() >= SYNC_EVERY);
            txn.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })
            .map_err(redb_err)?;
            txn.commit().map_err(redb_err)?;
            if durable {
                *last_sync = Instant::now();
            }
            Ok((value, durable, applied))
        })();
        let mut pending = self.pending_mut();
        pending.flushing = None;
        let writes = Arc::try_unwrap(writes).unwrap_or_else(|w| (*w).clone());
        match result {
            Ok((value, durable, applied)) => {
                if durable {
                    pending.unsynced.clear();
                    pending.unsynced_applied = None;
                } else {
                    pending.unsynced.extend(writes);
                    pending.unsynced_applied = applied.or(pending.unsynced_applied);
                }
                drop(pending);
                self.disk_full.clear(DiskWriter::StateMachine);
                Ok(value)
            }
            Err(e) => {
                // Nothing was written: put the writes back, under any newer ones.
                for (key, value) in writes {
                    pending.active.entry(key).or_insert(value);
                }
                if pending.last_applied.is_none() {
                    pending.last_applied = last_applied;
                }
                pending.since.get_or_insert_with(Instant::now);
                drop(pending);
                if is_out_of_space(&e) {
                    self.disk_full.mark(DiskWriter::StateMachine, &e);
                    self.recover();
                }
                Err(e)
            }
        }
    }

    /// Commits pending writes and fsyncs the database; called at shutdown.
    pub(super) fn flush_all(&self) -> io::Result<()> {
        self.flush(true, |_| Ok(((), None)))
    }

    /// After a commit failed for want of space: tries the pending writes again, after
    /// a pause that doubles from [`RETRY_FIRST`] up to [`RETRY_MAX`]. Called by the
    /// node's space watcher, twice a second, until it succeeds.
    pub(super) fn retry_failed_flush(&self) {
        if !self.disk_full.is_marked(DiskWriter::StateMachine) {
            return;
        }
        let mut next = self.next_retry.lock().unwrap_or_else(|e| e.into_inner());
        let (at, pause) = *next;
        if Instant::now() < at {
            return;
        }
        // Marks or clears the disk as full itself.
        *next = match self.flush(false, |_| Ok(((), None))) {
            Ok(()) => (Instant::now(), RETRY_FIRST),
            Err(_) => (Instant::now() + pause, (pause * 2).min(RETRY_MAX)),
        };
    }

    /// Opens the database again if a failed write requires it, and puts back in memory
    /// what that loses (see [`Pending::unsynced`]).
    fn recover(&self) {
        let mut pending = self.pending_mut();
        match self.db.recover() {
            Ok(false) => {}
            Ok(true) => {
                let unsynced = std::mem::take(&mut pending.unsynced);
                for (key, value) in unsynced {
                    pending.active.entry(key).or_insert(value);
                }
                if let Some(applied) = pending.unsynced_applied.take() {
                    pending.last_applied.get_or_insert(applied);
                    pending.since.get_or_insert_with(Instant::now);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot open the state machine's database again yet");
            }
        }
    }

    /// Runs `write`, retrying it while the disk is full (see
    /// [`crate::store::retry_while_full`]). Blocking.
    fn retrying<T>(&self, write: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        retry_while_full(
            &self.disk_full,
            DiskWriter::StateMachine,
            || self.recover(),
            write,
        )
    }
}

/// The state machine: data and its metadata in `state.redb`, snapshots as files.
#[derive(Clone)]
pub struct RedbStateMachine {
    shared: Arc<Shared>,
    snapshot_dir: PathBuf,
}

impl RedbStateMachine {
    pub(super) fn new(
        db: Arc<Db>,
        snapshot_dir: PathBuf,
        durable_log_end: Arc<AtomicU64>,
        disk_full: Arc<DiskFull>,
    ) -> io::Result<Self> {
        crate::store::create_dir_durably(&snapshot_dir)?;
        Ok(Self {
            shared: Arc::new(Shared {
                db,
                disk_full,
                next_retry: Mutex::new((Instant::now(), RETRY_FIRST)),
                pending: RwLock::new(Pending::default()),
                flush: Mutex::new(Instant::now()),
                snapshots: Mutex::new(()),
                durable_log_end,
            }),
            snapshot_dir,
        })
    }

    /// What the API's reads need.
    pub(super) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Whether a write to the disk failed for want of space and has not succeeded since.
    pub fn disk_full(&self) -> bool {
        self.shared.disk_full.is_full()
    }

    fn read_sm_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let txn = self.shared.db.begin_read()?;
        let table = txn.open_table(SM_META).map_err(redb_err)?;
        read_meta(&table, key)
    }

    /// Applies a batch of client writes to the pending maps and returns, in order, the
    /// result of each entry. Membership entries are not handled here.
    pub(super) fn apply_pending(
        shared: &Shared,
        entries: &[Entry],
    ) -> io::Result<Vec<CommandResult>> {
        let mut pending = shared.pending_mut();
        let mut results = Vec::with_capacity(entries.len());
        for entry in entries {
            results.push(match &entry.payload {
                EntryPayload::Normal(Proposal {
                    command: Command::Put { key, value },
                    ..
                }) => {
                    pending.active.insert(key.clone(), Some(value.clone()));
                    CommandResult::Stored
                }
                EntryPayload::Normal(Proposal {
                    command: Command::Delete { key },
                    ..
                }) => {
                    let existed = match pending.lookup(key) {
                        Some(value) => value.is_some(),
                        None => {
                            let txn = shared.db.begin_read()?;
                            let table = txn.open_table(KV).map_err(redb_err)?;
                            table.get(key.as_str()).map_err(redb_err)?.is_some()
                        }
                    };
                    pending.active.insert(key.clone(), None);
                    CommandResult::Deleted { existed }
                }
                EntryPayload::Blank | EntryPayload::Membership(_) => CommandResult::None,
            });
        }
        if let Some(last) = entries.last() {
            pending.last_applied = Some(last.log_id());
            pending.since.get_or_insert_with(Instant::now);
        }
        Ok(results)
    }

    /// Applies a batch that changes the membership: pending writes and the whole batch
    /// are committed in one transaction.
    fn apply_through(shared: &Shared, entries: &[Entry]) -> io::Result<Vec<CommandResult>> {
        // Fsynced (when the durable log covers it): a database opened again after a
        // failed write would lose the membership records of a commit without one.
        shared.flush(true, |txn| {
            let mut results = Vec::with_capacity(entries.len());
            let mut kv = txn.open_table(KV).map_err(redb_err)?;
            let mut meta = txn.open_table(SM_META).map_err(redb_err)?;
            for entry in entries {
                let result = match &entry.payload {
                    EntryPayload::Blank => CommandResult::None,
                    EntryPayload::Normal(Proposal {
                        command: Command::Put { key, value },
                        ..
                    }) => {
                        kv.insert(key.as_str(), value.as_str()).map_err(redb_err)?;
                        CommandResult::Stored
                    }
                    EntryPayload::Normal(Proposal {
                        command: Command::Delete { key },
                        ..
                    }) => {
                        let existed = kv.remove(key.as_str()).map_err(redb_err)?.is_some();
                        CommandResult::Deleted { existed }
                    }
                    EntryPayload::Membership(membership) => {
                        // Nodes that leave the membership are retired for good.
                        let previous: Option<StoredMembership> = read_meta(&meta, MEMBERSHIP)?;
                        if let Some(previous) = previous {
                            let mut retired: BTreeSet<u64> =
                                read_meta(&meta, RETIRED)?.unwrap_or_default();
                            if crate::store::retire_leavers(&mut retired, &previous, membership) {
                                meta.insert(RETIRED, encode(&retired)?.as_slice())
                                    .map_err(redb_err)?;
                            }
                        }
                        let stored =
                            StoredMembership::new(Some(entry.log_id()), membership.clone());
                        meta.insert(MEMBERSHIP, encode(&stored)?.as_slice())
                            .map_err(redb_err)?;
                        CommandResult::None
                    }
                };
                results.push(result);
            }
            Ok((results, entries.last().map(|e| e.log_id())))
        })
    }

    /// The snapshot recorded as current, if its file is still there.
    fn current_snapshot(&self) -> io::Result<Option<Snapshot<SnapshotFile>>> {
        let Some(record) = self.read_sm_meta::<SnapshotRecord>(SNAPSHOT)? else {
            return Ok(None);
        };
        record.open(&self.snapshot_dir)
    }

    fn record_snapshot(db: &Db, record: &SnapshotRecord) -> io::Result<()> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(redb_err)?;
        {
            let mut table = txn.open_table(SM_META).map_err(redb_err)?;
            table
                .insert(SNAPSHOT, encode(record)?.as_slice())
                .map_err(redb_err)?;
        }
        txn.commit().map_err(redb_err)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for RedbStateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot<SnapshotFile>, io::Error> {
        let shared = self.shared.clone();
        let dir = self.snapshot_dir.clone();
        blocking(move || {
            let _snapshots = shared.snapshots.lock().unwrap_or_else(|e| e.into_inner());
            // Refused while the disk is full unless openraft needs it to catch a follower
            // up; then it waits for room.
            shared.retrying(|| {
                Self::build(&shared, &dir).inspect_err(|e| {
                    if is_out_of_space(e) {
                        let _ = remove_unfinished_snapshots(&dir);
                    }
                })
            })
        })
        .await
    }
}

impl RedbStateMachine {
    /// Builds a snapshot of the state as committed; the caller holds `snapshots`.
    fn build(shared: &Shared, dir: &std::path::Path) -> io::Result<Snapshot<SnapshotFile>> {
        {
            shared.flush(false, |_| Ok(((), None)))?;
            let db = &shared.db;
            // One read transaction: the data, last applied id and membership are one
            // consistent point in time, while applies continue concurrently.
            let txn = db.begin_read()?;
            let meta_table = txn.open_table(SM_META).map_err(redb_err)?;
            let last_applied: Option<LogId> =
                read_meta::<Option<LogId>>(&meta_table, LAST_APPLIED)?.flatten();
            let membership: StoredMembership =
                read_meta(&meta_table, MEMBERSHIP)?.unwrap_or_default();
            let file_id = snapshot_file_id(last_applied.as_ref());

            let preamble = Preamble {
                retired_node_ids: read_meta(&meta_table, RETIRED)?.unwrap_or_default(),
            };
            let mut writer = SnapshotWriter::create(dir, &file_id, Some(&preamble))?;
            let kv = txn.open_table(KV).map_err(redb_err)?;
            for item in redb::ReadableTable::iter(&kv).map_err(redb_err)? {
                let (key, value) = item.map_err(redb_err)?;
                writer.write_pair(key.value(), value.value())?;
            }
            let file = writer.finish()?;
            let record = SnapshotRecord {
                meta: SnapshotMeta {
                    last_log_id: last_applied,
                    last_membership: membership,
                },
                file_id,
            };
            Self::record_snapshot(db, &record)?;
            remove_other_snapshots(dir, &record.file_id)?;
            Ok(Snapshot {
                meta: record.meta,
                snapshot: file,
            })
        }
    }
}

impl RaftStateMachine<TypeConfig> for RedbStateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let pending = self.shared.pending().last_applied;
        let last_applied = match pending {
            Some(id) => Some(id),
            None => self.read_sm_meta::<Option<LogId>>(LAST_APPLIED)?.flatten(),
        };
        let membership = self.read_sm_meta(MEMBERSHIP)?.unwrap_or_default();
        Ok((last_applied, membership))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let (batch, responders) = crate::store::gather(entries).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let membership = batch
            .iter()
            .any(|e| matches!(e.payload, EntryPayload::Membership(_)));
        let results = if membership {
            let shared = self.shared.clone();
            // Membership changes wait for room: they cannot stay in memory.
            blocking(move || shared.retrying(|| Self::apply_through(&shared, &batch))).await?
        } else {
            // In memory, on this task: only a delete of a key with nothing pending
            // reads the database (from its cache, as the API's reads do).
            let results = Self::apply_pending(&self.shared, &batch)?;
            // While the disk is full the writes stay in memory (readable there); the
            // space watcher retries the commit.
            let full = self.shared.disk_full.is_marked(DiskWriter::StateMachine);
            if self.shared.pending().is_due() && !full {
                let shared = self.shared.clone();
                match blocking(move || shared.flush(false, |_| Ok(((), None)))).await {
                    Err(e) if !is_out_of_space(&e) => return Err(e),
                    _ => {}
                }
            }
            results
        };
        crate::store::answer(responders, results);
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let shared = self.shared.clone();
        let dir = self.snapshot_dir.clone();
        let meta = meta.clone();
        let meta_log_id = meta.last_log_id;
        blocking(move || {
            let _snapshots = shared.snapshots.lock().unwrap_or_else(|e| e.into_inner());
            // The snapshot replaces everything applied before it, pending or not; no
            // flush may run meanwhile. The pending writes stay readable until the
            // snapshot is committed: without them, reads would see the file as it was
            // before them, older than what openraft reports applied.
            let _flush = shared.flush.lock().unwrap_or_else(|e| e.into_inner());
            let mut snapshot = snapshot;
            // On a full disk, waits for room: the snapshot is what this node must catch
            // up with.
            shared.retrying(|| {
                Self::install(&shared, &dir, &meta, &mut snapshot).inspect_err(|e| {
                    if is_out_of_space(e) {
                        let _ = remove_unfinished_snapshots(&dir);
                    }
                })
            })?;
            *shared.pending_mut() = Pending::default();
            Ok(())
        })
        .await?;
        tracing::info!(last_log_id = ?meta_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<SnapshotFile>>, io::Error> {
        self.current_snapshot()
    }
}

impl RedbStateMachine {
    /// Replaces the state with `snapshot`'s; the caller holds `snapshots` and `flush`.
    fn install(
        shared: &Shared,
        dir: &std::path::Path,
        meta: &SnapshotMeta,
        snapshot: &mut SnapshotFile,
    ) -> io::Result<()> {
        {
            let db = &shared.db;
            // Keep our own copy first: the received file may live elsewhere.
            let file_id = snapshot_file_id(meta.last_log_id.as_ref());
            let mut writer = SnapshotWriter::create(dir, &file_id, None)?;
            writer.copy_from(snapshot)?;
            let copy = writer.finish()?;

            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)
                .map_err(redb_err)?;
            txn.delete_table(KV).map_err(redb_err)?;
            {
                let mut kv = txn.open_table(KV).map_err(redb_err)?;
                let (preamble, pairs) = SnapshotReader::new(copy)?;
                for pair in pairs {
                    let (key, value) = pair?;
                    kv.insert(key.as_str(), value.as_str()).map_err(redb_err)?;
                }
                let mut sm_meta = txn.open_table(SM_META).map_err(redb_err)?;
                sm_meta
                    .insert(LAST_APPLIED, encode(&meta.last_log_id)?.as_slice())
                    .map_err(redb_err)?;
                sm_meta
                    .insert(MEMBERSHIP, encode(&meta.last_membership)?.as_slice())
                    .map_err(redb_err)?;
                sm_meta
                    .insert(RETIRED, encode(&preamble.retired_node_ids)?.as_slice())
                    .map_err(redb_err)?;
                let record = SnapshotRecord {
                    meta: meta.clone(),
                    file_id: file_id.clone(),
                };
                sm_meta
                    .insert(SNAPSHOT, encode(&record)?.as_slice())
                    .map_err(redb_err)?;
            }
            txn.commit().map_err(redb_err)?;
            remove_other_snapshots(dir, &file_id)
        }
    }
}
