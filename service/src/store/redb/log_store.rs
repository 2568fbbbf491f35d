//! The Raft log store on redb.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use super::{read_meta, LOG, LOG_META};
use crate::raft::typ::{Entry, LogId, Vote};
use crate::raft::TypeConfig;
use crate::store::{blocking, decode, encode, io_err};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// Raft log, vote, committed index and purge marker in the shared redb file.
#[derive(Clone)]
pub struct RedbLogStore {
    db: Arc<Database>,
    /// Whether appends and votes wait for an fsync (`storage.sync_writes`).
    sync_writes: bool,
}

impl RedbLogStore {
    pub(super) fn new(db: Arc<Database>, sync_writes: bool) -> Self {
        Self { db, sync_writes }
    }

    /// Runs `work` in one write transaction and commits it, durably if `durable`.
    async fn write(
        &self,
        durable: bool,
        work: impl FnOnce(&redb::WriteTransaction) -> io::Result<()> + Send + 'static,
    ) -> io::Result<()> {
        let db = self.db.clone();
        let durability = if durable && self.sync_writes {
            Durability::Immediate
        } else {
            Durability::None
        };
        blocking(move || {
            let mut txn = db.begin_write().map_err(io_err)?;
            txn.set_durability(durability).map_err(io_err)?;
            work(&txn)?;
            txn.commit().map_err(io_err)
        })
        .await
    }

    fn put_meta(txn: &redb::WriteTransaction, key: &str, bytes: &[u8]) -> io::Result<()> {
        let mut table = txn.open_table(LOG_META).map_err(io_err)?;
        table.insert(key, bytes).map_err(io_err)?;
        Ok(())
    }

    fn read_log_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOG_META).map_err(io_err)?;
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
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(io_err)?;
            let table = txn.open_table(LOG).map_err(io_err)?;
            let mut entries = Vec::new();
            for item in table.range::<u64>(range).map_err(io_err)? {
                let (_, bytes) = item.map_err(io_err)?;
                entries.push(decode(bytes.value())?);
            }
            Ok(entries)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.read_log_meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for RedbLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let last_purged: Option<LogId> = {
            let meta = txn.open_table(LOG_META).map_err(io_err)?;
            read_meta(&meta, LAST_PURGED)?
        };
        let table = txn.open_table(LOG).map_err(io_err)?;
        let last = match table.last().map_err(io_err)? {
            Some((_, bytes)) => Some(decode::<Entry>(bytes.value())?.log_id()),
            None => last_purged,
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
        self.write(true, move |txn| Self::put_meta(txn, VOTE, &bytes))
            .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not fsynced on its own: losing it only means re-applying a few entries at
        // start-up, and the next durable commit persists it anyway.
        let bytes = encode(&committed)?;
        self.write(false, move |txn| Self::put_meta(txn, COMMITTED, &bytes))
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
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
        let encoded = entries
            .into_iter()
            .map(|entry| Ok((entry.index(), encode(&entry)?)))
            .collect::<io::Result<Vec<_>>>()?;
        let result = self
            .write(true, move |txn| {
                let mut table = txn.open_table(LOG).map_err(io_err)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).map_err(io_err)?;
                }
                Ok(())
            })
            .await;
        // The batch is durable (or failed) only now: report it to openraft either way.
        crate::store::report_flushed(callback, result)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        self.write(true, move |txn| {
            let mut table = txn.open_table(LOG).map_err(io_err)?;
            table.retain_in(from.., |_, _| false).map_err(io_err)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let bytes = encode(&log_id)?;
        let upto = log_id.index();
        self.write(true, move |txn| {
            Self::put_meta(txn, LAST_PURGED, &bytes)?;
            let mut table = txn.open_table(LOG).map_err(io_err)?;
            table.retain_in(..=upto, |_, _| false).map_err(io_err)?;
            Ok(())
        })
        .await
    }
}
