//! Reads: linearizable through a read index (ReadIndex), batched across concurrent
//! reads, or stale from the local copy.

use std::time::{Duration, Instant};

use ::metrics::counter;
use openraft::raft::linearizable_read::{Linearizer, LinearizerOption, ReadLogId};
use openraft::ReadPolicy;

use super::errors::{read_error, storage, Cause};
use super::{remaining, Consistency, IndexSource, NodeError, Raft, RaftNode, Target};
use crate::raft::batch::{Batcher, ByteBound};
use crate::raft::rpc::{self, ReadIndexResult};
use crate::raft::{PeerNetwork, TypeConfig};
use crate::telemetry::metrics;
use crate::types::Record;

impl RaftNode {
    /// Reads `key` with the requested consistency.
    #[tracing::instrument(name = "kv.get", skip_all, fields(key = %key, node.id = self.inner.id))]
    pub async fn get(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<Record>, NodeError> {
        self.before_read(consistency).await?;
        self.inner.store.get(key).await.map_err(storage)
    }

    /// Up to `limit` pairs with keys in `[start, end)` (`end: None`: no upper bound),
    /// in byte order of the keys, with the requested consistency; the page ends early
    /// with the pair that brings it to `max_bytes`. One page, as the store reads it:
    /// memory holds one page, however many keys there are.
    #[tracing::instrument(name = "kv.range", skip_all, fields(node.id = self.inner.id, limit))]
    pub async fn range(
        &self,
        start: &str,
        end: Option<&str>,
        limit: usize,
        max_bytes: usize,
        consistency: Consistency,
    ) -> Result<Vec<(String, Record)>, NodeError> {
        self.before_read(consistency).await?;
        self.inner
            .store
            .range(start, end, limit, max_bytes)
            .await
            .map_err(storage)
    }

    /// The number of keys in `[start, end)`, with the requested consistency.
    #[tracing::instrument(name = "kv.count_range", skip_all, fields(node.id = self.inner.id))]
    pub async fn count_range(
        &self,
        start: &str,
        end: Option<&str>,
        consistency: Consistency,
    ) -> Result<u64, NodeError> {
        self.before_read(consistency).await?;
        self.inner
            .store
            .count_range(start, end)
            .await
            .map_err(storage)
    }

    /// What every read does first: checks the store, and for a linearizable read waits
    /// for its read barrier.
    pub(super) async fn before_read(&self, consistency: Consistency) -> Result<(), NodeError> {
        self.check_storage()?;
        if consistency == Consistency::Linearizable {
            let deadline = Instant::now() + self.inner.request_timeout;
            self.with_leader(deadline, |target| self.read_barrier(target, deadline))
                .await?;
        }
        Ok(())
    }

    /// Blocks until a read of the local state machine is linearizable: gets a read index
    /// (shared with the reads that arrived meanwhile, see [`super::batch`]) and waits
    /// until this node has applied that far.
    #[tracing::instrument(name = "raft.read_index", skip_all, fields(node.id = self.inner.id))]
    async fn read_barrier(&self, target: Target, deadline: Instant) -> Result<(), NodeError> {
        let (leader, source) = match target {
            Target::Here => (self.inner.id, IndexSource::Here),
            Target::Leader { id, raft_url } => {
                counter!(metrics::FORWARDED, "kind" => "read_index").increment(1);
                (id, IndexSource::Leader(id, raft_url))
            }
        };
        let submitted = self.inner.read_indexes.submit(source, ());
        let read_log_id = tokio::time::timeout(remaining(deadline), submitted)
            .await
            .map_err(|_| NodeError::Timeout(self.inner.request_timeout))?
            .ok_or(NodeError::LeaderUnreachable { leader })??;
        let applied = self.metrics().last_applied;
        let ready = Linearizer::new(leader, read_log_id, applied)
            .try_await_ready(&self.inner.raft, Some(remaining(deadline)))
            .await
            .map_err(|e| NodeError::Unavailable(Cause::new(e)))?;
        ready
            .map(|_| ())
            .map_err(|_| NodeError::Timeout(self.inner.request_timeout))
    }

    /// The leader's end of a follower's batch of linearizable reads: the log id the
    /// follower must apply before reading, after leadership is confirmed by a quorum.
    pub(crate) async fn read_index_here(&self) -> Result<ReadLogId<TypeConfig>, NodeError> {
        let timeout = self.inner.request_timeout;
        read_index(&self.inner.raft, timeout, timeout).await
    }
}

/// The batcher of read indexes: one quorum round (on the leader) or one
/// `/raft/forward/read-index` request (on a follower) per batch of reads.
pub(super) fn read_index_batcher(
    raft: Raft,
    network: PeerNetwork,
    timeout: Duration,
) -> Batcher<IndexSource, (), Result<ReadLogId<TypeConfig>, NodeError>> {
    // A read index batch carries nothing per read (the values are read locally), so its
    // count alone bounds its bytes.
    Batcher::start(
        ByteBound::weightless(),
        move |source: IndexSource, reads: Vec<()>| {
            let (raft, network) = (raft.clone(), network.clone());
            async move {
                let result = match source {
                    // Give up on the quorum a little before the reads' own deadline, so a
                    // leader that lost its quorum answers UNAVAILABLE, not TIMEOUT.
                    IndexSource::Here => read_index(&raft, timeout.mul_f32(0.8), timeout).await,
                    IndexSource::Leader(leader, raft_url) => network
                        .call::<(), ReadIndexResult>(
                            &raft_url,
                            leader,
                            rpc::READ_INDEX,
                            (&(), 0),
                            timeout,
                        )
                        .await
                        // A read has no side effects: any failure to reach the leader is
                        // worth another try while time remains.
                        .unwrap_or(Err(NodeError::LeaderUnreachable { leader })),
                };
                vec![result; reads.len()]
            }
        },
    )
}

/// A read index from this node as leader, once a quorum has confirmed its leadership
/// (openraft gives up after `quorum_wait`; this after `timeout`).
async fn read_index(
    raft: &Raft,
    quorum_wait: Duration,
    timeout: Duration,
) -> Result<ReadLogId<TypeConfig>, NodeError> {
    let option = LinearizerOption::from(ReadPolicy::ReadIndex).with_wait_timeout(quorum_wait);
    let result = tokio::time::timeout(timeout, raft.get_read_log_id(option))
        .await
        .map_err(|_| NodeError::Timeout(timeout))?;
    result
        .map(|(read_log_id, _)| read_log_id)
        .map_err(read_error)
}
