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
use std::sync::{Arc, Mutex, RwLock};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use tokio::sync::{mpsc, oneshot};

use super::log_writer::{lock, lock_read, run_writer, Op, Writer};
use super::segments::Segments;
use super::{read_meta, redb_err, Db, LOG_META};
use crate::store::contract::meta::{COMMITTED, LAST_PURGED, VOTE};
use crate::store::{decode, encode, DiskFull};
use crate::types::typ::{Entry, LogId, Vote};
use crate::types::TypeConfig;

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
        let state = Writer::new(db.clone(), log.clone(), sync_writes);
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
