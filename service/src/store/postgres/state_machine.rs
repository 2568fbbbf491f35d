//! The replicated state machine on PostgreSQL: applies committed commands to the `kv`
//! table; builds snapshots from one consistent read, and installs them in one
//! transaction.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use sqlx::{Postgres, Transaction};

use super::{read_meta, Db, Meta};
use crate::store::snapshot::{
    remove_other_snapshots, snapshot_file_id, snapshot_path, SnapshotReader, SnapshotRecord,
    SnapshotWriter,
};
use crate::store::{
    blocking, decode, encode, io_err, Command, CommandResult, Preamble, Proposal, SnapshotFile,
};
use crate::types::typ::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership};
use crate::types::TypeConfig;

pub(super) const LAST_APPLIED: &str = "last_applied";
const MEMBERSHIP: &str = "membership";
pub(super) const RETIRED: &str = "retired_node_ids";
const SNAPSHOT: &str = "snapshot";

/// Rows per `INSERT` when installing a snapshot.
const INSTALL_CHUNK: usize = 1000;

#[derive(Clone)]
pub struct PgStateMachine {
    db: Db,
    snapshot_dir: PathBuf,
    applied: Arc<AppliedState>,
    /// Held while a snapshot is built or installed (see the redb state machine: a
    /// build that read the state before an install must not record over it).
    snapshots: Arc<tokio::sync::Mutex<()>>,
}

/// What this node knows of the last applied log id in the database. Only this node
/// writes it: applies one at a time, and repairs after PostgreSQL lost applies.
#[derive(Default)]
struct AppliedState {
    /// The stored last applied id this node last wrote or read (`None`: unknown, at
    /// start and after a snapshot install: the database's value is taken as it is).
    /// Held by whoever writes it, across the retries of one apply: a retry must find
    /// either this value (the attempt did not commit) or its own (it did).
    expected: tokio::sync::Mutex<Option<Applied>>,
    /// The index of `expected`'s id plus one (0: unknown), for readers, who must not
    /// wait for an apply to compare.
    index: AtomicU64,
}

impl AppliedState {
    fn set(&self, expected: &mut Option<Applied>, now: Option<Applied>) {
        let index = now
            .as_ref()
            .and_then(|a| a.id.as_ref())
            .map_or(0, |id| id.index + 1);
        self.index.store(index, Ordering::SeqCst);
        *expected = now;
    }

    /// The index this node knows is applied, if any.
    fn index(&self) -> Option<u64> {
        self.index.load(Ordering::SeqCst).checked_sub(1)
    }
}

/// The stored last applied log id: the id, and the row's bytes exactly as stored
/// (`None`: no row yet), which the next apply expects to find unchanged.
#[derive(Clone, Debug, Default)]
struct Applied {
    id: Option<LogId>,
    stored: Option<Vec<u8>>,
}

impl Applied {
    fn read(stored: Option<Vec<u8>>) -> Self {
        let id = stored
            .as_deref()
            .and_then(|bytes| decode::<Option<LogId>>(bytes).ok().flatten());
        Self { id, stored }
    }

    fn fresh(&self, entry: &Entry) -> bool {
        self.id.as_ref().is_none_or(|a| entry.index() > a.index)
    }

    fn index(&self) -> Option<u64> {
        self.id.as_ref().map(|id| id.index)
    }
}

/// The database holds a last applied id this node cannot build on.
fn lost_applies(what: String) -> sqlx::Error {
    sqlx::Error::InvalidArgument(format!(
        "the last applied log id in the database is not the one this node wrote: {what}"
    ))
}

impl PgStateMachine {
    /// Whether a write is waiting for room on the server's disk.
    pub fn disk_full(&self) -> bool {
        self.db.is_disk_full()
    }

    pub(super) fn new(db: Db, snapshot_dir: PathBuf) -> Self {
        Self {
            db,
            snapshot_dir,
            applied: Arc::new(AppliedState::default()),
            snapshots: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Applies `entries`, and records the last applied id with them, on top of the
    /// stored last applied id `expected` (`None`: whatever the database holds). Entries
    /// at or below the stored id are already in the database (a retry after a commit
    /// whose acknowledgement was lost) and are skipped; their results can no longer be
    /// observed, so a skipped delete reports that its key existed.
    ///
    /// When the stored id is older than `expected`, PostgreSQL lost applies (it crashed
    /// before flushing commits made with `synchronous_commit` off): the entries in
    /// between are applied again from the Raft log, which is written with synchronous
    /// commits and never purged past a snapshot whose record is durable, in the same
    /// transaction. Nothing is built on the hole.
    async fn apply_batch(
        &self,
        entries: &[Entry],
        expected: &Option<Applied>,
    ) -> Result<(Vec<CommandResult>, Applied), sqlx::Error> {
        let expected = match expected {
            Some(applied) => applied.clone(),
            None => Applied::read(
                sqlx::query_scalar::<_, Vec<u8>>(Meta::StateMachine.select())
                    .bind(LAST_APPLIED)
                    .fetch_optional(self.db.pool())
                    .await?,
            ),
        };
        let changes_membership = entries
            .iter()
            .any(|e| expected.fresh(e) && matches!(e.payload, EntryPayload::Membership(_)));
        if !changes_membership {
            if let Some(done) = Self::apply_in_one_statement(&self.db, entries, &expected).await? {
                return Ok(done);
            }
        }
        // A membership change, or the stored id is not the expected one.
        Self::apply_in_transaction(&self.db, entries, &expected).await
    }

    /// The last index this node applied, as far as it knows.
    pub(super) fn applied_index(&self) -> Option<u64> {
        self.applied.index()
    }

    /// Applies again the entries between the stored last applied id and the one this
    /// node applied, if PostgreSQL lost them: called before a read that found the
    /// database behind, which would otherwise see the data as it was before them.
    pub(super) async fn repair(&self) -> io::Result<()> {
        let mut expected = self.applied.expected.lock().await;
        let Some(current) = expected.clone() else {
            return Ok(());
        };
        let (_, now) = self
            .db
            .once(
                "apply lost entries again",
                Self::apply_in_transaction(&self.db, &[], &current),
            )
            .await?;
        self.applied.set(&mut expected, Some(now));
        Ok(())
    }

    /// The common batch, key-value commands only: one statement, so one round trip
    /// (two with deletes, whose results need the keys that existed before). `None`
    /// when the stored last applied id is not `applied`: the statement then changed
    /// nothing.
    async fn apply_in_one_statement(
        db: &Db,
        entries: &[Entry],
        applied: &Applied,
    ) -> Result<Option<(Vec<CommandResult>, Applied)>, sqlx::Error> {
        let fresh = |entry: &Entry| applied.fresh(entry);
        let Some(last) = entries.iter().rev().find(|e| fresh(e)).map(|e| e.log_id()) else {
            let (results, _) = fold_commands(entries, fresh, &HashSet::new());
            return Ok(Some((results, applied.clone())));
        };
        let existing = existing_keys(db.pool(), &deleted_keys(entries, fresh)).await?;
        let (results, after) = fold_commands(entries, fresh, &existing);
        let (put_keys, put_values, gone) = split_changes(after);
        let stored =
            serde_json::to_vec(&Some(last)).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        // The statement does not wait for its WAL flush (see the module's notes). Its
        // parts touch different keys: `after` holds one final value per key. Every
        // part runs only if the stored last applied id is the one this node expects
        // ($6; NULL: no row), so a database that lost applies, or a retry of an
        // attempt that did commit, changes nothing here.
        let written = sqlx::query(
            "WITH async AS (SELECT set_config('synchronous_commit', 'off', true)), \
             ok AS (SELECT 1 WHERE (SELECT value FROM sm_meta WHERE name = $4) \
                                   IS NOT DISTINCT FROM $6::BYTEA), \
             put AS (INSERT INTO kv (key, value) \
                     SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[]) WHERE EXISTS (SELECT 1 FROM ok) \
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value), \
             gone AS (DELETE FROM kv WHERE key = ANY($3::TEXT[]) AND EXISTS (SELECT 1 FROM ok)) \
             INSERT INTO sm_meta (name, value) SELECT $4, $5 FROM async, ok \
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(&put_keys)
        .bind(&put_values)
        .bind(&gone)
        .bind(LAST_APPLIED)
        .bind(stored.as_slice())
        .bind(applied.stored.as_deref())
        .execute(db.pool())
        .await?;
        if written.rows_affected() != 1 {
            return Ok(None);
        }
        let now = Applied {
            id: Some(last),
            stored: Some(stored),
        };
        Ok(Some((results, now)))
    }

    /// A batch in one transaction with the membership records it changes, after the
    /// entries PostgreSQL lost, if it lost any (see [`Self::apply_batch`]).
    async fn apply_in_transaction(
        db: &Db,
        batch: &[Entry],
        expected: &Applied,
    ) -> Result<(Vec<CommandResult>, Applied), sqlx::Error> {
        // Unlike the common batch, this transaction waits for its WAL flush (its
        // metadata writes ask for it): membership changes and repairs are rare.
        let mut txn = db.pool().begin().await?;
        let applied = Applied::read(select_meta(&mut txn, LAST_APPLIED).await?);
        let mut lost = Vec::new();
        if applied.stored != expected.stored {
            let batch_last = batch.last().map(|e| e.index());
            if applied.id.is_some() && applied.index() >= batch_last.max(expected.index()) {
                // An earlier attempt of this batch committed; its answer was lost.
            } else if applied.index() < expected.index() {
                let before = batch
                    .first()
                    .map_or(expected.index().map_or(0, |i| i + 1), |e| e.index());
                lost = read_log_between(&mut txn, applied.index(), before).await?;
                tracing::warn!(
                    stored = ?applied.id,
                    applied = ?expected.id,
                    entries = lost.len(),
                    "PostgreSQL lost applies (it crashed before flushing them); applying \
                     them again from the Raft log"
                );
            } else {
                return Err(lost_applies(format!(
                    "found {:?}, expected {:?}; does another process write this node's database?",
                    applied.id, expected.id
                )));
            }
        }
        let entries: Vec<Entry> = lost.into_iter().chain(batch.iter().cloned()).collect();
        let entries = entries.as_slice();
        let replayed = entries.len() - batch.len();
        // The key-value commands are folded in memory, in log order, into the final
        // value of each key they touch; the batch then costs one upsert and one delete
        // whatever its size. Only a delete needs the value before the batch (to say
        // whether the key existed), so only deleted keys are read first.
        let fresh = |entry: &Entry| applied.fresh(entry);
        let existing = existing_keys(&mut *txn, &deleted_keys(entries, fresh)).await?;
        let (results, after) = fold_commands(entries, fresh, &existing);
        for entry in entries.iter().filter(|e| fresh(e)) {
            let EntryPayload::Membership(membership) = &entry.payload else {
                continue;
            };
            // Nodes that leave the membership are retired for good.
            let previous = select_meta(&mut txn, MEMBERSHIP).await?;
            if let Some(previous) = previous.and_then(|b| decode::<StoredMembership>(&b).ok()) {
                let mut retired: BTreeSet<u64> = select_meta(&mut txn, RETIRED)
                    .await?
                    .and_then(|b| decode(&b).ok())
                    .unwrap_or_default();
                if crate::store::retire_leavers(&mut retired, &previous, membership) {
                    upsert_meta(&mut txn, RETIRED, &retired).await?;
                }
            }
            let stored = StoredMembership::new(Some(entry.log_id()), membership.clone());
            upsert_meta(&mut txn, MEMBERSHIP, &stored).await?;
        }
        let (put_keys, put_values, gone) = split_changes(after);
        if !put_keys.is_empty() {
            sqlx::query(
                "INSERT INTO kv (key, value) SELECT * FROM UNNEST($1::text[], $2::text[]) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            )
            .bind(&put_keys)
            .bind(&put_values)
            .execute(&mut *txn)
            .await?;
        }
        if !gone.is_empty() {
            sqlx::query("DELETE FROM kv WHERE key = ANY($1)")
                .bind(&gone)
                .execute(&mut *txn)
                .await?;
        }
        let mut now = applied;
        if let Some(last) = entries.last().filter(|e| now.fresh(e)) {
            let id = Some(last.log_id());
            let stored = upsert_meta(&mut txn, LAST_APPLIED, &id).await?;
            now = Applied {
                id,
                stored: Some(stored),
            };
        }
        txn.commit().await?;
        Ok((results[replayed..].to_vec(), now))
    }

    async fn record_snapshot(&self, record: &SnapshotRecord) -> io::Result<()> {
        let bytes = encode(record)?;
        self.db
            .retry("record snapshot", || {
                sqlx::query(Meta::StateMachine.upsert())
                    .bind(SNAPSHOT)
                    .bind(bytes.as_slice())
                    .execute(self.db.pool())
            })
            .await
            .map(|_| ())
    }

    /// Writes the whole state, read in one repeatable-read transaction, to a new
    /// snapshot file. Rows stream from the database to the file through a channel; they
    /// are never all in memory.
    async fn write_snapshot(&self) -> Result<(SnapshotRecord, std::fs::File), SnapshotError> {
        let mut txn = self.db.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *txn)
            .await?;
        let last_applied: Option<LogId> = select_meta(&mut txn, LAST_APPLIED)
            .await?
            .map(|b| decode::<Option<LogId>>(&b))
            .transpose()?
            .flatten();
        let membership: StoredMembership = select_meta(&mut txn, MEMBERSHIP)
            .await?
            .map(|b| decode(&b))
            .transpose()?
            .unwrap_or_default();
        let retired: BTreeSet<u64> = select_meta(&mut txn, RETIRED)
            .await?
            .map(|b| decode(&b))
            .transpose()?
            .unwrap_or_default();
        let file_id = snapshot_file_id(last_applied.as_ref());

        let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, String)>(1024);
        let dir = self.snapshot_dir.clone();
        let id = file_id.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let preamble = Preamble {
                retired_node_ids: retired,
            };
            let mut w = SnapshotWriter::create(&dir, &id, Some(&preamble))?;
            while let Some((key, value)) = rx.blocking_recv() {
                w.write_pair(&key, &value)?;
            }
            w.finish()
        });
        {
            let mut rows =
                sqlx::query_as::<_, (String, String)>("SELECT key, value FROM kv ORDER BY key")
                    .fetch(&mut *txn);
            while let Some(row) = rows.try_next().await? {
                if tx.send(row).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
        }
        drop(tx);
        txn.commit().await?;
        let file = writer.await.map_err(io_err)??;
        let record = SnapshotRecord {
            meta: SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
            },
            file_id,
        };
        Ok((record, file))
    }

    /// Replaces the data with the snapshot in `file_id`, in one transaction.
    async fn load_snapshot(&self, meta: &SnapshotMeta, file_id: &str) -> Result<(), SnapshotError> {
        let path = snapshot_path(&self.snapshot_dir, file_id);
        let (preamble, pairs) = {
            let file = std::fs::File::open(&path)?;
            SnapshotReader::new(file)?
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Vec<(String, String)>>>(4);
        let reader = tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::with_capacity(INSTALL_CHUNK);
            for pair in pairs {
                match pair {
                    Ok(pair) => chunk.push(pair),
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
                if chunk.len() == INSTALL_CHUNK
                    && tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err()
                {
                    return;
                }
            }
            if !chunk.is_empty() {
                let _ = tx.blocking_send(Ok(chunk));
            }
        });

        let mut txn = self.db.pool().begin().await?;
        sqlx::query("DELETE FROM kv").execute(&mut *txn).await?;
        while let Some(chunk) = rx.recv().await {
            let (keys, values): (Vec<String>, Vec<String>) = chunk?.into_iter().unzip();
            sqlx::query("INSERT INTO kv (key, value) SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])")
                .bind(&keys)
                .bind(&values)
                .execute(&mut *txn)
                .await?;
        }
        reader.await.map_err(io_err)?;
        upsert_meta(&mut txn, LAST_APPLIED, &meta.last_log_id).await?;
        upsert_meta(&mut txn, MEMBERSHIP, &meta.last_membership).await?;
        upsert_meta(&mut txn, RETIRED, &preamble.retired_node_ids).await?;
        let record = SnapshotRecord {
            meta: meta.clone(),
            file_id: file_id.to_string(),
        };
        upsert_meta(&mut txn, SNAPSHOT, &record).await?;
        txn.commit().await?;
        Ok(())
    }
}

/// A snapshot step failed in the database or on disk.
#[derive(Debug, thiserror::Error)]
enum SnapshotError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Retries a snapshot step while the database is unreachable; other failures stop it.
async fn retry_snapshot<T, F, Fut>(db: &Db, what: &str, mut op: F) -> io::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SnapshotError>>,
{
    db.retry(what, || {
        let attempt = op();
        async move {
            match attempt.await {
                Err(SnapshotError::Db(e)) if super::is_transient(&e) => Err(e),
                other => Ok(other),
            }
        }
    })
    .await?
    .map_err(|e| io::Error::other(format!("{what}: {e}")))
}

/// The Raft log's entries after index `after` (`None`: from the start) and before
/// `before`, all of them: a missing one (purged) fails, since the data could not be
/// brought back to where this node applied.
async fn read_log_between(
    txn: &mut Transaction<'_, Postgres>,
    after: Option<u64>,
    before: u64,
) -> Result<Vec<Entry>, sqlx::Error> {
    let from = after.map_or(0, |a| a + 1);
    let rows = sqlx::query_scalar::<_, Vec<u8>>(
        "SELECT entry FROM raft_log WHERE log_index >= $1 AND log_index < $2 ORDER BY log_index",
    )
    .bind(super::to_i64(from))
    .bind(super::to_i64(before))
    .fetch_all(&mut **txn)
    .await?;
    let entries = rows
        .iter()
        .map(|bytes| decode::<Entry>(bytes))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    // With nothing applied yet, the log may start at 0 or 1.
    let start_ok = match after {
        Some(_) => entries.first().is_none_or(|e| e.index() == from),
        None => entries.first().is_none_or(|e| e.index() <= 1),
    };
    let consecutive = entries.windows(2).all(|w| w[1].index() == w[0].index() + 1);
    let end_ok = before <= from || entries.last().is_some_and(|e| e.index() + 1 == before);
    if start_ok && consecutive && end_ok {
        Ok(entries)
    } else {
        Err(lost_applies(format!(
            "PostgreSQL lost applies after index {after:?}, and the Raft log no longer \
             holds all entries up to {before}; rebuild this node from its peers"
        )))
    }
}

async fn select_meta(
    txn: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar::<_, Vec<u8>>(Meta::StateMachine.select())
        .bind(name)
        .fetch_optional(&mut **txn)
        .await
}

/// Writes one metadata value; returns the bytes stored.
async fn upsert_meta<T: serde::Serialize>(
    txn: &mut Transaction<'_, Postgres>,
    name: &str,
    value: &T,
) -> Result<Vec<u8>, sqlx::Error> {
    let bytes = serde_json::to_vec(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(Meta::StateMachine.upsert())
        .bind(name)
        .bind(bytes.as_slice())
        .execute(&mut **txn)
        .await?;
    Ok(bytes)
}

impl RaftSnapshotBuilder<TypeConfig> for PgStateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot<SnapshotFile>, io::Error> {
        let _snapshots = self.snapshots.clone().lock_owned().await;
        let (record, file) =
            retry_snapshot(&self.db, "build snapshot", || self.write_snapshot()).await?;
        self.record_snapshot(&record).await?;
        remove_other_snapshots(&self.snapshot_dir, &record.file_id)?;
        Ok(Snapshot {
            meta: record.meta,
            snapshot: file,
        })
    }
}

impl RaftStateMachine<TypeConfig> for PgStateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let last_applied = read_meta::<Option<LogId>>(&self.db, Meta::StateMachine, LAST_APPLIED)
            .await?
            .flatten();
        let membership = read_meta(&self.db, Meta::StateMachine, MEMBERSHIP)
            .await?
            .unwrap_or_default();
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
        let mut expected = self.applied.expected.lock().await;
        let known = expected.clone();
        let (results, now) = self
            .db
            .retry("apply entries", || self.apply_batch(&batch, &known))
            .await?;
        self.applied.set(&mut expected, Some(now));
        drop(expected);
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
        let _snapshots = self.snapshots.clone().lock_owned().await;
        // Keep our own copy first: the received file may live elsewhere.
        let file_id = snapshot_file_id(meta.last_log_id.as_ref());
        let dir = self.snapshot_dir.clone();
        let id = file_id.clone();
        blocking(move || {
            let mut snapshot = snapshot;
            let mut writer = SnapshotWriter::create(&dir, &id, None)?;
            writer.copy_from(&mut snapshot)?;
            writer.finish().map(|_| ())
        })
        .await?;
        // The next apply reads the last applied id the snapshot leaves.
        let mut expected = self.applied.expected.lock().await;
        retry_snapshot(&self.db, "install snapshot", || {
            self.load_snapshot(meta, &file_id)
        })
        .await?;
        let installed = Applied {
            id: meta.last_log_id,
            stored: Some(encode(&meta.last_log_id)?),
        };
        self.applied.set(&mut expected, Some(installed));
        drop(expected);
        remove_other_snapshots(&self.snapshot_dir, &file_id)?;
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<SnapshotFile>>, io::Error> {
        let Some(record) =
            read_meta::<SnapshotRecord>(&self.db, Meta::StateMachine, SNAPSHOT).await?
        else {
            return Ok(None);
        };
        record.open(&self.snapshot_dir)
    }
}

/// Which of `keys` exist now (no query when there are none).
async fn existing_keys<'e, E>(executor: E, keys: &[&str]) -> Result<HashSet<String>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let found = sqlx::query_scalar::<_, String>("SELECT key FROM kv WHERE key = ANY($1)")
        .bind(keys)
        .fetch_all(executor)
        .await?;
    Ok(found.into_iter().collect())
}

/// The keys the batch's fresh entries delete.
fn deleted_keys(entries: &[Entry], fresh: impl Fn(&Entry) -> bool) -> Vec<&str> {
    entries
        .iter()
        .filter(|e| fresh(e))
        .filter_map(|e| match &e.payload {
            EntryPayload::Normal(Proposal {
                command: Command::Delete { key },
                ..
            }) => Some(key.as_str()),
            _ => None,
        })
        .collect()
}

/// A batch's final values, split into the keys to upsert with their values, and the
/// keys to delete.
type Changes<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>);

fn split_changes<'a>(after: HashMap<&'a str, Option<&'a str>>) -> Changes<'a> {
    let (mut put_keys, mut put_values, mut gone) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in after {
        match value {
            Some(value) => {
                put_keys.push(key);
                put_values.push(value);
            }
            None => gone.push(key),
        }
    }
    (put_keys, put_values, gone)
}

/// The key-value commands of an apply batch, in log order: each entry's result, and
/// the value of every key they touch after the batch (`None`: deleted). `fresh` says
/// which entries still need applying (after a crash, a batch may repeat some);
/// `existing`: which of the deleted keys existed before the batch.
fn fold_commands<'a>(
    entries: &'a [Entry],
    fresh: impl Fn(&Entry) -> bool,
    existing: &HashSet<String>,
) -> (Vec<CommandResult>, HashMap<&'a str, Option<&'a str>>) {
    let mut after: HashMap<&str, Option<&str>> = HashMap::new();
    let results = entries
        .iter()
        .map(|entry| match &entry.payload {
            EntryPayload::Normal(Proposal { command, .. }) => match (command, fresh(entry)) {
                (Command::Put { .. }, false) => CommandResult::Stored,
                (Command::Delete { .. }, false) => CommandResult::Deleted { existed: true },
                (Command::Put { key, value }, true) => {
                    after.insert(key, Some(value));
                    CommandResult::Stored
                }
                (Command::Delete { key }, true) => {
                    let existed = match after.get(key.as_str()) {
                        Some(value) => value.is_some(),
                        None => existing.contains(key),
                    };
                    after.insert(key, None);
                    CommandResult::Deleted { existed }
                }
            },
            EntryPayload::Blank | EntryPayload::Membership(_) => CommandResult::None,
        })
        .collect();
    (results, after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_entries::{delete, put};

    #[test]
    fn a_batch_folds_into_each_keys_last_value_in_log_order() {
        let batch = vec![
            put(1, "a", "1"),
            delete(2, "a"),
            delete(3, "a"),
            put(4, "a", "2"),
            delete(5, "b"),
            delete(6, "c"),
            put(7, "d", "x"),
            put(8, "d", "y"),
        ];
        let existing: HashSet<String> = ["b".to_string()].into();
        let (results, after) = fold_commands(&batch, |_| true, &existing);
        assert_eq!(
            results,
            vec![
                CommandResult::Stored,
                CommandResult::Deleted { existed: true },
                CommandResult::Deleted { existed: false },
                CommandResult::Stored,
                CommandResult::Deleted { existed: true },
                CommandResult::Deleted { existed: false },
                CommandResult::Stored,
                CommandResult::Stored,
            ]
        );
        let expected: HashMap<&str, Option<&str>> =
            [("a", Some("2")), ("b", None), ("c", None), ("d", Some("y"))].into();
        assert_eq!(after, expected);
    }

    #[test]
    fn entries_applied_before_a_crash_change_nothing() {
        let batch = vec![put(1, "a", "old"), delete(2, "b"), put(3, "a", "new")];
        let (results, after) = fold_commands(&batch, |e| e.index() > 2, &HashSet::new());
        assert_eq!(results[1], CommandResult::Deleted { existed: true });
        let expected: HashMap<&str, Option<&str>> = [("a", Some("new"))].into();
        assert_eq!(after, expected);
    }
}
