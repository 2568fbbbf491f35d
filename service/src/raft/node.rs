//! A running kvstore node: its Raft instance, its store, and the key-value operations
//! the API calls, each bounded by `server.request_timeout`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ReadPolicy, SnapshotPolicy};

use super::typ::RaftMetrics;
use super::{NodeAddr, PeerNetwork, TypeConfig};
use crate::config::{Settings, StorageType};
use crate::store::redb::{self, RedbStateMachine, StoreHandle};
use crate::store::{Command, CommandResult};

type Raft = openraft::Raft<TypeConfig, RedbStateMachine>;

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Confirm leadership with a quorum (ReadIndex) and wait until the state machine has
    /// applied up to that point, then read: the answer reflects every write acknowledged
    /// before the read began.
    #[default]
    Linearizable,
    /// Read the local copy as applied so far; it may lag behind the leader.
    Stale,
}

/// Why a key-value operation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// This node is not the leader, or no leader is known right now.
    #[error("no leader is available to serve this request{}", leader_hint(.leader))]
    NoLeader { leader: Option<u64> },
    /// The write was proposed but leadership changed before it was known to commit; it
    /// may or may not take effect.
    #[error("write outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The operation did not finish within `server.request_timeout`. For a write, the
    /// outcome is unknown.
    #[error("request did not complete within {0:?}")]
    Timeout(Duration),
    /// The quorum could not be confirmed, or Raft has stopped.
    #[error("node unavailable: {0}")]
    Unavailable(String),
    /// The local store failed.
    #[error("storage error: {0}")]
    Storage(String),
}

fn leader_hint(leader: &Option<u64>) -> String {
    match leader {
        Some(id) => format!(" (leader is node {id})"),
        None => String::new(),
    }
}

/// A started node. Cheap to clone; all clones share one Raft instance.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    raft: Raft,
    store: StoreHandle,
    storage_type: StorageType,
    request_timeout: Duration,
    started_at: Instant,
}

/// Opens storage, starts Raft, and on the very first start initialises a one-voter
/// cluster of this node. A node whose storage already holds Raft state (a vote or log)
/// is never initialised again.
///
/// `api_addr` is the URL peers and clients should use to reach this node's API.
pub async fn start(settings: &Settings, api_addr: String) -> anyhow::Result<RaftNode> {
    if settings.storage.kind == StorageType::Database {
        anyhow::bail!(
            "invalid setting `storage.type`: the `database` (PostgreSQL) backend is not \
             available in this version; use `file`"
        );
    }
    let store = redb::open(&settings.storage.data_dir, settings.storage.sync_writes)?;
    let config = openraft::Config {
        cluster_name: "kvstore".into(),
        heartbeat_interval: millis(settings.raft.heartbeat_timeout),
        election_timeout_min: millis(settings.raft.election_timeout),
        election_timeout_max: millis(settings.raft.election_timeout) * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.raft.snapshot_interval),
        max_in_snapshot_log_to_keep: settings.raft.snapshot_logs_to_keep,
        ..Default::default()
    }
    .validate()?;

    let id = settings.raft.node_id;
    let raft = Raft::new(
        id,
        Arc::new(config),
        PeerNetwork,
        store.log_store,
        store.state_machine,
    )
    .await?;

    if raft.is_initialized().await? {
        tracing::info!(
            node_id = id,
            "raft state found on disk; rejoining the cluster"
        );
    } else {
        let members = BTreeMap::from([(id, NodeAddr { api_addr })]);
        raft.initialize(members).await?;
        tracing::info!(node_id = id, "initialised a new single-voter cluster");
    }

    Ok(RaftNode {
        inner: Arc::new(Inner {
            id,
            raft,
            store: store.handle,
            storage_type: settings.storage.kind,
            request_timeout: settings.server.request_timeout,
            started_at: Instant::now(),
        }),
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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

    /// The latest Raft metrics (role, term, leader, indexes).
    pub fn metrics(&self) -> RaftMetrics {
        self.inner.raft.metrics().borrow_watched().clone()
    }

    /// Number of keys in the local state machine.
    pub fn key_count(&self) -> Result<u64, NodeError> {
        self.inner.store.len().map_err(storage)
    }

    /// Stores `value` under `key` through the Raft log.
    pub async fn put(&self, key: String, value: String) -> Result<(), NodeError> {
        self.write(Command::Put { key, value }).await.map(|_| ())
    }

    /// Deletes `key` through the Raft log; returns whether it existed.
    pub async fn delete(&self, key: String) -> Result<bool, NodeError> {
        match self.write(Command::Delete { key }).await? {
            CommandResult::Deleted { existed } => Ok(existed),
            other => Err(NodeError::Storage(format!(
                "unexpected result for a delete: {other:?}"
            ))),
        }
    }

    /// Reads `key` with the requested consistency.
    pub async fn get(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<String>, NodeError> {
        if consistency == Consistency::Linearizable {
            self.read_barrier().await?;
        }
        self.inner.store.get(key).map_err(storage)
    }

    async fn write(&self, command: Command) -> Result<CommandResult, NodeError> {
        let timeout = self.inner.request_timeout;
        let result = tokio::time::timeout(timeout, self.inner.raft.client_write(command))
            .await
            .map_err(|_| NodeError::Timeout(timeout))?;
        match result {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(NodeError::NoLeader {
                    leader: f.leader_id,
                })
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => {
                Err(NodeError::OutcomeUnknown(f.to_string()))
            }
            Err(RaftError::APIError(e)) => Err(NodeError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(NodeError::Unavailable(e.to_string())),
        }
    }

    /// Waits until a read of the local state machine is linearizable.
    async fn read_barrier(&self) -> Result<(), NodeError> {
        let timeout = self.inner.request_timeout;
        let result = tokio::time::timeout(
            timeout,
            self.inner.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await
        .map_err(|_| NodeError::Timeout(timeout))?;
        match result {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(NodeError::NoLeader {
                    leader: f.leader_id,
                })
            }
            Err(RaftError::APIError(e)) => Err(NodeError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(NodeError::Unavailable(e.to_string())),
        }
    }

    /// Stops Raft and makes everything applied durable. In-flight requests must be
    /// finished first.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
        self.inner.store.flush()?;
        Ok(())
    }
}

fn storage(e: std::io::Error) -> NodeError {
    NodeError::Storage(e.to_string())
}
