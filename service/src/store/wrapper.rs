//! What the node holds of its store: openraft's log storage and state machine, and the
//! direct reads, on top of any backend of the contract (`contract.rs`).
//!
//! The wrapper is generic over the backend rather than an enum over the two we have:
//! the work every backend shares (gathering an apply batch, answering the clients
//! waiting on it, metrics, spans) is written once here and cannot drift between
//! backends, and the same wrapper runs openraft's storage suite on each backend alone
//! and on the node's own choice of them ([`AnyBackend`], the defaults of the type
//! parameters below).

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::time::Instant;

use ::metrics::{counter, histogram};
use futures::{Stream, TryStreamExt};
use openraft::storage::{
    EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftStateMachine,
};
use openraft::{OptionalSend, RaftSnapshotBuilder};
use tracing::Instrument;

use super::contract::{Backend, Opened, ReadBackend, StateMachineBackend};
use super::LeaseClock;
use super::{AnyBackend, DiskFull, SnapshotFile};
use crate::telemetry::metrics;
use crate::types::typ::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership, Vote};
use crate::types::{CommandResult, Lease, Record, TypeConfig};

/// The three views of one opened store, and its disk-full mark.
pub struct Store<B: Backend = AnyBackend> {
    pub log_store: LogStore<B>,
    pub state_machine: StateMachine<B>,
    pub handle: StoreHandle<B>,
    /// Set while a write failed for want of space; the store retries it until it
    /// succeeds.
    pub disk_full: Arc<DiskFull>,
}

impl<B: Backend> Store<B> {
    /// Wraps an opened backend; `disk_full` is the mark it was opened with.
    pub fn new(opened: Opened<B>, disk_full: Arc<DiskFull>) -> Self {
        let leases = Arc::new(LeaseClock::default());
        Self {
            log_store: LogStore {
                inner: opened.log,
                backend: opened.name,
            },
            state_machine: StateMachine {
                inner: opened.state_machine,
                backend: opened.name,
                reader: opened.reader.clone(),
                leases: leases.clone(),
            },
            handle: StoreHandle {
                inner: opened.reader,
                leases,
            },
            disk_full,
        }
    }
}

/// The `traceparent` of the first entry that carries one.
fn first_trace<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Option<String> {
    entries.into_iter().find_map(|e| match &e.payload {
        openraft::EntryPayload::Normal(p) => p.trace.clone(),
        _ => None,
    })
}

/// A span for storage work on `entries`, child of the first traced proposal among them;
/// `None` when no entry is traced (heartbeats, membership, tracing off).
fn storage_span<'a>(
    name: &'static str,
    backend: &'static str,
    entries: impl ExactSizeIterator<Item = &'a Entry> + Clone,
) -> Option<tracing::Span> {
    let trace = first_trace(entries.clone())?;
    let span = match name {
        "storage.append" => tracing::info_span!("storage.append", backend, entries = entries.len()),
        _ => tracing::info_span!("storage.apply", backend, entries = entries.len()),
    };
    crate::telemetry::trace::set_parent_from_traceparent(&span, &trace);
    Some(span)
}

/// Runs `work` inside `span`, when there is one.
async fn traced<T>(span: Option<tracing::Span>, work: impl std::future::Future<Output = T>) -> T {
    match span {
        Some(span) => work.instrument(span).await,
        None => work.await,
    }
}

/// The Raft log store: the backend's, with the append's span and duration.
pub struct LogStore<B: Backend = AnyBackend> {
    inner: B::Log,
    /// The `backend` label of the metrics and spans.
    backend: &'static str,
}

impl<B: Backend> Clone for LogStore<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            backend: self.backend,
        }
    }
}

impl<B: Backend> RaftLogReader<TypeConfig> for LogStore<B> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.inner.try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.inner.read_vote().await
    }
}

impl<B: Backend> RaftLogStorage<TypeConfig> for LogStore<B> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        self.inner.get_log_state().await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.inner.save_vote(vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.inner.save_committed(committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.inner.read_committed().await
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
        let span = storage_span("storage.append", self.backend, entries.iter());
        let started = Instant::now();
        let result = traced(span, self.inner.append(entries, callback)).await;
        histogram!(metrics::STORAGE_APPEND_DURATION, "backend" => self.backend)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.inner.truncate_after(last_log_id).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.inner.purge(log_id).await
    }
}

/// The state machine: the backend's, with the batch gathered and answered here.
pub struct StateMachine<B: Backend = AnyBackend> {
    inner: B::StateMachine,
    /// The `backend` label of the metrics and spans.
    backend: &'static str,
    /// Reads the leases again after a snapshot install.
    reader: B::Reader,
    /// The leases' deadlines, kept from the results of the entries applied.
    leases: Arc<LeaseClock>,
}

impl<B: Backend> Clone for StateMachine<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            backend: self.backend,
            reader: self.reader.clone(),
            leases: self.leases.clone(),
        }
    }
}

/// Starts, restarts or stops a lease's clock as an applied entry's result says, and
/// counts what the API's metrics count.
fn observe(leases: &LeaseClock, result: &CommandResult) {
    match result {
        CommandResult::Lease { lease }
        | CommandResult::Put {
            granted: Some(lease),
            ..
        } => leases.track(lease),
        CommandResult::LeaseRevoked { id, .. } => leases.forget(*id),
        CommandResult::LeasesExpired { ids, deleted } => {
            for id in ids {
                leases.forget(*id);
            }
            counter!(metrics::LEASES_EXPIRED).increment(ids.len() as u64);
            counter!(metrics::LEASE_EXPIRED_KEYS).increment(*deleted);
        }
        _ => {}
    }
}

/// Counts a failed snapshot `operation` (`build` or `install`), for the alert.
fn snapshot_failed(operation: &'static str) {
    counter!(metrics::SNAPSHOT_FAILURES, "operation" => operation).increment(1);
}

impl<B: Backend> RaftSnapshotBuilder<TypeConfig> for StateMachine<B> {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot<SnapshotFile>, io::Error> {
        let started = Instant::now();
        let snapshot = self
            .inner
            .build_snapshot()
            .await
            .inspect_err(|_| snapshot_failed(metrics::SNAPSHOT_BUILD))?;
        counter!(metrics::SNAPSHOTS_BUILT).increment(1);
        histogram!(metrics::SNAPSHOT_BUILD_DURATION).record(started.elapsed().as_secs_f64());
        Ok(snapshot)
    }
}

impl<B: Backend> RaftStateMachine<TypeConfig> for StateMachine<B> {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.inner.applied_state().await
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        // Both backends apply a batch at once: one transaction, or one pass over the
        // writes waiting in memory. Gathered, it also lets the span find its trace.
        let items: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        let (batch, responders): (Vec<Entry>, Vec<_>) = items.into_iter().unzip();
        let span = storage_span("storage.apply", self.backend, batch.iter());
        let started = Instant::now();
        let work = async {
            if batch.is_empty() {
                return Ok(());
            }
            let results = self.inner.apply(batch).await?;
            // One result per entry: a client waiting on an entry without one would
            // wait for ever.
            if results.len() != responders.len() {
                return Err(io::Error::other(format!(
                    "the state machine answered {} results for {} entries",
                    results.len(),
                    responders.len()
                )));
            }
            for (responder, result) in responders.into_iter().zip(results) {
                observe(&self.leases, &result);
                if let Some(responder) = responder {
                    responder.send(result);
                }
            }
            Ok(())
        };
        let result = traced(span, work).await;
        histogram!(metrics::STORAGE_APPLY_DURATION, "backend" => self.backend)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        // A snapshot on a full disk would only fail; the policy's next turn comes soon.
        (force || !self.inner.disk_full()).then(|| self.clone())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let started = Instant::now();
        self.inner
            .install_snapshot(meta, snapshot)
            .await
            .inspect_err(|_| snapshot_failed(metrics::SNAPSHOT_INSTALL))?;
        counter!(metrics::SNAPSHOTS_INSTALLED).increment(1);
        histogram!(metrics::SNAPSHOT_INSTALL_DURATION).record(started.elapsed().as_secs_f64());
        self.leases.reset(&self.reader.leases().await?);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<SnapshotFile>>, io::Error> {
        self.inner.current_snapshot().await
    }
}

/// The node's direct view of the data.
pub struct StoreHandle<B: Backend = AnyBackend> {
    inner: B::Reader,
    leases: Arc<LeaseClock>,
}

impl<B: Backend> Clone for StoreHandle<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            leases: self.leases.clone(),
        }
    }
}

impl<B: Backend> StoreHandle<B> {
    /// The applied record of `key`. Fails with `NotConnected` when the backend is
    /// unreachable.
    pub async fn get(&self, key: &str) -> io::Result<Option<Record>> {
        self.inner.get(key).await
    }

    /// Lease `id` as applied, if it exists.
    pub async fn lease(&self, id: u64) -> io::Result<Option<Lease>> {
        self.inner.lease(id).await
    }

    /// Up to `limit` keys attached to lease `id`, in key order.
    pub async fn lease_keys(&self, id: u64, limit: usize) -> io::Result<Vec<String>> {
        self.inner.lease_keys(id, limit).await
    }

    /// The leases' deadlines as this node sees them.
    pub fn lease_clock(&self) -> &LeaseClock {
        &self.leases
    }

    /// Starts every lease's clock from the store (at start-up).
    pub async fn load_leases(&self) -> io::Result<()> {
        self.leases.reset(&self.inner.leases().await?);
        Ok(())
    }

    /// Up to `limit` pairs with keys in `[start, end)`, in ascending byte order, ending
    /// early with the pair that brings the page to `max_bytes`.
    pub async fn range(
        &self,
        start: &str,
        end: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<(String, Record)>> {
        self.inner.range(start, end, limit, max_bytes).await
    }

    /// Number of keys in `[start, end)`, counted as they stream by.
    pub async fn count_range(&self, start: &str, end: Option<&str>) -> io::Result<u64> {
        self.inner.count_range(start, end).await
    }

    /// Number of keys.
    pub async fn len(&self) -> io::Result<u64> {
        self.inner.count().await
    }

    /// Ids of nodes that were removed from the cluster and may never rejoin.
    pub async fn retired_ids(&self) -> io::Result<BTreeSet<u64>> {
        self.inner.retired_ids().await
    }

    /// Bytes the data takes: the redb files and log segments, or PostgreSQL's tables
    /// with their indexes.
    pub async fn size_bytes(&self) -> io::Result<u64> {
        self.inner.size_bytes().await
    }

    /// Whether the backend can be reached right now (always, for the embedded file).
    pub fn is_available(&self) -> bool {
        self.inner.is_available()
    }

    /// Tries again the state machine's writes that failed for want of space (the log
    /// store retries its own); clears the disk-full mark when they succeed.
    pub async fn retry_failed_writes(&self) {
        self.inner.retry_failed_writes().await
    }

    /// Makes everything applied durable and releases the backend; called at shutdown.
    pub async fn close(&self) -> io::Result<()> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::StorageError;

    use super::*;
    use crate::config::Settings;

    /// Each suite case gets the store the node itself opens (`store::open`, default
    /// settings: the embedded backend) in a fresh temp dir.
    struct NodeStore;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for NodeStore {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut settings = Settings::load_from(None, |_| None).expect("defaults");
            settings.storage.data_dir = dir.path().to_owned();
            let store = crate::store::open(&settings).await.expect("open store");
            Ok((dir, store.log_store, store.state_machine))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite_passes_on_the_nodes_store() {
        Suite::test_all(NodeStore).await.expect("storage suite");
    }
}
