//! A running kvstore node: its Raft instance, its store, and the operations the APIs
//! call. Every operation is bounded by `server.request_timeout`.
//!
//! Any node accepts any request. Writes and membership changes run on the leader: a
//! follower forwards them over the Raft listener, one hop, and the leader never forwards
//! again. Linearizable reads run on the node that received them: a follower asks the
//! leader for a read index (ReadIndex) and waits until it has applied that far.
//!
//! The rooms: `bootstrap.rs` starts a node, `leader.rs` knows the leader and runs a
//! request against it, `writes.rs`, `reads.rs` and `membership.rs` are the operations,
//! `space.rs` the storage limits, and `errors.rs` what can go wrong.

mod bootstrap;
mod errors;
mod leader;
mod leases;
mod membership;
mod reads;
mod space;
mod writes;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::async_runtime::WatchReceiver;
use openraft::raft::linearizable_read::ReadLogId;
use openraft::ServerState;

pub use self::bootstrap::start;
use self::errors::storage;
pub use self::errors::{Cause, NodeError};
pub use self::leases::LeaseInfo;
use super::batch::Batcher;
use super::rpc::{ForwardWrite, ForwardWriteResult};
use super::typ::RaftMetrics;
use super::{NodeAddr, PeerNetwork, TypeConfig};
use crate::admission::ByteBudget;
use crate::config::StorageType;
use crate::store::{self, StateMachine, StoreHandle};

type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Confirm the leader's leadership with a quorum (ReadIndex) and wait until this node
    /// has applied up to that point, then read: the answer reflects every write
    /// acknowledged before the read began.
    #[default]
    Linearizable,
    /// Read the local copy as applied so far; it may lag behind the leader.
    Stale,
}

/// One cluster member as `/status` and `/cluster/members` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub addr: NodeAddr,
    pub voter: bool,
}

/// Replication progress of one follower, as seen by the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerProgress {
    pub id: u64,
    pub matched_index: Option<u64>,
    /// Entries the follower is behind the leader's last log index.
    pub lag: u64,
}

/// A started node. Cheap to clone; all clones share one Raft instance.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

/// See [`RaftNode::downgrade`].
pub struct WeakRaftNode(std::sync::Weak<Inner>);

impl WeakRaftNode {
    /// The node, while anything else still holds it.
    pub fn upgrade(&self) -> Option<RaftNode> {
        self.0.upgrade().map(|inner| RaftNode { inner })
    }
}

struct Inner {
    id: u64,
    raft: Raft,
    store: StoreHandle,
    network: PeerNetwork,
    /// Writes this node forwards to the leader, batched.
    writes: Batcher<(u64, String), ForwardWrite, ForwardWriteResult>,
    /// Read indexes for linearizable reads, one per batch of concurrent reads.
    read_indexes: Batcher<IndexSource, (), Result<ReadLogId<TypeConfig>, NodeError>>,
    /// Bytes of the writes proposed to Raft on this node as leader, from any node.
    proposal_bytes: ByteBudget,
    storage_type: StorageType,
    request_timeout: Duration,
    /// The storage quota and free-space floor, and whether they are passed.
    space: store::space::Space,
    /// Whether a write to disk failed for want of space; the store retries it.
    disk_full: Arc<store::DiskFull>,
    /// openraft's leader lease (the maximum election timeout): a leader that no majority
    /// has acknowledged for this long stops serving, and a follower that has not heard
    /// from its leader for this long no longer counts it as its leader.
    lease: Duration,
    /// When this node last accepted AppendEntries from a leader (milliseconds after
    /// `started_at`, plus one; 0: never): the cheap way to know its leader is in touch.
    leader_contact: AtomicU64,
    started_at: Instant,
    incoming_snapshots: PathBuf,
}

/// Where a request must run.
enum Target {
    Here,
    Leader { id: u64, raft_url: String },
}

/// Who provides a read index: this node as leader, or the leader at a Raft URL.
#[derive(Clone, PartialEq, Eq, Hash)]
enum IndexSource {
    Here,
    Leader(u64, String),
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

impl RaftNode {
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn storage_type(&self) -> StorageType {
        self.inner.storage_type
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started_at.elapsed()
    }

    /// A handle that does not keep the node (and its open store) alive, for background
    /// tasks that must not outlive it.
    pub fn downgrade(&self) -> WeakRaftNode {
        WeakRaftNode(Arc::downgrade(&self.inner))
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Where the Raft listener spools snapshots it receives.
    pub(crate) fn incoming_snapshot_dir(&self) -> PathBuf {
        self.inner.incoming_snapshots.clone()
    }

    /// A receiver that sees every change of the Raft metrics.
    pub(crate) fn raft_metrics_watch(
        &self,
    ) -> openraft::alias::WatchReceiverOf<TypeConfig, RaftMetrics> {
        self.inner.raft.metrics()
    }

    /// Whether Raft has stopped.
    pub fn is_shut_down(&self) -> bool {
        let m = self.metrics();
        m.running_state.is_err() || m.state == ServerState::Shutdown
    }

    /// Bytes the stored data takes.
    pub async fn storage_size(&self) -> Result<u64, NodeError> {
        self.inner.store.size_bytes().await.map_err(storage)
    }

    /// The latest Raft metrics (role, term, leader, indexes).
    pub fn metrics(&self) -> RaftMetrics {
        self.inner.raft.metrics().borrow_watched().clone()
    }

    /// Whether the state machine reaches `index` within `within`. Raft publishes a new
    /// committed index before the entries under it are applied, so a busy node is
    /// briefly behind all the time; only a node that stays behind is catching up.
    pub async fn applies_up_to(&self, index: u64, within: Duration) -> bool {
        self.inner
            .raft
            .wait(Some(within))
            .applied_index_at_least(Some(index), "readiness")
            .await
            .is_ok()
    }

    /// Number of keys in the local state machine.
    pub async fn key_count(&self) -> Result<u64, NodeError> {
        self.inner.store.len().await.map_err(storage)
    }

    /// Whether the storage backend can be reached right now.
    pub fn storage_available(&self) -> bool {
        self.inner.store.is_available()
    }

    /// Fails fast while the storage backend is unreachable, instead of letting the
    /// request wait for Raft until it times out.
    fn check_storage(&self) -> Result<(), NodeError> {
        if self.inner.store.is_available() {
            Ok(())
        } else {
            Err(NodeError::StorageUnavailable(
                "the storage backend is unreachable".into(),
            ))
        }
    }

    /// Stops Raft and makes everything applied durable. In-flight requests must be
    /// finished first.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        self.inner.raft.shutdown().await.context("raft shutdown")?;
        self.inner.store.close().await?;
        Ok(())
    }
}
