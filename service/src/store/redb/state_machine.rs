//! The replicated state machine on redb: applies committed commands (to the writes
//! waiting in memory, see `pending.rs`, or with a membership change straight to
//! `state.redb`) and builds and installs snapshots.

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use openraft::entry::RaftEntry;
use openraft::EntryPayload;
use redb::Durability;

use super::pending::{Pending, Shared};
use super::views::{InMemory, InTransaction};
use super::{read_meta, redb_err, Db, KV, LEASES, LEASE_KEYS, SM_META};
use crate::store::commands::{self, Data};
use crate::store::contract::meta::{LAST_APPLIED, MEMBERSHIP, RETIRED, SNAPSHOT};
use crate::store::contract::StateMachineBackend;
use crate::store::snapshot::{
    remove_other_snapshots, remove_unfinished_snapshots, snapshot_file_id, SnapshotReader,
    SnapshotRecord, SnapshotWriter,
};
use crate::store::space::Writer as DiskWriter;
use crate::store::{
    blocking, decode, encode, is_out_of_space, CommandResult, DiskFull, Preamble, Proposal,
    SnapshotFile,
};
use crate::types::typ::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership};
use crate::types::Record;

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
            shared: Arc::new(Shared::new(db, durable_log_end, disk_full)),
            snapshot_dir,
        })
    }

    /// What the API's reads need.
    pub(super) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn read_sm_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let txn = self.shared.db.begin_read()?;
        let table = txn.open_table(SM_META).map_err(redb_err)?;
        read_meta(&table, key)
    }

    /// Applies a batch of point writes to the pending maps and returns, in order, the
    /// result of each entry. Membership entries and commands that touch leases or
    /// ranges are not handled here.
    pub(super) fn apply_pending(
        shared: &Shared,
        entries: &[Entry],
    ) -> io::Result<Vec<CommandResult>> {
        let mut pending = shared.pending_mut();
        let mut results = Vec::with_capacity(entries.len());
        {
            let mut data = InMemory {
                pending: &mut pending,
                db: &shared.db,
                table: None,
            };
            for entry in entries {
                results.push(match &entry.payload {
                    EntryPayload::Normal(Proposal { command, .. }) => {
                        commands::apply(&mut data, entry.index(), command)?
                    }
                    EntryPayload::Blank | EntryPayload::Membership(_) => CommandResult::None,
                });
            }
        }
        if let Some(last) = entries.last() {
            pending.last_applied = Some(last.log_id());
            pending.since.get_or_insert_with(Instant::now);
        }
        Ok(results)
    }

    /// Applies a batch that changes the membership, leases or ranges: pending writes
    /// and the whole batch are committed in one transaction. Such commands are not kept
    /// in memory as point writes are: a range delete would take every key of the range
    /// there, and leases and their keys' index live in the database alone.
    fn apply_through(shared: &Shared, entries: &[Entry]) -> io::Result<Vec<CommandResult>> {
        // Fsynced (when the durable log covers it): a database opened again after a
        // failed write would lose the membership records, lease changes or range
        // deletes of a commit without one (only point writes are kept to be put back,
        // see `Pending::unsynced`).
        shared.flush(true, |txn| {
            let mut results = Vec::with_capacity(entries.len());
            let mut data = InTransaction::open(txn)?;
            let mut meta = txn.open_table(SM_META).map_err(redb_err)?;
            for entry in entries {
                let result = match &entry.payload {
                    EntryPayload::Blank => CommandResult::None,
                    EntryPayload::Normal(Proposal { command, .. }) => {
                        commands::apply(&mut data, entry.index(), command)?
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
    fn recorded_snapshot(&self) -> io::Result<Option<Snapshot<SnapshotFile>>> {
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

            let leases = txn.open_table(LEASES).map_err(redb_err)?;
            let mut preamble = Preamble {
                retired_node_ids: read_meta(&meta_table, RETIRED)?.unwrap_or_default(),
                leases: Vec::new(),
            };
            for row in redb::ReadableTable::iter(&leases).map_err(redb_err)? {
                let (_, lease) = row.map_err(redb_err)?;
                preamble.leases.push(decode(lease.value())?);
            }
            let mut writer = SnapshotWriter::create(dir, &file_id, Some(&preamble))?;
            let kv = txn.open_table(KV).map_err(redb_err)?;
            for item in redb::ReadableTable::iter(&kv).map_err(redb_err)? {
                let (key, value) = item.map_err(redb_err)?;
                writer.write_record(key.value(), &Record::decode(value.value())?)?;
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

impl StateMachineBackend for RedbStateMachine {
    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let pending = self.shared.pending().last_applied;
        let last_applied = match pending {
            Some(id) => Some(id),
            None => self.read_sm_meta::<Option<LogId>>(LAST_APPLIED)?.flatten(),
        };
        let membership = self.read_sm_meta(MEMBERSHIP)?.unwrap_or_default();
        Ok((last_applied, membership))
    }

    async fn apply(&mut self, batch: Vec<Entry>) -> io::Result<Vec<CommandResult>> {
        let through_database = batch.iter().any(|e| match &e.payload {
            EntryPayload::Membership(_) => true,
            EntryPayload::Normal(Proposal { command, .. }) => command.touches_leases_or_ranges(),
            EntryPayload::Blank => false,
        });
        if through_database {
            let shared = self.shared.clone();
            // Membership changes, lease changes and range deletes wait for room: they
            // cannot stay in memory.
            blocking(move || shared.retrying(|| Self::apply_through(&shared, &batch))).await
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
            Ok(results)
        }
    }

    async fn build_snapshot(&mut self) -> io::Result<Snapshot<SnapshotFile>> {
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

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> io::Result<()> {
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

    async fn current_snapshot(&mut self) -> io::Result<Option<Snapshot<SnapshotFile>>> {
        self.recorded_snapshot()
    }

    /// Whether a write to the disk failed for want of space and has not succeeded since.
    fn disk_full(&self) -> bool {
        self.shared.disk_full.is_full()
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
            txn.delete_table(LEASES).map_err(redb_err)?;
            txn.delete_table(LEASE_KEYS).map_err(redb_err)?;
            {
                let mut data = InTransaction::open(&txn)?;
                let (preamble, records) = SnapshotReader::new(copy)?;
                for lease in &preamble.leases {
                    data.set_lease(lease.id, Some(*lease))?;
                }
                for pair in records {
                    let (key, record) = pair?;
                    data.set(&key, Some(record))?;
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
