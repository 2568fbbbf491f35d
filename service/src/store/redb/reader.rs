//! The node's direct reads of the embedded store: the applied data (writes waiting in
//! memory first, then `state.redb`), its size on disk, and closing at shutdown.

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use super::pending::Shared;
use super::views::{all_leases, attached_keys};
use super::{read_meta, redb_err, segments, Db, LEASES, LEASE_KEYS, SM_META};
use crate::store::contract::{meta, ReadBackend};
use crate::store::decode;
use crate::types::{Lease, Record};

/// Reads of the applied data. They run on the caller's task: they read the pending
/// writes and redb's cache, as openraft's own reads of the state machine do.
#[derive(Clone)]
pub struct RedbHandle {
    pub(super) log_db: Arc<Db>,
    pub(super) log: Arc<RwLock<segments::Segments>>,
    /// The state machine's data: the database and the applied writes not yet in it.
    pub(super) state: Arc<Shared>,
    pub(super) state_db: Arc<Db>,
    /// The two database files, whose sizes count in [`ReadBackend::size_bytes`].
    pub(super) paths: [PathBuf; 2],
}

impl RedbHandle {
    /// Makes every earlier commit durable (state machine applies, and log writes with
    /// `storage.sync_writes` off, are committed without an fsync); called at shutdown.
    pub(super) fn flush(&self) -> io::Result<()> {
        self.log.read().unwrap_or_else(|e| e.into_inner()).sync()?;
        let mut txn = self.log_db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(redb_err)?;
        txn.commit().map_err(redb_err)?;
        // After the log: the state machine is made durable only as far as the log is.
        self.state.flush_all()
    }
}

impl ReadBackend for RedbHandle {
    async fn get(&self, key: &str) -> io::Result<Option<Record>> {
        self.state.get(key)
    }

    async fn range(
        &self,
        start: &str,
        end: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<(String, Record)>> {
        self.state.range(start, end, limit, max_bytes)
    }

    /// Leases live in the database alone: every change to them is committed there as
    /// it is applied.
    async fn lease(&self, id: u64) -> io::Result<Option<Lease>> {
        let txn = self.state_db.begin_read()?;
        let table = txn.open_table(LEASES).map_err(redb_err)?;
        let stored = table.get(id).map_err(redb_err)?;
        stored.map(|v| decode(v.value())).transpose()
    }

    /// The index may name keys since detached or deleted: each key's own record, as
    /// applied so far, decides.
    async fn lease_keys(&self, id: u64, limit: usize) -> io::Result<Vec<String>> {
        let (state, db) = (self.state.clone(), self.state_db.clone());
        crate::store::blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(LEASE_KEYS).map_err(redb_err)?;
            let mut keys = Vec::new();
            for key in attached_keys(&table, id, usize::MAX)? {
                if keys.len() >= limit {
                    break;
                }
                if state.get(&key)?.is_some_and(|r| r.meta.lease == id) {
                    keys.push(key);
                }
            }
            Ok(keys)
        })
        .await
    }

    async fn leases(&self) -> io::Result<Vec<Lease>> {
        all_leases(&self.state_db)
    }

    async fn count_range(&self, start: &str, end: Option<&str>) -> io::Result<u64> {
        // A walk over the range: off the async workers, which it would hold up.
        let (state, start, end) = (self.state.clone(), start.to_owned(), end.map(str::to_owned));
        crate::store::blocking(move || state.count_range(&start, end.as_deref())).await
    }

    async fn count(&self) -> io::Result<u64> {
        self.state.len()
    }

    /// The database files and the log's segments.
    async fn size_bytes(&self) -> io::Result<u64> {
        let mut total = self
            .log
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .size_bytes();
        for path in &self.paths {
            total += std::fs::metadata(path)?.len();
        }
        Ok(total)
    }

    async fn retired_ids(&self) -> io::Result<BTreeSet<u64>> {
        let txn = self.state_db.begin_read()?;
        let table = txn.open_table(SM_META).map_err(redb_err)?;
        Ok(read_meta(&table, meta::RETIRED)?.unwrap_or_default())
    }

    /// Always: the files are local.
    fn is_available(&self) -> bool {
        true
    }

    /// Tries again to write the applied values that a full disk kept in memory.
    async fn retry_failed_writes(&self) {
        let state = self.state.clone();
        let _ = crate::store::blocking(move || {
            state.retry_failed_flush();
            Ok(())
        })
        .await;
    }

    async fn close(&self) -> io::Result<()> {
        self.flush()
    }
}
