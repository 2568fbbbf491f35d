//! The log store's writer thread: it writes whatever has queued up at once and makes
//! it durable with a single fsync (group commit), then reports each operation to
//! whoever waits on it; while the disk is full it retries the group.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use redb::Durability;
use tokio::sync::{mpsc, oneshot};

use super::segments::Segments;
use super::{redb_err, Db, LOG_META};
use crate::store::contract::meta::{COMMITTED, LAST_PURGED};
use crate::store::space::Writer as DiskWriter;
use crate::store::{is_out_of_space, DiskFull, RETRY_FIRST, RETRY_MAX};
use crate::types::typ::{Entry, LogId};
use crate::types::TypeConfig;

/// The most operations the writer commits in one transaction.
const MAX_GROUP: usize = 1024;

/// One unit of work for the writer thread.
pub(super) enum Op {
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
pub(super) struct Writer {
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
    pub(super) fn new(db: Arc<Db>, log: Arc<RwLock<Segments>>, sync_writes: bool) -> Self {
        Self {
            db,
            log,
            sync_writes,
            last_sync: Instant::now(),
            dirty: false,
            committed: None,
            committed_at: Instant::now(),
        }
    }

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
pub(super) fn run_writer(
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

pub(super) fn lock_read(log: &RwLock<Segments>) -> std::sync::RwLockReadGuard<'_, Segments> {
    log.read().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn lock_write(log: &RwLock<Segments>) -> std::sync::RwLockWriteGuard<'_, Segments> {
    log.write().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data under these locks stays consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
