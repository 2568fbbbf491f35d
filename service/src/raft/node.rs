//! A running kvstore node: its Raft instance, its store, and the operations the APIs
//! call. Every operation is bounded by `server.request_timeout`.
//!
//! Any node accepts any request. Writes and membership changes run on the leader: a
//! follower forwards them over the Raft listener, one hop, and the leader never forwards
//! again. Linearizable reads run on the node that received them: a follower asks the
//! leader for a read index (ReadIndex) and waits until it has applied that far.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::metrics::counter;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ChangeMembershipError, ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::linearizable_read::{Linearizer, LinearizerOption, ReadLogId};
use openraft::{ChangeMembers, ReadPolicy, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::batch::{Batcher, ByteBound};
use super::network::CallError;
use super::rpc::{self, AdminOp, ForwardWrite, ForwardWriteResult, ReadIndexResult};
use super::typ::RaftMetrics;
use super::{NodeAddr, PeerNetwork, TypeConfig};
use crate::admission::ByteBudget;
use crate::config::{Settings, StorageType};
use crate::store::{self, StateMachine, StoreHandle};
use crate::store::{Command, CommandResult, Proposal};
use crate::telemetry::{metrics, trace};

type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// How long a retry waits for news (a leader change) before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How often a leader whose disk is full may hand leadership over.
const HAND_OFF_EVERY: Duration = Duration::from_secs(10);

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

/// Why an operation did not complete. Serializable: a leader reports it to the
/// follower that forwarded the request.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum NodeError {
    /// No leader is known, or the node asked is not the leader.
    #[error("no leader is available to serve this request{}", leader_hint(.leader))]
    NoLeader { leader: Option<u64> },
    /// The leader is known but could not be reached; the request was not delivered.
    #[error("the leader (node {leader}) is unreachable")]
    LeaderUnreachable { leader: u64 },
    /// The write was proposed but its fate is unknown: leadership changed, or the
    /// leader stopped answering, before it was known to commit.
    #[error("write outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The operation did not finish within `server.request_timeout`. For a write, the
    /// outcome is unknown.
    #[error("request did not complete within {0:?}")]
    Timeout(Duration),
    /// Too many bytes of writes are in flight (`server.max_in_flight_bytes`); the write
    /// was not proposed.
    #[error("{0}")]
    Overloaded(String),
    /// This node leads, but no majority has acknowledged it within the leader lease: it
    /// may be cut off, and a new leader may already serve the others.
    #[error("no leader is available here: this node has not heard from a majority of the cluster for over {0:?}")]
    NoQuorum(Duration),
    /// The quorum could not be confirmed, or Raft has stopped.
    #[error("node unavailable: {0}")]
    Unavailable(String),
    /// A membership change that cannot be made (unknown node, reused id, ...).
    #[error("{0}")]
    InvalidMembership(String),
    /// The node is past its storage quota or below its free-space floor: new values are
    /// refused until there is room.
    #[error("{0}")]
    NoSpace(String),
    /// The storage backend cannot be reached (PostgreSQL down).
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    /// The local store failed.
    #[error("storage error: {0}")]
    Storage(String),
}

impl NodeError {
    /// Errors after which the request provably did not take effect, so trying again
    /// (possibly at a new leader) is safe.
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            NodeError::NoLeader { .. } | NodeError::LeaderUnreachable { .. }
        )
    }
}

fn leader_hint(leader: &Option<u64>) -> String {
    match leader {
        Some(id) => format!(" (last known leader: node {id})"),
        None => String::new(),
    }
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

/// Opens storage and starts Raft. On the very first start (no vote or log on disk) the
/// node initialises the cluster: with `cluster.initial_members`, or alone; unless
/// `cluster.bootstrap` is off, when it waits to be added. Every member of a new cluster
/// initialises with the same membership, which openraft accepts. A node whose storage
/// holds Raft state is never initialised again.
pub async fn start(settings: &Settings, advertised: NodeAddr) -> anyhow::Result<RaftNode> {
    let store = store::open(settings).await?;
    let election = millis(settings.raft.election_timeout);
    let config = openraft::Config {
        cluster_name: "kvstore".into(),
        heartbeat_interval: millis(settings.raft.heartbeat_timeout),
        election_timeout_min: election,
        election_timeout_max: election * 2,
        // Snapshots are sent whole, in one request; give them time.
        install_snapshot_timeout: 60_000,
        max_payload_entries: 64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.raft.snapshot_interval),
        max_in_snapshot_log_to_keep: settings.raft.snapshot_logs_to_keep,
        // A restarted leader must win an election again. Restored as leader at once, it
        // would take its read index from a committed index it persisted lazily, and
        // serve reads older than writes it had acknowledged before the restart (seen
        // when a whole cluster loses power).
        enable_leader_restore: Some(false),
        enable_pre_vote: Some(settings.raft.pre_vote),
        ..Default::default()
    }
    .validate()?;
    let lease = Duration::from_millis(config.election_timeout_max);

    let local_ip = settings
        .raft_listen_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified());
    let network = PeerNetwork::new(
        &settings.cluster.secret,
        local_ip,
        crate::tls::client_config(&settings.tls)?,
    )?
    .with_pre_vote_round_time(lease);
    let id = settings.raft.node_id;
    let raft = Raft::new(
        id,
        Arc::new(config),
        network.clone(),
        store.log_store,
        store.state_machine,
    )
    .await?;

    if raft.is_initialized().await? {
        tracing::info!(
            node_id = id,
            "raft state found on disk; rejoining the cluster"
        );
        // After a crash the state machine may be ahead of the last snapshot and of the
        // durable log, and openraft then purges the log up to what was applied. Until
        // a snapshot covers the purged entries, a lagging follower could not be served:
        // build one now.
        let m = raft.metrics().borrow_watched().clone();
        let snapshot = m.snapshot.as_ref().map(|l| l.index);
        let purged = m.purged.as_ref().map(|l| l.index);
        if purged > snapshot {
            tracing::info!(
                ?purged,
                ?snapshot,
                "log purged past the snapshot; building one"
            );
            raft.trigger().snapshot().await?;
        }
    } else if !settings.cluster.bootstrap {
        tracing::info!(node_id = id, "empty node waiting to be added to a cluster");
    } else {
        let members: BTreeMap<u64, NodeAddr> = if settings.cluster.initial_members.is_empty() {
            BTreeMap::from([(id, advertised)])
        } else {
            settings
                .cluster
                .initial_members
                .iter()
                .map(|m| {
                    let addr = NodeAddr {
                        api_addr: m.api_addr.trim_end_matches('/').to_string(),
                        raft_addr: m.raft_addr.trim_end_matches('/').to_string(),
                    };
                    (m.id, addr)
                })
                .collect()
        };
        let ids: Vec<u64> = members.keys().copied().collect();
        raft.initialize(members).await?;
        tracing::info!(node_id = id, voters = ?ids, "initialised a new cluster");
    }

    let read_indexes = read_index_batcher(
        raft.clone(),
        network.clone(),
        settings.server.request_timeout,
    );
    Ok(RaftNode {
        inner: Arc::new(Inner {
            id,
            raft,
            store: store.handle,
            writes: write_batcher(network.clone(), settings.server.request_timeout),
            read_indexes,
            network,
            proposal_bytes: ByteBudget::new(settings.server.max_in_flight_bytes),
            storage_type: settings.storage.kind,
            request_timeout: settings.server.request_timeout,
            lease,
            space: store::space::Space::new(
                settings.storage.quota_bytes,
                settings.storage.min_free_bytes,
                settings.storage.data_dir.clone(),
                store.disk_full.clone(),
            ),
            disk_full: store.disk_full,
            leader_contact: AtomicU64::new(0),
            started_at: Instant::now(),
            incoming_snapshots: settings.storage.data_dir.join("snapshots").join("incoming"),
        }),
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn remaining(deadline: Instant) -> Duration {
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

    /// Whether this node is the leader but no majority has acknowledged it within the
    /// lease. openraft then refuses new writes but keeps the role (so that it can resume
    /// at once if the majority comes back); kvstore answers its clients `NO_LEADER` at
    /// once instead of letting them wait.
    fn leads_without_quorum(&self, m: &RaftMetrics) -> bool {
        if m.state != ServerState::Leader || m.current_leader != Some(self.inner.id) {
            return false;
        }
        if m.membership_config.membership().voter_ids().count() <= 1 {
            return false; // a single voter is its own majority
        }
        m.last_quorum_acked
            .as_ref()
            .is_some_and(|acked| openraft::Instant::elapsed(&**acked) > self.inner.lease)
    }

    /// The leader this node is in touch with: itself while a majority acknowledges it
    /// within the lease, or the leader it follows while that leader's heartbeats arrive
    /// within the lease. `None` when no leader is known or it has gone quiet (this node
    /// may be cut off). With Pre-Vote a cut-off follower keeps its last leader in Raft's
    /// view (it never raises its term), so this is what tells that it is alone.
    pub async fn leader_in_touch(&self) -> Option<u64> {
        let m = self.metrics();
        let leader = m.current_leader?;
        if leader == self.inner.id {
            return (!self.leads_without_quorum(&m)).then_some(leader);
        }
        self.follower_in_touch().await.then_some(leader)
    }

    /// Whether this node, as a follower, has heard from its leader within the lease.
    async fn follower_in_touch(&self) -> bool {
        let contact = self.inner.leader_contact.load(Ordering::Relaxed);
        if contact > 0 {
            let at = self.inner.started_at + Duration::from_millis(contact - 1);
            if at.elapsed() <= self.inner.lease {
                return true;
            }
        }
        // No recent AppendEntries seen here (a snapshot may be arriving instead): ask
        // Raft when the leader last renewed this node's lease.
        let heard = self
            .inner
            .raft
            .with_raft_state(|state| state.vote_last_modified())
            .await
            .ok()
            .flatten();
        heard.is_some_and(|at| openraft::Instant::elapsed(&at) <= self.inner.lease)
    }

    /// Hands AppendEntries from a leader to Raft, noting the contact when it is accepted.
    pub(crate) async fn append_entries(
        &self,
        req: openraft::raft::AppendEntriesRequest<TypeConfig>,
    ) -> Result<openraft::raft::AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>> {
        let result = self.inner.raft.append_entries(req).await;
        if matches!(
            result,
            Ok(openraft::raft::AppendEntriesResponse::Success
                | openraft::raft::AppendEntriesResponse::PartialSuccess(_)
                | openraft::raft::AppendEntriesResponse::Conflict)
        ) {
            let now =
                u64::try_from(self.inner.started_at.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.inner.leader_contact.store(now + 1, Ordering::Relaxed);
        }
        result
    }

    /// Whether the storage backend can be reached right now.
    pub fn storage_available(&self) -> bool {
        self.inner.store.is_available()
    }

    /// Checks the storage limits twice a second for as long as the node exists (it holds
    /// the node only while checking, so the store can close).
    pub fn watch_space(&self) {
        let weak = self.downgrade();
        tokio::spawn(async move {
            let mut handed_off: Option<Instant> = None;
            loop {
                {
                    let Some(node) = weak.upgrade() else { return };
                    if node.is_shut_down() {
                        return;
                    }
                    node.inner.store.retry_failed_writes().await;
                    node.hand_off_if_disk_full(&mut handed_off).await;
                    if let Ok(stored) = node.inner.store.size_bytes().await {
                        let full = node.inner.space.check(stored);
                        ::metrics::gauge!(metrics::OUT_OF_SPACE).set(if full { 1.0 } else { 0.0 });
                    }
                }
                tokio::time::sleep(store::space::CHECK_INTERVAL).await;
            }
        });
    }

    /// A leader whose disk is full (a write failed for want of space) can neither append
    /// nor apply, so the cluster would take no writes while it leads. It hands
    /// leadership to the voter that holds the most of the log, at most once every
    /// [`HAND_OFF_EVERY`] (if every disk is full, leadership would otherwise bounce).
    async fn hand_off_if_disk_full(&self, last: &mut Option<Instant>) {
        if !self.inner.disk_full.is_full() || last.is_some_and(|t| t.elapsed() < HAND_OFF_EVERY) {
            return;
        }
        let m = self.metrics();
        if m.state != ServerState::Leader || m.current_leader != Some(self.inner.id) {
            return;
        }
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        let Some(target) = self
            .followers()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| voters.contains(&f.id))
            .max_by_key(|f| f.matched_index)
        else {
            return; // a single voter: nobody to hand over to
        };
        *last = Some(Instant::now());
        tracing::warn!(
            to = target.id,
            "this leader's disk is full: handing leadership to node {}",
            target.id
        );
        if let Err(e) = self.inner.raft.trigger().transfer_leader(target.id).await {
            tracing::warn!(error = %e, "cannot hand leadership over");
        }
    }

    /// Why this node cannot write to its disk right now, if a write failed for want of
    /// space (and is being retried).
    pub fn disk_full(&self) -> Option<String> {
        self.inner.disk_full.reason()
    }

    /// Refuses a new value at once while the node is out of space; deletes pass, since
    /// they are how an operator makes room.
    fn check_space(&self, command: &Command) -> Result<(), NodeError> {
        match (command, self.inner.space.refusal()) {
            (Command::Put { .. }, Some(why)) => Err(NodeError::NoSpace(why)),
            _ => Ok(()),
        }
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

    /// The members of the cluster as this node knows them.
    pub fn members(&self) -> Vec<MemberInfo> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, addr)| MemberInfo {
                id: *id,
                addr: addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    /// On the leader, every follower's replication progress; elsewhere, `None`.
    pub fn followers(&self) -> Option<Vec<FollowerProgress>> {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return None;
        }
        let last = m.last_log_index.unwrap_or(0);
        let replication = m.replication.as_ref()?;
        Some(
            replication
                .iter()
                .filter(|(id, _)| **id != self.inner.id)
                .map(|(id, matched)| {
                    let matched_index = matched.as_ref().map(|l| l.index);
                    FollowerProgress {
                        id: *id,
                        matched_index,
                        lag: last.saturating_sub(matched_index.unwrap_or(0)),
                    }
                })
                .collect(),
        )
    }

    /// Stores `value` under `key` through the Raft log.
    #[tracing::instrument(name = "kv.put", skip_all, fields(key = %key, node.id = self.inner.id))]
    pub async fn put(&self, key: String, value: String) -> Result<(), NodeError> {
        self.write(Command::Put { key, value }).await.map(|_| ())
    }

    /// Deletes `key` through the Raft log; returns whether it existed.
    #[tracing::instrument(name = "kv.delete", skip_all, fields(key = %key, node.id = self.inner.id))]
    pub async fn delete(&self, key: String) -> Result<bool, NodeError> {
        match self.write(Command::Delete { key }).await? {
            CommandResult::Deleted { existed } => Ok(existed),
            other => Err(NodeError::Storage(format!(
                "unexpected result for a delete: {other:?}"
            ))),
        }
    }

    /// Reads `key` with the requested consistency.
    #[tracing::instrument(name = "kv.get", skip_all, fields(key = %key, node.id = self.inner.id))]
    pub async fn get(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<String>, NodeError> {
        self.check_storage()?;
        if consistency == Consistency::Linearizable {
            let deadline = Instant::now() + self.inner.request_timeout;
            self.with_leader(deadline, |target| self.read_barrier(target, deadline))
                .await?;
        }
        self.inner.store.get(key).await.map_err(storage)
    }

    /// Applies a membership change on the leader.
    pub async fn admin(&self, op: AdminOp) -> Result<(), NodeError> {
        self.check_storage()?;
        let deadline = Instant::now() + self.inner.request_timeout;
        self.with_leader(deadline, |target| {
            let op = op.clone();
            async move {
                match target {
                    Target::Here => self.admin_until(op, deadline).await,
                    Target::Leader { id, raft_url } => {
                        self.forward_admin(id, &raft_url, &op, deadline).await
                    }
                }
            }
        })
        .await
    }

    async fn write(&self, command: Command) -> Result<CommandResult, NodeError> {
        self.check_storage()?;
        self.check_space(&command)?;
        let deadline = Instant::now() + self.inner.request_timeout;
        self.with_leader(deadline, |target| {
            let command = command.clone();
            async move {
                match target {
                    Target::Here => self.write_until(command, deadline).await,
                    Target::Leader { id, raft_url } => {
                        self.forward_write(id, raft_url, command, deadline).await
                    }
                }
            }
        })
        .await
    }

    /// Runs `attempt` against the current leader, and again whenever it fails in a way
    /// that provably had no effect (no leader yet, leader unreachable), until `deadline`.
    async fn with_leader<T, F, Fut>(&self, deadline: Instant, attempt: F) -> Result<T, NodeError>
    where
        F: Fn(Target) -> Fut,
        Fut: std::future::Future<Output = Result<T, NodeError>>,
    {
        let mut metrics = self.inner.raft.metrics();
        loop {
            let target = {
                let m = metrics.borrow_watched();
                if self.leads_without_quorum(&m) {
                    // Waiting would not help: the majority may have moved on without
                    // this node, and it cannot tell until the partition heals.
                    return Err(NodeError::NoQuorum(self.inner.lease));
                }
                match m.current_leader {
                    Some(leader) if leader == self.inner.id => Some(Target::Here),
                    Some(leader) => {
                        m.membership_config
                            .membership()
                            .get_node(&leader)
                            .map(|node| Target::Leader {
                                id: leader,
                                raft_url: node.raft_addr.clone(),
                            })
                    }
                    None => None,
                }
            };
            // A follower that has not heard from its leader within the lease is as good as
            // leaderless: forwarding would only wait on a leader it cannot reach.
            let lost = match &target {
                Some(Target::Leader { id, .. }) if !self.follower_in_touch().await => Some(*id),
                _ => None,
            };
            let result = match (target, lost) {
                (_, Some(last)) => Err(NodeError::NoLeader { leader: Some(last) }),
                (Some(target), None) => attempt(target).await,
                (None, None) => Err(NodeError::NoLeader { leader: None }),
            };
            match result {
                Err(e) if e.is_retryable() && !remaining(deadline).is_zero() => {
                    let pause = remaining(deadline).min(RETRY_PAUSE);
                    let _ = tokio::time::timeout(pause, metrics.changed()).await;
                }
                other => return other,
            }
        }
    }

    /// Hands a membership change to the leader's Raft listener and returns its verdict.
    #[tracing::instrument(name = "raft.forward", skip_all, fields(otel.kind = "client", url.path = rpc::FORWARD_ADMIN, leader))]
    async fn forward_admin(
        &self,
        leader: u64,
        raft_url: &str,
        op: &AdminOp,
        deadline: Instant,
    ) -> Result<(), NodeError> {
        counter!(metrics::FORWARDED, "kind" => "admin").increment(1);
        self.inner
            .network
            .call::<_, rpc::AdminResult>(
                raft_url,
                leader,
                rpc::FORWARD_ADMIN,
                (op, 0),
                remaining(deadline),
            )
            .await
            .unwrap_or_else(|e| Err(forward_failed(leader, e)))
    }

    /// The leader's end of a (possibly forwarded) write. Never forwards again.
    pub(crate) async fn write_here(&self, command: Command) -> Result<CommandResult, NodeError> {
        self.check_storage()?;
        self.check_space(&command)?;
        self.write_until(command, Instant::now() + self.inner.request_timeout)
            .await
    }

    async fn write_until(
        &self,
        command: Command,
        deadline: Instant,
    ) -> Result<CommandResult, NodeError> {
        let proposals = &self.inner.proposal_bytes;
        let Some(_admitted) = proposals.admit(command.payload_bytes()) else {
            return Err(NodeError::Overloaded(proposals.refusal("on the leader")));
        };
        let budget = remaining(deadline);
        let span = tracing::info_span!("raft.propose", node.id = self.inner.id);
        let proposal = span.in_scope(|| Proposal {
            command,
            trace: trace::current_traceparent(),
        });
        if self.is_shut_down() {
            return Err(NodeError::Unavailable(
                "Raft has stopped on this node; nothing was proposed".into(),
            ));
        }
        let propose = self.inner.raft.client_write(proposal).instrument(span);
        let result = tokio::time::timeout(budget, propose).await.map_err(|_| {
            counter!(metrics::RAFT_PROPOSALS_FAILED, "reason" => "timeout").increment(1);
            NodeError::Timeout(self.inner.request_timeout)
        })?;
        match result {
            Ok(response) => Ok(response.data),
            Err(e) => {
                let e = write_error(e);
                counter!(metrics::RAFT_PROPOSALS_FAILED, "reason" => failure_reason(&e))
                    .increment(1);
                Err(e)
            }
        }
    }

    /// Hands a write to the leader, in the next batch, and waits for its verdict.
    #[tracing::instrument(name = "raft.forward", skip_all, fields(otel.kind = "client", leader))]
    async fn forward_write(
        &self,
        leader: u64,
        raft_url: String,
        command: Command,
        deadline: Instant,
    ) -> Result<CommandResult, NodeError> {
        counter!(metrics::FORWARDED, "kind" => "write").increment(1);
        let write = ForwardWrite {
            command,
            trace: trace::current_traceparent(),
        };
        let submitted = self.inner.writes.submit((leader, raft_url), write);
        match tokio::time::timeout(remaining(deadline), submitted).await {
            Ok(Some(result)) => result,
            Ok(None) => Err(NodeError::OutcomeUnknown(format!(
                "forwarded to leader {leader}, no answer"
            ))),
            Err(_) => Err(NodeError::OutcomeUnknown(format!(
                "forwarded to leader {leader}, no answer in time"
            ))),
        }
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
            .map_err(|e| NodeError::Unavailable(e.to_string()))?;
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

    /// The leader's end of a (possibly forwarded) membership change.
    pub(crate) async fn admin_here(&self, op: AdminOp) -> Result<(), NodeError> {
        self.admin_until(op, Instant::now() + self.inner.request_timeout)
            .await
    }

    async fn admin_until(&self, op: AdminOp, deadline: Instant) -> Result<(), NodeError> {
        let members = self.members();
        let voters: BTreeSet<u64> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
        let learners: BTreeSet<u64> = members.iter().filter(|m| !m.voter).map(|m| m.id).collect();
        let raft = &self.inner.raft;
        match op {
            AdminOp::AddLearner { id, node } => {
                if self
                    .inner
                    .store
                    .retired_ids()
                    .await
                    .map_err(storage)?
                    .contains(&id)
                {
                    return Err(NodeError::InvalidMembership(format!(
                        "node id {id} belonged to a removed node; ids are never reused"
                    )));
                }
                if voters.contains(&id) {
                    return Err(NodeError::InvalidMembership(format!(
                        "node {id} is already a voter"
                    )));
                }
                let added =
                    tokio::time::timeout(remaining(deadline), raft.add_learner(id, node, true))
                        .await
                        .map_err(|_| NodeError::Timeout(self.inner.request_timeout))?;
                added.map(|_| ()).map_err(write_error)
            }
            AdminOp::Promote { ids } => {
                if let Some(bad) = ids.iter().find(|id| !learners.contains(id)) {
                    return Err(unknown(*bad, "a learner"));
                }
                self.change(ChangeMembers::AddVoterIds(ids), deadline).await
            }
            AdminOp::Remove { ids } => {
                if let Some(bad) = ids
                    .iter()
                    .find(|id| !voters.contains(id) && !learners.contains(id))
                {
                    return Err(unknown(*bad, "a member"));
                }
                let gone_voters: BTreeSet<u64> = ids.intersection(&voters).copied().collect();
                if gone_voters.len() == voters.len() {
                    return Err(NodeError::InvalidMembership(
                        "cannot remove every voter".into(),
                    ));
                }
                if !gone_voters.is_empty() {
                    self.change(ChangeMembers::RemoveVoters(gone_voters), deadline)
                        .await?;
                }
                let gone_learners: BTreeSet<u64> = ids.intersection(&learners).copied().collect();
                if !gone_learners.is_empty() {
                    self.change(ChangeMembers::RemoveNodes(gone_learners), deadline)
                        .await?;
                }
                Ok(())
            }
            AdminOp::TransferLeader { to } => {
                if !voters.contains(&to) {
                    return Err(unknown(to, "a voter"));
                }
                raft.trigger()
                    .transfer_leader(to)
                    .await
                    .map_err(|e| NodeError::Unavailable(e.to_string()))
            }
        }
    }

    async fn change(
        &self,
        change: ChangeMembers<u64, NodeAddr>,
        deadline: Instant,
    ) -> Result<(), NodeError> {
        let result = tokio::time::timeout(
            remaining(deadline),
            self.inner.raft.change_membership(change, false),
        )
        .await
        .map_err(|_| NodeError::Timeout(self.inner.request_timeout))?;
        result.map(|_| ()).map_err(write_error)
    }

    /// Stops Raft and makes everything applied durable. In-flight requests must be
    /// finished first.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
        self.inner.store.close().await?;
        Ok(())
    }
}

/// The batcher of the writes a follower forwards: one `/raft/forward/writes` request
/// per batch, one result per write.
fn write_batcher(
    network: PeerNetwork,
    timeout: Duration,
) -> Batcher<(u64, String), ForwardWrite, ForwardWriteResult> {
    let bound = ByteBound {
        weigh: rpc::forward_bytes,
        max_bytes: rpc::MAX_MESSAGE_BYTES,
    };
    Batcher::start(
        bound,
        move |(leader, raft_url): (u64, String), writes: Vec<ForwardWrite>| {
            let network = network.clone();
            async move {
                let count = writes.len();
                let data_bytes = writes.iter().map(rpc::forward_bytes).sum();
                let answer = network
                    .call::<_, Vec<ForwardWriteResult>>(
                        &raft_url,
                        leader,
                        rpc::FORWARD_WRITES,
                        (&writes, data_bytes),
                        timeout,
                    )
                    .await;
                let error = match answer {
                    Ok(results) if results.len() == count => return results,
                    Ok(results) => NodeError::OutcomeUnknown(format!(
                        "leader {leader} answered {} results for {count} writes",
                        results.len()
                    )),
                    Err(e) => forward_failed(leader, e),
                };
                vec![Err(error); count]
            }
        },
    )
}

/// The batcher of read indexes: one quorum round (on the leader) or one
/// `/raft/forward/read-index` request (on a follower) per batch of reads.
fn read_index_batcher(
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

/// What a forwarded change whose call to the leader failed became: not delivered (so
/// worth another try), or of unknown outcome.
fn forward_failed(leader: u64, e: CallError) -> NodeError {
    match e {
        CallError::Unreachable(_) => NodeError::LeaderUnreachable { leader },
        CallError::NoAnswer(e) => {
            NodeError::OutcomeUnknown(format!("forwarded to leader {leader}, no answer: {e}"))
        }
    }
}

/// The `reason` label of a failed proposal.
fn failure_reason(e: &NodeError) -> &'static str {
    match e {
        NodeError::NoLeader { .. }
        | NodeError::LeaderUnreachable { .. }
        | NodeError::NoQuorum(_) => "no_leader",
        NodeError::Timeout(_) => "timeout",
        NodeError::Overloaded(_) => "overloaded",
        NodeError::OutcomeUnknown(_) => "outcome_unknown",
        NodeError::StorageUnavailable(_) | NodeError::Storage(_) | NodeError::NoSpace(_) => {
            "storage"
        }
        NodeError::Unavailable(_) | NodeError::InvalidMembership(_) => "other",
    }
}

fn unknown(id: u64, what: &str) -> NodeError {
    NodeError::InvalidMembership(format!("node {id} is not {what} of this cluster"))
}

fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> NodeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => NodeError::NoLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => {
            NodeError::OutcomeUnknown(f.to_string())
        }
        // Another change still being committed: this one may pass once it has, so it
        // is a 503 to retry, not a 400 (two nodes joining at once meet this).
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            e @ ChangeMembershipError::InProgress(_),
        )) => NodeError::Unavailable(e.to_string()),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            NodeError::InvalidMembership(e.to_string())
        }
        RaftError::APIError(e) => NodeError::Unavailable(e.to_string()),
        // Raft stopped while the proposal was in its hands: the entry may be in the
        // log, and commit there or through the next leader. (A node whose Raft had
        // stopped before the proposal answers UNAVAILABLE without proposing.)
        RaftError::Fatal(e) => {
            NodeError::OutcomeUnknown(format!("Raft stopped after the proposal: {e}"))
        }
    }
}

fn read_error(e: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>) -> NodeError {
    match e {
        RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => NodeError::NoLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(e) => NodeError::Unavailable(e.to_string()),
        RaftError::Fatal(e) => NodeError::Unavailable(e.to_string()),
    }
}

fn storage(e: std::io::Error) -> NodeError {
    if e.kind() == std::io::ErrorKind::NotConnected {
        NodeError::StorageUnavailable(e.to_string())
    } else {
        NodeError::Storage(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a proposal, the only honest answers are success, a definite failure, or
    /// OUTCOME_UNKNOWN: Raft stopping with the entry in its hands is not a definite
    /// failure.
    #[test]
    fn a_fatal_error_after_the_proposal_is_an_unknown_outcome() {
        for fatal in [
            openraft::error::Fatal::Stopped,
            openraft::error::Fatal::Panicked,
        ] {
            let e = write_error(RaftError::Fatal(fatal));
            assert!(matches!(e, NodeError::OutcomeUnknown(_)), "{e:?}");
            assert!(!e.is_retryable());
        }
    }
}
