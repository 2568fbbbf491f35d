//! One of two backends, chosen at start-up: the node's type is fixed at compile time
//! while `storage.type` is read at run time, and the contract's async methods cannot be
//! called through `dyn`. [`Either`] implements the contract by passing each call to the
//! backend it holds; nesting it (`Either<A, Either<B, C>>`) chooses among more, so a
//! new backend needs no new dispatch code.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use super::contract::{Backend, Opened, ReadBackend, StateMachineBackend};
use super::SnapshotFile;
use crate::types::typ::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership, Vote};
use crate::types::{CommandResult, Lease, Record, TypeConfig};

/// The backend `A` or the backend `B` (or, as a part, a part of one of them).
#[derive(Clone)]
pub enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Calls `$body` with the value inside `$value`, whichever side it is on.
macro_rules! dispatch {
    ($value:expr, $inner:ident => $body:expr) => {
        match $value {
            Either::Left($inner) => $body,
            Either::Right($inner) => $body,
        }
    };
}

impl<A: Backend, B: Backend> Backend for Either<A, B> {
    type Log = Either<A::Log, B::Log>;
    type StateMachine = Either<A::StateMachine, B::StateMachine>;
    type Reader = Either<A::Reader, B::Reader>;
}

impl<A: Backend, B: Backend> Opened<Either<A, B>> {
    /// The parts of an opened `A`.
    pub fn left(opened: Opened<A>) -> Self {
        Opened {
            name: opened.name,
            log: Either::Left(opened.log),
            state_machine: Either::Left(opened.state_machine),
            reader: Either::Left(opened.reader),
        }
    }

    /// The parts of an opened `B`.
    pub fn right(opened: Opened<B>) -> Self {
        Opened {
            name: opened.name,
            log: Either::Right(opened.log),
            state_machine: Either::Right(opened.state_machine),
            reader: Either::Right(opened.reader),
        }
    }
}

impl<A, B> RaftLogReader<TypeConfig> for Either<A, B>
where
    A: RaftLogReader<TypeConfig>,
    B: RaftLogReader<TypeConfig>,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        dispatch!(self, s => s.try_get_log_entries(range).await)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        dispatch!(self, s => s.read_vote().await)
    }
}

impl<A, B> RaftLogStorage<TypeConfig> for Either<A, B>
where
    A: RaftLogStorage<TypeConfig> + RaftLogReader<TypeConfig> + Clone,
    B: RaftLogStorage<TypeConfig> + RaftLogReader<TypeConfig> + Clone,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        dispatch!(self, s => s.get_log_state().await)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        dispatch!(self, s => s.save_vote(vote).await)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        dispatch!(self, s => s.save_committed(committed).await)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        dispatch!(self, s => s.read_committed().await)
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
        dispatch!(self, s => s.append(entries, callback).await)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        dispatch!(self, s => s.truncate_after(last_log_id).await)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        dispatch!(self, s => s.purge(log_id).await)
    }
}

impl<A: StateMachineBackend, B: StateMachineBackend> StateMachineBackend for Either<A, B> {
    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        dispatch!(self, s => s.applied_state().await)
    }

    async fn apply(&mut self, entries: Vec<Entry>) -> io::Result<Vec<CommandResult>> {
        dispatch!(self, s => s.apply(entries).await)
    }

    async fn build_snapshot(&mut self) -> io::Result<Snapshot<SnapshotFile>> {
        dispatch!(self, s => s.build_snapshot().await)
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> io::Result<()> {
        dispatch!(self, s => s.install_snapshot(meta, snapshot).await)
    }

    async fn current_snapshot(&mut self) -> io::Result<Option<Snapshot<SnapshotFile>>> {
        dispatch!(self, s => s.current_snapshot().await)
    }

    fn disk_full(&self) -> bool {
        dispatch!(self, s => s.disk_full())
    }
}

impl<A: ReadBackend, B: ReadBackend> ReadBackend for Either<A, B> {
    async fn get(&self, key: &str) -> io::Result<Option<Record>> {
        dispatch!(self, s => s.get(key).await)
    }

    async fn range(
        &self,
        start: &str,
        end: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<(String, Record)>> {
        dispatch!(self, s => s.range(start, end, limit, max_bytes).await)
    }

    async fn lease(&self, id: u64) -> io::Result<Option<Lease>> {
        dispatch!(self, s => s.lease(id).await)
    }

    async fn lease_keys(&self, id: u64, limit: usize) -> io::Result<Vec<String>> {
        dispatch!(self, s => s.lease_keys(id, limit).await)
    }

    async fn leases(&self) -> io::Result<Vec<Lease>> {
        dispatch!(self, s => s.leases().await)
    }

    async fn count_range(&self, start: &str, end: Option<&str>) -> io::Result<u64> {
        dispatch!(self, s => s.count_range(start, end).await)
    }

    async fn count(&self) -> io::Result<u64> {
        dispatch!(self, s => s.count().await)
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        dispatch!(self, s => s.size_bytes().await)
    }

    async fn retired_ids(&self) -> io::Result<BTreeSet<u64>> {
        dispatch!(self, s => s.retired_ids().await)
    }

    fn is_available(&self) -> bool {
        dispatch!(self, s => s.is_available())
    }

    async fn retry_failed_writes(&self) {
        dispatch!(self, s => s.retry_failed_writes().await)
    }

    async fn close(&self) -> io::Result<()> {
        dispatch!(self, s => s.close().await)
    }
}
