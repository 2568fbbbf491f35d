//! The Raft log store on PostgreSQL.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use super::{read_meta, to_i64, Db, Meta};
use crate::store::contract::meta::{COMMITTED, LAST_PURGED, VOTE};
use crate::store::{decode, encode};
use crate::types::typ::{Entry, LogId, Vote};
use crate::types::TypeConfig;

/// Makes the transaction's commit wait for its WAL flush whatever the server's or the
/// database's `synchronous_commit` says: log appends, votes, truncations and purges
/// must be durable before Raft hears of them. (Single statements set it the same way,
/// with `set_config(..., true)`, which also lasts until their commit.)
const SYNC_COMMIT: &str = "SET LOCAL synchronous_commit = on";

/// How often the committed log id is written on its own when no log append carries it.
const COMMITTED_EVERY: Duration = Duration::from_secs(1);

/// Raft log, vote, committed index and purge marker in the node's database.
#[derive(Clone)]
pub struct PgLogStore {
    db: Db,
    committed: Arc<Mutex<Committed>>,
}

/// The committed log id as openraft last reported it, and whether it is in the
/// database yet. It is a hint for start-up (entries up to it are applied again without
/// waiting for a leader), so it travels with the next log append, or on its own at most
/// once a second: one statement per commit would cost as much as the append itself.
struct Committed {
    latest: Option<Option<LogId>>,
    unwritten: Option<Vec<u8>>,
    written_at: Instant,
}

impl PgLogStore {
    pub(super) fn new(db: Db) -> Self {
        let committed = Committed {
            latest: None,
            unwritten: None,
            written_at: Instant::now(),
        };
        Self {
            db,
            committed: Arc::new(Mutex::new(committed)),
        }
    }

    fn committed(&self) -> std::sync::MutexGuard<'_, Committed> {
        self.committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn put_meta(&self, name: &'static str, bytes: Vec<u8>) -> io::Result<()> {
        self.db
            .retry(name, || {
                sqlx::query(Meta::Raft.upsert())
                    .bind(name)
                    .bind(bytes.as_slice())
                    .execute(self.db.pool())
            })
            .await
            .map(|_| ())
    }
}

impl RaftLogReader<TypeConfig> for PgLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(i) => to_i64(*i),
            Bound::Excluded(i) => to_i64(*i).saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => to_i64(*i).saturating_add(1),
            Bound::Excluded(i) => to_i64(*i),
            Bound::Unbounded => i64::MAX,
        };
        let rows = self
            .db
            .retry("read log", || {
                sqlx::query_scalar::<_, Vec<u8>>(
                    "SELECT entry FROM raft_log WHERE log_index >= $1 AND log_index < $2 \
                     ORDER BY log_index",
                )
                .bind(start)
                .bind(end)
                .fetch_all(self.db.pool())
            })
            .await?;
        rows.iter().map(|bytes| decode(bytes)).collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        read_meta(&self.db, Meta::Raft, VOTE).await
    }
}

impl RaftLogStorage<TypeConfig> for PgLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = read_meta(&self.db, Meta::Raft, LAST_PURGED).await?;
        let last = self
            .db
            .retry("read last log entry", || {
                sqlx::query_scalar::<_, Vec<u8>>(
                    "SELECT entry FROM raft_log ORDER BY log_index DESC LIMIT 1",
                )
                .fetch_optional(self.db.pool())
            })
            .await?;
        let last_log_id = match last {
            Some(bytes) => Some(decode::<Entry>(&bytes)?.log_id()),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta(VOTE, encode(vote)?).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let bytes = {
            let mut state = self.committed();
            state.latest = Some(committed);
            state.unwritten = Some(encode(&committed)?);
            if state.written_at.elapsed() < COMMITTED_EVERY {
                return Ok(());
            }
            state.written_at = Instant::now();
            state.unwritten.take()
        };
        let Some(bytes) = bytes else { return Ok(()) };
        // Not waited for on disk: the next synchronous commit flushes it anyway.
        self.db
            .retry(COMMITTED, || {
                sqlx::query(
                    "INSERT INTO raft_meta (name, value) \
                     SELECT $1, $2 FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async \
                     ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                )
                .bind(COMMITTED)
                .bind(bytes.as_slice())
                .execute(self.db.pool())
            })
            .await
            .map(|_| ())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        if let Some(latest) = self.committed().latest {
            return Ok(latest);
        }
        Ok(read_meta::<Option<LogId>>(&self.db, Meta::Raft, COMMITTED)
            .await?
            .flatten())
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
        let mut indexes = Vec::new();
        let mut bodies = Vec::new();
        for entry in entries {
            indexes.push(to_i64(entry.index()));
            bodies.push(encode(&entry)?);
        }
        let committed = {
            let mut state = self.committed();
            state.written_at = Instant::now();
            state.unwritten.take()
        };
        // One statement, so one transaction, with the committed log id if one is waiting;
        // upserts, so a retry is harmless.
        let result = self
            .db
            .retry("append log entries", || {
                sqlx::query(
                    "WITH sync AS (SELECT set_config('synchronous_commit', 'on', true)), \
                     entries AS (\
                       INSERT INTO raft_log (log_index, entry) \
                       SELECT * FROM UNNEST($1::BIGINT[], $2::BYTEA[]) \
                       ON CONFLICT (log_index) DO UPDATE SET entry = EXCLUDED.entry) \
                     INSERT INTO raft_meta (name, value) \
                     SELECT $3, $4::BYTEA FROM sync WHERE $4::BYTEA IS NOT NULL \
                     ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                )
                .bind(&indexes)
                .bind(&bodies)
                .bind(COMMITTED)
                .bind(committed.as_deref())
                .execute(self.db.pool())
            })
            .await
            .map(|_| ());
        crate::store::report_flushed(callback, result)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| to_i64(id.index + 1));
        self.db
            .retry("truncate log", || async {
                let mut txn = self.db.pool().begin().await?;
                sqlx::query(SYNC_COMMIT).execute(&mut *txn).await?;
                sqlx::query("DELETE FROM raft_log WHERE log_index >= $1")
                    .bind(from)
                    .execute(&mut *txn)
                    .await?;
                txn.commit().await
            })
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let bytes = encode(&log_id)?;
        let upto = to_i64(log_id.index);
        self.db
            .retry("purge log", || async {
                let mut txn = self.db.pool().begin().await?;
                sqlx::query(SYNC_COMMIT).execute(&mut *txn).await?;
                sqlx::query(Meta::Raft.upsert())
                    .bind(LAST_PURGED)
                    .bind(bytes.as_slice())
                    .execute(&mut *txn)
                    .await?;
                sqlx::query("DELETE FROM raft_log WHERE log_index <= $1")
                    .bind(upto)
                    .execute(&mut *txn)
                    .await?;
                txn.commit().await
            })
            .await
    }
}
