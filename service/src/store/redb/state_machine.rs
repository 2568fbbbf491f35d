//! The replicated state machine on redb: applies committed commands to the `kv` table and
//! builds and installs snapshots.

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::{Database, Durability, ReadableDatabase};

use super::{read_meta, KV, SM_META};
use crate::raft::typ::{LogId, Snapshot, SnapshotMeta, StoredMembership};
use crate::raft::TypeConfig;
use crate::store::snapshot::{snapshot_file_id, SnapshotReader, SnapshotRecord, SnapshotWriter};
use crate::store::{
    blocking, encode, io_err, Command, CommandResult, Preamble, Proposal, SnapshotFile,
};

const LAST_APPLIED: &str = "last_applied";
const MEMBERSHIP: &str = "membership";
pub(super) const RETIRED: &str = "retired_node_ids";
const SNAPSHOT: &str = "snapshot";

/// How often at most an apply is committed with an fsync. In between, applies are
/// committed without one; after a crash, openraft re-applies them from the log.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The state machine: data and its metadata in `state.redb`, snapshots as files.
#[derive(Clone)]
pub struct RedbStateMachine {
    db: Arc<Database>,
    snapshot_dir: PathBuf,
    /// When an apply was last committed durably.
    last_sync: Arc<Mutex<Instant>>,
    /// One past the last log index durable in the log (see `RedbLogStore::new`): an
    /// apply is fsynced only if the durable log covers it, so that after a crash the
    /// state machine is never ahead of the log and the current snapshot.
    durable_log_end: Arc<AtomicU64>,
}

impl RedbStateMachine {
    pub(super) fn new(
        db: Arc<Database>,
        snapshot_dir: PathBuf,
        durable_log_end: Arc<AtomicU64>,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        Ok(Self {
            db,
            snapshot_dir,
            last_sync: Arc::new(Mutex::new(Instant::now())),
            durable_log_end,
        })
    }

    fn read_sm_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(SM_META).map_err(io_err)?;
        read_meta(&table, key)
    }

    /// Applies one batch of committed entries in one transaction and returns, in order,
    /// the result of each entry.
    fn apply_batch(
        db: &Database,
        entries: &[openraft::alias::EntryOf<TypeConfig>],
        last_sync: &Mutex<Instant>,
        durable_log_end: &AtomicU64,
    ) -> io::Result<Vec<CommandResult>> {
        let mut last_sync = last_sync.lock().unwrap_or_else(|e| e.into_inner());
        let covered = entries
            .last()
            .is_some_and(|e| e.index() < durable_log_end.load(Ordering::SeqCst));
        let durable = covered && last_sync.elapsed() >= SYNC_EVERY;
        let mut txn = db.begin_write().map_err(io_err)?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(io_err)?;
        let mut results = Vec::with_capacity(entries.len());
        {
            let mut kv = txn.open_table(KV).map_err(io_err)?;
            let mut meta = txn.open_table(SM_META).map_err(io_err)?;
            for entry in entries {
                let result = match &entry.payload {
                    EntryPayload::Blank => CommandResult::None,
                    EntryPayload::Normal(Proposal {
                        command: Command::Put { key, value },
                        ..
                    }) => {
                        kv.insert(key.as_str(), value.as_str()).map_err(io_err)?;
                        CommandResult::Stored
                    }
                    EntryPayload::Normal(Proposal {
                        command: Command::Delete { key },
                        ..
                    }) => {
                        let existed = kv.remove(key.as_str()).map_err(io_err)?.is_some();
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
                                    .map_err(io_err)?;
                            }
                        }
                        let stored =
                            StoredMembership::new(Some(entry.log_id()), membership.clone());
                        meta.insert(MEMBERSHIP, encode(&stored)?.as_slice())
                            .map_err(io_err)?;
                        CommandResult::None
                    }
                };
                results.push(result);
            }
            if let Some(last) = entries.last() {
                meta.insert(LAST_APPLIED, encode(&Some(last.log_id()))?.as_slice())
                    .map_err(io_err)?;
            }
        }
        txn.commit().map_err(io_err)?;
        if durable {
            *last_sync = Instant::now();
        }
        Ok(results)
    }

    /// The snapshot recorded as current, if its file is still there.
    fn current_snapshot(&self) -> io::Result<Option<Snapshot<SnapshotFile>>> {
        let Some(record) = self.read_sm_meta::<SnapshotRecord>(SNAPSHOT)? else {
            return Ok(None);
        };
        record.open(&self.snapshot_dir)
    }

    fn record_snapshot(db: &Database, record: &SnapshotRecord) -> io::Result<()> {
        let mut txn = db.begin_write().map_err(io_err)?;
        txn.set_durability(Durability::Immediate).map_err(io_err)?;
        {
            let mut table = txn.open_table(SM_META).map_err(io_err)?;
            table
                .insert(SNAPSHOT, encode(record)?.as_slice())
                .map_err(io_err)?;
        }
        txn.commit().map_err(io_err)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for RedbStateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot<SnapshotFile>, io::Error> {
        let db = self.db.clone();
        let dir = self.snapshot_dir.clone();
        blocking(move || {
            // One read transaction: the data, last applied id and membership are one
            // consistent point in time, while applies continue concurrently.
            let txn = db.begin_read().map_err(io_err)?;
            let meta_table = txn.open_table(SM_META).map_err(io_err)?;
            let last_applied: Option<LogId> =
                read_meta::<Option<LogId>>(&meta_table, LAST_APPLIED)?.flatten();
            let membership: StoredMembership =
                read_meta(&meta_table, MEMBERSHIP)?.unwrap_or_default();
            let file_id = snapshot_file_id(last_applied.as_ref());

            let preamble = Preamble {
                retired_node_ids: read_meta(&meta_table, RETIRED)?.unwrap_or_default(),
            };
            let mut writer = SnapshotWriter::create(&dir, &file_id, Some(&preamble))?;
            let kv = txn.open_table(KV).map_err(io_err)?;
            for item in redb::ReadableTable::iter(&kv).map_err(io_err)? {
                let (key, value) = item.map_err(io_err)?;
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
            Self::record_snapshot(&db, &record)?;
            Ok(Snapshot {
                meta: record.meta,
                snapshot: file,
            })
        })
        .await
    }
}

impl RaftStateMachine<TypeConfig> for RedbStateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let last_applied = self.read_sm_meta::<Option<LogId>>(LAST_APPLIED)?.flatten();
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
        let (db, last_sync, log_end) = (
            self.db.clone(),
            self.last_sync.clone(),
            self.durable_log_end.clone(),
        );
        let results =
            blocking(move || Self::apply_batch(&db, &batch, &last_sync, &log_end)).await?;
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
        let db = self.db.clone();
        let dir = self.snapshot_dir.clone();
        let meta = meta.clone();
        let meta_log_id = meta.last_log_id;
        blocking(move || {
            // Keep our own copy first: the received file may live elsewhere.
            let mut snapshot = snapshot;
            let file_id = snapshot_file_id(meta.last_log_id.as_ref());
            let mut writer = SnapshotWriter::create(&dir, &file_id, None)?;
            writer.copy_from(&mut snapshot)?;
            let copy = writer.finish()?;

            let mut txn = db.begin_write().map_err(io_err)?;
            txn.set_durability(Durability::Immediate).map_err(io_err)?;
            txn.delete_table(KV).map_err(io_err)?;
            {
                let mut kv = txn.open_table(KV).map_err(io_err)?;
                let (preamble, pairs) = SnapshotReader::new(copy)?;
                for pair in pairs {
                    let (key, value) = pair?;
                    kv.insert(key.as_str(), value.as_str()).map_err(io_err)?;
                }
                let mut sm_meta = txn.open_table(SM_META).map_err(io_err)?;
                sm_meta
                    .insert(LAST_APPLIED, encode(&meta.last_log_id)?.as_slice())
                    .map_err(io_err)?;
                sm_meta
                    .insert(MEMBERSHIP, encode(&meta.last_membership)?.as_slice())
                    .map_err(io_err)?;
                sm_meta
                    .insert(RETIRED, encode(&preamble.retired_node_ids)?.as_slice())
                    .map_err(io_err)?;
                let record = SnapshotRecord { meta, file_id };
                sm_meta
                    .insert(SNAPSHOT, encode(&record)?.as_slice())
                    .map_err(io_err)?;
            }
            txn.commit().map_err(io_err)
        })
        .await?;
        tracing::info!(last_log_id = ?meta_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<SnapshotFile>>, io::Error> {
        self.current_snapshot()
    }
}
