//! The storage contract: what the replicated state machine does with a command, and the
//! backends that keep the Raft log and the data.
//!
//! Both backends provide an openraft `RaftLogStorage` (log, vote, committed index, purge
//! marker) and a `RaftStateMachine` (key-value data, last applied log id, membership,
//! snapshots), and both pass openraft's storage suite. [`LogStore`], [`StateMachine`]
//! and [`StoreHandle`] choose between them at start-up, so the rest of the node is
//! written once.

pub mod postgres;
pub mod redb;
mod snapshot;
pub mod space;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::metrics::{counter, histogram};
use futures::{Stream, TryStreamExt};
use openraft::storage::{
    EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftStateMachine,
};
use openraft::{OptionalSend, RaftSnapshotBuilder};
use serde::Serialize;
use tracing::Instrument;

pub use snapshot::{Preamble, SnapshotFile, SnapshotReader, SnapshotWriter};
pub use space::{is_out_of_space, DiskFull};

use crate::config::{Settings, StorageType};
use crate::telemetry::metrics;
use crate::types::typ::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership, Vote};
use crate::types::TypeConfig;
pub use crate::types::{Command, CommandResult, Proposal};

/// The `traceparent` of the first entry that carries one.
fn first_trace<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Option<String> {
    entries.into_iter().find_map(|e| match &e.payload {
        openraft::EntryPayload::Normal(p) => p.trace.clone(),
        _ => None,
    })
}

/// A span for storage work on `entries`, child of the first traced proposal among them;
/// `None` when no entry is traced (heartbeats, membership, tracing off).
fn storage_span(
    name: &'static str,
    backend: &'static str,
    entries: &[&Entry],
) -> Option<tracing::Span> {
    let trace = first_trace(entries.iter().copied())?;
    let span = match name {
        "storage.append" => tracing::info_span!("storage.append", backend, entries = entries.len()),
        _ => tracing::info_span!("storage.apply", backend, entries = entries.len()),
    };
    crate::telemetry::trace::set_parent_from_traceparent(&span, &trace);
    Some(span)
}

/// The three views of one opened store.
pub struct Store {
    pub log_store: LogStore,
    pub state_machine: StateMachine,
    pub handle: StoreHandle,
    /// Set while a write failed for want of space; the store retries it until it
    /// succeeds.
    pub disk_full: Arc<DiskFull>,
}

/// Opens the backend `storage.type` names.
pub async fn open(settings: &Settings) -> anyhow::Result<Store> {
    let data_dir = &settings.storage.data_dir;
    let disk_full = Arc::new(DiskFull::default());
    Ok(match settings.storage.kind {
        StorageType::File => {
            let s = redb::open(data_dir, settings.storage.sync_writes, disk_full.clone())?;
            Store {
                log_store: LogStore::Redb(s.log_store),
                state_machine: StateMachine::Redb(s.state_machine),
                handle: StoreHandle::Redb(s.handle),
                disk_full,
            }
        }
        StorageType::Database => {
            let s = postgres::open(&settings.database, data_dir, disk_full.clone()).await?;
            Store {
                log_store: LogStore::Postgres(s.log_store),
                state_machine: StateMachine::Postgres(s.state_machine),
                handle: StoreHandle::Postgres(s.handle),
                disk_full,
            }
        }
    })
}

/// Calls `$body` with the backend inside `$value`, whichever it is.
macro_rules! dispatch {
    ($enum:ident, $value:expr, $inner:ident => $body:expr) => {
        match $value {
            $enum::Redb($inner) => $body,
            $enum::Postgres($inner) => $body,
        }
    };
}

/// The Raft log store of either backend.
#[derive(Clone)]
pub enum LogStore {
    Redb(redb::RedbLogStore),
    Postgres(postgres::PgLogStore),
}

impl LogStore {
    fn backend(&self) -> &'static str {
        match self {
            LogStore::Redb(_) => StorageType::File.as_str(),
            LogStore::Postgres(_) => StorageType::Database.as_str(),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        dispatch!(LogStore, self, s => s.try_get_log_entries(range).await)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        dispatch!(LogStore, self, s => s.read_vote().await)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        dispatch!(LogStore, self, s => s.get_log_state().await)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        dispatch!(LogStore, self, s => s.save_vote(vote).await)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        dispatch!(LogStore, self, s => s.save_committed(committed).await)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        dispatch!(LogStore, self, s => s.read_committed().await)
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
        let span = storage_span(
            "storage.append",
            self.backend(),
            &entries.iter().collect::<Vec<_>>(),
        );
        let started = Instant::now();
        let work = async { dispatch!(LogStore, self, s => s.append(entries, callback).await) };
        let result = match span {
            Some(span) => work.instrument(span).await,
            None => work.await,
        };
        histogram!(metrics::STORAGE_APPEND_DURATION, "backend" => self.backend())
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        dispatch!(LogStore, self, s => s.truncate_after(last_log_id).await)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        dispatch!(LogStore, self, s => s.purge(log_id).await)
    }
}

/// The state machine of either backend.
#[derive(Clone)]
pub enum StateMachine {
    Redb(redb::RedbStateMachine),
    Postgres(postgres::PgStateMachine),
}

impl StateMachine {
    fn backend(&self) -> &'static str {
        match self {
            StateMachine::Redb(_) => StorageType::File.as_str(),
            StateMachine::Postgres(_) => StorageType::Database.as_str(),
        }
    }
}

/// Counts a failed snapshot `operation` (`build` or `install`), for the alert.
fn snapshot_failed(operation: &'static str) {
    counter!(metrics::SNAPSHOT_FAILURES, "operation" => operation).increment(1);
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot<SnapshotFile>, io::Error> {
        let started = Instant::now();
        let snapshot = dispatch!(StateMachine, self, s => s.build_snapshot().await)
            .inspect_err(|_| snapshot_failed(metrics::SNAPSHOT_BUILD))?;
        counter!(metrics::SNAPSHOTS_BUILT).increment(1);
        histogram!(metrics::SNAPSHOT_BUILD_DURATION).record(started.elapsed().as_secs_f64());
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        dispatch!(StateMachine, self, s => s.applied_state().await)
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        // Both backends apply a batch at once anyway; gathering it here lets the span
        // find the batch's trace.
        let items: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        let span = storage_span(
            "storage.apply",
            self.backend(),
            &items.iter().map(|(e, _)| e).collect::<Vec<_>>(),
        );
        let batch = futures::stream::iter(items.into_iter().map(Ok));
        let started = Instant::now();
        let work = async { dispatch!(StateMachine, self, s => s.apply(batch).await) };
        let result = match span {
            Some(span) => work.instrument(span).await,
            None => work.await,
        };
        histogram!(metrics::STORAGE_APPLY_DURATION, "backend" => self.backend())
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        // A snapshot on a full disk would only fail; the policy's next turn comes soon.
        let full = dispatch!(StateMachine, self, s => s.disk_full());
        (force || !full).then(|| self.clone())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let started = Instant::now();
        dispatch!(StateMachine, self, s => s.install_snapshot(meta, snapshot).await)
            .inspect_err(|_| snapshot_failed(metrics::SNAPSHOT_INSTALL))?;
        counter!(metrics::SNAPSHOTS_INSTALLED).increment(1);
        histogram!(metrics::SNAPSHOT_INSTALL_DURATION).record(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<SnapshotFile>>, io::Error> {
        dispatch!(StateMachine, self, s => s.get_current_snapshot().await)
    }
}

/// The API's direct view of the data, in either backend.
#[derive(Clone)]
pub enum StoreHandle {
    Redb(redb::RedbHandle),
    Postgres(postgres::PgHandle),
}

impl StoreHandle {
    /// The applied value of `key`. Fails with `NotConnected` when the backend is
    /// unreachable.
    pub async fn get(&self, key: &str) -> io::Result<Option<String>> {
        match self {
            StoreHandle::Redb(h) => h.get(key),
            StoreHandle::Postgres(h) => h.get(key).await,
        }
    }

    /// Number of keys.
    pub async fn len(&self) -> io::Result<u64> {
        match self {
            StoreHandle::Redb(h) => h.len(),
            StoreHandle::Postgres(h) => h.len().await,
        }
    }

    /// Ids of nodes that were removed from the cluster and may never rejoin.
    pub async fn retired_ids(&self) -> io::Result<BTreeSet<u64>> {
        match self {
            StoreHandle::Redb(h) => h.retired_ids(),
            StoreHandle::Postgres(h) => h.retired_ids().await,
        }
    }

    /// Bytes the data takes: the redb file, or PostgreSQL's tables with their indexes.
    pub async fn size_bytes(&self) -> io::Result<u64> {
        match self {
            StoreHandle::Redb(h) => h.size_bytes(),
            StoreHandle::Postgres(h) => h.size_bytes().await,
        }
    }

    /// Whether the backend can be reached right now (always, for the embedded file).
    pub fn is_available(&self) -> bool {
        match self {
            StoreHandle::Redb(_) => true,
            StoreHandle::Postgres(h) => h.is_available(),
        }
    }

    /// Tries again the state machine's writes that failed for want of space (the log
    /// store retries its own); clears the disk-full mark when they succeed.
    pub async fn retry_failed_writes(&self) {
        match self {
            StoreHandle::Redb(h) => h.retry_failed_writes().await,
            StoreHandle::Postgres(_) => {}
        }
    }

    /// Makes everything applied durable and releases the backend; called at shutdown.
    pub async fn close(&self) -> io::Result<()> {
        match self {
            StoreHandle::Redb(h) => h.flush(),
            StoreHandle::Postgres(h) => {
                h.close().await;
                Ok(())
            }
        }
    }
}

/// Tells openraft how a log append ended (only once it is durable, or failed) and
/// returns the same result to the caller.
pub(crate) fn report_flushed(
    callback: IOFlushed<TypeConfig>,
    result: io::Result<()>,
) -> io::Result<()> {
    match result {
        Ok(()) => {
            callback.io_completed(Ok(()));
            Ok(())
        }
        Err(e) => {
            callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
            Err(e)
        }
    }
}

/// Gathers a batch of committed entries, and the clients waiting on them, for a backend
/// that applies the batch in one transaction.
pub(crate) async fn gather<Strm>(
    entries: Strm,
) -> io::Result<(
    Vec<Entry>,
    Vec<Option<openraft::storage::ApplyResponder<TypeConfig>>>,
)>
where
    Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin,
{
    let items: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
    Ok(items.into_iter().unzip())
}

/// Sends each applied entry's result to the client waiting for it, if any.
pub(crate) fn answer(
    responders: Vec<Option<openraft::storage::ApplyResponder<TypeConfig>>>,
    results: Vec<CommandResult>,
) {
    for (responder, result) in responders.into_iter().zip(results) {
        if let Some(responder) = responder {
            responder.send(result);
        }
    }
}

/// Wraps any backend error as the `io::Error` openraft's storage traits use.
pub(crate) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Encodes a log entry or metadata value (JSON).
pub(crate) fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(io_err)
}

/// Decodes a value stored by [`encode`].
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("corrupt record: {e}")))
}

/// The first pause before a write that failed for want of space is tried again, and
/// the longest: the pause doubles between them.
pub(crate) const RETRY_FIRST: Duration = Duration::from_millis(100);
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(2);

/// Runs `write` until it succeeds or fails for a reason other than a full disk. While
/// the disk is full it marks `writer` in `disk_full`, calls `recover` (which undoes
/// what the failed attempt left half done) and waits a growing pause. Blocking.
pub(crate) fn retry_while_full<T>(
    disk_full: &DiskFull,
    writer: space::Writer,
    mut recover: impl FnMut(),
    mut write: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let mut pause = RETRY_FIRST;
    loop {
        match write() {
            Err(e) if is_out_of_space(&e) => {
                disk_full.mark(writer, &e);
                recover();
                std::thread::sleep(pause);
                pause = (pause * 2).min(RETRY_MAX);
            }
            Ok(value) => {
                disk_full.clear(writer);
                return Ok(value);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs blocking storage work off the async runtime's worker threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
}

/// Adds to `retired` the members of `previous` that `next` leaves out: a node that
/// leaves the membership is retired for good, and its id is never reused. Returns
/// whether the set grew.
pub(crate) fn retire_leavers(
    retired: &mut BTreeSet<u64>,
    previous: &StoredMembership,
    next: &openraft::Membership<u64, crate::types::NodeAddr>,
) -> bool {
    let before = retired.len();
    retired.extend(
        previous
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| next.get_node(id).is_none()),
    );
    retired.len() != before
}

/// Creates the data dir if needed and proves a file can be written in it, so a
/// read-only or foreign-owned directory fails at start, not at the first write.
pub(crate) fn check_writable(dir: &Path) -> io::Result<()> {
    create_dir_durably(dir)?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"ok")?;
    std::fs::remove_file(&probe)
}

/// Creates `dir` (and missing parents) so that the creation survives a power loss: the
/// parent of each directory created is fsynced.
pub(crate) fn create_dir_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durably(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_parent(dir)
}

/// Fsyncs the directory holding `path`, so that a file or directory created or renamed
/// there survives a power loss.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    sync_dir(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
}

/// Makes a directory's entries (files created, renamed or removed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Log entries for the backends' unit tests.
#[cfg(test)]
pub(crate) mod test_entries {
    use openraft::entry::RaftEntry;

    use super::{Command, Proposal};
    use crate::types::typ::{Entry, LogId};

    pub fn entry(index: u64, command: Command) -> Entry {
        let leader = openraft::impls::leader_id_adv::LeaderId {
            term: 1,
            node_id: 1,
        };
        let log_id = LogId::new(leader, index);
        Entry::new_normal(
            log_id,
            Proposal {
                command,
                trace: None,
            },
        )
    }

    pub fn put(index: u64, key: &str, value: &str) -> Entry {
        entry(
            index,
            Command::Put {
                key: key.into(),
                value: value.into(),
            },
        )
    }

    pub fn delete(index: u64, key: &str) -> Entry {
        entry(index, Command::Delete { key: key.into() })
    }
}
