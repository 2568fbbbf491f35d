//! The Raft log store of the embedded backend: entries in append-only segment files
//! (`segments.rs`), the vote, committed log id and purge marker in `kvstore.redb`.
//!
//! Writes go through one writer thread that writes whatever has queued up at once and
//! makes it durable with a single fsync (group commit), so openraft's core never waits
//! on the disk: `append` files the entries in an in-memory tail, where readers see them
//! at once, queues the write and returns; the writer reports each batch to openraft
//! once it is durable. Votes, truncation and purges go through the same queue, in
//! order, and are awaited.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use redb::Durability;
use tokio::sync::{mpsc, oneshot};

use super::segments::Segments;
use super::{read_meta, redb_err, Db, LOG_META};
use crate::store::contract::meta::{COMMITTED, LAST_PURGED, VOTE};
use crate::store::space::Writer as DiskWriter;
use crate::store::{decode, encode, is_out_of_space, DiskFull, RETRY_FIRST, RETRY_MAX};
use crate::types::typ::{Entry, LogId, Vote};
use crate::types::TypeConfig;

/// The most operations the writer commits in one transaction.
const MAX_GROUP: usize = 1024;

/// Raft log entries in segment files; vote, committed index and purge marker in
/// `kvstore.redb`.
#[derive(Clone)]
pub struct RedbLogStore {
    db: Arc<Db>,
    log: Arc<RwLock<Segments>>,
    /// Entries handed to the writer and not yet durable, by index. Readers look here
    /// first; the writer removes entries once they are on disk.
    unflushed: Arc<Mutex<BTreeMap<u64, Entry>>>,
    /// The last committed log id openraft reported; it reaches the disk with the next
    /// commit of the writer.
    committed: Arc<Mutex<Option<Option<LogId>>>>,
    /// One past the last log index known durable on disk (0: none yet).
    durable_end: Arc<AtomicU64>,
    writer: mpsc::UnboundedSender<Op>,
}

/// One unit of work for the writer thread.
enum Op {
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        callback: IOFlushed<TypeConfig>,
    },
    /// A metadata record; `done`, when given, is told once it is durable.
    Meta {
        key: &'static str,
        bytes: Vec<u8>,
        done: Option<oneshot::Sender<io::Result<()>>>,
    },
    Truncate {
        from: u64,
        done: oneshot::Sender<io::Result<()>>,
    },
    Purge {
        upto: u64,
        marker: Vec<u8>,
        done: oneshot::Sender<io::Result<()>>,
    },
}

impl Op {
    /// Reports the outcome of the group that carried this operation.
    fn finish(self, result: &Result<(), String>) {
        let outcome = || result.clone().map_err(io::Error::other);
        match self {
            Op::Append { callback, .. } => callback.io_completed(outcome()),
            Op::Meta { done, .. } => {
                if let Some(done) = done {
                    let _ = done.send(outcome());
                }
            }
            Op::Truncate { done, .. } | Op::Purge { done, .. } => {
                let _ = done.send(outcome());
            }
        }
    }
}

/// With `storage.sync_writes` off, how often the log is fsynced anyway; and how often
/// the committed log id is written when nothing else is.
const LAZY_SYNC_EVERY: Duration = Duration::from_secs(1);

/// The writer thread's own state.
struct Writer {
    db: Arc<Db>,
    log: Arc<RwLock<Segments>>,
    sync_writes: bool,
    last_sync: Instant,
    /// Whether entries were written since the last fsync.
    dirty: bool,
    /// The committed log id not yet written, and when one was last written.
    committed: Option<Vec<u8>>,
    committed_at: Instant,
}

impl Writer {
    /// Writes one group of operations, in order, and makes them durable as they need.
    /// Returns whether the log's entries are durable now.
    fn write_group(&mut self, group: &[Op]) -> io::Result<bool> {
        let mut appends: Vec<(u64, &[u8])> = Vec::new();
        let mut meta: Vec<(&'static str, &[u8])> = Vec::new();
        let mut meta_sync = false;
        for op in group {
            match op {
                Op::Append { entries, .. } => {
                    appends.extend(entries.iter().map(|(id, b)| (id.index(), b.as_slice())));
                }
                Op::Meta { key, bytes, done } => {
                    if done.is_some() {
                        meta.push((key, bytes));
                        meta_sync = true;
                    } else {
                        self.committed = Some(bytes.clone());
                    }
                }
                Op::Truncate { from, .. } => {
                    self.append(&mut appends)?;
                    lock_write(&self.log).truncate(*from)?;
                }
                Op::Purge { upto, marker, .. } => {
                    self.append(&mut appends)?;
                    // The marker is durable before any entry goes: a crash in between
                    // leaves segments that the next start deletes.
                    meta.push((LAST_PURGED, marker));
                    self.commit_meta(&mut meta, true)?;
                    lock_write(&self.log).purge(*upto)?;
                }
            }
        }
        self.append(&mut appends)?;
        let durable = if self.sync_writes {
            true
        } else {
            self.last_sync.elapsed() >= LAZY_SYNC_EVERY
        };
        if durable && self.dirty {
            lock_read(&self.log).sync()?;
            self.last_sync = Instant::now();
            self.dirty = false;
        }
        if !meta.is_empty() || self.committed_at.elapsed() >= LAZY_SYNC_EVERY {
            self.commit_meta(&mut meta, meta_sync && self.sync_writes)?;
        }
        Ok(durable)
    }

    fn append(&mut self, appends: &mut Vec<(u64, &[u8])>) -> io::Result<()> {
        if !appends.is_empty() {
            lock_write(&self.log).append(appends)?;
            appends.clear();
            self.dirty = true;
        }
        Ok(())
    }

    /// Commits metadata records, with the committed log id if one is waiting.
    fn commit_meta(
        &mut self,
        meta: &mut Vec<(&'static str, &[u8])>,
        durable: bool,
    ) -> io::Result<()> {
        let committed = self.committed.take();
        if meta.is_empty() && committed.is_none() {
            return Ok(());
        }
        let result = (|| {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })
            .map_err(redb_err)?;
            {
                let mut table = txn.open_table(LOG_META).map_err(redb_err)?;
                if let Some(bytes) = &committed {
                    table
                        .insert(COMMITTED, bytes.as_slice())
                        .map_err(redb_err)?;
                }
                for (key, bytes) in meta.iter() {
                    table.insert(*key, *bytes).map_err(redb_err)?;
                }
            }
            txn.commit().map_err(redb_err)
        })();
        match result {
            Ok(()) => {
                meta.clear();
                self.committed_at = Instant::now();
                Ok(())
            }
            Err(e) => {
                // Written with the next attempt, unless a newer one comes first.
                if self.committed.is_none() {
                    self.committed = committed;
                }
                Err(e)
            }
        }
    }

    /// Undoes what a write group that failed for want of space left behind, so that
    /// it can be written again: the log's files lose any half-written record (see
    /// `Segments::append`), and the database is opened again if redb requires it.
    fn recover(&mut self) {
        if let Err(error) = self.db.recover() {
            tracing::warn!(%error, "cannot open the log's database again yet");
        }
    }

    /// Writes one group, retrying while the disk is full: each retry writes the whole
    /// group again (appends, truncations and purges are idempotent), after a pause that
    /// doubles up to [`RETRY_MAX`]. Gives up only when every handle to the store is
    /// gone (the node is shutting down).
    fn write_group_retrying(
        &mut self,
        group: &[Op],
        disk_full: &DiskFull,
        closed: impl Fn() -> bool,
    ) -> io::Result<bool> {
        let mut pause = RETRY_FIRST;
        loop {
            match self.write_group(group) {
                Ok(durable) => {
                    disk_full.clear(DiskWriter::Log);
                    return Ok(durable);
                }
                Err(e) if is_out_of_space(&e) && !closed() => {
                    disk_full.mark(DiskWriter::Log, &e);
                    self.recover();
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(RETRY_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The writer thread: takes everything queued, writes it, makes it durable (with
/// `sync_writes` off, at most once a second), then reports. A group that fails for want
/// of space is retried until it succeeds, and nothing is reported meanwhile (openraft
/// goes on without waiting; the node refuses new values). After any other failed write
/// it writes nothing more and fails every later operation: the log on disk must not get
/// a hole. Ends when every handle to the store is gone and the queue is drained.
fn run_writer(
    mut writer: Writer,
    unflushed: Arc<Mutex<BTreeMap<u64, Entry>>>,
    durable_end: Arc<AtomicU64>,
    disk_full: Arc<DiskFull>,
    mut queue: mpsc::UnboundedReceiver<Op>,
) {
    let mut group = Vec::new();
    let mut failed: Option<String> = None;
    while let Some(op) = queue.blocking_recv() {
        group.push(op);
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        if let Some(error) = &failed {
            let result = Err(format!("an earlier log write failed: {error}"));
            for op in group.drain(..) {
                op.finish(&result);
            }
            continue;
        }
        let result = writer
            .write_group_retrying(&group, &disk_full, || queue.is_closed())
            .map_err(|e| e.to_string());
        match &result {
            Err(error) => {
                tracing::error!(%error, "log write failed; the log store accepts no more writes");
                failed = Some(error.clone());
            }
            Ok(true) => {
                if let Some(next) = lock_read(&writer.log).next_index() {
                    durable_end.store(next, Ordering::SeqCst);
                }
            }
            Ok(false) => {}
        }
        if result.is_ok() {
            let mut unflushed = lock(&unflushed);
            for op in &group {
                if let Op::Append { entries, .. } = op {
                    for (log_id, _) in entries {
                        // Only if a truncation and a new append did not replace it.
                        if unflushed.get(&log_id.index()).map(|e| e.log_id()) == Some(*log_id) {
                            unflushed.remove(&log_id.index());
                        }
                    }
                }
            }
        }
        let result = result.map(drop);
        for op in group.drain(..) {
            op.finish(&result);
        }
    }
}

fn lock_read(log: &RwLock<Segments>) -> std::sync::RwLockReadGuard<'_, Segments> {
    log.read().unwrap_or_else(|e| e.into_inner())
}

fn lock_write(log: &RwLock<Segments>) -> std::sync::RwLockWriteGuard<'_, Segments> {
    log.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data under these locks stays consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedbLogStore {
    /// `durable_end` is kept up to date with one past the last log index durable on
    /// disk; the state machine fsyncs only applies the durable log covers.
    pub(super) fn new(
        db: Arc<Db>,
        log: Arc<RwLock<Segments>>,
        sync_writes: bool,
        durable_end: Arc<AtomicU64>,
        disk_full: Arc<DiskFull>,
    ) -> io::Result<Self> {
        if let Some(next) = lock_read(&log).next_index() {
            durable_end.store(next, Ordering::SeqCst);
        }
        let unflushed = Arc::new(Mutex::new(BTreeMap::new()));
        let (writer, queue) = mpsc::unbounded_channel();
        let state = Writer {
            db: db.clone(),
            log: log.clone(),
            sync_writes,
            last_sync: Instant::now(),
            dirty: false,
            committed: None,
            committed_at: Instant::now(),
        };
        let (thread_unflushed, thread_end) = (unflushed.clone(), durable_end.clone());
        std::thread::Builder::new()
            .name("redb-log-writer".into())
            .spawn(move || run_writer(state, thread_unflushed, thread_end, disk_full, queue))?;
        Ok(Self {
            db,
            log,
            unflushed,
            committed: Arc::new(Mutex::new(None)),
            durable_end,
            writer,
        })
    }

    /// Queues `op` for the writer thread.
    fn submit(&self, op: Op) -> io::Result<()> {
        self.writer
            .send(op)
            .map_err(|_| io::Error::other("the log writer has stopped"))
    }

    /// Queues an operation built around `done` and waits until the writer reports it.
    async fn submit_and_wait(
        &self,
        op: impl FnOnce(oneshot::Sender<io::Result<()>>) -> Op,
    ) -> io::Result<()> {
        let (done, report) = oneshot::channel();
        self.submit(op(done))?;
        report
            .await
            .map_err(|_| io::Error::other("the log writer has stopped"))?
    }

    fn read_log_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG_META).map_err(redb_err)?;
        read_meta(&table, key)
    }
}

impl RaftLogReader<TypeConfig> for RedbLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let range: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        // The unflushed tail first: an entry leaves it only once it is on disk, so
        // whatever is missing from this copy is found by the read below.
        let mut found: BTreeMap<u64, Entry> = lock(&self.unflushed)
            .range(range)
            .map(|(index, entry)| (*index, entry.clone()))
            .collect();
        let disk_range = match found.keys().next() {
            Some(first) => (range.0, Bound::Excluded(*first)),
            None => range,
        };
        if bounds(&disk_range).0 >= bounds(&disk_range).1 {
            return Ok(found.into_values().collect());
        }
        let (start, end) = bounds(&disk_range);
        for (index, bytes) in lock_read(&self.log).read(start, end)? {
            if let std::collections::btree_map::Entry::Vacant(slot) = found.entry(index) {
                slot.insert(decode(&bytes)?);
            }
        }
        Ok(found.into_values().collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.read_log_meta(VOTE)
    }
}

/// `range` as a half-open `start..end`.
fn bounds(range: &(Bound<u64>, Bound<u64>)) -> (u64, u64) {
    let start = match range.0 {
        Bound::Included(s) => s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.1 {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogStorage<TypeConfig> for RedbLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_unflushed = lock(&self.unflushed)
            .last_key_value()
            .map(|(_, e)| e.log_id());
        let last_purged: Option<LogId> = self.read_log_meta(LAST_PURGED)?;
        let last_on_disk = {
            let log = lock_read(&self.log);
            match log.next_index() {
                Some(next) => log.read(next - 1, next)?.pop(),
                None => None,
            }
        };
        let last = match (last_unflushed, last_on_disk) {
            (Some(id), _) => Some(id),
            (None, Some((_, bytes))) => Some(decode::<Entry>(&bytes)?.log_id()),
            (None, None) => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = encode(vote)?;
        self.submit_and_wait(|done| Op::Meta {
            key: VOTE,
            bytes,
            done: Some(done),
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not fsynced on its own: losing it only means re-applying a few entries at
        // start-up, and it rides along with the writer's next commit.
        let bytes = encode(&committed)?;
        *lock(&self.committed) = Some(committed);
        self.submit(Op::Meta {
            key: COMMITTED,
            bytes,
            done: None,
        })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        if let Some(committed) = *lock(&self.committed) {
            return Ok(committed);
        }
        Ok(self.read_log_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // Encode all first: an entry that cannot be written must not become readable.
        let encoded = entries
            .iter()
            .map(|entry| Ok((entry.log_id(), encode(entry)?)))
            .collect::<io::Result<Vec<_>>>()?;
        lock(&self.unflushed).extend(entries.into_iter().map(|e| (e.index(), e)));
        // Readable from now on; durable when the writer calls `callback`.
        self.submit(Op::Append {
            entries: encoded,
            callback,
        })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        self.durable_end.fetch_min(from, Ordering::SeqCst);
        lock(&self.unflushed).retain(|index, _| *index < from);
        self.submit_and_wait(|done| Op::Truncate { from, done })
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let marker = encode(&log_id)?;
        let upto = log_id.index();
        lock(&self.unflushed).retain(|index, _| *index > upto);
        self.submit_and_wait(|done| Op::Purge { upto, marker, done })
            .await
    }
}
