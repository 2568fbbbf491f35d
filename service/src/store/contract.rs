//! The storage contract: what a backend provides so that a node can keep its Raft log
//! and its data in it. A backend is an implementation of [`Backend`] and [`Open`]; the
//! node reaches it through the wrapper in `wrapper.rs`, which alone speaks openraft's
//! state machine trait, gathers apply batches, answers the clients waiting on them, and
//! records metrics and spans. A third backend is an impl of these traits and one line
//! in `store::open`.
//!
//! - The log: openraft's own `RaftLogStorage` already is the contract (vote, append
//!   with its durability callback, truncate, purge, committed index), and openraft's
//!   storage suite checks it. Backends implement it as it is.
//! - The state machine: [`StateMachineBackend`] applies a batch of committed entries
//!   and returns one result per entry; it builds and installs snapshots. What a
//!   command does (revisions, conditions, transactions, leases) is decided by
//!   `commands::apply`, shared by every backend, over the backend's view of its data.
//! - Reads: [`ReadBackend`] reads the applied data (a key, an ordered range of keys,
//!   the count of all keys or of a range, the size) and closes the store.
//!
//! Every method returns `Send` futures: openraft drives storage from its own tasks.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftLogReader, RaftLogStorage};

use super::{DiskFull, SnapshotFile};
use crate::config::Settings;
use crate::types::typ::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership};
use crate::types::{CommandResult, Lease, Record, TypeConfig};

/// The names under which both backends keep their metadata records (JSON values in
/// redb's meta tables, rows of `raft_meta` and `sm_meta` in PostgreSQL).
pub mod meta {
    /// Log store: the vote, durable before `save_vote` returns.
    pub const VOTE: &str = "vote";
    /// Log store: the committed log id, a hint for start-up.
    pub const COMMITTED: &str = "committed";
    /// Log store: the last purged log id, durable before any entry is removed.
    pub const LAST_PURGED: &str = "last_purged";
    /// State machine: the last applied log id.
    pub const LAST_APPLIED: &str = "last_applied";
    /// State machine: the last applied membership.
    pub const MEMBERSHIP: &str = "membership";
    /// State machine: ids of nodes that left the cluster and may never rejoin.
    pub const RETIRED: &str = "retired_node_ids";
    /// State machine: the current snapshot's metadata and file.
    pub const SNAPSHOT: &str = "snapshot";
}

/// One storage backend: the types that keep its log, its state machine and its reads.
pub trait Backend: Sized + Send + Sync + 'static {
    /// The Raft log, vote, committed index and purge marker.
    type Log: RaftLogStorage<TypeConfig> + RaftLogReader<TypeConfig> + Clone + Send + Sync;
    /// The key-value data, last applied id, membership and snapshots.
    type StateMachine: StateMachineBackend;
    /// The node's direct view of the applied data.
    type Reader: ReadBackend;
}

/// How a backend is opened from the node's settings.
pub trait Open: Backend {
    /// Opens (creating if needed) the store the settings name. A write that fails for
    /// want of space is marked in `disk_full` and retried until it succeeds.
    fn open(
        settings: &Settings,
        disk_full: Arc<DiskFull>,
    ) -> impl Future<Output = Result<Opened<Self>, OpenError>> + Send;
}

/// The parts of an opened backend.
pub struct Opened<B: Backend> {
    /// The `backend` label of its metrics and spans (`storage.type`).
    pub name: &'static str,
    pub log: B::Log,
    pub state_machine: B::StateMachine,
    pub reader: B::Reader,
}

/// The state machine of a backend.
pub trait StateMachineBackend: Clone + Send + Sync + 'static {
    /// The last applied log id and membership, as a restart would find them.
    fn applied_state(
        &mut self,
    ) -> impl Future<Output = io::Result<(Option<LogId>, StoredMembership)>> + Send;

    /// Applies a batch of committed entries (never empty), in log order, and returns
    /// one result per entry, in the same order. Membership entries update the
    /// membership and retire the nodes that leave it (see `retire_leavers`).
    fn apply(
        &mut self,
        entries: Vec<Entry>,
    ) -> impl Future<Output = io::Result<Vec<CommandResult>>> + Send;

    /// Writes the state as applied so far to a snapshot file and records it as current.
    fn build_snapshot(&mut self)
        -> impl Future<Output = io::Result<Snapshot<SnapshotFile>>> + Send;

    /// Replaces the whole state with the snapshot's and records it as current.
    fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// The snapshot recorded as current, if its file is still there.
    fn current_snapshot(
        &mut self,
    ) -> impl Future<Output = io::Result<Option<Snapshot<SnapshotFile>>>> + Send;

    /// Whether a write waits for room on a full disk: a snapshot would only fail then.
    fn disk_full(&self) -> bool;
}

/// Reads of the applied data. They see the state machine as applied so far;
/// linearizability is the caller's job (a read barrier through Raft before reading).
pub trait ReadBackend: Clone + Send + Sync + 'static {
    /// The value of `key` with its revisions. Fails with `NotConnected` when the
    /// backend is unreachable.
    fn get(&self, key: &str) -> impl Future<Output = io::Result<Option<Record>>> + Send;

    /// Up to `limit` pairs whose keys are in `[start, end)` (`end: None`: no upper
    /// bound), in ascending byte order of the keys. The page also ends with the pair
    /// that brings the bytes of its keys and values to `max_bytes` or more (so it holds
    /// at least one pair): what one page holds in memory is bounded by both.
    fn range(
        &self,
        start: &str,
        end: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> impl Future<Output = io::Result<Vec<(String, Record)>>> + Send;

    /// The number of keys in `[start, end)` (`end: None`: no upper bound), counted
    /// without holding the keys in memory.
    fn count_range(
        &self,
        start: &str,
        end: Option<&str>,
    ) -> impl Future<Output = io::Result<u64>> + Send;

    /// Lease `id`, if it exists.
    fn lease(&self, id: u64) -> impl Future<Output = io::Result<Option<Lease>>> + Send;

    /// Up to `limit` keys attached to lease `id`, in key order.
    fn lease_keys(
        &self,
        id: u64,
        limit: usize,
    ) -> impl Future<Output = io::Result<Vec<String>>> + Send;

    /// Every lease (the leader tracks their deadlines).
    fn leases(&self) -> impl Future<Output = io::Result<Vec<Lease>>> + Send;

    /// The number of keys.
    fn count(&self) -> impl Future<Output = io::Result<u64>> + Send;

    /// Bytes the store takes on disk.
    fn size_bytes(&self) -> impl Future<Output = io::Result<u64>> + Send;

    /// Ids of nodes that were removed from the cluster and may never rejoin.
    fn retired_ids(&self) -> impl Future<Output = io::Result<BTreeSet<u64>>> + Send;

    /// Whether the backend can be reached right now.
    fn is_available(&self) -> bool;

    /// Tries again the state machine's writes that failed for want of space and wait in
    /// memory (a backend whose writes retry by themselves has nothing to do).
    fn retry_failed_writes(&self) -> impl Future<Output = ()> + Send;

    /// Makes everything applied durable and releases the backend; called at shutdown.
    fn close(&self) -> impl Future<Output = io::Result<()>> + Send;
}

/// Why a store could not be opened, phrased for the operator: each variant names the
/// setting or the file at fault. Never contains the database password.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("invalid setting `storage.data_dir`: {path} is not writable: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error("cannot open database file {path}: {reason}")]
    Database { path: PathBuf, reason: String },
    #[error("invalid setting `database.ssl_mode`: {0}")]
    SslMode(String),
    #[error(
        "cannot connect to PostgreSQL at `database.host` {host}:{port}, database `{database}`, \
         as `database.username` {username}: {reason}"
    )]
    Connect {
        host: String,
        port: u16,
        database: String,
        username: String,
        reason: String,
    },
    #[error("cannot apply the database migrations: {0}")]
    Migrate(String),
}
