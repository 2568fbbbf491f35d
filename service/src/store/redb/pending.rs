//! Applied writes on their way to `state.redb`: they wait in memory, where reads find
//! them, and reach the file in one transaction per flush (see [`Pending`]); a flush
//! that fails for want of space leaves them in memory until a retry succeeds.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use redb::{Durability, ReadableTableMetadata};

use super::{redb_err, Db, KV, SM_META};
use crate::store::contract::meta::LAST_APPLIED;
use crate::store::space::Writer as DiskWriter;
use crate::store::{encode, is_out_of_space, retry_while_full, DiskFull, RETRY_FIRST, RETRY_MAX};
use crate::types::typ::LogId;
use crate::types::Record;

/// How often at most the state machine is committed with an fsync. In between, its
/// commits skip the fsync; after a crash, openraft re-applies the rest from the log.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Applied writes wait in memory (see [`Pending`]) until this many keys have piled up
/// or the oldest of them is this old, then reach `state.redb` in one transaction.
const FLUSH_KEYS: usize = 16 * 1024;
const FLUSH_AGE: Duration = Duration::from_millis(200);

/// A key's latest applied record, or `None` for a delete.
pub(super) type Writes = HashMap<String, Option<Record>>;

/// Applied writes not yet committed to `state.redb`. Committing every apply batch on
/// its own costs a redb transaction each (copy-on-write pages, checksums, the page
/// allocator); waiting lets one transaction carry thousands, and rewrites of the same
/// key collapse into one. Readers consult these maps before the database.
#[derive(Default)]
pub(super) struct Pending {
    /// Writes applied since the last flush began.
    pub(super) active: Writes,
    /// The writes a flush is committing right now: still read from here until the
    /// commit is done.
    pub(super) flushing: Option<Arc<Writes>>,
    /// The last log id applied, when it is newer than the one in the database.
    pub(super) last_applied: Option<LogId>,
    /// When the oldest entry in `active` was applied.
    pub(super) since: Option<Instant>,
    /// The writes committed without an fsync since the last commit with one, and the
    /// last applied id they carry. The database is opened again after a failed write
    /// (a full disk), and comes back as of its last fsynced commit: these are put back
    /// in `active` then, under anything newer.
    pub(super) unsynced: Writes,
    pub(super) unsynced_applied: Option<LogId>,
}

impl Pending {
    /// The pending record of `key`: `Some(None)` when it was deleted, `None` when there
    /// is nothing pending for it.
    pub(super) fn lookup(&self, key: &str) -> Option<Option<&Record>> {
        self.active
            .get(key)
            .or_else(|| self.flushing.as_ref().and_then(|f| f.get(key)))
            .map(Option::as_ref)
    }

    pub(super) fn is_due(&self) -> bool {
        self.active.len() >= FLUSH_KEYS || self.since.is_some_and(|t| t.elapsed() >= FLUSH_AGE)
    }
}

/// What the state machine, its snapshot builder and the API's reads share.
pub(super) struct Shared {
    pub(super) db: Arc<Db>,
    /// Marked while a commit failed for want of space; the pending writes wait in
    /// memory meanwhile, and [`Shared::retry_failed_flush`] tries them again.
    pub(super) disk_full: Arc<DiskFull>,
    /// When the next such retry is due, and the pause after it: each failed attempt
    /// opens the database again, which is not free on a large file.
    pub(super) next_retry: Mutex<(Instant, Duration)>,
    pub(super) pending: RwLock<Pending>,
    /// Held by whoever commits pending writes, so flushes happen one at a time; holds
    /// when the state machine was last committed durably.
    pub(super) flush: Mutex<Instant>,
    /// Held while a snapshot is built or installed: the two run on different tasks, and
    /// interleaved, a build that read the state before an install could record its
    /// older snapshot over the installed one.
    pub(super) snapshots: Mutex<()>,
    /// One past the last log index durable in the log (see `RedbLogStore::new`): a
    /// commit is fsynced only if the durable log covers it, so that after a crash the
    /// state machine is never ahead of the log and the current snapshot.
    pub(super) durable_log_end: Arc<AtomicU64>,
}

impl Shared {
    pub(super) fn new(
        db: Arc<Db>,
        durable_log_end: Arc<AtomicU64>,
        disk_full: Arc<DiskFull>,
    ) -> Self {
        Self {
            db,
            disk_full,
            next_retry: Mutex::new((Instant::now(), RETRY_FIRST)),
            pending: RwLock::new(Pending::default()),
            flush: Mutex::new(Instant::now()),
            snapshots: Mutex::new(()),
            durable_log_end,
        }
    }

    pub(super) fn pending(&self) -> RwLockReadGuard<'_, Pending> {
        self.pending.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn pending_mut(&self) -> RwLockWriteGuard<'_, Pending> {
        self.pending.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The record of `key` as applied so far.
    pub(super) fn get(&self, key: &str) -> io::Result<Option<Record>> {
        if let Some(record) = self.pending().lookup(key) {
            return Ok(record.cloned());
        }
        // Not pending: a flush only ever adds newer values to the database, and any
        // value applied after the check above is newer than this read.
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KV).map_err(redb_err)?;
        let stored = table.get(key).map_err(redb_err)?;
        stored.map(|v| Record::decode(v.value())).transpose()
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

    /// The number of keys in `[start, end)` as applied so far, counted while walking
    /// the database's range: memory holds only the pending keys of the range.
    pub(super) fn count_range(&self, start: &str, end: Option<&str>) -> io::Result<u64> {
        if end.is_some_and(|end| end <= start) {
            return Ok(0);
        }
        let in_range = |key: &str| key >= start && end.is_none_or(|end| key < end);
        let (overlay, txn) = {
            let pending = self.pending();
            let flushing = pending
                .flushing
                .as_deref()
                .into_iter()
                .flat_map(|f| f.keys());
            // Each pending key of the range once, with whether it exists now.
            let overlay: HashMap<String, bool> = pending
                .active
                .keys()
                .chain(flushing)
                .filter(|key| in_range(key))
                .map(|key| (key.clone(), matches!(pending.lookup(key), Some(Some(_)))))
                .collect();
            // Begun under the lock, as in `len`, so that it agrees with the pending
            // maps; the walk itself runs after the lock is let go, not holding up
            // applies.
            (overlay, self.db.begin_read()?)
        };
        let table = txn.open_table(KV).map_err(redb_err)?;
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let mut count: i64 = 0;
        for pair in table
            .range::<&str>((Bound::Included(start), upper))
            .map_err(redb_err)?
        {
            pair.map_err(redb_err)?;
            count += 1;
        }
        for (key, now) in &overlay {
            let stored = table.get(key.as_str()).map_err(redb_err)?.is_some();
            count += i64::from(*now) - i64::from(stored);
        }
        Ok(count.max(0) as u64)
    }

    /// Up to `limit` records with keys in `[start, end)`, in key order, as applied so far:
    /// the database's pairs with the pending writes laid over them. Ends early with the
    /// pair that brings the keys and values taken to `max_bytes`.
    pub(super) fn range(
        &self,
        start: &str,
        end: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<(String, Record)>> {
        if limit == 0 || end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        let pending = self.pending();
        let in_range = |key: &str| key >= start && end.is_none_or(|end| key < end);
        // The pending keys in the range, with their newest values (`None`: deleted).
        let flushing = pending
            .flushing
            .as_deref()
            .into_iter()
            .flat_map(|f| f.keys());
        let overlay: BTreeMap<&str, Option<&Record>> = pending
            .active
            .keys()
            .chain(flushing)
            .filter(|key| in_range(key))
            .map(|key| (key.as_str(), pending.lookup(key).flatten()))
            .collect();
        let mut overlay = overlay.into_iter();
        // Under the lock, as in `len`: the pending maps and the database's view agree.
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KV).map_err(redb_err)?;
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let mut stored = table
            .range::<&str>((Bound::Included(start), upper))
            .map_err(redb_err)?;
        let mut next_stored = || -> io::Result<Option<(String, Record)>> {
            let pair = stored.next().transpose().map_err(redb_err)?;
            pair.map(|(k, v)| Ok((k.value().to_owned(), Record::decode(v.value())?)))
                .transpose()
        };
        let (mut stored_pair, mut pending_pair) = (next_stored()?, overlay.next());
        let mut pairs: Vec<(String, Record)> = Vec::new();
        let mut bytes = 0usize;
        while pairs.len() < limit && bytes < max_bytes {
            let pending_first = match (&stored_pair, &pending_pair) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some((stored_key, _)), Some((key, _))) => *key <= stored_key.as_str(),
            };
            if pending_first {
                let Some((key, value)) = pending_pair.take() else {
                    break;
                };
                // A pending write hides the stored value of its key.
                if stored_pair.as_ref().is_some_and(|(k, _)| k == key) {
                    stored_pair = next_stored()?;
                }
                if let Some(record) = value {
                    bytes += key.len() + record.value.len();
                    pairs.push((key.to_owned(), record.clone()));
                }
                pending_pair = overlay.next();
            } else {
                let Some(pair) = stored_pair.take() else {
                    break;
                };
                bytes += pair.0.len() + pair.1.value.len();
                pairs.push(pair);
                stored_pair = next_stored()?;
            }
        }
        Ok(pairs)
    }

    /// Commits every pending write to the database, durably if `force_sync` or a second
    /// has passed (and the durable log covers them). `more`, when given, writes further
    /// changes in the same transaction, after the pending ones.
    pub(super) fn flush<T>(
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
                        Some(record) => kv
                            .insert(key.as_str(), record.encode().as_slice())
                            .map(drop),
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
    pub(super) fn recover(&self) {
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
    pub(super) fn retrying<T>(&self, write: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        retry_while_full(
            &self.disk_full,
            DiskWriter::StateMachine,
            || self.recover(),
            write,
        )
    }
}
