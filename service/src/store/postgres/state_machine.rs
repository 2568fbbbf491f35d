//! The replicated state machine on PostgreSQL: applies committed commands to the `kv`
//! table (see `apply.rs`); builds snapshots from one consistent read, and installs them
//! in one transaction.

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::TryStreamExt;
use openraft::EntryPayload;

use super::apply::{self, select_meta, upsert_meta, Applied};
use super::{read_meta, Db, Meta};
use crate::store::contract::meta::{LAST_APPLIED, MEMBERSHIP, RETIRED, SNAPSHOT};
use crate::store::contract::StateMachineBackend;
use crate::store::snapshot::{
    remove_other_snapshots, snapshot_file_id, snapshot_path, SnapshotReader, SnapshotRecord,
    SnapshotWriter,
};
use crate::store::{blocking, decode, encode, io_err, CommandResult, Preamble, SnapshotFile};
use crate::types::typ::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership};
use crate::types::{KeyMeta, Lease, Record};

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

impl PgStateMachine {
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
        let needs_transaction = entries.iter().any(|e| {
            expected.fresh(e)
                && (matches!(e.payload, EntryPayload::Membership(_)) || apply::is_special(e))
        });
        if !needs_transaction {
            if let Some(done) = apply::in_one_statement(&self.db, entries, &expected).await? {
                return Ok(done);
            }
        }
        // A membership change, a lease or range command, or the stored id is not the
        // expected one.
        apply::in_transaction(&self.db, entries, &expected).await
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
                apply::in_transaction(&self.db, &[], &current),
            )
            .await?;
        self.applied.set(&mut expected, Some(now));
        Ok(())
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
        let leases = sqlx::query_as::<_, (i64, i64, i64)>(
            "SELECT id, ttl_seconds, renewed FROM leases ORDER BY id",
        )
        .fetch_all(&mut *txn)
        .await?
        .into_iter()
        .map(|(id, ttl_seconds, renewed)| Lease {
            id: id as u64,
            ttl_seconds: ttl_seconds as u64,
            renewed: renewed as u64,
        })
        .collect();
        let file_id = snapshot_file_id(last_applied.as_ref());

        let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Record)>(1024);
        let dir = self.snapshot_dir.clone();
        let id = file_id.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let preamble = Preamble {
                retired_node_ids: retired,
                leases,
            };
            let mut w = SnapshotWriter::create(&dir, &id, Some(&preamble))?;
            while let Some((key, record)) = rx.blocking_recv() {
                w.write_record(&key, &record)?;
            }
            w.finish()
        });
        {
            let mut rows = sqlx::query_as::<_, (String, String, i64, i64, i64, i64)>(
                "SELECT key, value, create_revision, mod_revision, version, lease \
                 FROM kv ORDER BY key",
            )
            .fetch(&mut *txn);
            while let Some((key, value, create, modified, version, lease)) = rows.try_next().await?
            {
                let meta = KeyMeta {
                    create_revision: create as u64,
                    mod_revision: modified as u64,
                    version: version as u64,
                    lease: lease as u64,
                };
                if tx.send((key, Record { value, meta })).await.is_err() {
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
        let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Vec<(String, Record)>>>(4);
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
        sqlx::query("DELETE FROM leases").execute(&mut *txn).await?;
        for lease in &preamble.leases {
            sqlx::query("INSERT INTO leases (id, ttl_seconds, renewed) VALUES ($1, $2, $3)")
                .bind(super::to_i64(lease.id))
                .bind(super::to_i64(lease.ttl_seconds))
                .bind(super::to_i64(lease.renewed))
                .execute(&mut *txn)
                .await?;
        }
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk?;
            let column = |f: fn(&KeyMeta) -> u64| -> Vec<i64> {
                chunk
                    .iter()
                    .map(|(_, r)| super::to_i64(f(&r.meta)))
                    .collect()
            };
            let (create, modified) = (column(|m| m.create_revision), column(|m| m.mod_revision));
            let (version, lease) = (column(|m| m.version), column(|m| m.lease));
            let (keys, values): (Vec<String>, Vec<String>) =
                chunk.into_iter().map(|(k, r)| (k, r.value)).unzip();
            sqlx::query(
                "INSERT INTO kv (key, value, create_revision, mod_revision, version, lease) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], \
                                      $5::BIGINT[], $6::BIGINT[])",
            )
            .bind(&keys)
            .bind(&values)
            .bind(&create)
            .bind(&modified)
            .bind(&version)
            .bind(&lease)
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
                Err(SnapshotError::Db(e)) if super::db::is_transient(&e) => Err(e),
                other => Ok(other),
            }
        }
    })
    .await?
    .map_err(|e| io::Error::other(format!("{what}: {e}")))
}

impl StateMachineBackend for PgStateMachine {
    async fn build_snapshot(&mut self) -> io::Result<Snapshot<SnapshotFile>> {
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

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let last_applied = read_meta::<Option<LogId>>(&self.db, Meta::StateMachine, LAST_APPLIED)
            .await?
            .flatten();
        let membership = read_meta(&self.db, Meta::StateMachine, MEMBERSHIP)
            .await?
            .unwrap_or_default();
        Ok((last_applied, membership))
    }

    async fn apply(&mut self, batch: Vec<Entry>) -> io::Result<Vec<CommandResult>> {
        let mut expected = self.applied.expected.lock().await;
        let known = expected.clone();
        let (results, now) = self
            .db
            .retry("apply entries", || self.apply_batch(&batch, &known))
            .await?;
        self.applied.set(&mut expected, Some(now));
        drop(expected);
        Ok(results)
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> io::Result<()> {
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

    async fn current_snapshot(&mut self) -> io::Result<Option<Snapshot<SnapshotFile>>> {
        let Some(record) =
            read_meta::<SnapshotRecord>(&self.db, Meta::StateMachine, SNAPSHOT).await?
        else {
            return Ok(None);
        };
        record.open(&self.snapshot_dir)
    }

    /// Whether a write is waiting for room on the server's disk.
    fn disk_full(&self) -> bool {
        self.db.is_disk_full()
    }
}
